"""Sparse SAE codes as (values, indices) pairs: validation, decode, densify, encode in chunks,
and the sparse kernels of the analysis (``Z^T X`` as a CSR matmul)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)


class Codes(NamedTuple):
    """Top-k sparse codes.

    Attributes
    ----------
    values : Tensor [N, k]
        Activations (0 for unused slots).
    indices : Tensor [N, k]
        Concept ids in ``[0, c)``.
    """

    values: torch.Tensor
    indices: torch.Tensor


def check_codes(values: torch.Tensor, indices: torch.Tensor, c: int | None = None) -> Codes:
    """Validate shapes and index range; return ``Codes(values, indices.long())``.

    Padding entries (value 0) with an out-of-range index are pointed at concept 0.
    """
    if values.ndim != 2 or indices.shape != values.shape:
        raise ValueError(
            f"sparse codes must be values [N, k] and indices [N, k] of the same shape, got "
            f"{tuple(values.shape)} and {tuple(indices.shape)}; pass SparseCodes from sae.encode_sparse"
        )
    indices = indices.long()
    if c is None or indices.numel() == 0:
        return Codes(values, indices)
    lo, hi = (int(t) for t in torch.aminmax(indices))
    if lo < 0 or hi >= c:
        pad = (values == 0) & ((indices < 0) | (indices >= c))
        indices = torch.where(pad, torch.zeros_like(indices), indices)
        lo, hi = (int(t) for t in torch.aminmax(indices))
        if lo < 0 or hi >= c:
            raise ValueError(
                f"code indices must lie in [0, {c}) (the dictionary size), got range "
                f"[{lo}, {hi}]; use the SAE that produced the codes"
            )
    return Codes(values, indices)


def to_dense(values: torch.Tensor, indices: torch.Tensor, c: int) -> torch.Tensor:
    """Scatter sparse codes into a dense ``[N, c]`` matrix (duplicates are summed)."""
    out = torch.zeros(values.shape[0], c, dtype=values.dtype, device=values.device)
    return out.scatter_add_(1, indices.long(), values)


def decode(
    values: torch.Tensor,
    indices: torch.Tensor,
    dictionary: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sparse decode ``sum_j values[n, j] * dictionary[indices[n, j]] (+ bias)`` -> ``[N, d]``.

    Uses ``embedding_bag`` so no dense ``[N, c]`` matrix is formed.
    """
    values = values.to(dictionary.dtype)
    if values.shape[1]:
        out = F.embedding_bag(indices.long(), dictionary, per_sample_weights=values, mode="sum")
    else:
        out = torch.zeros(values.shape[0], dictionary.shape[1], dtype=dictionary.dtype)
    if bias is not None:
        out = out + bias.to(out.dtype)
    return out


def concept_dots(
    indices: torch.Tensor, dictionary: torch.Tensor, vectors: torch.Tensor
) -> torch.Tensor:
    """``<dictionary[indices[n, j]], vectors[n]>`` -> ``[N, k]`` by gathering rows (no ``D D^T``)."""
    rows = dictionary[indices.long()]  # [N, k, d]
    return torch.einsum("nkd,nd->nk", rows, vectors.to(dictionary.dtype))


