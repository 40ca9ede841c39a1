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


def paired_decode_dots(
    values_a: torch.Tensor,
    indices_a: torch.Tensor,
    values_b: torch.Tensor,
    indices_b: torch.Tensor,
    dictionary: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decode two aligned code sets and the cross dots of each entry with the other side.

    Returns ``(h_a [N, d], h_b [N, d], dots_a [N, k_a], dots_b [N, k_b])`` with
    ``dots_a[p, j] = <D[indices_a[p, j]], h_b[p]>`` (and symmetrically). The dots are the
    gradient of ``embedding_bag`` with respect to its per-sample weights, so no gathered
    ``[N, k, d]`` tensor and no ``D D^T`` is formed; :func:`concept_dots` is the plain version.
    """
    D = dictionary.detach()
    if indices_a.shape[1] == 0 or indices_b.shape[1] == 0:  # an empty side: no entries to dot
        h_a, h_b = decode(values_a, indices_a, D), decode(values_b, indices_b, D)
        return (
            h_a,
            h_b,
            torch.zeros_like(values_a, dtype=D.dtype),
            torch.zeros_like(values_b, dtype=D.dtype),
        )
    a = values_a.detach().to(D.dtype).requires_grad_(True)
    b = values_b.detach().to(D.dtype).requires_grad_(True)
    with torch.enable_grad():
        h_a = F.embedding_bag(indices_a.long(), D, per_sample_weights=a, mode="sum")
        h_b = F.embedding_bag(indices_b.long(), D, per_sample_weights=b, mode="sum")
        dots_a, dots_b = torch.autograd.grad(
            (h_a, h_b), (a, b), grad_outputs=(h_b.detach(), h_a.detach())
        )
    return h_a.detach(), h_b.detach(), dots_a, dots_b


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
