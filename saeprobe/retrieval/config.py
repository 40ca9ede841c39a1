"""Settings of a retrieval evaluation (:class:`RetrievalConfig`, JSON round trip)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..jsonconfig import JSONConfig
from ..whitening import STATS_MODES, canonical_method

__all__ = ["DEFAULT_CACHE", "NATIVE", "RetrievalConfig", "method_label"]

NATIVE = "native"
DEFAULT_CACHE = (
    Path(os.environ.get("SAEPROBE_CACHE", Path.home() / ".cache" / "saeprobe")) / "retrieval"
)


@dataclass
class RetrievalConfig(JSONConfig):
    unknown_keys = "ignore"  # results files of other versions
    """Settings of a retrieval evaluation (round-trips to JSON).

    Attributes
    ----------
    methods : list[str]
        Whitening methods compared (``none`` = base, ``realign``, ``zca``,
        ``pca``, ``ledoit_wolf``, ``oas``, ``abtt``).
    alpha, eps : float
        ReAlign shrinkage and eigenvalue floor.
    stats : str
        Statistics mode (see :func:`saeprobe.whitening.whiten_pair`).
    pool : str | None
        Pooling (default: ``mean`` for MLLMs, ``native`` for dual encoders).
    layer : str
        Hook point (``final_norm``, ``resid_post.L``).
    batch_size : int
    ks : list[int]
        Recall cut-offs.
    ndcg_k : int
    depth : int
        Neighbours retrieved per query (MRR is computed within them).
    device : str | None
        Device for whitening and search (default: cuda when available).
    chunk_size : int
        Candidate rows per search block.
    """

    methods: list[str] = field(default_factory=lambda: ["none", "realign"])
    alpha: float = 0.1
    eps: float = 1e-5
    stats: str = "separate"
    pool: str | None = None
    layer: str = "final_norm"
    batch_size: int = 8
    ks: list[int] = field(default_factory=lambda: [1, 5, 10])
    ndcg_k: int = 10
    depth: int = 100
    device: str | None = None
    chunk_size: int = 65536

    def __post_init__(self) -> None:
        self.methods = [canonical_method(m) for m in self.methods]
        if self.stats not in STATS_MODES:
            raise ValueError(f"unknown stats mode {self.stats!r}; choose one of {STATS_MODES}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0.0 <= float(self.alpha) <= 1.0:
            raise ValueError(f"alpha (ReAlign shrinkage) must lie in [0, 1], got {self.alpha}")
        if self.eps < 0:
            raise ValueError(f"eps must be >= 0, got {self.eps}")
        self.ks = [int(k) for k in self.ks]
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"recall cut-offs ks must be positive integers, got {self.ks}")
        if self.depth < 1 or self.chunk_size < 1 or self.ndcg_k < 1:
            raise ValueError("depth, chunk_size and ndcg_k must be >= 1")
        self.depth = max(self.depth, max(self.ks), self.ndcg_k)


def method_label(method: str) -> str:
    return "base" if method == "none" else method
