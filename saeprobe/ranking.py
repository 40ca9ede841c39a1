"""Exhaustive top-k search and ranking metrics (Recall@k, MRR, nDCG@k).

Shared by retrieval evaluation (:mod:`saeprobe.retrieval`) and the analysis
code. Scores are inner products (cosine similarity for L2-normalised rows).

Definitions (``indices [Q, K]`` = ranked candidate rows per query, best first):

- Recall@k (the paper's, M-BEIR's): share of queries with at least one
  relevant candidate among their top ``k``.
- MRR: mean over queries of ``1 / rank`` of the first relevant candidate in the
  top ``K`` (0 when none).
- nDCG@k: ``DCG / IDCG`` with ``DCG = sum_i gain_i / log2(i + 1)`` over the top
  ``k`` ranks (``i`` from 1) and IDCG the same sum for the ideal order of all
  relevant candidates of the query (binary gain 1, or graded gains from a dict).
"""

from __future__ import annotations

import importlib.util
import logging
import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import torch

logger = logging.getLogger(__name__)

#: per-query relevant candidates: a set of row indices, or a dict row -> graded gain
Relevant = Sequence[set] | Sequence[Mapping] | torch.Tensor | np.ndarray

__all__ = [
    "TopK",
    "hits_matrix",
    "mrr",
    "ndcg_at_k",
    "ranking_metrics",
    "recall_at_k",
    "topk_search",
]


class TopK(NamedTuple):
    """Result of :func:`topk_search`.

    Attributes
    ----------
    scores : FloatTensor [Q, k]
        Inner products, best first (float32).
    indices : LongTensor [Q, k]
        Candidate row indices, best first.
    """

    scores: torch.Tensor
    indices: torch.Tensor


def _resolve_device(device, *tensors: torch.Tensor) -> torch.device:
    if device is None or device == "auto":
        return tensors[0].device
    return torch.device(device)


