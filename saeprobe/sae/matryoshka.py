"""Matryoshka BatchTopK SAE (Bussmann, Nabeshima, Karvonen & Nanda 2025): nested prefixes of
the dictionary trained jointly, so the first latents learn the general concepts on their own."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor

from . import kernels
from .base import LossSpec, TrainForward
from .batchtopk import BatchTopKSAE
from .config import SAEConfig
from .registry import register_sae

logger = logging.getLogger(__name__)

__all__ = ["MatryoshkaBatchTopKSAE", "batch_topk_rows", "resolve_widths"]


def resolve_widths(widths: list[int] | tuple[int, ...] | None, d_sae: int) -> list[int]:
    """The nested prefix widths: strictly increasing, positive, ending at ``d_sae``.

    ``None`` gives ``d_sae / 16, / 8, / 4, / 2, d_sae`` (without repeats); a list whose last
    width is below ``d_sae`` gets ``d_sae`` appended.
    """
    if widths is None:
        ws = sorted({max(1, d_sae // f) for f in (16, 8, 4, 2)} | {d_sae})
    else:
        ws = [int(w) for w in widths]
    if ws and ws[-1] < d_sae:
        ws.append(d_sae)
    bad = (
        not ws
        or ws[0] <= 0
        or ws[-1] != d_sae
        or any(b <= a for a, b in zip(ws, ws[1:], strict=False))
    )
    if bad:
        raise ValueError(
            f"matryoshka_widths={widths} must be strictly increasing positive widths ending at "
            f"d_sae={d_sae}, e.g. [{max(1, d_sae // 4)}, {max(1, d_sae // 2)}, {d_sae}]"
        )
    return ws


def batch_topk_rows(acts: Tensor, k_total: int) -> tuple[Tensor, Tensor, Tensor]:
    """The ``k_total`` largest positive entries of ``acts [B, c]``, row by row.

    Returns
    -------
    indices : LongTensor [B, m]
        Latents kept in each row, padded with 0 (``m`` = the largest count of a row, >= 1).
    valid : BoolTensor [B, m]
        Which entries are real (False: padding).
    kept : Tensor [n]
        The kept values (for the threshold update).
    """
    B, c = acts.shape
    n = min(int(k_total), acts.numel())
    top = acts.detach().flatten().topk(n, sorted=False)
    keep = top.values > 0
    flat, kept = top.indices[keep], top.values[keep]
    if flat.numel() == 0:
        zeros = torch.zeros(B, 1, dtype=torch.long, device=acts.device)
        return zeros, zeros.bool(), kept
    rows, order = torch.div(flat, c, rounding_mode="floor").sort(stable=True)
    cols = (flat % c)[order]
    counts = torch.bincount(rows, minlength=B)
    m = int(counts.max())
    pos = torch.arange(rows.numel(), device=acts.device) - (counts.cumsum(0) - counts)[rows]
    indices = torch.zeros(B, m, dtype=torch.long, device=acts.device)
    valid = torch.zeros(B, m, dtype=torch.bool, device=acts.device)
    indices[rows, pos] = cols
    valid[rows, pos] = True
    return indices, valid, kept


@register_sae("matryoshka_batchtopk")
class MatryoshkaBatchTopKSAE(BatchTopKSAE):
    """Matryoshka BatchTopK: one BatchTopK dictionary whose prefixes ``W_dec[:m]`` for every
    ``m`` in ``cfg.matryoshka_widths`` must each reconstruct the input on their own.

    Training keeps the ``k * B`` largest ReLU'd pre-activations of the batch (as BatchTopK) and
    minimises the mean over levels of ``mse(x, codes[:, :m] @ W_dec[:m] + b_dec)``; ``terms``
    reports ``mse`` (the full width) and ``mse_<m>`` per level. ``fast=True`` never builds a
    dense ``[B, c]`` code matrix: the selected codes are padded per row, decoded with the sparse
    kernels (each level masks the latents ``>= m``) and the encoder backward touches only the
    selected rows; ``fast=False`` is the dense reference (same loss and gradients).

    Inference is the BatchTopK one, a JumpReLU with the learned scalar threshold; it is saved
    as sae-lens ``jumprelu``, as sae-lens saves its own Matryoshka BatchTopK SAEs.
    """

    arch = "matryoshka_batchtopk"

    def __init__(self, cfg: SAEConfig):
        cfg.matryoshka_widths = resolve_widths(cfg.matryoshka_widths, cfg.d_sae)
        super().__init__(cfg)

    @property
    def widths(self) -> list[int]:
        return list(self.cfg.matryoshka_widths or [self.cfg.d_sae])

    @torch.no_grad()
    def _update_threshold(self, kept: Tensor) -> None:
        if kept.numel():
            lr = self.cfg.batchtopk_threshold_lr
            self.threshold.mul_(1 - lr).add_(lr * kept.min().double())

    def _levels_sparse(self, values: Tensor, indices: Tensor) -> tuple[list[Tensor], Tensor]:
        outs = []
        for m in self.widths[:-1]:
            masked = values * (indices < m).to(values.dtype)
            outs.append(kernels.sparse_decode(masked, indices, self.W_dec, self.b_dec))
        full = kernels.sparse_decode(values, indices, self.W_dec, self.b_dec)
        return outs + [full], full

    def _levels_dense(self, z: Tensor) -> tuple[list[Tensor], Tensor]:
        outs = []
        for m in self.widths:
            out = z[:, :m] @ self.W_dec[:m]
            outs.append(out if self.b_dec is None else out + self.b_dec)
        return outs, outs[-1]

    def loss(self, x: Tensor, spec: LossSpec) -> TrainForward:
        """Loss of a batch ``x [B, d]``: mean level MSE ``+ l1_coeff * l1 + auxk_coeff * auxk``;
        updates the inference threshold."""
        l1_coeff, fast = spec.l1_coeff, spec.fast
        x = self._flat(x).to(self.W_enc.dtype)
        sae_in = self._sae_in(x)
        k_total = self.cfg.k * x.shape[0]
        if fast:
            with torch.no_grad():
                pre = F.linear(sae_in, self.W_enc, self.b_enc)
            idx, valid, kept = batch_topk_rows(pre.relu(), k_total)
            vals = kernels.gather_pre_acts(sae_in, self.W_enc, self.b_enc, idx, pre).relu()
            vals = vals * valid.to(vals.dtype)
            levels, x_hat = self._levels_sparse(vals, idx)
        else:
            pre = self.pre_acts(x).to(self.W_enc.dtype)
            z = self._batch_topk(pre)
            kept = z[z > 0].detach()
            levels, x_hat = self._levels_dense(z)
            idx, valid, _ = batch_topk_rows(z, k_total)
            vals = z.gather(1, idx) * valid.to(z.dtype)
        self._update_threshold(kept)
        terms = self._terms(x, x_hat, vals.sum(), (vals > 0).sum())
        per_level = [F.mse_loss(out, x) for out in levels]
        for m, value in zip(self.widths, per_level, strict=True):
            terms[f"mse_{m}"] = value
        loss = torch.stack(per_level).mean()
        if l1_coeff:
            loss = loss + l1_coeff * terms["l1"]
        loss = self._add_auxk(loss, terms, spec, x, x_hat, sae_in, fast, pre.detach())
        return TrainForward(loss, x_hat, vals, idx, terms)
