"""The per-concept feature table: statistics from the explorer's codes, optionally replaced by
``saeprobe analyze``'s ``features.parquet``; sorted, filtered and searched for the page.

Columns are those of :data:`analysis.FEATURE_COLUMNS` (less ``feature``, the row id, and
``attribution``, always computed on the loaded retrieval data) plus ``name`` (from a
``name`` / ``label`` / ``description`` column of the features table).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from analysis import FEATURE_COLUMNS, modality_score, modality_tags

from .config import json_safe

__all__ = ["NAME_ALIASES", "SORT_KEYS", "TABLE_COLUMNS", "FeatureTable", "read_features"]

#: explorer columns: analysis.FEATURE_COLUMNS less the row id and attribution, plus a name
TABLE_COLUMNS: tuple[str, ...] = tuple(
    c for c in FEATURE_COLUMNS if c not in ("feature", "attribution")
) + ("name",)
NAME_ALIASES = ("label", "description")
#: what the page may sort by (``rank``: retrieval attribution, the default)
SORT_KEYS = (
    "rank",
    "id",
    "attribution",
    "energy",
    "energy_share",
    "frequency",
    "modality_score",
    "bridge_score",
)


def _mean_per_concept(
    values: torch.Tensor, indices: torch.Tensor, c: int, rows: int
) -> torch.Tensor:
    out = torch.zeros(c, dtype=torch.float64)
    out.index_add_(0, indices.reshape(-1), values.reshape(-1).double())
    return out / max(rows, 1)


def stats_columns(
    codes_q: Any, codes_c: Any, c: int, query_modality: str | None, candidate_modality: str | None
) -> dict[str, list]:
    """Energy, energy share, frequency, modality score, tag and per-modality energies of each
    concept over the query and candidate codes (the modality columns need one text side and
    one image side; NaN otherwise). Bridge score and the distractor / bridge flags come only
    from ``features.parquet`` (:func:`merge_features`)."""

    vals = torch.cat([codes_q.values, codes_c.values])
    idx = torch.cat([codes_q.indices, codes_c.indices])
    n_rows = vals.shape[0]
    energy = _mean_per_concept(vals, idx, c, n_rows)
    frequency = _mean_per_concept((vals != 0).double(), idx, c, n_rows)
    if {query_modality, candidate_modality} == {"text", "image"}:
        side = {query_modality: codes_q, candidate_modality: codes_c}
        et, ei = (
            _mean_per_concept(side[m].values, side[m].indices, c, side[m].values.shape[0])
            for m in ("text", "image")
        )
        score = modality_score(et, ei)
    else:
        et = ei = score = torch.full((c,), float("nan"), dtype=torch.float64)
    total = float(energy.sum())
    return {
        "energy": energy.tolist(),
        "energy_share": (energy / total if total > 0 else energy).tolist(),
        "frequency": frequency.tolist(),
        "modality_score": score.tolist(),
        "tag": modality_tags(score, energy),
        "energy_text": et.tolist(),
        "energy_image": ei.tolist(),
        "name": [""] * c,
    }


def read_features(features: str | os.PathLike | dict, c: int) -> dict[str, list]:
    """The columns of a features table (parquet / csv / dict of columns), checked against
    the SAE width ``c``."""
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
            "the features table needs a 'feature' column (concept ids); use saeprobe analyze's "
            "features.parquet"
        )
    ids = [int(x) for x in cols["feature"]]
    if ids and (min(ids) < 0 or max(ids) >= c):
        raise ValueError(
            f"features table ids span {min(ids)}..{max(ids)} but the SAE has {c} concepts; "
            "use the table written for this SAE"
        )
    for alias in NAME_ALIASES:
        if "name" not in cols and alias in cols:
            cols["name"] = cols[alias]
    cols["feature"] = ids
    return cols


def merge_features(table: dict[str, list], cols: dict[str, list], c: int) -> None:
    """Overwrite ``table``'s :data:`TABLE_COLUMNS` with those present in ``cols``."""
    for col in TABLE_COLUMNS:
        if col not in cols:
            continue
        if col not in table:
            table[col] = [None] * c
        for i, v in zip(cols["feature"], cols[col]):
            table[col][i] = v


def _float_array(values: list) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)