def _scores_fp32(q: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``q @ c.T`` with float32 accumulation and a float32 result."""
    if q.dtype == torch.float32:
        return q @ c.T
    if q.is_cuda:
        try:  # fp16/bf16 tensor cores, fp32 output (torch >= 2.8)
            return torch.mm(q, c.T, out_dtype=torch.float32)
        except (RuntimeError, TypeError):
            pass
    return q.float() @ c.float().T


def _faiss_search(queries: torch.Tensor, candidates: torch.Tensor, k: int) -> TopK:
    import faiss  # optional dependency

    cand = np.ascontiguousarray(candidates.detach().float().cpu().numpy())
    qry = np.ascontiguousarray(queries.detach().float().cpu().numpy())
    index = faiss.IndexFlatIP(cand.shape[1])
    index.add(cand)
    scores, idx = index.search(qry, k)
    return TopK(torch.from_numpy(scores), torch.from_numpy(idx).long())


def topk_search(
    queries: torch.Tensor,
    candidates: torch.Tensor,
    k: int,
    *,
    chunk_size: int = 65536,
    query_chunk_size: int = 4096,
    device: torch.device | str | None = None,
    backend: str = "torch",
    exclude_self: bool = False,
) -> TopK:
    """Exhaustive maximum-inner-product search with a running top-k merge.

    Candidates (and queries) are processed in chunks, so memory stays at about
    ``query_chunk_size x (chunk_size + k)`` scores whatever ``N``.

    Parameters
    ----------
    queries : Tensor [Q, D]
    candidates : Tensor [N, D]
        Any float dtype; fp16/bf16 are multiplied with float32 accumulation and
        the scores are float32.
    k : int
        Neighbours per query (clipped to ``N``).
    chunk_size, query_chunk_size : int
        Candidate / query rows per block.
    device : str | torch.device | None
        Where to compute (``None``: the queries' device). Inputs on another
        device are moved block by block.
    backend : {"torch", "faiss", "auto"}
        ``faiss`` uses ``faiss.IndexFlatIP`` (CPU, float32) when installed;
        ``auto`` picks faiss for CPU compute when available.
    exclude_self : bool
        Queries and candidates are the same set: drop each row from its own list.

    Returns
    -------
    TopK
        ``scores [Q, k]`` (float32) and ``indices [Q, k]`` (int64) on the
        queries' original device, best first.
    """
    k_eff = _check_search(queries, candidates, k, exclude_self)
    out_device = queries.device
    dev = _resolve_device(device, queries)
    backend = _pick_backend(backend, dev, exclude_self)
    if backend == "faiss":
        res = _faiss_search(queries, candidates, k_eff)
        _check_finite(res.scores)
        return TopK(res.scores.to(out_device), res.indices.to(out_device))
    cdtype = _compute_dtype(queries, candidates, dev)
    candidates, blocks = _candidate_blocks(
        candidates, dev, cdtype, chunk_size, queries.shape[0] > query_chunk_size
    )
    all_scores, all_idx = [], []
    for qs in range(0, queries.shape[0], query_chunk_size):
        q = queries[qs : qs + query_chunk_size].to(dev, cdtype, non_blocking=True)
        best_s, best_i = _search_chunk(
            q, qs, candidates, blocks, chunk_size, k_eff, dev, cdtype, exclude_self
        )
        all_scores.append(best_s.to(out_device))
        all_idx.append(best_i.to(out_device))
    scores = torch.cat(all_scores) if all_scores else torch.zeros((0, k_eff))
    indices = torch.cat(all_idx) if all_idx else torch.zeros((0, k_eff), dtype=torch.long)
    _check_finite(scores)
    return TopK(scores, indices)


def _check_search(
    queries: torch.Tensor, candidates: torch.Tensor, k: int, exclude_self: bool
) -> int:
    """Validate the inputs; returns the number of neighbours actually kept."""
    if queries.ndim != 2 or candidates.ndim != 2:
        raise ValueError(
            f"topk_search wants 2-D queries [Q, D] and candidates [N, D], got shapes "
            f"{tuple(queries.shape)} and {tuple(candidates.shape)}"
        )
    if queries.shape[1] != candidates.shape[1]:
        raise ValueError(
            f"query dim {queries.shape[1]} != candidate dim {candidates.shape[1]}: embed both "
            "sides with the same model, layer and pooling"
        )
    if not queries.is_floating_point() or not candidates.is_floating_point():
        raise ValueError("topk_search needs floating-point embeddings")
    n_q, n_c = queries.shape[0], candidates.shape[0]
    if n_c == 0:
        raise ValueError("topk_search: no candidates")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if exclude_self and n_q != n_c:
        raise ValueError("exclude_self needs queries and candidates to be the same set")
    k_eff = min(k, n_c - 1 if exclude_self else n_c)
    if k_eff < 1:
        raise ValueError("exclude_self with a single candidate leaves nothing to rank")
    return k_eff


def _pick_backend(backend: str, dev: torch.device, exclude_self: bool) -> str:
    if backend == "auto":
        backend = "torch"
        if dev.type == "cpu" and not exclude_self and importlib.util.find_spec("faiss"):
            backend = "faiss"
    if backend == "faiss" and exclude_self:
        raise ValueError("backend='faiss' does not support exclude_self; use backend='torch'")
    if backend not in ("torch", "faiss"):
        raise ValueError(f"unknown backend {backend!r}; use 'torch', 'faiss' or 'auto'")
    return backend


def _compute_dtype(
    queries: torch.Tensor, candidates: torch.Tensor, dev: torch.device
) -> torch.dtype:
    """Half inputs on CPU multiply in float32 (CPU half matmul is slow, not fp32-accumulated)."""
    cdtype = queries.dtype
    if dev.type == "cpu" and cdtype in (torch.float16, torch.bfloat16):
        cdtype = torch.float32
    if candidates.dtype != queries.dtype:
        cdtype = torch.promote_types(cdtype, candidates.dtype)
    return cdtype


def _candidate_blocks(candidates, dev, cdtype, chunk_size, many_query_chunks):
    """``(candidates, blocks)``: the blocks when they already sit on ``dev`` in ``cdtype``
    (on CUDA, moved there once when several query chunks would re-send them and they fit),
    else ``None`` (moved / cast block by block)."""
    on_dev = candidates.device == dev
    if not on_dev and dev.type == "cuda" and many_query_chunks:
        need = candidates.numel() * torch.empty((), dtype=cdtype).element_size()
        if need < 0.5 * torch.cuda.mem_get_info(dev)[0]:
            candidates = candidates.to(dev, cdtype)
            on_dev = True
    if on_dev and candidates.dtype == cdtype:
        n_c = candidates.shape[0]
        return candidates, [candidates[s : s + chunk_size] for s in range(0, n_c, chunk_size)]
    return candidates, None


def _search_chunk(q, qs, candidates, blocks, chunk_size, k_eff, dev, cdtype, exclude_self):
    """Top ``k_eff`` of one query chunk (rows ``qs..``) over all candidate blocks, merged
    block by block: ``(scores [nq, k], indices [nq, k])`` on ``dev``."""
    nq = q.shape[0]
    best_s = torch.full((nq, 0), float("-inf"), device=dev)
    best_i = torch.zeros((nq, 0), dtype=torch.long, device=dev)
    for bi, cs in enumerate(range(0, candidates.shape[0], chunk_size)):
        if blocks is not None:
            c = blocks[bi]
        else:
            c = candidates[cs : cs + chunk_size].to(dev, cdtype, non_blocking=True)
        s = _scores_fp32(q, c)
        if exclude_self:
            rows = torch.arange(nq, device=dev)
            cols = rows + qs - cs
            ok = (cols >= 0) & (cols < c.shape[0])
            s[rows[ok], cols[ok]] = float("-inf")
        cs_val, cs_idx = torch.topk(s, min(k_eff, s.shape[1]), dim=1)
        cs_idx += cs
        if best_s.shape[1] == 0:
            best_s, best_i = cs_val, cs_idx
            continue
        merged_s = torch.cat([best_s, cs_val], dim=1)
        merged_i = torch.cat([best_i, cs_idx], dim=1)
        best_s, pos = torch.topk(merged_s, min(k_eff, merged_s.shape[1]), dim=1)
        best_i = torch.gather(merged_i, 1, pos)
    return best_s, best_i


def _check_finite(scores: torch.Tensor) -> None:
    if scores.numel() and not torch.isfinite(scores).all():
        bad = int((~torch.isfinite(scores)).any(dim=1).sum())
        raise ValueError(
            f"non-finite similarity scores for {bad} queries: the embeddings contain NaN/inf "
            "(check the model dtype, e.g. use bf16/fp32 instead of fp16)"
        )


# --------------------------------------------------------------------------- metrics
def hits_matrix(indices: torch.Tensor | np.ndarray, relevant: Relevant) -> np.ndarray:
    """Boolean ``[Q, K]``: whether ``indices[q, r]`` is relevant to query ``q``.

    ``relevant`` is a per-query list of sets (or dicts) of candidate row
    indices, or a boolean matrix ``[Q, N]``.
    """
    idx = _as_numpy_indices(indices)
    n_q = idx.shape[0]
    if isinstance(relevant, (torch.Tensor, np.ndarray)):
        rel = relevant.detach().cpu().numpy() if torch.is_tensor(relevant) else relevant
        if rel.ndim != 2 or rel.shape[0] != n_q:
            raise ValueError(f"relevance matrix must be [Q={n_q}, N], got shape {tuple(rel.shape)}")
        rel = rel.astype(bool)
        if idx.size and idx.max() >= rel.shape[1]:
            raise ValueError(
                f"ranked index {int(idx.max())} is outside the relevance matrix (N={rel.shape[1]})"
            )
        return np.take_along_axis(rel, np.clip(idx, 0, None), axis=1) & (idx >= 0)
    if len(relevant) != n_q:
        raise ValueError(f"relevant has {len(relevant)} entries for {n_q} queries")
    out = np.zeros(idx.shape, dtype=bool)
    for q in range(n_q):
        rel_q = relevant[q]
        if rel_q:
            out[q] = [int(j) in rel_q for j in idx[q]]
    return out


def _as_numpy_indices(indices) -> np.ndarray:
    idx = indices.detach().cpu().numpy() if torch.is_tensor(indices) else np.asarray(indices)
    if idx.ndim != 2:
        raise ValueError(f"indices must be [Q, K], got shape {idx.shape}")
    return idx.astype(np.int64, copy=False)


def _n_relevant(relevant: Relevant) -> np.ndarray:
    if isinstance(relevant, (torch.Tensor, np.ndarray)):
        rel = relevant.detach().cpu().numpy() if torch.is_tensor(relevant) else relevant
        return rel.astype(bool).sum(axis=1)
    return np.array([len(r) if r else 0 for r in relevant], dtype=np.int64)


def _query_mask(relevant: Relevant, ignore_empty: bool, warn: bool = False) -> np.ndarray:
    n_rel = _n_relevant(relevant)
    empty = n_rel == 0
    if warn and empty.any():
        if ignore_empty:
            logger.warning("%d queries have no relevant candidate; left out", int(empty.sum()))
        else:
            logger.warning(
                "%d queries have no relevant candidate; they count as misses", int(empty.sum())
            )
    return ~empty if ignore_empty else np.ones_like(empty)


def recall_at_k(
    indices: torch.Tensor | np.ndarray,
    relevant: Relevant,
    ks: Sequence[int] = (1, 5, 10),
    *,
    ignore_empty: bool = False,
) -> dict[int, float]:
    """Share of queries with at least one relevant candidate in their top ``k``.

    Parameters
    ----------
    indices : [Q, K]
        Ranked candidate rows (best first), ``K >= max(ks)``.
    relevant : list[set[int]] | list[dict[int, float]] | bool [Q, N]
    ks : ints
    ignore_empty : bool
        Leave out queries without any relevant candidate (default: they count as
        misses, as M-BEIR does).

    Returns
    -------
    dict[int, float]
        ``k -> recall`` in ``[0, 1]``.
    """
    idx = _as_numpy_indices(indices)
    ks = [int(k) for k in ks]
    if ks and max(ks) > idx.shape[1]:
        raise ValueError(
            f"Recall@{max(ks)} needs at least {max(ks)} ranked candidates per query, got "
            f"{idx.shape[1]}; search with a larger k"
        )
    hits = hits_matrix(idx, relevant)
    mask = _query_mask(relevant, ignore_empty, warn=True)
    if not mask.any():
        return {k: float("nan") for k in ks}
    return {k: float(hits[mask, :k].any(axis=1).mean()) for k in ks}


def mrr(
    indices: torch.Tensor | np.ndarray,
    relevant: Relevant,
    k: int | None = None,
    *,
    ignore_empty: bool = False,
) -> float:
    """Mean reciprocal rank of the first relevant candidate within the top ``k``
    (default: all ``K`` ranked); 0 for a query without one."""
    idx = _as_numpy_indices(indices)
    if k is not None:
        if k > idx.shape[1]:
            raise ValueError(f"MRR@{k} needs {k} ranked candidates per query, got {idx.shape[1]}")
        idx = idx[:, :k]
    hits = hits_matrix(idx, relevant)
    mask = _query_mask(relevant, ignore_empty)
    if not mask.any():
        return float("nan")
    first = np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, 0)
    rr = np.where(first > 0, 1.0 / np.maximum(first, 1), 0.0)
    return float(rr[mask].mean())


def ndcg_at_k(
    indices: torch.Tensor | np.ndarray,
    relevant: Relevant,
    k: int = 10,
    *,
    ignore_empty: bool = False,
) -> float:
    """Mean nDCG@k; binary gains for sets / boolean matrices, graded gains for
    per-query dicts ``{row: gain}`` (a qrels ``score`` column)."""
    idx = _as_numpy_indices(indices)
    if k > idx.shape[1]:
        raise ValueError(f"nDCG@{k} needs {k} ranked candidates per query, got {idx.shape[1]}")
    idx = idx[:, :k]
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    graded = not isinstance(relevant, (torch.Tensor, np.ndarray)) and any(
        isinstance(r, Mapping) for r in relevant
    )
    mask = _query_mask(relevant, ignore_empty)
    if graded:
        vals = np.zeros(idx.shape[0])
        for q, rel_q in enumerate(relevant):
            if not rel_q:
                continue
            gains = rel_q if isinstance(rel_q, Mapping) else dict.fromkeys(rel_q, 1.0)
            g = np.array([float(gains.get(int(j), 0.0)) for j in idx[q]])
            ideal = np.sort(np.array([float(v) for v in gains.values()]))[::-1][:k]
            idcg = float((ideal * discounts[: len(ideal)]).sum())
            vals[q] = float((g * discounts).sum()) / idcg if idcg > 0 else 0.0
    else:
        hits = hits_matrix(idx, relevant).astype(np.float64)
        dcg = (hits * discounts).sum(axis=1)
        n_rel = np.minimum(_n_relevant(relevant), k)
        cum = np.concatenate([[0.0], np.cumsum(discounts)])
        idcg = cum[n_rel]
        vals = np.where(idcg > 0, dcg / np.where(idcg > 0, idcg, 1.0), 0.0)
    if not mask.any():
        return float("nan")
    return float(vals[mask].mean())


def ranking_metrics(
    indices: torch.Tensor | np.ndarray,
    relevant: Relevant,
    ks: Sequence[int] = (1, 5, 10),
    *,
    ndcg_k: int = 10,
    ignore_empty: bool = False,
    complete: bool = False,
) -> dict[str, float]:
    """All metrics in one dict: ``R@1``, ``R@5``, ``R@10``, ``MRR``, ``nDCG@10``
    (values in ``[0, 1]``).

    ``complete=True`` says ``indices`` rank every candidate (fewer than ``k``
    of them): cut-offs beyond ``K`` then equal cut-off ``K`` and are reported
    under their own names; otherwise they are left out.
    """
    idx = _as_numpy_indices(indices)
    K = idx.shape[1]
    hits = hits_matrix(idx, relevant)  # once, shared by every metric
    mask = _query_mask(relevant, ignore_empty, warn=True)
    out: dict[str, float] = {}
    nan = float("nan")
    for k in ks:
        if k <= K or complete:
            out[f"R@{k}"] = float(hits[mask, : min(k, K)].any(axis=1).mean()) if mask.any() else nan
    first = np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, 0)
    rr = np.where(first > 0, 1.0 / np.maximum(first, 1), 0.0)
    out["MRR"] = float(rr[mask].mean()) if mask.any() else nan
    if ndcg_k <= K or complete:
        out[f"nDCG@{ndcg_k}"] = ndcg_at_k(idx, relevant, min(ndcg_k, K), ignore_empty=ignore_empty)
    if math.isnan(out["MRR"]):
        logger.warning("no query with a relevant candidate: metrics are NaN")
    return out
