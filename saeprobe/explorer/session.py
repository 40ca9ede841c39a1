"""The explorer's computation: SAE codes once, then retrieval after ablations and whitening.

``ExplorerSession(sae, data).evaluate(ablate, op, whiten, alpha)`` returns Recall@k and MRR
(:func:`saeprobe.ranking.ranking_metrics`) of the current setting next to the baseline
(original embeddings, no whitening).

Fast path (no whitening, ``Q * N`` within ``max_dense_scores``): the raw Gram matrix
``G = X_q X_c^T`` is computed once; an ablation of a concept set ``S`` is a rank-``2|S|``
update of it, so a request costs ``O(Q N |S|)`` plus a top-k, whatever ``d``:

* ``subtract`` / ``zero`` (``X' = X - A D_S``, with ``X`` the embeddings or the SAE
  reconstructions and ``A`` the codes restricted to ``S``)::

      <x'_q, x'_c> = G - A_q (X_c D_S^T)^T - (X_q D_S^T - A_q D_S D_S^T) A_c^T

* ``project`` (``X' = X - X B B^T``, ``B`` an orthonormal basis of ``span D_S``)::

      <x'_q, x'_c> = G - (X_q B) (X_c B)^T

and the row norms update likewise; the cosine is the ratio. Whitening (ReAlign, fitted on
each side separately as in the paper's reference code) changes every coordinate, so it takes
the direct path: :func:`analysis.ablate`, :func:`saeprobe.whitening.realign`, then a chunked
exhaustive search. Results are cached per setting.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data import ExplorerData

logger = logging.getLogger(__name__)

OPS = ("subtract", "zero", "project")
WHITEN = ("none", "realign")
SIDES = ("both", "query", "candidate")
FEATURE_TABLE_COLUMNS = (
    "energy",
    "energy_share",
    "frequency",
    "modality_score",
    "tag",
    "bridge_score",
    "is_distractor",
    "name",
)


@dataclass(frozen=True)
class EvalConfig:
    """One explorer setting (hashable; the cache key).

    Attributes
    ----------
    ablate : tuple[int, ...]
        Concepts to remove (sorted, unique).
    op : str
        ``subtract``, ``zero`` or ``project`` (see :func:`analysis.ablate`).
    whiten : str
        ``none`` or ``realign``.
    alpha : float
        ReAlign shrinkage (ignored without whitening).
    sides : str
        Ablate ``both`` sides, only the ``query`` side or only the ``candidate`` side.
    """

    ablate: tuple[int, ...] = ()
    op: str = "subtract"
    whiten: str = "none"
    alpha: float = 0.1
    sides: str = "both"

    @classmethod
    def make(
        cls,
        ablate: Sequence[int] | torch.Tensor = (),
        op: str = "subtract",
        whiten: str | bool | None = "none",
        alpha: float = 0.1,
        sides: str = "both",
        c: int | None = None,
    ) -> EvalConfig:
        """Validated config (clear one-line errors for bad input)."""
        if op not in OPS:
            raise ValueError(f"unknown ablation op {op!r}; use one of {', '.join(OPS)}")
        if whiten is None or whiten is False:
            whiten = "none"
        elif whiten is True:
            whiten = "realign"
        if whiten not in WHITEN:
            raise ValueError(f"unknown whitening {whiten!r}; use 'none' or 'realign'")
        if sides not in SIDES:
            raise ValueError(f"sides must be one of {', '.join(SIDES)}, got {sides!r}")
        try:
            alpha = float(alpha)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}") from exc
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
        if isinstance(ablate, torch.Tensor):
            ablate = ablate.reshape(-1).tolist()
        try:
            ids = sorted({int(i) for i in ablate})
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"ablate must be a list of integer feature ids, got {ablate!r}"
            ) from exc
        if c is not None and ids and (ids[0] < 0 or ids[-1] >= c):
            raise ValueError(
                f"feature ids must lie in [0, {c}) (the SAE width), got {ids[0]}..{ids[-1]}"
            )
        if whiten == "none":
            alpha = 0.1
        return cls(tuple(ids), op, whiten, alpha, sides)


@dataclass
class EvalResult:
    """Metrics of one setting next to the baseline.

    Attributes
    ----------
    config : EvalConfig
    metrics, baseline : dict[str, float]
        ``R@1``, ``R@5``, ``R@10`` (those ``<= N``), ``MRR`` (within the top 10, from
        :func:`saeprobe.ranking.ranking_metrics`), ``median_rank`` (full ranking).
    ranks : ndarray [Q]
        1-based rank of each query's best-ranked relevant candidate (0: none relevant).
    top : Tensor [Q, K]
        Ranked candidate rows, best first.
    seconds : float
        Compute time (0 when served from the cache).
    path : str
        ``fast`` (Gram update) or ``direct`` (embeddings recomputed).
    """

    config: EvalConfig
    metrics: dict[str, float]
    baseline: dict[str, float]
    ranks: np.ndarray
    top: torch.Tensor
    seconds: float
    path: str
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-friendly summary (no per-query arrays)."""
        return json_safe(
            {
                "config": asdict(self.config),
                "metrics": self.metrics,
                "baseline": self.baseline,
                "delta": {
                    k: self.metrics[k] - self.baseline[k]
                    for k in self.metrics
                    if k in self.baseline
                },
                "n_ablated": len(self.config.ablate),
                "seconds": self.seconds,
                "path": self.path,
            }
        )


