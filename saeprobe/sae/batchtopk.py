"""BatchTopK SAE (Bussmann et al. 2024): top ``k * B`` activations over the whole batch."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from .base import SAE, LossSpec, TrainForward, sparsify
from .config import SAEConfig
from .registry import register_sae


@register_sae("batchtopk")
class BatchTopKSAE(SAE):
    """BatchTopK: training keeps the ``k * B`` largest ReLU'd pre-activations of the batch and
    tracks a global threshold (EMA of the smallest kept value, rate
    ``cfg.batchtopk_threshold_lr``). Inference is a JumpReLU with that scalar threshold
    (``relu(pre) * [pre > threshold]``; batch top-k while the threshold is still 0), which is
    how it is exported to sae-lens (``jumprelu``). ``encode_sparse`` pads each row's nonzeros to
    the batch maximum. Training runs the dense path (``fast`` is accepted and ignored).
    """

    arch = "batchtopk"
    k_required = True
    sae_lens_architecture = "jumprelu"  # inference is a JumpReLU with a scalar threshold

    def sae_lens_extra_state(self) -> dict[str, Tensor]:
        return {"threshold": torch.full_like(self.b_enc.detach(), float(self.threshold))}

    @torch.no_grad()
    def load_sae_lens_extra_state(self, sd: dict[str, Tensor], path: Path) -> None:
        self.threshold.fill_(float(sd["threshold"].reshape(-1)[0]) if "threshold" in sd else 0.0)

    def __init__(self, cfg: SAEConfig):
        super().__init__(cfg)
        self.register_buffer("threshold", torch.zeros((), dtype=torch.float64))

    def _batch_topk(self, pre: Tensor) -> Tensor:
        acts = pre.relu()
        n = min(int(self.cfg.k * acts.shape[0]), acts.numel())
        flat = acts.flatten()
        top = flat.topk(n, sorted=False)
        return torch.zeros_like(flat).scatter(0, top.indices, top.values).reshape(acts.shape)

    def _encode_dense(self, x: Tensor) -> Tensor:
        pre = self.pre_acts(x).to(self.W_enc.dtype)
        if float(self.threshold) <= 0:
            return self._batch_topk(pre)
        return pre.relu() * (pre > self.threshold.to(pre.dtype)).to(pre.dtype)

    def _encode_sparse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return sparsify(self._encode_dense(x), None)

    def loss(self, x: Tensor, spec: LossSpec) -> TrainForward:
        """``mse + l1_coeff * l1 + auxk_coeff * auxk`` with batch top-k codes; updates the
        inference threshold."""
        l1_coeff = spec.l1_coeff
        x = self._flat(x).to(self.W_enc.dtype)
        sae_in = self._sae_in(x)
        pre = self.pre_acts(x).to(self.W_enc.dtype)
        z = self._batch_topk(pre)
        with torch.no_grad():
            pos = z[z > 0]
            if pos.numel():
                lr = self.cfg.batchtopk_threshold_lr
                self.threshold.mul_(1 - lr).add_(lr * pos.min().double())
        x_hat = self.decode(z)
        terms = self._terms(x, x_hat, z.sum(), (z > 0).sum())
        loss = terms["mse"] + l1_coeff * terms["l1"] if l1_coeff else terms["mse"]
        loss = self._add_auxk(loss, terms, spec, x, x_hat, sae_in)
        v, i = sparsify(z, None)
        return TrainForward(loss, x_hat, v, i, terms)
