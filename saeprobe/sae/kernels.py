"""Sparse Top-K kernels: training without a dense ``[B, c]`` code matrix.

Only the encoder matmul ``x W_enc^T`` (and the top-k over its output) is dense. Everything
after the selection works on the ``k`` selected latents per row:

* :func:`sparse_decode` -- ``x_hat[b] = sum_j v[b, j] W_dec[i[b, j]]`` (``embedding_bag``);
  backward: ``dv = W_dec[i] . g`` and ``dW_dec[i[b, j]] += v[b, j] g[b]`` (row scatter).
* :func:`gather_pre_acts` -- the selected pre-activations ``x[b] . W_enc[i[b, j]] + b_enc[i[b, j]]``
  as an autograd function whose backward touches only the selected rows of ``W_enc``:
  ``dW_enc[i[b, j]] += g[b, j] x[b]``, ``db_enc[i] += g`` and ``dx[b] = sum_j g[b, j] W_enc[i[b, j]]``.
* :func:`topk_select` -- dense pre-activations (no autograd graph) and the top-k indices.

The row scatter is a sort of the ``B k`` selected indices plus an ``embedding_bag`` segment sum;
the row dot reuses the per-sample-weight gradient of ``embedding_bag``. Each costs about ``B k d``
flops instead of the ``B c d`` of a dense code matrix.

Dtypes: parameters are fp32 (or fp64) master weights; under ``torch.autocast`` the encoder matmul
runs in the autocast dtype, the selected values are cast back to the parameter dtype and all
sparse work and gradients run in the parameter dtype. :func:`dense_topk_reference` is the eager
reference (dense codes, dense decode) used for equivalence tests and ``fast=False``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "TopKSelection",
    "topk_select",
    "gather_pre_acts",
    "sparse_decode",
    "scatter_rows",
    "rows_dot",
    "gather_sum",
    "dense_codes",
    "dense_topk_reference",
]


class TopKSelection(NamedTuple):
    """Result of :func:`topk_select`: ``pre [N, c]`` (detached) and ``indices [N, k]``."""

    pre: Tensor
    indices: Tensor


def _no_autocast(device: torch.device):
    return torch.autocast(device_type=device.type, enabled=False)


def gather_sum(weight: Tensor, indices: Tensor, weights: Tensor) -> Tensor:
    """``out[n] = sum_j weights[n, j] * weight[indices[n, j]]``.

    Parameters
    ----------
    weight : Tensor [c, d]
    indices : LongTensor [N, k]
    weights : Tensor [N, k]

    Returns
    -------
    Tensor [N, d]
    """
    with _no_autocast(weight.device):
        return F.embedding_bag(
            indices, weight, per_sample_weights=weights.to(weight.dtype), mode="sum"
        )


def scatter_rows(indices: Tensor, weights: Tensor, rows: Tensor, num_rows: int) -> Tensor:
    """``out[indices[n, j]] += weights[n, j] * rows[n]``, a dense ``[num_rows, d]`` result.

    The transpose of :func:`gather_sum` (the weight gradient of ``embedding_bag``), computed as
    a sort of the ``N k`` entries by latent plus an ``embedding_bag`` segment sum.

    Parameters
    ----------
    indices : LongTensor [N, k]
    weights : Tensor [N, k]
    rows : Tensor [N, d]
    num_rows : int

    Returns
    -------
    Tensor [num_rows, d] in ``rows.dtype``
    """
    return _scatter_rows_sorted(indices, weights, rows, num_rows)


_CSR_CACHE: list = []


def _csr_structure(indices: Tensor, num_rows: int) -> tuple[Tensor, Tensor, Tensor]:
    """Row pointers, sort order and source rows of ``indices`` (cached for the last tensor seen: the encoder
    and decoder backward of one step share their indices)."""
    if _CSR_CACHE:
        ref, version, rows, crow, order, src = _CSR_CACHE[0]
        if ref is indices and version == indices._version and rows == num_rows:
            return crow, order, src
    flat = indices.reshape(-1)
    if flat.device.type == "cpu":
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the parallel CPU sort is pathologically slow on busy machines
        try:
            sorted_idx, order = flat.sort(stable=True)
        finally:
            torch.set_num_threads(threads)
    else:
        sorted_idx, order = flat.sort(stable=True)
    crow = torch.zeros(num_rows + 1, dtype=torch.int64, device=flat.device)
    crow[1:] = torch.bincount(sorted_idx, minlength=num_rows).cumsum(0)
    src = torch.div(order, indices.shape[1], rounding_mode="floor")
    _CSR_CACHE[:] = [(indices, indices._version, num_rows, crow, order, src)]
    return crow, order, src


def _scatter_rows_sorted(indices: Tensor, weights: Tensor, rows: Tensor, num_rows: int) -> Tensor:
    # Sort the entries by latent once (on CPU single-threaded: PyTorch's parallel sort, which
    # the embedding_bag backward uses, is very slow on busy machines), then a segment sum with
    # the embedding_bag forward: bag r sums the rows n that have an entry pointing at latent r.
    crow, order, src = _csr_structure(indices, num_rows)
    vals = weights.detach().reshape(-1).to(rows.dtype)[order]
    with _no_autocast(rows.device):
        return F.embedding_bag(
            src,
            rows,
            crow[:-1],
            mode="sum",
            per_sample_weights=vals,
        )


_BAG_CACHE: dict = {}


def _bag_structure(n: int, k: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Offsets ``[n]`` and bag ids ``[n k]`` of ``n`` bags of ``k`` (cached per shape/device)."""
    key = (n, k, str(device))
    if key not in _BAG_CACHE:
        if len(_BAG_CACHE) > 8:
            _BAG_CACHE.clear()
        offsets = torch.arange(0, n * k, k, device=device)
        _BAG_CACHE[key] = (offsets, torch.arange(n, device=device).repeat_interleave(k))
    return _BAG_CACHE[key]


