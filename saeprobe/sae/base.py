"""``SAE``: the shared base of every architecture (parameters, API, training helpers)."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import kernels
from .config import SAEConfig
from .saving import save_sae

logger = logging.getLogger(__name__)


class SparseCodes(NamedTuple):
    """Sparse codes: ``values [N, k]`` (>= 0) and latent ``indices [N, k]`` (int64).

    Rows may contain padding entries with value 0 (arbitrary index) when an architecture
    has fewer than ``k`` active latents for a row.
    """

    values: Tensor
    indices: Tensor


class LossSpec(NamedTuple):
    """How a training batch is scored (the arguments of :meth:`SAE.training_forward`).

    Attributes
    ----------
    l1_coeff : float
        Weight of the sparsity term (L1; JumpReLU: L0).
    auxk_coeff : float
        Weight of the AuxK loss on dead latents (0: off).
    k_aux : int | None
        Dead latents AuxK uses.
    dead_mask : BoolTensor [c] | None
        Which latents are dead.
    fast : bool
        Sparse kernels (no dense ``[B, c]`` codes) where the architecture has them.
    """

    l1_coeff: float = 0.0
    auxk_coeff: float = 0.0
    k_aux: int | None = None
    dead_mask: Tensor | None = None
    fast: bool = True


class TrainForward(NamedTuple):
    """Output of :meth:`SAE.training_forward`.

    Attributes
    ----------
    loss : Tensor []
        ``mse + l1_coeff * l1 + auxk_coeff * auxk`` (JumpReLU: ``l1_coeff`` weights ``l0``).
    x_hat : Tensor [B, d]
    values, indices : Tensor [B, k]
        The sparse codes of the batch (see :class:`SparseCodes`).
    terms : dict[str, Tensor]
        ``mse`` (mean over elements), ``l1`` (sum |z| / (B c), the dense mean), ``auxk``
        (0 without dead latents), ``l0`` (mean active latents per row, detached except JumpReLU).
    """

    loss: Tensor
    x_hat: Tensor
    values: Tensor
    indices: Tensor
    terms: dict[str, Tensor]


class SAE(nn.Module):
    """Base sparse autoencoder: ``x_hat = codes(x) @ W_dec + b_dec``.

    Parameters (all ``[rows, cols]`` with latents as rows)
    ----------
    W_enc : [c, d]
        Encoder weight (``nn.Linear`` layout; sae-lens stores the transpose).
    b_enc : [c]
    W_dec : [c, d]
        Dictionary: decoder directions as rows (unit norm for Top-K, see
        :meth:`normalize_dictionary_`).
    b_dec : [d] or None
        Decoder bias when ``cfg.use_decoder_bias``; subtracted from the input first when
        ``cfg.use_pre_encoder_bias``.

    Inputs may have any leading shape ``[..., d]``; codes are ``[..., c]`` / ``[..., k]``.

    Class attributes (set by each architecture)
    -------------------------------------------
    arch : str
        Registry name.
    k_required : bool
        ``cfg.k`` is part of the architecture (Top-K style) rather than an optional cap.
    sae_lens_architecture : str | None
        The sae-lens ``architecture`` it is saved as (None: ``arch``).
    sae_lens_omit : tuple of str
        Base tensors the sae-lens class of that architecture does not have (``gated``: its
        gate bias is ``b_gate``, there is no ``b_enc``); left out of the file, read back by
        :meth:`load_sae_lens_extra_state`.
    """

    arch: str = ""
    k_required: bool = False
    sae_lens_architecture: str | None = None
    sae_lens_omit: tuple[str, ...] = ()

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        if cfg.arch != self.arch:
            raise ValueError(
                f"{type(self).__name__} needs cfg.arch={self.arch!r}, got {cfg.arch!r}"
            )
        self.cfg = cfg
        dt = cfg.torch_dtype
        c, d = cfg.d_sae, cfg.d_in
        self.W_enc = nn.Parameter(torch.empty(c, d, dtype=dt))
        self.b_enc = nn.Parameter(torch.zeros(c, dtype=dt))
        self.W_dec = nn.Parameter(torch.empty(c, d, dtype=dt))
        if cfg.use_decoder_bias:
            self.b_dec = nn.Parameter(torch.zeros(d, dtype=dt))
        else:
            self.register_parameter("b_dec", None)
        self.reset_parameters()

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """The modern recipe: random unit-norm dictionary rows, ``W_enc = W_dec`` (encoder =
        decoder^T in the ``x @ W`` convention), zero biases."""
        w = torch.randn(self.W_dec.shape, generator=generator, dtype=torch.float32)
        w = w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)
        self.W_dec.copy_(w)
        self.W_enc.copy_(w)
        self.b_enc.zero_()
        if self.b_dec is not None:
            self.b_dec.zero_()

    @torch.no_grad()
    def init_from_data_(self, x_sample: Tensor, method: str = "geometric_median") -> None:
        """Set ``b_dec`` to the geometric median (or ``"mean"``) of ``x_sample [N, d]``."""
        if self.b_dec is None:
            logger.warning("init_from_data_: this SAE has no decoder bias (use_decoder_bias=False)")
            return
        x = self._flat(x_sample).to(torch.float64)
        if method == "mean":
            center = x.mean(0)
        elif method == "geometric_median":
            center = geometric_median(x)
        else:
            raise ValueError(f"unknown init method {method!r}; use 'geometric_median' or 'mean'")
        self.b_dec.copy_(center.to(self.b_dec.dtype))

    # ------------------------------------------------------------------ helpers
    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    @property
    def dictionary(self) -> Tensor:
        """Decoder directions ``[c, d]`` (the ``W_dec`` parameter)."""
        return self.W_dec

    def _flat(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.cfg.d_in:
            raise ValueError(
                f"SAE expects inputs with d_in={self.cfg.d_in} features, got shape {tuple(x.shape)}: "
                "use an SAE trained on this model and hook point"
            )
        x = x.reshape(-1, self.cfg.d_in)
        if not torch.is_autocast_enabled(x.device.type) or x.dtype not in (
            torch.float16,
            torch.bfloat16,
        ):
            x = x.to(self.W_enc.dtype)
        return x

    def _sae_in(self, x: Tensor) -> Tensor:
        if self.cfg.use_pre_encoder_bias:
            return x - self.b_dec
        return x

    def pre_acts(self, x: Tensor) -> Tensor:
        """Encoder pre-activations ``[N, c]`` of flat inputs ``[N, d]``."""
        return F.linear(self._sae_in(self._flat(x)), self.W_enc, self.b_enc)

    # ------------------------------------------------------------------ public API
    def encode(self, x: Tensor) -> Tensor:
        """Dense codes ``[..., c]``."""
        lead = x.shape[:-1]
        return self._encode_dense(self._flat(x)).reshape(*lead, self.cfg.d_sae)

    def encode_sparse(self, x: Tensor) -> SparseCodes:
        """Sparse codes ``SparseCodes(values [..., k], indices [..., k])``."""
        lead = x.shape[:-1]
        v, i = self._encode_sparse(self._flat(x))
        return SparseCodes(v.reshape(*lead, v.shape[-1]), i.reshape(*lead, i.shape[-1]))

    def decode(self, z: Tensor) -> Tensor:
        """Reconstruction ``[..., d]`` of dense codes ``[..., c]``."""
        out = z.to(self.W_dec.dtype) @ self.W_dec
        return out if self.b_dec is None else out + self.b_dec

    def decode_sparse(self, values: Tensor, indices: Tensor) -> Tensor:
        """Reconstruction ``[..., d]`` of sparse codes ``values/indices [..., k]``."""
        lead = values.shape[:-1]
        k = values.shape[-1]
        out = kernels.sparse_decode(
            values.reshape(-1, k), indices.reshape(-1, k).long(), self.W_dec, self.b_dec
        )
        return out.reshape(*lead, self.cfg.d_in)

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruction ``x_hat [..., d]`` (from the uncapped codes)."""
        return self.decode(self.encode(x))

    # ------------------------------------------------------------------ per-arch hooks
    def _encode_dense(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _encode_sparse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Default: nonzeros of the dense codes padded to the max count in the batch
        (capped at ``cfg.k`` when set, keeping the largest)."""
        z = self._encode_dense(x)
        return sparsify(z, self.cfg.k)

    # ------------------------------------------------------------------ training
    def training_forward(
        self,
        x: Tensor,
        *,
        l1_coeff: float = 0.0,
        auxk_coeff: float = 0.0,
        k_aux: int | None = None,
        dead_mask: Tensor | None = None,
        fast: bool = True,
    ) -> TrainForward:
        """Loss and terms of one training batch ``x [B, d]`` (see :class:`LossSpec` for the
        arguments and each architecture's :meth:`loss` for its loss)."""
        return self.loss(x, LossSpec(l1_coeff, auxk_coeff, k_aux, dead_mask, fast))

    def loss(self, x: Tensor, spec: LossSpec) -> TrainForward:
        """The architecture's training loss of ``x [B, d]``."""
        raise NotImplementedError

    @torch.no_grad()
    def normalize_dictionary_(self) -> None:
        """Rescale every dictionary row to unit L2 norm (call after ``optimizer.step()``)."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def remove_parallel_grads_(self) -> None:
        """Project out of ``W_dec.grad`` the component parallel to each dictionary row
        (call between ``backward()`` and ``optimizer.step()``)."""
        g = self.W_dec.grad
        if g is None:
            return
        w = self.W_dec
        coef = (g * w).sum(1, keepdim=True) / (w * w).sum(1, keepdim=True).clamp_min(1e-12)
        g.sub_(coef * w)

    def save(self, path: str | Path, *, card: bool = True) -> Path:
        """Write ``cfg.json`` + ``sae_weights.safetensors`` (sae-lens layout) and the model card
        ``README.md`` into ``path``."""
        return save_sae(self, path, card=card)

    # sae-lens interchange (architecture-specific parts; see saeprobe.sae.saving / io)
    def sae_lens_extra_state(self) -> dict[str, Tensor]:
        """Tensors besides ``W_enc``, ``W_dec``, ``b_enc``, ``b_dec`` in the sae-lens file."""
        return {}

    def load_sae_lens_extra_state(self, sd: dict[str, Tensor], path: Path) -> None:
        """Read back what :meth:`sae_lens_extra_state` wrote (``path`` for error messages)."""

    def extra_repr(self) -> str:
        return f"arch={self.arch}, d_in={self.cfg.d_in}, d_sae={self.cfg.d_sae}, k={self.cfg.k}"

    # shared loss pieces
    def _terms(
        self, x: Tensor, x_hat: Tensor, l1_sum: Tensor, n_active: Tensor
    ) -> dict[str, Tensor]:
        B = x.shape[0]
        return {
            "mse": F.mse_loss(x_hat, x),
            "l1": l1_sum / (B * self.cfg.d_sae),
            "l0": n_active.detach().to(x_hat.dtype) / B,
        }

    def _add_auxk(
        self,
        loss: Tensor,
        terms: dict[str, Tensor],
        spec: LossSpec,
        x: Tensor,
        x_hat: Tensor,
        sae_in: Tensor,
        fast: bool = False,
        pre: Tensor | None = None,
    ) -> Tensor:
        """``loss + auxk_coeff * AuxK`` when AuxK is on; sets ``terms["auxk"]`` (0 when off)."""
        if spec.auxk_coeff and spec.dead_mask is not None:
            terms["auxk"] = self._auxk(x, x_hat, spec.dead_mask, spec.k_aux, fast, sae_in, pre)
            return loss + spec.auxk_coeff * terms["auxk"]
        terms["auxk"] = x_hat.new_zeros(())
        return loss

    def _auxk(
        self,
        x: Tensor,
        x_hat: Tensor,
        dead_mask: Tensor | None,
        k_aux: int | None,
        fast: bool,
        sae_in: Tensor,
        pre: Tensor | None = None,
    ) -> Tensor:
        """AuxK (Gao et al. 2024): the top ``k_aux`` dead latents reconstruct the residual
        ``e = x - x_hat``; loss ``||e_hat - e||^2 / ||e - mean(e)||^2`` (no decoder bias)."""
        zero = x_hat.new_zeros(())
        if dead_mask is None:
            return zero
        dead_mask = dead_mask.to(device=x.device, dtype=torch.bool)
        n_dead = int(dead_mask.sum())
        if n_dead == 0:
            return zero
        k_aux = min(k_aux if k_aux is not None else self.cfg.d_in // 2, n_dead)
        e = (x - x_hat).detach()
        if fast:
            if pre is None:
                pre = kernels.topk_select(sae_in, self.W_enc, self.b_enc, 1).pre
            with torch.no_grad():
                idx = pre.masked_fill(~dead_mask, float("-inf")).topk(k_aux, 1, sorted=False)[1]
            vals = kernels.gather_pre_acts(sae_in, self.W_enc, self.b_enc, idx, pre).relu()
            e_hat = kernels.sparse_decode(vals, idx, self.W_dec)
        else:
            z, _ = kernels.dense_topk_reference(sae_in, self.W_enc, self.b_enc, k_aux, dead_mask)
            e_hat = z @ self.W_dec
        denom = (e - e.mean(0, keepdim=True)).pow(2).sum().clamp_min(1e-12)
        return (e_hat - e).pow(2).sum() / denom


def sparsify(z: Tensor, k_max: int | None = None) -> tuple[Tensor, Tensor]:
    """Nonzeros of dense codes ``z [N, c]`` as ``(values, indices) [N, m]``.

    ``m`` is the largest number of nonzeros in a row (at least 1), capped at ``k_max``; rows
    with fewer nonzeros are padded with zeros. With the cap, the ``k_max`` largest are kept.
    """
    m = int((z != 0).sum(1).max()) if z.numel() else 0
    m = max(m, 1)
    if k_max is not None:
        m = min(m, int(k_max))
    m = min(m, z.shape[1])
    vals, idx = z.topk(m, dim=1)
    return vals, idx


@torch.no_grad()
def geometric_median(x: Tensor, iters: int = 100, eps: float = 1e-8, tol: float = 1e-7) -> Tensor:
    """Geometric median of the rows of ``x [N, d]`` (Weiszfeld iterations)."""
    y = x.mean(0)
    for _ in range(iters):
        w = 1.0 / (x - y).norm(dim=1).clamp_min(eps)
        y_new = (w[:, None] * x).sum(0) / w.sum()
        if (y_new - y).norm() <= tol * max(1.0, math.sqrt(float(y.pow(2).sum()))):
            return y_new
        y = y_new
    return y


def copy_checked(param: Tensor, value: Tensor, name: str, path: Path) -> None:
    """``param.copy_(value)`` after checking the shape (error names the file and tensor)."""
    if tuple(param.shape) != tuple(value.shape):
        raise ValueError(
            f"{path}: {name} has shape {tuple(value.shape)}, expected {tuple(param.shape)}"
        )
    param.copy_(value.to(param.dtype))
