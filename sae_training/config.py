"""Training configuration: one typed dataclass that round-trips to JSON."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saeprobe.atomic import atomic_write_text
from saeprobe.sae import available_archs

AUTOCAST = ("auto", "bf16", "none")


@dataclass
class TrainConfig:
    """Everything a training run needs, except the data.

    ``None`` fields are filled by the recipe (:func:`sae_training.recipes.apply_recipe`)
    or derived from the data (``d_in``).

    Attributes
    ----------
    arch : str
        ``topk`` | ``batchtopk`` | ``jumprelu`` | ``standard`` (key of ``saeprobe.sae.SAE_REGISTRY``).
    d_in, width, k : int
        Input width (checked against the data), number of latents, active latents per token.
    recipe : str
        ``paper`` (the paper's setting) or ``default`` (AuxK, warm-up/decay, data init).
    total_tokens, epochs :
        Run length: ``total_tokens`` wins when set, else ``epochs`` passes over the data.
    warmup_steps, decay_steps :
        Linear LR warm-up steps; the last ``decay_steps`` decay the LR (``decay`` shape) to 0.
    dead_window_tokens : int
        A latent is dead when it has not fired in this many tokens.
    autocast : str
        ``auto`` (bf16 on CUDA, none on CPU), ``bf16`` or ``none``; master
        weights and optimizer state are always fp32.
    prefetch_batches : int | None
        Batches read ahead by a background thread (pinned for the GPU copy); ``None``:
        2 on CUDA, 0 on CPU.
    max_bad_batches, max_bad_fraction :
        Stop when more than this many consecutive batches (or this share of all
        batches, checked after 20) contain NaN/Inf.
    """

    arch: str = "topk"
    d_in: int | None = None
    width: int = 32768
    k: int = 50
    recipe: str = "default"
    # optimisation
    lr: float | None = None
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    batch_size: int | None = None
    total_tokens: int | None = None
    epochs: int | None = None
    grad_clip: float | None = None
    l1_coeff: float | None = None
    auxk_coeff: float | None = None
    k_aux: int | None = None
    warmup_steps: int | None = None
    decay_steps: int | None = None
    decay: str = "linear"
    init_from_data: bool | None = None
    decoder_bias: bool | None = None
    init_encoder_from_decoder: bool | None = None
    sae_kwargs: dict[str, Any] = field(default_factory=dict)
    # data
    drop_system: bool = True
    shuffle: bool = True
    # bookkeeping
    dead_window_tokens: int = 10_000_000
    log_interval: int = 100
    ckpt_interval: int = 1000
    eval_interval: int = 0
    keep_checkpoints: int = 2
    seed: int = 0
    # numerics / speed
    autocast: str = "auto"
    fast: bool = True
    device: str = "auto"
    prefetch_batches: int | None = None
    max_bad_batches: int = 10
    max_bad_fraction: float = 0.01
    # outputs
    out_dir: str | None = None
    wandb_project: str | None = None
    wandb_run_name: str | None = None
    progress: bool = True

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
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["adam_betas"] = list(self.adam_betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig keys {unknown}; valid keys: {sorted(names)}")
        return cls(**d)

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path is not None:
            atomic_write_text(Path(path), text, what="training config")
        return text

    @classmethod
    def from_json(cls, path_or_text: str | os.PathLike) -> TrainConfig:
        s = str(path_or_text)
        if s.lstrip().startswith("{"):
            return cls.from_dict(json.loads(s))
        p = Path(s)
        if not p.is_file():
            raise FileNotFoundError(f"config file {p} not found")
        try:
            data = json.loads(p.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"config file {p} is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)
