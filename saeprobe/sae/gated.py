"""Gated SAE (Rajamanoharan et al. 2024): a gate decides which latents fire, a tied magnitude
path how strongly.

``pi_gate = W_enc x' + b_enc``, ``pi_mag = exp(r_mag) * (W_enc x') + b_mag`` (``x' = x - b_dec``
with a pre-encoder bias), ``z = [pi_gate > 0] * ReLU(pi_mag)``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import SAE, LossSpec, TrainForward, copy_checked, sparsify
from .config import SAEConfig
from .registry import register_sae


@register_sae("gated")
class GatedSAE(SAE):
    """Gated SAE with weight sharing between the gate and the magnitude path (sae-lens ``gated``).

    Parameters besides the base ones: ``r_mag [c]`` (log scale of the magnitude path) and
    ``b_mag [c]``; ``b_enc`` is the gate bias (sae-lens ``b_gate``).

    Training (``training_forward``) minimises ``mse + l1_coeff * l1 + aux`` where
    ``l1 = sum ReLU(pi_gate) ||W_dec[i]|| / (B c)`` (the gate's sparsity penalty) and ``aux`` is
    the MSE of ``ReLU(pi_gate) @ W_dec + b_dec`` with the decoder frozen (it trains the gate,
    which the Heaviside step does not). Codes are not top-k, so training runs the dense path
    (``fast`` is accepted and ignored); ``encode_sparse`` pads each row's nonzeros to the batch
    maximum (capped at ``cfg.k`` when set).
    """

    arch = "gated"
    sae_lens_omit = ("b_enc",)

    def __init__(self, cfg: SAEConfig):
        super().__init__(cfg)
        self.r_mag = nn.Parameter(torch.zeros(cfg.d_sae, dtype=cfg.torch_dtype))
        self.b_mag = nn.Parameter(torch.zeros(cfg.d_sae, dtype=cfg.torch_dtype))

    # sae-lens interchange: b_enc is the gate bias b_gate
    def sae_lens_extra_state(self) -> dict[str, Tensor]:
        return {
            "b_gate": self.b_enc.detach().contiguous(),
            "b_mag": self.b_mag.detach().contiguous(),
            "r_mag": self.r_mag.detach().contiguous(),
        }

    @torch.no_grad()
    def load_sae_lens_extra_state(self, sd: dict[str, Tensor], path: Path) -> None:
        missing = [n for n in ("b_gate", "b_mag", "r_mag") if n not in sd]
        if missing:
            raise ValueError(f"{path}: gated checkpoint without {', '.join(missing)}")
        copy_checked(self.b_enc, sd["b_gate"], "b_gate", path)
        copy_checked(self.b_mag, sd["b_mag"], "b_mag", path)
        copy_checked(self.r_mag, sd["r_mag"], "r_mag", path)

    def _paths(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Gate and magnitude pre-activations ``[N, c]`` of flat inputs ``x [N, d]``."""
        lin = F.linear(self._sae_in(self._flat(x)), self.W_enc).to(self.W_enc.dtype)
        return lin + self.b_enc, lin * self.r_mag.exp() + self.b_mag

    def _encode_dense(self, x: Tensor) -> Tensor:
        pi_gate, pi_mag = self._paths(x)
        return (pi_gate > 0).to(pi_mag.dtype) * pi_mag.relu()

    def loss(self, x: Tensor, spec: LossSpec) -> TrainForward:
        """Loss of a batch ``x [B, d]``: ``mse + l1_coeff * l1 + aux (+ auxk_coeff * auxk)``.

        ``terms`` adds ``aux`` (the frozen-decoder reconstruction MSE of the gate).
        """
        l1_coeff = spec.l1_coeff
        x = self._flat(x).to(self.W_enc.dtype)
        pi_gate, pi_mag = self._paths(x)
        z = (pi_gate > 0).to(pi_mag.dtype) * pi_mag.relu()
        x_hat = self.decode(z)
        gate = pi_gate.relu()
        l1_sum = (gate * self.W_dec.norm(dim=1)).sum()
        frozen = gate @ self.W_dec.detach()
        if self.b_dec is not None:
            frozen = frozen + self.b_dec.detach()
        terms = self._terms(x, x_hat, l1_sum, (z > 0).sum())
        terms["aux"] = F.mse_loss(frozen, x)
        loss = terms["mse"] + terms["aux"]
        if l1_coeff:
            loss = loss + l1_coeff * terms["l1"]
        loss = self._add_auxk(loss, terms, spec, x, x_hat, self._sae_in(x))
        v, i = sparsify(z, self.cfg.k)
        return TrainForward(loss, x_hat, v, i, terms)