def rows_dot(weight: Tensor, indices: Tensor, rows: Tensor) -> Tensor:
    """``out[n, j] = weight[indices[n, j]] . rows[n]`` without materialising ``weight[indices]``.

    Parameters
    ----------
    weight : Tensor [c, d]
    indices : LongTensor [N, k]
    rows : Tensor [N, d]

    Returns
    -------
    Tensor [N, k] in ``weight.dtype``
    """
    n, k = indices.shape
    weight = weight.detach()
    rows = rows.to(weight.dtype).contiguous()
    flat = indices.reshape(-1)
    try:  # the per-sample-weight gradient kernel of embedding_bag, called directly
        offsets, bag = _bag_structure(n, k, flat.device)
        out = torch.ops.aten._embedding_bag_per_sample_weights_backward(
            rows, weight, flat, offsets, bag, 0, -1
        )
        return out.reshape(n, k)
    except (RuntimeError, AttributeError):  # pragma: no cover - private op changed
        with torch.enable_grad(), _no_autocast(weight.device):
            psw = torch.zeros(indices.shape, dtype=weight.dtype, device=weight.device)
            psw.requires_grad_(True)
            out = F.embedding_bag(indices, weight, per_sample_weights=psw, mode="sum")
            (grad,) = torch.autograd.grad(out, psw, rows)
        return grad


class _GatherPreActs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, indices, pre):  # noqa: D401
        ctx.save_for_backward(x, weight, indices)
        ctx.has_bias = bias is not None
        return pre.gather(1, indices).to(weight.dtype)

    @staticmethod
    def backward(ctx, grad):
        x, weight, indices = ctx.saved_tensors
        grad = grad.to(weight.dtype).contiguous()
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = gather_sum(weight, indices, grad).to(x.dtype)
        if ctx.needs_input_grad[1]:
            gw = scatter_rows(indices, grad, x.to(weight.dtype), weight.shape[0])
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)
            gb.index_add_(0, indices.reshape(-1), grad.reshape(-1))
        return gx, gw, gb, None, None