def json_safe(obj: Any) -> Any:
    """Replace NaN / inf by ``None`` and numpy / torch scalars by Python ones, recursively."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (np.generic, torch.Tensor)) and getattr(obj, "ndim", 0) == 0:
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _sae_tensors(sae: Any, d: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The SAE's dictionary ``[c, d]`` and decoder bias ``[d]`` (or None), float32 on CPU;
    checks the width against the embeddings."""
    D = getattr(sae, "dictionary", None)
    if not isinstance(D, torch.Tensor) or D.ndim != 2:
        raise ValueError("the SAE has no `dictionary` [c, d]; load it with saeprobe.sae.load_sae")
    if D.shape[1] != d:
        raise ValueError(
            f"the embeddings have d={d} but the SAE expects d_in={D.shape[1]}; use the SAE "
            "trained on this model / hook point"
        )
    b = getattr(sae, "b_dec", None)
    b = b.detach().float().cpu() if isinstance(b, torch.Tensor) else None
    return D.detach().float().cpu().contiguous(), b


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


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
        max_dense_scores: int = 50_000_000,
        chunk_size: int = 1024,
        cache_size: int = 32,
    ) -> None:
        from analysis import encode_all, pairs_from_relevant, retrieval_attribution, top_distractors

        t0 = time.perf_counter()
        self.data = data
        self.dictionary, self.bias = _sae_tensors(sae, data.d)
        self.c = int(self.dictionary.shape[0])
        self.codes_q = encode_all(sae, data.queries)
        self.codes_c = encode_all(sae, data.candidates)
        n = data.n_candidates
        self.ks = [int(k) for k in ks if int(k) <= n] or [1]
        self.k_top = min(max(max(self.ks), 10), n)
        self.max_dense_scores = int(max_dense_scores)
        self.chunk_size = int(chunk_size)
        self._lock = threading.RLock()
        self._cache: OrderedDict[EvalConfig, EvalResult] = OrderedDict()
        self._cache_size = int(cache_size)
        self._emb_cache: OrderedDict[EvalConfig, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._gram: dict[tuple[str, str], torch.Tensor] = {}
        self._norm2: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._base_vecs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        rel_max = max((len(r) for r in data.relevant), default=0)
        self._rel_pad = torch.full((data.n_queries, max(rel_max, 1)), -1, dtype=torch.long)
        for i, r in enumerate(data.relevant):
            if r:
                self._rel_pad[i, : len(r)] = torch.tensor(sorted(r))

        qi, ci = pairs_from_relevant(data.relevant)
        if qi.numel() == 0:
            raise ValueError("no query has a relevant candidate: nothing to attribute or evaluate")
        att = retrieval_attribution(
            self.codes_q,
            self.codes_c,
            self.dictionary,
            pairs=(qi, ci),
            x_q=data.queries,
            x_c=data.candidates,
            normalize=True,
        )
        self.attribution = att.attribution  # [c] float64
        self.mean_similarity = att.mean_similarity
        self.ranking = top_distractors(self.attribution, self.c)  # all concepts, best first
        self.table = self._feature_table(features)
        self.baseline_result = self._compute(EvalConfig(), baseline={})
        self.baseline = self.baseline_result.metrics
        self.baseline_result.baseline = self.baseline
        self._cache[EvalConfig()] = self.baseline_result
        logger.info(
            "explorer session ready in %.2fs: %d queries, %d candidates, d=%d, c=%d, baseline %s",
            time.perf_counter() - t0,
            data.n_queries,
            n,
            data.d,
            self.c,
            {k: round(v, 4) for k, v in self.baseline.items()},
        )

    # ------------------------------------------------------------------ features
    def _feature_table(self, features: str | Path | dict | None) -> dict[str, list]:
        from analysis import modality_score, modality_tags

        c = self.c
        vals = torch.cat([self.codes_q.values, self.codes_c.values]).double()
        idx = torch.cat([self.codes_q.indices, self.codes_c.indices])
        n_rows = vals.shape[0]

        def mean_of(v: torch.Tensor, i: torch.Tensor, rows: int) -> torch.Tensor:
            out = torch.zeros(c, dtype=torch.float64)
            out.index_add_(0, i.reshape(-1), v.reshape(-1))
            return out / max(rows, 1)

        energy = mean_of(vals, idx, n_rows)
        frequency = mean_of((vals != 0).double(), idx, n_rows)
        d = self.data
        if {d.query_modality, d.candidate_modality} == {"text", "image"}:
            side = {d.query_modality: self.codes_q, d.candidate_modality: self.codes_c}
            et = mean_of(
                side["text"].values.double(), side["text"].indices, side["text"].values.shape[0]
            )
            ei = mean_of(
                side["image"].values.double(), side["image"].indices, side["image"].values.shape[0]
            )
            score = modality_score(et, ei)
        else:
            score = torch.full((c,), float("nan"), dtype=torch.float64)
        total = float(energy.sum())
        table: dict[str, list] = {
            "energy": energy.tolist(),
            "energy_share": (energy / total if total > 0 else energy).tolist(),
            "frequency": frequency.tolist(),
            "modality_score": score.tolist(),
            "tag": modality_tags(score, energy),
            "name": [""] * c,
        }
        self.stats_source = "explorer data"
        if features is not None:
            self._merge_table(table, features)
        return table

    def _merge_table(self, table: dict[str, list], features: str | Path | dict) -> None:
        if isinstance(features, dict):
            cols = {k: list(v) for k, v in features.items()}
        else:
            path = Path(features)
            if not path.is_file():
                raise FileNotFoundError(
                    f"no features table at {path}: pass features.parquet from saeprobe analyze"
                )
            if path.suffix == ".csv":
                import pyarrow.csv as pacsv

                cols = pacsv.read_csv(path).to_pydict()
            else:
                import pyarrow.parquet as pq

                cols = pq.read_table(path).to_pydict()
        if "feature" not in cols:
            raise ValueError(
                "the features table needs a 'feature' column (concept ids); use saeprobe analyze's features.parquet"
            )
        ids = [int(x) for x in cols["feature"]]
        if ids and (min(ids) < 0 or max(ids) >= self.c):
            raise ValueError(
                f"features table ids span {min(ids)}..{max(ids)} but the SAE has {self.c} concepts; "
                "use the table written for this SAE"
            )
        for alias in ("label", "description"):
            if "name" not in cols and alias in cols:
                cols["name"] = cols[alias]
        for col in FEATURE_TABLE_COLUMNS:
            if col not in cols:
                continue
            if col not in table:
                table[col] = [None] * self.c
            for i, v in zip(ids, cols[col]):
                table[col][i] = v
        self.stats_source = "features table"

    def features(
        self, limit: int | None = 200, offset: int = 0, only_active: bool = True
    ) -> list[dict]:
        """Concepts sorted by retrieval attribution (highest first) with their statistics."""
        out = []
        total = float(self.attribution.abs().sum()) or 1.0
        A = self.attribution.tolist()
        energy = self.table["energy"]
        pos = 0
        for i in self.ranking.tolist():
            if only_active and not (energy[i] or A[i] != 0):
                continue
            if pos >= offset:
                row = {
                    "id": i,
                    "rank": pos + 1,
                    "attribution": A[i],
                    "attribution_share": A[i] / total,
                }
                for col, vals in self.table.items():
                    row[col] = vals[i]
                out.append(row)
            pos += 1
            if limit is not None and len(out) >= limit:
                break
        return json_safe(out)

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
                "query_modality": d.query_modality,
                "candidate_modality": d.candidate_modality,
                "baseline": self.baseline,
                "mean_cosine_relevant": self.mean_similarity,
                "stats_source": self.stats_source,
                "n_active": int(sum(1 for e in self.table["energy"] if e)),
            }
        )

    # ------------------------------------------------------------------ embeddings (direct path)
    def _base(self, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw vectors the op acts on: ``x`` (embeddings) or ``rec`` (SAE reconstructions)."""
        if kind not in self._base_vecs:
            from analysis import decode

            if kind == "x":
                v = (self.data.queries, self.data.candidates)
            else:
                v = tuple(
                    decode(codes.values, codes.indices, self.dictionary, self.bias)
                    for codes in (self.codes_q, self.codes_c)
                )
            self._base_vecs[kind] = v
        return self._base_vecs[kind]

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
        return self._embeddings(EvalConfig.make(ablate, op, whiten, alpha, sides, c=self.c))

    def _embeddings(self, cfg: EvalConfig) -> tuple[torch.Tensor, torch.Tensor]:
        with self._lock:
            if cfg in self._emb_cache:
                self._emb_cache.move_to_end(cfg)
                return self._emb_cache[cfg]
        from analysis import ablate

        S = list(cfg.ablate)
        xq, xc = self.data.queries, self.data.candidates
        q = (
            ablate(xq, self.codes_q, self.dictionary, S, cfg.op, bias=self.bias)
            if cfg.sides != "candidate"
            else _unit(xq)
        )
        c = (
            ablate(xc, self.codes_c, self.dictionary, S, cfg.op, bias=self.bias)
            if cfg.sides != "query"
            else _unit(xc)
        )
        if cfg.whiten == "realign":
            from saeprobe.whitening import realign

            q, c = realign(q, alpha=cfg.alpha), realign(c, alpha=cfg.alpha)
        with self._lock:
            self._emb_cache[cfg] = (q, c)
            while len(self._emb_cache) > 2:
                self._emb_cache.popitem(last=False)
        return q, c

    # ------------------------------------------------------------------ fast path
    def _fast_ok(self, cfg: EvalConfig) -> bool:
        return (
            cfg.whiten == "none"
            and self.data.n_queries * self.data.n_candidates <= self.max_dense_scores
        )

    def _gram_of(self, kq: str, kc: str) -> torch.Tensor:
        """Raw ``[Q, N]`` inner products of the query base ``kq`` with the candidate base ``kc``."""
        if (kq, kc) not in self._gram:
            self._gram[(kq, kc)] = self._base(kq)[0] @ self._base(kc)[1].T
        return self._gram[(kq, kc)]

    def _norms2(self, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Squared row norms (float64) of the base vectors."""
        if kind not in self._norm2:
            xq, xc = self._base(kind)
            self._norm2[kind] = ((xq.double() ** 2).sum(1), (xc.double() ** 2).sum(1))
        return self._norm2[kind]

    def _restricted_codes(self, codes, S: torch.Tensor) -> torch.Tensor:
        """Dense codes on the concepts ``S`` only: ``[N, |S|]``."""
        lookup = torch.full((self.c,), -1, dtype=torch.long)
        lookup[S] = torch.arange(S.numel())
        pos = lookup[codes.indices]
        ok = pos >= 0
        A = torch.zeros(codes.values.shape[0], S.numel() + 1)
        A.scatter_add_(
            1, torch.where(ok, pos, S.numel()), torch.where(ok, codes.values.float(), 0.0)
        )
        return A[:, :-1]

    def _fast_terms(self, cfg: EvalConfig):
        """``(gram, U, V, n2_q, n2_c)`` with scores ``(gram - U V^T) / (|q'| |c'|)``."""
        do_q, do_c = cfg.sides != "candidate", cfg.sides != "query"
        # "zero" acts on the SAE reconstructions; a side left alone keeps its embeddings
        kq = "rec" if cfg.op == "zero" and do_q else "x"
        kc = "rec" if cfg.op == "zero" and do_c else "x"
        xq, xc = self._base(kq)[0], self._base(kc)[1]
        gram = self._gram_of(kq, kc)
        n2_q, n2_c = self._norms2(kq)[0], self._norms2(kc)[1]
        S = torch.tensor(cfg.ablate, dtype=torch.long)
        if S.numel() == 0:
            return gram, None, None, n2_q, n2_c
        DS = self.dictionary[S]
        if cfg.op == "project":
            B, _ = torch.linalg.qr(DS.T.double())  # [d, r]
            Pq, Pc = xq @ B.float(), xc @ B.float()
            if do_q:
                n2_q = n2_q - (Pq.double() ** 2).sum(1)
            if do_c:
                n2_c = n2_c - (Pc.double() ** 2).sum(1)
            return gram, Pq, Pc, n2_q, n2_c
        Gq, Gc = (xq @ DS.T).double(), (xc @ DS.T).double()
        M = DS.double() @ DS.T.double()
        Aq = self._restricted_codes(self.codes_q, S).double() if do_q else torch.zeros_like(Gq)
        Ac = self._restricted_codes(self.codes_c, S).double() if do_c else torch.zeros_like(Gc)
        AqM = Aq @ M
        n2_q = n2_q - 2 * (Aq * Gq).sum(1) + (AqM * Aq).sum(1)
        n2_c = n2_c - 2 * (Ac * Gc).sum(1) + ((Ac @ M) * Ac).sum(1)
        U = torch.cat([Aq, Gq - AqM], 1).float()
        V = torch.cat([Gc, Ac], 1).float()
        return gram, U, V, n2_q, n2_c

    # ------------------------------------------------------------------ scoring
    def _score_blocks(self, cfg: EvalConfig, rows: torch.Tensor | None = None, exact: bool = True):
        """Yield ``(query rows, scores [b, N])`` for a setting (all queries by default).

        ``exact=False`` leaves out the per-query scale ``1 / |q'|`` (ranks within a row do not
        change), saving a pass over the block.
        """
        Q = self.data.n_queries
        # at most chunk_size query rows and about 8M scores per block
        b = max(1, min(self.chunk_size, 8_000_000 // self.data.n_candidates))
        if rows is None:
            blocks = [slice(s, min(s + b, Q)) for s in range(0, Q, b)]
        else:
            blocks = [rows[s : s + b] for s in range(0, rows.numel(), b)]
        if self._fast_ok(cfg):
            gram, U, V, n2_q, n2_c = self._fast_terms(cfg)
            inv_c = (1.0 / n2_c.clamp_min(0).sqrt().clamp_min(1e-12)).float()
            inv_q = (1.0 / n2_q.clamp_min(0).sqrt().clamp_min(1e-12)).float()
            for r in blocks:
                num = (
                    gram[r] * inv_c
                    if U is None
                    else torch.addmm(gram[r], U[r], V.T, alpha=-1.0).mul_(inv_c)
                )
                yield r, num.mul_(inv_q[r, None]) if exact else num
        else:
            q, c = self._embeddings(cfg)
            for r in blocks:
                yield r, q[r] @ c.T

    def _ranks(self, r, scores: torch.Tensor, top: torch.Tensor | None = None) -> torch.Tensor:
        """1-based rank of each row's best relevant candidate (0: none relevant): the number of
        candidates scoring strictly higher, plus one."""
        rel = self._rel_pad[r]
        valid = rel >= 0
        has = valid.any(1)
        rs = torch.gather(scores, 1, rel.clamp_min(0)).masked_fill(~valid, float("-inf"))
        best = rs.max(1).values
        rank = torch.zeros(rel.shape[0], dtype=torch.long)
        todo = has
        if top is not None:  # relevant inside the top-K: its rank is its position
            hit = (top[:, :, None] == rel[:, None, :]).logical_and_(valid[:, None, :]).any(2)
            found = hit.any(1)
            rank[found] = hit[found].int().argmax(1) + 1
            todo = has & ~found
        if todo.any():
            idx = torch.nonzero(todo).reshape(-1)
            sub = scores[idx]
            rank[idx] = torch.gt(sub, best[idx, None]).sum(1, dtype=torch.int64) + 1
        return rank

    def _compute(self, cfg: EvalConfig, baseline: dict[str, float]) -> EvalResult:
        from saeprobe.ranking import ranking_metrics

        t0 = time.perf_counter()
        tops, ranks = [], []
        for r, scores in self._score_blocks(cfg, exact=False):
            top = torch.topk(scores, self.k_top, dim=1).indices
            tops.append(top)
            ranks.append(self._ranks(r, scores, top))
        top = torch.cat(tops)
        rank = torch.cat(ranks).numpy()
        m = ranking_metrics(top, self.data.relevant, self.ks, ndcg_k=10, complete=True)
        metrics = {f"R@{k}": m[f"R@{k}"] for k in self.ks}
        metrics["MRR"] = m["MRR"]
        found = rank[rank > 0]
        metrics["median_rank"] = float(np.median(found)) if found.size else float("nan")
        seconds = time.perf_counter() - t0
        path = "fast" if self._fast_ok(cfg) else "direct"
        return EvalResult(cfg, metrics, baseline, rank, top, seconds, path)

    # ------------------------------------------------------------------ public
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
            res = self._compute(cfg, self.baseline if hasattr(self, "baseline") else {})
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
        Q = self.data.n_queries
        try:
            i = int(i)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"query index must be an integer, got {i!r}") from exc
        if not 0 <= i < Q:
            raise ValueError(f"query index {i} is outside [0, {Q})")
        cfg = EvalConfig.make(ablate, op, whiten, alpha, sides, c=self.c)
        d = self.data
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
                _, scores = next(self._score_blocks(c, rows))
            n = min(int(top_n), d.n_candidates)
            val, idx = torch.topk(scores[0], n)
            out[name] = {
                "rank": int(self._ranks(rows, scores)[0]),
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
        from analysis import default_steps

        n_max = max(0, min(int(n_max), self.c))
        steps = sorted({int(s) for s in steps}) if steps is not None else default_steps(n_max)
        if steps and (steps[0] < 0 or steps[-1] > self.c):
            raise ValueError(f"sweep steps must lie in [0, {self.c}]")
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
