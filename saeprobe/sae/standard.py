"""Standard SAE: ``z = ReLU(W_enc x + b_enc)`` trained with an L1 penalty."""

from __future__ import annotations

from torch import Tensor

from .base import SAE, LossSpec, TrainForward, sparsify
from .registry import register_sae


@register_sae("standard")
class StandardSAE(SAE):
    """ReLU SAE with an L1 sparsity penalty (sae-lens ``standard``).

    ``encode_sparse`` returns the nonzeros of each row padded with zeros to the largest count
    in the batch (capped at ``cfg.k`` when set, keeping the largest values).
    Training runs the dense path (``fast`` is accepted and ignored).
    """

    arch = "standard"

    def _encode_dense(self, x: Tensor) -> Tensor:
        return self.pre_acts(x).to(self.W_enc.dtype).relu()

    def loss(self, x: Tensor, spec: LossSpec) -> TrainForward:
        """``mse + l1_coeff * l1`` with ``l1 = sum |z| / (B c)`` (times ``||W_dec[i]||`` when
        ``cfg.l1_scale_by_decoder_norm``); ``auxk`` as in Top-K when requested."""
        l1_coeff = spec.l1_coeff
        x = self._flat(x).to(self.W_enc.dtype)
        sae_in = self._sae_in(x)
        z = self._encode_dense(x)
        x_hat = self.decode(z)
        if self.cfg.l1_scale_by_decoder_norm:
            l1_sum = (z * self.W_dec.norm(dim=1)).sum()
        else:
            l1_sum = z.sum()
        terms = self._terms(x, x_hat, l1_sum, (z > 0).sum())
        loss = terms["mse"] + l1_coeff * terms["l1"] if l1_coeff else terms["mse"]
        loss = self._add_auxk(loss, terms, spec, x, x_hat, sae_in)
        v, i = sparsify(z, self.cfg.k)
        return TrainForward(loss, x_hat, v, i, terms)