def transposed_csr(values: torch.Tensor, indices: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Sparse CSR ``[n_rows, N]`` holding ``values[p, j]`` at ``(indices[p, j], p)`` (Z^T)."""
    N, k = values.shape
    flat = indices.reshape(-1)
    # numpy's sort: torch's parallel CPU sort is slow on busy machines
    order = torch.from_numpy(np.argsort(flat.numpy(), kind="stable"))
    crow = torch.zeros(n_rows + 1, dtype=torch.long)
    crow[1:] = torch.cumsum(torch.bincount(flat, minlength=n_rows), 0)
    col = order // max(k, 1)
    val = values.reshape(-1)[order]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, val, (n_rows, N))


def concept_dot_sums(
    values: torch.Tensor,
    indices: torch.Tensor,
    vectors: torch.Tensor,
    dictionary: torch.Tensor,
    out: torch.Tensor,
) -> torch.Tensor:
    """``out[i] += sum_{p, j: indices[p, j] = i} values[p, j] <d_i, vectors[p]>`` in place.

    Computed as ``Y = Z^T vectors`` (sparse CSR matmul over the touched concepts only) and
    ``<d_i, Y_i>``: no gathered ``[N, k, d]`` tensor, no ``D D^T``; memory
    ``O(touched concepts x d)``.
    """
    if values.numel() == 0:
        return out
    D = dictionary
    c = D.shape[0]
    touched = torch.zeros(c, dtype=torch.bool)
    touched[indices.reshape(-1)] = True
    u = torch.nonzero(touched).reshape(-1)
    if 2 * u.shape[0] > c:  # most concepts touched: skip the compaction (no D[u] copy)
        inv, Du = indices.long(), D
    else:
        lut = torch.empty(c, dtype=torch.long)
        lut[u] = torch.arange(u.shape[0])
        inv, Du = lut[indices], D[u]
    Zt = transposed_csr(values.to(D.dtype), inv, Du.shape[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        Y = Zt @ vectors.to(D.dtype).contiguous()
    dots = torch.bmm(Y.unsqueeze(1), Du.unsqueeze(2)).reshape(-1).to(out.dtype)
    if Du is D:
        out += dots
    else:
        out.index_add_(0, u, dots)
    return out


def sae_dictionary(sae: Any) -> torch.Tensor:
    """The ``[c, d]`` dictionary of an SAE object (``sae.dictionary``), detached."""
    d = getattr(sae, "dictionary", None)
    if d is None:
        raise ValueError(
            "the SAE has no `dictionary` attribute [c, d]; load it with saeprobe.load_sae"
        )
    return d.detach() if isinstance(d, torch.Tensor) else torch.as_tensor(d)


def sae_decoder_bias(sae: Any) -> torch.Tensor | None:
    """The SAE's decoder bias if it has one (``b_dec``), else ``None``."""
    for name in ("b_dec", "decoder_bias"):
        b = getattr(sae, name, None)
        if isinstance(b, torch.Tensor):
            return b.detach()
    return None


def sae_d_in(sae: Any) -> int:
    cfg = getattr(sae, "cfg", None)
    if cfg is not None and getattr(cfg, "d_in", None) is not None:
        return int(cfg.d_in)
    return int(sae_dictionary(sae).shape[1])


def check_dim(sae: Any, d: int, what: str) -> None:
    """Raise a clear error when ``what`` has width ``d`` but the SAE expects another."""
    d_in = sae_d_in(sae)
    if d != d_in:
        raise ValueError(
            f"{what} have d={d} but the SAE expects d_in={d_in}; use the SAE trained on this "
            "model/hook point"
        )


def encode_chunks(sae: Any, x: torch.Tensor, chunk_size: int = 4096) -> Iterator[Codes]:
    """Encode ``x [N, d]`` with ``sae.encode_sparse`` in chunks (no grad)."""
    check_dim(sae, x.shape[1], "embeddings")
    params = list(sae.parameters()) if hasattr(sae, "parameters") else []
    dev = params[0].device if params else x.device
    dt = params[0].dtype if params else x.dtype
    with torch.no_grad():
        for s in range(0, x.shape[0], chunk_size):
            sc = sae.encode_sparse(x[s : s + chunk_size].to(dev, dt))
            yield Codes(sc.values.detach().float().cpu(), sc.indices.detach().long().cpu())


def encode_all(sae: Any, x: torch.Tensor, chunk_size: int = 4096) -> Codes:
    """Encode ``x [N, d]`` into one ``Codes`` (values float32, indices int64, on CPU)."""
    parts = list(encode_chunks(sae, x, chunk_size))
    if not parts:
        return Codes(torch.zeros(0, 0), torch.zeros(0, 0, dtype=torch.long))
    return Codes(torch.cat([p.values for p in parts]), torch.cat([p.indices for p in parts]))