class FeatureTable:
    """Concepts with their statistics, in an order (by retrieval attribution by default).

    Parameters
    ----------
    columns : dict[str, list]
        One list of ``c`` values per column (:data:`TABLE_COLUMNS`, at least ``energy``).
    order : Tensor | ndarray [c]
        All concept ids, best first (the ``rank`` order).
    attribution : Tensor [c] | None
        Retrieval attribution (None: not known, e.g. a model without a retrieval task).
    stats_source : str
        Where the statistics come from (shown on the page).
    """

    def __init__(
        self,
        columns: dict[str, list],
        order: Any,
        attribution: torch.Tensor | None,
        stats_source: str,
    ) -> None:
        self.columns = columns
        self.c = len(columns["energy"])
        self.order = np.asarray(order, dtype=np.int64)
        self.stats_source = stats_source
        att = attribution.double().numpy() if attribution is not None else np.full(self.c, np.nan)
        self.attribution = att
        total = float(np.nansum(np.abs(att))) or 1.0
        self._num = {
            k: _float_array(v)
            for k, v in columns.items()
            if k not in ("tag", "name", "is_distractor")
        }
        self._num["attribution"] = att
        self._num["attribution_share"] = att / total
        self._num["id"] = np.arange(self.c, dtype=np.float64)
        self._tags = np.array(
            [str(t) for t in columns.get("tag", ["unknown"] * self.c)], dtype=object
        )
        names = columns.get("name", [""] * self.c)
        self._names = [str(n).lower() if n else "" for n in names]
        energy = np.nan_to_num(self._num["energy"])
        self.active = (energy != 0) | (np.nan_to_num(att) != 0)
        ranked = self.order[self.active[self.order]]
        self.rank_of = np.zeros(self.c, dtype=np.int64)  # 1-based among active, 0: inactive
        self.rank_of[ranked] = np.arange(1, ranked.size + 1)

    @property
    def n_active(self) -> int:
        return int(self.active.sum())

    def row(self, i: int, rank: int | None = None) -> dict:
        """One concept's row: ``id``, ``rank``, ``attribution``, ``attribution_share`` and
        every column."""
        if rank is None:
            rank = int(self.rank_of[i]) or None
        out = {
            "id": int(i),
            "rank": rank,
            "attribution": float(self._num["attribution"][i]),
            "attribution_share": float(self._num["attribution_share"][i]),
        }
        for col, vals in self.columns.items():
            out[col] = vals[i]
        return json_safe(out)

    def _select(
        self, only_active: bool, tag: str | None, search: str | None
    ) -> tuple[np.ndarray, np.ndarray]:
        idx = self.order[self.active[self.order]] if only_active else self.order
        ranks = np.arange(1, idx.size + 1)
        keep = np.ones(idx.size, dtype=bool)
        if tag:
            keep &= self._tags[idx] == tag
        if search:
            s = search.strip().lower()
            if s:
                hit = [s in self._names[i] or str(i) == s for i in idx.tolist()]
                keep &= np.array(hit, dtype=bool)
        return idx[keep], ranks[keep]

    def page(
        self,
        limit: int | None = 200,
        offset: int = 0,
        only_active: bool = True,
        sort: str = "rank",
        descending: bool | None = None,
        tag: str | None = None,
        search: str | None = None,
    ) -> tuple[int, list[dict]]:
        """``(number of matching concepts, rows[offset : offset + limit])``.

        ``sort`` is one of :data:`SORT_KEYS` (``rank`` ascending by default, the others
        descending); NaN values sort last.
        """
        if sort not in SORT_KEYS:
            raise ValueError(f"unknown sort key {sort!r}; use one of {', '.join(SORT_KEYS)}")
        idx, ranks = self._select(only_active, tag, search)
        if sort != "rank":
            key = self._num[sort][idx]
            desc = True if descending is None else bool(descending)
            filled = np.where(np.isnan(key), -np.inf if desc else np.inf, key)
            perm = np.argsort(-filled if desc else filled, kind="stable")
            idx, ranks = idx[perm], ranks[perm]
        elif descending:
            idx, ranks = idx[::-1], ranks[::-1]
        end = None if limit is None else offset + limit
        return int(idx.size), [
            self.row(i, int(r)) for i, r in zip(idx[offset:end], ranks[offset:end])
        ]

    def scatter(self, max_points: int = 5000) -> dict:
        """Energy vs modality score of the active concepts (the most energetic
        ``max_points``): ``{"id", "x", "y", "tag", "frequency", "name"}`` lists."""
        e, s = self._num["energy"], self._num.get("modality_score")
        if s is None:
            s = np.full(self.c, np.nan)
        ok = np.nonzero((np.nan_to_num(e) > 0) & ~np.isnan(s))[0]
        if ok.size > max_points:
            ok = ok[np.argsort(-e[ok], kind="stable")[:max_points]]
        freq = self._num.get("frequency", np.zeros(self.c))
        names = self.columns.get("name", [""] * self.c)
        return json_safe(
            {
                "id": ok.tolist(),
                "x": s[ok].tolist(),
                "y": e[ok].tolist(),
                "tag": self._tags[ok].tolist(),
                "frequency": freq[ok].tolist(),
                "name": [names[i] or "" for i in ok.tolist()],
                "n_without_score": int(((np.nan_to_num(e) > 0) & np.isnan(s)).sum()),
            }
        )
