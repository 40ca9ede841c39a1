"""From score blocks to retrieval metrics: top-k, the rank of the relevant candidate, and
Recall@k / MRR / median rank (:func:`saeprobe.ranking.ranking_metrics`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from saeprobe.ranking import ranking_metrics

__all__ = ["Ranker", "query_blocks"]


def query_blocks(
    n_queries: int,
    n_candidates: int,
    chunk_size: int,
    block_scores: int,
    rows: torch.Tensor | None = None,
) -> list:
    """Blocks of query rows (slices, or index tensors when ``rows`` is given) of at most
    ``chunk_size`` rows and about ``block_scores`` scores each."""
    b = max(1, min(chunk_size, block_scores // max(n_candidates, 1)))
    if rows is None:
        return [slice(s, min(s + b, n_queries)) for s in range(0, n_queries, b)]
    return [rows[s : s + b] for s in range(0, rows.numel(), b)]


class Ranker:
    """Relevance of one retrieval task, and the metrics of a ranking.

    Parameters
    ----------
    relevant : list[set[int]]
        Per query, the relevant candidate rows.
    n_candidates : int
    ks : ints
        Recall cut-offs (those above ``n_candidates`` are dropped).
    """

    def __init__(self, relevant: Sequence[set[int]], n_candidates: int, ks: Iterable[int]) -> None:
        self.relevant = relevant
        self.ks = [int(k) for k in ks if int(k) <= n_candidates] or [1]
        self.k_top = min(max(max(self.ks), 10), n_candidates)
        rel_max = max((len(r) for r in relevant), default=0)
        self.rel_pad = torch.full((len(relevant), max(rel_max, 1)), -1, dtype=torch.long)
        for i, r in enumerate(relevant):
            if r:
                self.rel_pad[i, : len(r)] = torch.tensor(sorted(r))

    def ranks(self, r, scores: torch.Tensor, top: torch.Tensor | None = None) -> torch.Tensor:
        """1-based rank of each row's best relevant candidate (0: none relevant): the number
        of candidates scoring strictly higher, plus one.

        Parameters
        ----------
        r : slice | Tensor
            The query rows of ``scores``.
        scores : Tensor [b, N]
        top : Tensor [b, K] | None
            The rows' top-K candidates (a relevant one inside it: its position).
        """
        rel = self.rel_pad[r]
        valid = rel >= 0
        has = valid.any(1)
        rs = torch.gather(scores, 1, rel.clamp_min(0)).masked_fill(~valid, float("-inf"))
        best = rs.max(1).values
        rank = torch.zeros(rel.shape[0], dtype=torch.long)
        todo = has
        if top is not None:
            hit = (top[:, :, None] == rel[:, None, :]).logical_and_(valid[:, None, :]).any(2)
            found = hit.any(1)
            rank[found] = hit[found].int().argmax(1) + 1
            todo = has & ~found
        if todo.any():
            idx = torch.nonzero(todo).reshape(-1)
            rank[idx] = torch.gt(scores[idx], best[idx, None]).sum(1, dtype=torch.int64) + 1
        return rank

    def rank_blocks(
        self, blocks: Iterable[tuple[object, torch.Tensor]]
    ) -> tuple[torch.Tensor, np.ndarray]:
        """``(top [Q, K], ranks [Q])`` over score blocks covering every query in order."""
        tops, ranks = [], []
        for r, scores in blocks:
            top = torch.topk(scores, self.k_top, dim=1).indices
            tops.append(top)
            ranks.append(self.ranks(r, scores, top))
        return torch.cat(tops), torch.cat(ranks).numpy()

    def metrics(self, top: torch.Tensor, ranks: np.ndarray) -> dict[str, float]:
        """``R@k`` for each cut-off, ``MRR`` (within the top 10) and ``median_rank``."""

        m = ranking_metrics(top, self.relevant, self.ks, ndcg_k=10, complete=True)
        out = {f"R@{k}": m[f"R@{k}"] for k in self.ks}
        out["MRR"] = m["MRR"]
        found = ranks[ranks > 0]
        out["median_rank"] = float(np.median(found)) if found.size else float("nan")
        return out
