"""The explorer's computation: SAE codes once, then retrieval after ablations and whitening.

``ExplorerSession(sae, data).evaluate(ablate, op, whiten, alpha)`` returns Recall@k and MRR
(:func:`saeprobe.ranking.ranking_metrics`) of the current setting next to the baseline
(original embeddings, no whitening). The session is a facade over one module per job:

* :mod:`.config`: the setting (:class:`EvalConfig`) and its result (:class:`EvalResult`);
* :mod:`.table`: the feature table (statistics, tags, names; sorted / filtered / searched);
* :mod:`.gram`: the fast path, ablation as a low-rank update of a cached Gram matrix;
* :mod:`.direct`: the direct path, embeddings recomputed (ReAlign fits cached per ablation,
  so moving alpha costs one product);
* :mod:`.scoring`: top-k, ranks and metrics.

Results are cached per setting.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from analysis import (
    Codes,
    bridge_partners,
    default_steps,
    encode_all,
    pairs_from_relevant,
    retrieval_attribution,
    top_distractors,
)

from .config import OPS, SIDES, WHITEN, EvalConfig, EvalResult, check_index, check_int, json_safe
from .data import ExplorerData
from .direct import DirectScorer
from .gram import GramScorer
from .scoring import Ranker, query_blocks
from .table import FeatureTable, merge_features, read_features, stats_columns
from .vectors import Vectors, sae_tensors

logger = logging.getLogger(__name__)

__all__ = ["OPS", "SIDES", "WHITEN", "EvalConfig", "EvalResult", "ExplorerSession", "json_safe"]

#: default largest ``Q * N`` kept as a float32 Gram matrix (512 MB)
MAX_DENSE_SCORES = 1 << 27


class ExplorerSession:
    """Precomputed SAE codes, attribution and feature table for interactive ablation.

    Parameters
    ----------
    sae : SAE
        Anything with ``encode_sparse`` and ``dictionary`` (:func:`saeprobe.sae.load_sae`).
    data : ExplorerData
    features : str | Path | dict | None
        ``features.parquet`` / ``.csv`` from ``saeprobe analyze`` (or a dict of columns):
        its ``tag``, ``modality_score``, ``energy``, ... (and an optional ``name`` column)
        replace the statistics computed here from the explorer data.
    ks : ints
        Recall cut-offs (those above ``N`` are dropped).
    max_dense_scores : int
        Largest ``Q * N`` kept as a cached Gram matrix (float32) for the fast path.
    chunk_size : int
        Query rows per scoring block.
    cache_size : int
        Settings whose results are kept.
    """

    def __init__(
        self,
        sae: Any,
        data: ExplorerData,
        features: str | Path | dict | None = None,
        *,
        ks: Sequence[int] = (1, 5, 10),
        max_dense_scores: int = MAX_DENSE_SCORES,
        chunk_size: int = 1024,
        cache_size: int = 32,
    ) -> None:

        t0 = time.perf_counter()
        self.data = data
        self.dictionary, self.bias = sae_tensors(sae, data.d)
        self.c = int(self.dictionary.shape[0])
        self.codes_q = encode_all(sae, data.queries)
        self.codes_c = encode_all(sae, data.candidates)
        self.vectors = Vectors(data, self.codes_q, self.codes_c, self.dictionary, self.bias)
        self.ranker = Ranker(data.relevant, data.n_candidates, ks)
        self.ks, self.k_top = self.ranker.ks, self.ranker.k_top
        self.chunk_size = int(chunk_size)
        self.gram = GramScorer(self.vectors, max_dense_scores)
        self.direct = DirectScorer(self.vectors)
        self._lock = threading.RLock()
        self._cache: OrderedDict[EvalConfig, EvalResult] = OrderedDict()
        self._cache_size = max(1, int(cache_size))
        self._attribute()
        self.feature_table = self._build_table(features)
        self.table = self.feature_table.columns
        self.stats_source = self.feature_table.stats_source
        self.baseline = {}
        self.baseline_result = self._compute(EvalConfig())
        self.baseline = self.baseline_result.metrics
        self.baseline_result.baseline = self.baseline
        self._cache[EvalConfig()] = self.baseline_result
        logger.info(
            "explorer session ready in %.2fs: %d queries, %d candidates, d=%d, c=%d, baseline %s",
            time.perf_counter() - t0,
            data.n_queries,
            data.n_candidates,
            data.d,
            self.c,
            {k: round(v, 4) for k, v in self.baseline.items()},
        )

    @property
    def max_dense_scores(self) -> int:
        return self.gram.max_scores

    def _attribute(self) -> None:

        qi, ci = pairs_from_relevant(self.data.relevant)
        if qi.numel() == 0:
            raise ValueError("no query has a relevant candidate: nothing to attribute or evaluate")
        self._pairs = (qi, ci)
        att = retrieval_attribution(
            self.codes_q,
            self.codes_c,
            self.dictionary,
            pairs=(qi, ci),
            x_q=self.data.queries,
            x_c=self.data.candidates,
            normalize=True,
        )
        self.attribution = att.attribution  # [c] float64
        self.mean_similarity = att.mean_similarity
        self.ranking = top_distractors(self.attribution, self.c)  # all concepts, best first

    def _build_table(self, features: str | Path | dict | None) -> FeatureTable:
        d = self.data
        cols = stats_columns(
            self.codes_q, self.codes_c, self.c, d.query_modality, d.candidate_modality
        )
        source = "explorer data"
        if features is not None:
            merge_features(cols, read_features(features, self.c), self.c)
            source = "features table"
        return FeatureTable(cols, self.ranking, self.attribution, source)

    # ------------------------------------------------------------------ features
    def features(self, limit: int | None = 200, offset: int = 0, **filters: Any) -> list[dict]:
        """Concepts sorted by retrieval attribution (highest first) with their statistics;
        ``filters`` are :meth:`FeatureTable.page`'s: ``only_active``, ``sort``,
        ``descending``, ``tag`` (filter) and ``search`` (a name substring or an id)."""
        return self.feature_table.page(limit, offset, **filters)[1]

    def feature(self, i: int) -> dict:
        """One concept's row of the feature table (its ``rank`` by attribution)."""
        return self.feature_table.row(check_index(i, self.c, "feature id"))

    def top_distractors(self, n: int) -> list[int]:
        """The ``n`` active concepts of highest retrieval attribution."""
        n = check_int(n, "n", 0, self.c)
        t = self.feature_table
        return [int(i) for i in t.order[t.active[t.order]][:n]]

    def bridge_partners(self, i: int, n: int = 5) -> list[tuple[int, float]]:
        """Other concepts bridging with ``i`` over the relevant (text, image) pairs of the data
        (:func:`analysis.bridge_partners`); empty unless one side is text and the other image."""

        d = self.data
        if {d.query_modality, d.candidate_modality} != {"text", "image"}:
            return []
        i = check_index(i, self.c, "feature id")
        qi, ci = self._pairs
        q = Codes(self.codes_q.values[qi], self.codes_q.indices[qi])
        c = Codes(self.codes_c.values[ci], self.codes_c.indices[ci])
        img, txt = (c, q) if d.query_modality == "text" else (q, c)
        return bridge_partners(i, img, txt, self.dictionary, n)

    def info(self) -> dict:
        d = self.data
        return json_safe(
            {
                "n_queries": d.n_queries,
                "n_candidates": d.n_candidates,
                "d": d.d,
                "c": self.c,
                "ks": self.ks,
                "ops": list(OPS),
                "whiten": list(WHITEN),
                "sides": list(SIDES),
                "query_modality": d.query_modality,
                "candidate_modality": d.candidate_modality,
                "baseline": self.baseline,
                "mean_cosine_relevant": self.mean_similarity,
                "stats_source": self.stats_source,
                "n_active": self.feature_table.n_active,
                "top_distractors": self.top_distractors(min(64, self.c)),
            }
        )

    # ------------------------------------------------------------------ scoring
    def embeddings(
        self,
        ablate: Sequence[int] = (),
        op: str = "subtract",
        whiten: str = "none",
        alpha: float = 0.1,
        sides: str = "both",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit-norm ``(queries [Q, d], candidates [N, d])`` of a setting, computed directly with
        :func:`analysis.ablate` and :func:`saeprobe.whitening.realign`."""
        cfg = EvalConfig.make(ablate, op, whiten, alpha, sides, c=self.c)
        with self._lock:
            return self.direct.embeddings(cfg)

    def _path(self, cfg: EvalConfig) -> str:
        return "fast" if self.gram.fits(cfg) else "direct"

    def _blocks(self, cfg: EvalConfig, rows: torch.Tensor | None = None, exact: bool = True):
        d = self.data
        scorer = self.gram if self.gram.fits(cfg) else self.direct
        blocks = query_blocks(
            d.n_queries, d.n_candidates, self.chunk_size, scorer.block_scores, rows
        )
        return scorer.blocks(cfg, blocks, exact)

    def _compute(self, cfg: EvalConfig) -> EvalResult:
        t0 = time.perf_counter()
        top, rank = self.ranker.rank_blocks(self._blocks(cfg, exact=False))
        metrics = self.ranker.metrics(top, rank)
        seconds = time.perf_counter() - t0
        return EvalResult(cfg, metrics, self.baseline, rank, top, seconds, self._path(cfg))

    def evaluate(
        self,
        ablate: Sequence[int] = (),
        op: str = "subtract",
        whiten: str | bool = "none",
        alpha: float = 0.1,
        sides: str = "both",
    ) -> EvalResult:
        """Retrieval after removing ``ablate`` with ``op`` (and ReAlign when ``whiten``)."""
        cfg = EvalConfig.make(ablate, op, whiten, alpha, sides, c=self.c)
        with self._lock:
            if cfg in self._cache:
                self._cache.move_to_end(cfg)
                hit = self._cache[cfg]
                return EvalResult(
                    hit.config, hit.metrics, hit.baseline, hit.ranks, hit.top, 0.0, hit.path
                )
            res = self._compute(cfg)
            self._cache[cfg] = res
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        logger.info(
            "evaluated %d ablated (%s, %s) in %.3fs",
            len(cfg.ablate),
            cfg.op,
            cfg.whiten,
            res.seconds,
        )
        return res

    def query(
        self,
        i: int,
        ablate: Sequence[int] = (),
        op: str = "subtract",
        whiten: str | bool = "none",
        alpha: float = 0.1,
        sides: str = "both",
        top_n: int = 5,
    ) -> dict:
        """One query's top ``top_n`` candidates and the rank of its relevant one, before
        (original embeddings) and after (the setting)."""
        d = self.data
        i = check_index(i, d.n_queries, "query index")
        top_n = check_int(top_n, "top_n", 1, 100)
        cfg = EvalConfig.make(ablate, op, whiten, alpha, sides, c=self.c)
        out: dict[str, Any] = {
            "index": i,
            "label": d.query_label(i),
            "relevant": [
                {"index": j, "label": d.candidate_label(j)} for j in sorted(d.relevant[i])
            ],
        }
        rows = torch.tensor([i])
        for name, c in (("before", EvalConfig()), ("after", cfg)):
            with self._lock:
                _, scores = next(self._blocks(c, rows))
            n = min(top_n, d.n_candidates)
            val, idx = torch.topk(scores[0], n)
            out[name] = {
                "rank": int(self.ranker.ranks(rows, scores)[0]),
                "top": [
                    {
                        "index": int(j),
                        "label": d.candidate_label(int(j)),
                        "score": float(v),
                        "relevant": int(j) in d.relevant[i],
                    }
                    for v, j in zip(val.tolist(), idx.tolist())
                ],
            }
        return json_safe(out)

    def sweep(
        self,
        op: str = "subtract",
        whiten: str | bool = "none",
        alpha: float = 0.1,
        n_max: int = 32,
        steps: Sequence[int] | None = None,
        sides: str = "both",
    ) -> dict:
        """Recall@k and MRR after ablating the top ``n`` attribution concepts, for each ``n``
        in ``steps`` (default 0, 1, 2, 4, ... ``n_max``)."""

        n_max = min(check_int(n_max, "n_max", 0), self.c)
        if steps is not None:
            if isinstance(steps, (str, bytes, dict)) or not isinstance(steps, Sequence):
                raise ValueError("steps must be a list of integers")
            steps = sorted({check_int(s, "sweep step", 0, self.c) for s in steps})
            if len(steps) > 64:
                raise ValueError(f"at most 64 sweep steps, got {len(steps)}")
        else:
            steps = default_steps(n_max)
        order = self.ranking.tolist()
        out: dict[str, Any] = {
            "x": steps,
            "recall": {str(k): [] for k in self.ks},
            "MRR": [],
            "concepts": order[: max(steps, default=0)],
            "op": op,
            "whiten": whiten,
            "xlabel": "number of ablated top-attribution features",
        }
        for n in steps:
            r = self.evaluate(order[:n], op, whiten, alpha, sides)
            for k in self.ks:
                out["recall"][str(k)].append(r.metrics[f"R@{k}"])
            out["MRR"].append(r.metrics["MRR"])
        return json_safe(out)

    def export(self, *setting: Any, **kw: Any) -> dict:
        """The setting (the arguments of :meth:`evaluate`), its metrics next to the baseline
        and the ablated features' rows (JSON-ready; what the page's *Export* button
        downloads)."""
        res = self.evaluate(*setting, **kw)
        out = res.to_dict()
        out["setting"] = asdict(res.config)
        out["features"] = [self.feature(i) for i in res.config.ablate]
        out["data"] = {
            "n_queries": self.data.n_queries,
            "n_candidates": self.data.n_candidates,
            "d": self.data.d,
            "c": self.c,
        }
        return json_safe(out)
