"""Functional whitening API: the paper's :func:`realign` and :func:`whiten_pair`."""

from __future__ import annotations

from typing import Any

import torch

from .whitener import Whitener

__all__ = ["STATS_MODES", "realign", "whiten_pair"]

#: how a query set and a candidate set get their statistics (see :func:`whiten_pair`)
STATS_MODES = ("separate", "candidates", "support", "joint")


def realign(
    X: torch.Tensor, alpha: float = 0.1, eps: float = 1e-5, *, device=None, chunk_size: int = 16384
) -> torch.Tensor:
    """The paper's ReAlign on one set: ``Whitener("realign").fit_transform(X)``.

    Parameters
    ----------
    X : [N, D] embeddings (any float dtype; statistics in float32 with float64 accumulation)

    Returns
    -------
    Tensor [N, D], unit rows (float32, or the input dtype for fp16/bf16).
    """
    w = Whitener("realign", alpha=alpha, eps=eps, device=device, chunk_size=chunk_size)
    return w.fit_transform(X)


def whiten_pair(
    queries: torch.Tensor,
    candidates: torch.Tensor,
    method: str = "realign",
    *,
    stats: str = "separate",
    support: torch.Tensor | None = None,
    directions: torch.Tensor | None = None,
    device=None,
    **config: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Whiten a query set and a candidate set under one statistics mode.

    Parameters
    ----------
    queries : [Q, D]
    candidates : [N, D]
    method : str
        A registered whitening method.
    stats : {"separate", "candidates", "support", "joint"}
        ``separate``: each set with its own statistics (the reference code);
        ``candidates``: the candidate whitener applied to queries too;
        ``support``: queries with a whitener fitted on ``support``, candidates
        with their own; ``joint``: one whitener fitted on both sets.
    support : [S, D] | None
        Support set for ``stats="support"``.
    config
        Extra :class:`WhitenerConfig` fields (alpha, eps, n_components, ...).

    Returns
    -------
    (queries [Q, D'], candidates [N, D'])
    """
    if queries.shape[1] != candidates.shape[1]:
        raise ValueError(
            f"query dim {queries.shape[1]} != candidate dim {candidates.shape[1]}: embed both "
            "sides with the same model, layer and pooling"
        )
    if stats not in STATS_MODES:
        raise ValueError(
            f"unknown statistics mode {stats!r}; choose one of {', '.join(STATS_MODES)}"
        )

    def make() -> Whitener:
        return Whitener(method, directions=directions, device=device, **config)

    if stats == "separate":
        return make().fit_transform(queries), make().fit_transform(candidates)
    if stats == "candidates":
        w = make().fit(candidates)
        return w.transform(queries), w.transform(candidates)
    if stats == "support":
        if support is None:
            raise ValueError("stats='support' needs support=[S, D] embeddings for the queries")
        if support.shape[1] != queries.shape[1]:
            raise ValueError(f"support dim {support.shape[1]} != query dim {queries.shape[1]}")
        return make().fit(support).transform(queries), make().fit_transform(candidates)
    w = make().fit(_chunks_of(queries, candidates))  # joint
    return w.transform(queries), w.transform(candidates)


def _chunks_of(*tensors: torch.Tensor, size: int = 65536):
    for t in tensors:
        for s in range(0, t.shape[0], size):
            yield t[s : s + size]
