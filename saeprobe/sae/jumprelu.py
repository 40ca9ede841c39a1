"""JumpReLU SAE (Rajamanoharan et al. 2024): ``z = ReLU(pre) * [pre > theta]``."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from .base import SAE, LossSpec, TrainForward, copy_checked, sparsify
from .config import SAEConfig
from .registry import register_sae


def _rect(u: Tensor) -> Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    """``pre * H(pre - theta)``; d/dpre = H, d/dtheta = -(theta / eps) K((pre - theta) / eps)."""

    @staticmethod
    def forward(ctx, pre, theta, eps):
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return pre * (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, g):
        pre, theta = ctx.saved_tensors
        eps = ctx.eps
        gpre = g * (pre > theta).to(g.dtype)
        gtheta = (-(theta / eps) * _rect((pre - theta) / eps) * g).sum(0)
        return gpre, gtheta, None


class _Step(torch.autograd.Function):
    """``H(pre - theta)``; d/dtheta = -(1 / eps) K((pre - theta) / eps), no gradient to pre."""

    @staticmethod
    def forward(ctx, pre, theta, eps):
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, g):
        pre, theta = ctx.saved_tensors
        eps = ctx.eps
        gtheta = (-(1.0 / eps) * _rect((pre - theta) / eps) * g).sum(0)
        return None, gtheta, None


@register_sae("jumprelu")
class JumpReLUSAE(SAE):
    """JumpReLU SAE with a learned per-latent ``threshold [c]`` (sae-lens ``jumprelu``).

    Training uses straight-through estimators with a rectangle kernel of width
    ``cfg.jumprelu_bandwidth``; the sparsity term is the L0 (``l1_coeff`` weights it).
    ``encode_sparse`` pads each row's nonzeros to the batch maximum (capped at ``cfg.k``).
    Training runs the dense path (``fast`` is accepted and ignored).
    """

    arch = "jumprelu"

    def sae_lens_extra_state(self) -> dict[str, Tensor]:
        return {"threshold": self.threshold.detach().contiguous()}

    @torch.no_grad()
    def load_sae_lens_extra_state(self, sd: dict[str, Tensor], path: Path) -> None:
        if "threshold" not in sd:
            raise ValueError(f"{path}: jumprelu checkpoint without 'threshold'")
        copy_checked(self.threshold, sd["threshold"], "threshold", path)

    def __init__(self, cfg: SAEConfig):
        super().__init__(cfg)
        self.threshold = nn.Parameter(
            torch.full((cfg.d_sae,), cfg.jumprelu_threshold_init, dtype=cfg.torch_dtype)
        )

    def _encode_dense(self, x: Tensor) -> Tensor:
        pre = self.pre_acts(x).to(self.W_enc.dtype)
        return pre.relu() * (pre > self.threshold).to(pre.dtype)

    def loss(self, x: Tensor, spec: LossSpec) -> TrainForward:
        """``mse + l1_coeff * l0`` (STE L0 per row); ``l1`` is reported, ``auxk`` optional."""
        l1_coeff = spec.l1_coeff
        x = self._flat(x).to(self.W_enc.dtype)
        sae_in = self._sae_in(x)
        pre = self.pre_acts(x).to(self.W_enc.dtype)
        eps = self.cfg.jumprelu_bandwidth
        z = _JumpReLU.apply(pre, self.threshold, eps).relu()
        x_hat = self.decode(z)
        l0 = _Step.apply(pre, self.threshold, eps).sum(1).mean()
        terms = self._terms(x, x_hat, z.sum(), (z > 0).sum())
        terms["l0"] = l0
        loss = terms["mse"] + l1_coeff * l0 if l1_coeff else terms["mse"]
        loss = self._add_auxk(loss, terms, spec, x, x_hat, sae_in)
        v, i = sparsify(z, self.cfg.k)
        return TrainForward(loss, x_hat, v, i, terms)
