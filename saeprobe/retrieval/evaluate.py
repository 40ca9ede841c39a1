"""Scoring: whiten each side with every method, search exhaustively, compute the metrics."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..ranking import ranking_metrics, topk_search
from ..whitening import whiten_pair
from .cache import EmbeddingCache
from .config import NATIVE, RetrievalConfig, method_label
from .embedding import task_embeddings, validate_embeddings

logger = logging.getLogger(__name__)

__all__ = ["RetrievalResult", "evaluate", "score_methods"]


def _default_device(device: str | None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def score_methods(
    queries: torch.Tensor,
    candidates: torch.Tensor,
    relevant: list,
    config: RetrievalConfig,
    *,
    methods: Sequence[str] | None = None,
    support: torch.Tensor | None = None,
    alpha: float | None = None,
) -> dict[str, dict[str, float]]:
    """Whiten with each method, search, and score.

    Parameters
    ----------
    queries : [Q, d], candidates : [N, d]
        L2-normalised embeddings.
    relevant : list
        Per query, the relevant candidate rows (sets, or dicts of gains).

    Returns
    -------
    ``{method label: {"R@1": ..., "MRR": ..., "nDCG@10": ..., "seconds": ...}}``
    """
    if queries.shape[1] != candidates.shape[1]:
        raise ValueError(
            f"query dim {queries.shape[1]} != candidate dim {candidates.shape[1]}: embed both "
            "sides with the same model, layer and pooling"
        )
    dev = _default_device(config.device)
    out: dict[str, dict[str, float]] = {}
    for method in methods or config.methods:
        t0 = time.perf_counter()
        kw: dict[str, Any] = {"eps": config.eps}
        if method == "realign":
            kw["alpha"] = config.alpha if alpha is None else alpha
        q, c = whiten_pair(
            queries.to(dev),
            candidates.to(dev),
            method,
            stats=config.stats,
            support=support,
            device=dev,
            **kw,
        )
        top = topk_search(q, c, config.depth, chunk_size=config.chunk_size, device=dev)
        m = ranking_metrics(
            top.indices.cpu(),
            relevant,
            ks=config.ks,
            ndcg_k=config.ndcg_k,
            complete=top.indices.shape[1] >= c.shape[0],
        )
        m["seconds"] = time.perf_counter() - t0
        out[method_label(method)] = m
    return out


@dataclass
class RetrievalResult:
    """Scores of one evaluation (``to_dict`` is the JSON written by the CLI)."""

    model: str
    data: str
    task: int
    n_queries: int
    n_corpus: int
    config: RetrievalConfig
    results: dict[str, dict[str, float]]
    timing: dict[str, float] = field(default_factory=dict)
    layer: str = "final_norm"
    pool: str = "mean"
    #: the unwhitened ``(queries [Q, d], candidates [N, d])`` scored (not in ``to_dict``)
    embeddings: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "data": self.data,
            "task": self.task,
            "n_queries": self.n_queries,
            "n_corpus": self.n_corpus,
            "layer": self.layer,
            "pool": self.pool,
            "config": self.config.to_dict(),
            "results": self.results,
            "timing": self.timing,
        }


def evaluate(
    adapter: Any,
    task: Any,
    config: RetrievalConfig | None = None,
    *,
    cache: EmbeddingCache | str | os.PathLike | None = None,
    support: torch.Tensor | None = None,
) -> RetrievalResult | None:
    """Embed an M-BEIR task with ``adapter`` and score every whitening method.

    Returns None on ranks other than 0 (they only embed their share).
    """
    config = config or RetrievalConfig()
    if not isinstance(cache, EmbeddingCache):
        cache = EmbeddingCache(cache)
    dual = bool(getattr(adapter, "is_dual_encoder", False))
    pool = config.pool or (NATIVE if dual else "mean")
    t0 = time.perf_counter()
    emb = task_embeddings(
        adapter, task, layers=[config.layer], pool=pool, batch_size=config.batch_size, cache=cache
    )
    if emb is None:
        return None
    t_embed = time.perf_counter() - t0
    (layer_name,) = emb["query"].keys()
    q = validate_embeddings(emb["query"][layer_name], task.queries.ids, "query")
    c = validate_embeddings(emb["corpus"][layer_name], task.corpus.ids, "candidate")
    relevant = task.relevant_rows(graded=task.gains is not None)
    t1 = time.perf_counter()
    results = score_methods(q, c, relevant, config, support=support)
    return RetrievalResult(
        model=str(getattr(adapter, "name_or_path", adapter)),
        data=str(task.path),
        task=task.task,
        n_queries=len(task.queries),
        n_corpus=len(task.corpus),
        config=config,
        results=results,
        timing={"embed_s": t_embed, "score_s": time.perf_counter() - t1},
        layer=layer_name,
        pool=pool,
        embeddings=(q, c),
    )
