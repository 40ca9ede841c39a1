"""``SAEConfig``: the typed, JSON round-tripping description of one SAE."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from .. import dtypes
from ..jsonconfig import JSONConfig
from .registry import SAE_REGISTRY

logger = logging.getLogger(__name__)


def canonical_dtype(name: str | torch.dtype) -> str:
    """``"float32"``-style name of a dtype name or ``torch.dtype`` (sae-lens spelling)."""
    return dtypes.long_name(name)


def torch_dtype(name: str | torch.dtype) -> torch.dtype:
    """The ``torch.dtype`` of a dtype name."""
    return dtypes.to_torch(name)


@dataclass
class SAEConfig(JSONConfig):
    unknown_keys: ClassVar[str] = "warn"  # cfg.json is shared with sae-lens and others
    """Configuration of a sparse autoencoder.

    Attributes
    ----------
    arch : str
        A registered architecture (:func:`~saeprobe.sae.available_archs`): ``topk`` (the
        paper's), ``batchtopk``, ``matryoshka_batchtopk``, ``jumprelu``, ``gated``,
        ``standard`` (ReLU + L1), ...
    d_in : int
        Input (residual stream) width ``d``.
    d_sae : int
        Number of latents ``c``.
    k : int | None
        Active latents per row (``topk``), mean active latents per row (``batchtopk``,
        ``matryoshka_batchtopk``); for ``jumprelu`` / ``gated`` / ``standard`` an optional
        cap for ``encode_sparse`` (``k_max``).
    dtype : str
        Parameter dtype (``float32`` master weights are the default).
    use_decoder_bias : bool
        Learn a decoder bias ``b_dec`` added to reconstructions.
    use_pre_encoder_bias : bool
        Subtract ``b_dec`` from the input before encoding (sae-lens ``apply_b_dec_to_input``;
        needs ``use_decoder_bias``).
    jumprelu_threshold_init, jumprelu_bandwidth : float
        JumpReLU threshold initial value and straight-through-estimator kernel bandwidth.
    l1_coeff : float
        Sparsity coefficient used in training (the paper's Top-K: 0.01 * mean |z|); recorded
        here, passed by the trainer to ``training_forward``.
    l1_scale_by_decoder_norm : bool
        ``standard`` only: weight ``|z_i|`` by ``||W_dec[i]||`` in the L1 term.
    batchtopk_threshold_lr : float
        EMA rate of the BatchTopK (and Matryoshka BatchTopK) inference threshold.
    matryoshka_widths : list[int] | None
        ``matryoshka_batchtopk`` only: the nested prefix widths trained jointly (strictly
        increasing, the last is ``d_sae``); None: ``d_sae / 16, / 8, / 4, / 2, d_sae``.
    metadata : dict
        Free-form: ``model_name``, ``hook_point`` / ``hook_name``, ``dataset``, ...
    """

    arch: str = "topk"
    d_in: int = 0
    d_sae: int = 0
    k: int | None = 50
    dtype: str = "float32"
    use_decoder_bias: bool = False
    use_pre_encoder_bias: bool = False
    jumprelu_threshold_init: float = 0.001
    jumprelu_bandwidth: float = 0.001
    l1_coeff: float = 0.01
    l1_scale_by_decoder_norm: bool = False
    batchtopk_threshold_lr: float = 0.01
    matryoshka_widths: list[int] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.arch not in SAE_REGISTRY:
            raise ValueError(
                f"unknown SAE arch {self.arch!r}; registered: {', '.join(SAE_REGISTRY)}"
            )
        if int(self.d_in) <= 0 or int(self.d_sae) <= 0:
            raise ValueError(
                f"d_in and d_sae must be positive (got d_in={self.d_in}, d_sae={self.d_sae})"
            )
        self.d_in, self.d_sae = int(self.d_in), int(self.d_sae)
        if SAE_REGISTRY[self.arch].k_required:
            if self.k is None or not 0 < int(self.k) <= self.d_sae:
                raise ValueError(
                    f"{self.arch} needs 0 < k <= d_sae (got k={self.k}, d_sae={self.d_sae})"
                )
        if self.k is not None:
            self.k = int(self.k)
        self.dtype = canonical_dtype(self.dtype)
        if self.use_pre_encoder_bias and not self.use_decoder_bias:
            raise ValueError(
                "use_pre_encoder_bias subtracts the decoder bias b_dec: set use_decoder_bias=True too"
            )

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch_dtype(self.dtype)
