"""Top-K SAE (the paper's): ``z = TopK(ReLU(W_enc x + b_enc))``, ``x_hat = z W_dec (+ b_dec)``."""

from __future__ import annotations

from torch import Tensor

from . import kernels
from .base import SAE, LossSpec, TrainForward
from .registry import register_sae


@register_sae("topk")
class TopKSAE(SAE):
    """Top-K sparse autoencoder (Gao et al. 2024; the paper's, with ``k = 50``).

    ``encode_sparse`` returns exactly ``k`` entries per row (values >= 0; a row with fewer
    than ``k`` positive pre-activations carries zero-valued entries). The codes equal
    overcomplete's ``TopKSAE`` and sae-lens' ``TopKSAE`` on the same weights.
    """

    arch = "topk"
    k_required = True

    def _select(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        sae_in = self._sae_in(x)
        pre, idx = kernels.topk_select(sae_in, self.W_enc, self.b_enc, self.cfg.k)
        return sae_in, pre, idx

    def _encode_sparse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        sae_in, pre, idx = self._select(x)
        vals = kernels.gather_pre_acts(sae_in, self.W_enc, self.b_enc, idx, pre).relu()
        return vals, idx

    def _encode_dense(self, x: Tensor) -> Tensor:
        v, i = self._encode_sparse(x)
        return kernels.dense_codes(v, i, self.cfg.d_sae)

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruction ``x_hat [..., d]`` through the sparse decode."""
        v, i = self.encode_sparse(x)
        return self.decode_sparse(v, i)

    def loss(self, x: Tensor, spec: LossSpec) -> TrainForward:
        """Loss of a batch ``x [B, d]``: ``mse + l1_coeff * l1 + auxk_coeff * auxk``.

        ``fast=True`` never builds a dense ``[B, c]`` code matrix (sparse decode, encoder
        backward on the selected rows only); ``fast=False`` is the dense eager reference.
        Both give the same loss and gradients up to float rounding. AuxK is computed only when
        ``auxk_coeff > 0`` and ``dead_mask`` (BoolTensor [c]) marks dead latents; ``k_aux``
        defaults to ``d_in // 2`` (capped at the number of dead latents).
        """
        l1_coeff, fast = spec.l1_coeff, spec.fast
        x = self._flat(x).to(self.W_enc.dtype)
        sae_in = self._sae_in(x)
        k = self.cfg.k
        if fast:
            pre, idx = kernels.topk_select(sae_in, self.W_enc, self.b_enc, k)
            vals = kernels.gather_pre_acts(sae_in, self.W_enc, self.b_enc, idx, pre).relu()
            x_hat = kernels.sparse_decode(vals, idx, self.W_dec, self.b_dec)
            l1_sum = vals.sum()  # values are ReLU'd: |v| = v
        else:
            pre = None
            z, idx = kernels.dense_topk_reference(sae_in, self.W_enc, self.b_enc, k)
            vals = z.gather(1, idx)
            x_hat = z @ self.W_dec
            if self.b_dec is not None:
                x_hat = x_hat + self.b_dec
            l1_sum = z.abs().sum() if l1_coeff else vals.abs().sum()
        terms = self._terms(x, x_hat, l1_sum, (vals > 0).sum())
        loss = terms["mse"]
        if l1_coeff:
            loss = loss + l1_coeff * terms["l1"]
        loss = self._add_auxk(loss, terms, spec, x, x_hat, sae_in, fast, pre)
        return TrainForward(loss, x_hat, vals, idx, terms)