def gather_pre_acts(
    x: Tensor, weight: Tensor, bias: Tensor | None, indices: Tensor, pre: Tensor
) -> Tensor:
    """Selected pre-activations with a sparse backward.

    Parameters
    ----------
    x : Tensor [N, d]
        Encoder input.
    weight : Tensor [c, d]
        Encoder weight (rows are latents).
    bias : Tensor [c] | None
    indices : LongTensor [N, k]
    pre : Tensor [N, c]
        ``F.linear(x, weight, bias)`` computed without autograd (any dtype, e.g. bf16 autocast).

    Returns
    -------
    Tensor [N, k]
        ``pre.gather(1, indices)`` in the weight dtype; its gradient flows to ``x``, ``weight``
        and ``bias`` touching only the selected rows.
    """
    return _GatherPreActs.apply(x, weight, bias, indices, pre)


class _SparseDecode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values, indices, weight):
        ctx.save_for_backward(values, indices, weight)
        return gather_sum(weight, indices, values)

    @staticmethod
    def backward(ctx, grad):
        values, indices, weight = ctx.saved_tensors
        grad = grad.to(weight.dtype).contiguous()
        gv = gw = None
        if ctx.needs_input_grad[0]:
            gv = rows_dot(weight, indices, grad).to(values.dtype)
        if ctx.needs_input_grad[2]:
            gw = scatter_rows(indices, values, grad, weight.shape[0])
        return gv, None, gw


def sparse_decode(
    values: Tensor, indices: Tensor, weight: Tensor, bias: Tensor | None = None
) -> Tensor:
    """``x_hat = sum_j values[:, j] * weight[indices[:, j]] (+ bias)`` with a sparse backward.

    Parameters
    ----------
    values : Tensor [N, k]
    indices : LongTensor [N, k]
    weight : Tensor [c, d]
        Decoder (dictionary) rows.
    bias : Tensor [d] | None

    Returns
    -------
    Tensor [N, d] in ``weight.dtype``
    """
    out = _SparseDecode.apply(values.to(weight.dtype), indices, weight)
    return out if bias is None else out + bias


def topk_select(
    x: Tensor, weight: Tensor, bias: Tensor | None, k: int, mask: Tensor | None = None
) -> TopKSelection:
    """Dense pre-activations (no graph, autocast-friendly) and the indices of the top ``k``.

    The top ``k`` is taken over the raw pre-activations; callers ReLU the ``k`` gathered values.
    That gives the same codes as ``topk(relu(pre))`` (the paper's order): when fewer than ``k``
    values are positive both keep every positive value and zero the rest.

    Parameters
    ----------
    x : Tensor [N, d]
    weight : Tensor [c, d]
    bias : Tensor [c] | None
    k : int
    mask : BoolTensor [c] | None
        Only latents where ``mask`` is True compete (AuxK's dead latents).
    """
    with torch.no_grad():
        pre = F.linear(x, weight, bias)
        scores = pre if mask is None else pre.masked_fill(~mask, float("-inf"))
        indices = scores.topk(k, dim=1, sorted=False).indices
    return TopKSelection(pre, indices)


def dense_codes(values: Tensor, indices: Tensor, num_latents: int) -> Tensor:
    """Scatter sparse codes ``values/indices [N, k]`` into dense ``[N, num_latents]``."""
    out = values.new_zeros(values.shape[0], num_latents)
    return out.scatter(1, indices, values)


def dense_topk_reference(
    x: Tensor, weight: Tensor, bias: Tensor | None, k: int, mask: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Eager Top-K encoder: ``z = scatter(topk(pre)).relu()`` as a dense ``[N, c]`` matrix.

    Returns ``(z [N, c], indices [N, k])``; gradients flow through the dense graph.
    """
    pre = F.linear(x, weight, bias).to(weight.dtype)
    scores = pre if mask is None else pre.masked_fill(~mask, float("-inf"))
    indices = scores.detach().topk(k, dim=1, sorted=False).indices
    z = torch.zeros_like(pre).scatter(1, indices, pre.gather(1, indices).relu())
    return z, indices
