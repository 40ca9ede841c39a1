"""Training configuration: one typed dataclass that round-trips to JSON."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from saeprobe.jsonconfig import JSONConfig
from saeprobe.sae import available_archs

AUTOCAST = ("auto", "bf16", "none")


@dataclass
class TrainConfig(JSONConfig):
    """Everything a training run needs, except the data (round-trips to JSON; every field is
    a ``saeprobe train`` flag whose help is the docstring under it).

    ``None`` fields are filled by the recipe (:func:`sae_training.recipes.apply_recipe`) or
    derived from the data (``d_in``).
    """

    arch: str = "topk"
    """SAE architecture (a registered name: topk, batchtopk, jumprelu, standard, ...)."""
    d_in: int | None = None
    """Input width; checked against the data (default: taken from it)."""
    width: int = 32768
    """Number of latents c."""
    k: int = 50
    """Active latents per token (Top-K style architectures; a cap elsewhere)."""
    recipe: str = "default"
    """Defaults to fill: 'paper' (the paper's setting) or 'default' (AuxK, warm-up / decay, data init)."""
    # optimisation
    lr: float | None = None
    """Adam learning rate (default from the recipe; 'default' scales 2e-4 by 1/sqrt(width / 2^14))."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas."""
    adam_eps: float = 1e-8
    """Adam epsilon."""
    batch_size: int | None = None
    """Tokens per global batch (all ranks together)."""
    total_tokens: int | None = None
    """Run length in tokens; wins over epochs when set."""
    epochs: int | None = None
    """Passes over the data (when total_tokens is unset)."""
    grad_clip: float | None = None
    """Gradient-norm clip (0: none)."""
    l1_coeff: float | None = None
    """Weight of the L1 term (the paper's Top-K: 0.01 * mean |z|; JumpReLU: the L0 term)."""
    auxk_coeff: float | None = None
    """Weight of the AuxK loss on dead latents (0: off)."""
    k_aux: int | None = None
    """Dead latents used by AuxK (default min(d_in / 2, 512))."""
    warmup_steps: int | None = None
    """Linear LR warm-up steps."""
    decay_steps: int | None = None
    """Final steps with LR decay to 0 (default from the recipe: 20% of a known run length)."""
    decay: str = "linear"
    """Shape of the LR decay: linear or cosine."""
    init_from_data: bool | None = None
    """Initialise the decoder bias from the first batch (geometric median)."""
    decoder_bias: bool | None = None
    """Learn a decoder bias b_dec (also subtracted from the input)."""
    init_encoder_from_decoder: bool | None = None
    """Start the encoder as the decoder transpose."""
    sae_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra SAEConfig fields, as JSON (e.g. '{"jumprelu_bandwidth": 0.002}')."""
    # data
    drop_system: bool = True
    """Leave out leading system-prompt tokens (the paper masks them)."""
    shuffle: bool = True
    """Shuffle the store each epoch (seeded)."""
    # bookkeeping
    dead_window_tokens: int = 10_000_000
    """A latent is dead when it has not fired in this many tokens."""
    log_interval: int = 100
    """Steps between metrics records (metrics.jsonl)."""
    ckpt_interval: int = 1000
    """Steps between checkpoints (0: only at the end)."""
    eval_interval: int = 0
    """Steps between held-out evaluations (0: only at the end)."""
    keep_checkpoints: int = 2
    """Newest checkpoints kept."""
    seed: int = 0
    """Seed of the initialisation and the data order."""
    # numerics / speed
    autocast: str = "auto"
    """Compute dtype: auto (bf16 where the device runs it natively: CUDA, CPUs with AVX-512-BF16 / AMX; else fp32), bf16 or none. Master weights and optimizer state are fp32."""
    fast: bool = True
    """Use the sparse Top-K kernels (no dense [B, c] codes); --no-fast runs the dense reference path."""
    device: str = "auto"
    """cpu, cuda, cuda:1 or auto (cuda when available)."""
    prefetch_batches: int | None = None
    """Batches read ahead by a background thread (default: 2 on CUDA, 0 on CPU)."""
    max_bad_batches: int = 10
    """Stop after more than this many consecutive batches with NaN / Inf activations."""
    max_bad_fraction: float = 0.01
    """Stop when this share of all batches (checked after 20) had NaN / Inf."""
    # outputs
    out_dir: str | None = None
    """Output folder (SAE, checkpoints, metrics.jsonl, train_config.json)."""
    wandb_project: str | None = None
    """Also log to this wandb project (when wandb is installed)."""
    wandb_run_name: str | None = None
    """Name of the wandb run."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        self.adam_betas = tuple(self.adam_betas)  # JSON gives a list
        self.validate(partial=True)

    # ----- checks --------------------------------------------------------------------
    def validate(self, partial: bool = False) -> None:
        """Raise ``ValueError`` naming the bad field; ``partial`` allows unfilled ``None``s."""
        if self.arch not in available_archs():
            raise ValueError(
                f"unknown arch {self.arch!r}; use one of {', '.join(available_archs())}"
            )
        if self.autocast not in AUTOCAST:
            raise ValueError(
                f"unknown autocast {self.autocast!r}; use one of {', '.join(AUTOCAST)}"
            )
        if self.decay not in ("linear", "cosine"):
            raise ValueError(f"unknown decay {self.decay!r}; use 'linear' or 'cosine'")
        for name in ("width", "k", "log_interval", "dead_window_tokens"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.k > self.width:
            raise ValueError(f"k={self.k} exceeds width={self.width}; lower --k or raise --width")
        for name in ("lr", "batch_size", "total_tokens", "epochs", "d_in"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise ValueError(f"{name} must be > 0, got {v}")
        if partial:
            return
        missing = [
            n
            for n in ("lr", "batch_size", "grad_clip", "l1_coeff", "auxk_coeff", "warmup_steps")
            if getattr(self, n) is None
        ]
        if missing:
            raise ValueError(f"config fields not set: {missing}; pass them or pick a recipe")
        if self.total_tokens is None and self.epochs is None:
            raise ValueError("set total_tokens or epochs (e.g. --epochs 5 or --tokens 100_000_000)")

    # ----- JSON ----------------------------------------------------------------------
    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)
