"""Explorer input: query and candidate embeddings with relevance judgements.

File format (one ``.safetensors`` file), either

* **retrieval**: ``queries`` float [Q, d] and ``candidates`` float [N, d], with relevance as
  (first match wins)

  - a tensor ``qrels`` int64 [R, 2] of ``(query row, candidate row)`` pairs, or
  - a tensor ``relevant`` int64 [Q] (one relevant candidate per query, -1 for none), or
  - a sidecar JSON passed as ``qrels=`` (``{"0": [3, 7], ...}`` or ``[[3, 7], ...]``:
    per query row the relevant candidate rows), or
  - nothing, when ``Q == N``: query ``i`` is relevant to candidate ``i``;

* **pairs** (the ``analysis`` pairs file): ``image_emb`` [P, d] and ``text_emb`` [P, d], pair
  ``i`` relevant to ``i``; ``direction="t2i"`` (default) makes texts the queries and images
  the candidates, ``"i2t"`` the reverse.

Optional safetensors metadata (strings): ``query_modality`` / ``candidate_modality``
(``"text"`` or ``"image"``, used for modality scores when no features table is given) and
``query_labels`` / ``candidate_labels`` (JSON lists of strings shown in the per-query view,
e.g. captions or image ids; ``text_labels`` / ``image_labels``, else the pairs file's
``text_ids`` / ``image_ids``, for a pairs file). Write a file with :func:`save_data`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..atomic import atomic_save_safetensors

MODALITIES = ("text", "image")
DIRECTIONS = ("t2i", "i2t")


@dataclass
class ExplorerData:
    """Queries, candidates and relevance for the explorer.

    Attributes
    ----------
    queries : Tensor [Q, d]
    candidates : Tensor [N, d]
    relevant : list[set[int]]
        Per query, the relevant candidate rows.
    query_labels, candidate_labels : list[str] | None
        Display strings (default: ``"query 3"`` / ``"cand 17"``).
    query_modality, candidate_modality : str | None
        ``"text"`` / ``"image"`` when known.
    """

    queries: torch.Tensor
    candidates: torch.Tensor
    relevant: list[set[int]]
    query_labels: list[str] | None = None
    candidate_labels: list[str] | None = None
    query_modality: str | None = None
    candidate_modality: str | None = None

    def __post_init__(self) -> None:
        q, c = self.queries, self.candidates
        if q.ndim != 2 or c.ndim != 2 or q.shape[1] != c.shape[1]:
            raise ValueError(
                f"queries [Q, d] and candidates [N, d] must be 2-D with the same d, got "
                f"{tuple(q.shape)} and {tuple(c.shape)}"
            )
        if q.shape[0] == 0 or c.shape[0] == 0:
            raise ValueError("the explorer needs at least one query and one candidate")
        if not q.is_floating_point() or not c.is_floating_point():
            raise ValueError("queries and candidates must be floating-point embeddings")
        self.queries, self.candidates = q.float(), c.float()
        if len(self.relevant) != q.shape[0]:
            raise ValueError(
                f"relevance lists {len(self.relevant)} queries but there are {q.shape[0]}"
            )
        n = c.shape[0]
        self.relevant = [{int(j) for j in r} for r in self.relevant]
        for i, r in enumerate(self.relevant):
            bad = [j for j in r if not 0 <= j < n]
            if bad:
                raise ValueError(
                    f"query {i} lists relevant candidate {bad[0]} outside [0, {n}); "
                    "relevance uses 0-based candidate rows"
                )
        for name, labels, size in (
            ("query_labels", self.query_labels, q.shape[0]),
            ("candidate_labels", self.candidate_labels, n),
        ):
            if labels is not None and len(labels) != size:
                raise ValueError(f"{name} has {len(labels)} entries for {size} rows")
        for name in ("query_modality", "candidate_modality"):
            m = getattr(self, name)
            if m is not None and m not in MODALITIES:
                raise ValueError(f"{name} must be 'text' or 'image', got {m!r}")

    @property
    def n_queries(self) -> int:
        return int(self.queries.shape[0])

    @property
    def n_candidates(self) -> int:
        return int(self.candidates.shape[0])

    @property
    def d(self) -> int:
        return int(self.queries.shape[1])

    def query_label(self, i: int) -> str:
        return self.query_labels[i] if self.query_labels else f"query {i}"

    def candidate_label(self, j: int) -> str:
        return self.candidate_labels[j] if self.candidate_labels else f"cand {j}"


def from_pairs(
    image_emb: torch.Tensor, text_emb: torch.Tensor, direction: str = "t2i", **labels
) -> ExplorerData:
    """Matched pairs (row ``i`` of each is one pair) as retrieval data: ``t2i`` = text queries
    rank images; ``i2t`` the reverse."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be 't2i' or 'i2t', got {direction!r}")
    if image_emb.shape != text_emb.shape:
        raise ValueError(
            f"image_emb {tuple(image_emb.shape)} and text_emb {tuple(text_emb.shape)} must match "
            "row by row (pair i in row i of both)"
        )
    q, c = (text_emb, image_emb) if direction == "t2i" else (image_emb, text_emb)
    qm, cm = ("text", "image") if direction == "t2i" else ("image", "text")
    return ExplorerData(
        q, c, [{i} for i in range(q.shape[0])], query_modality=qm, candidate_modality=cm, **labels
    )


def _relevance_from_json(obj, n_queries: int) -> list[set[int]]:
    if isinstance(obj, dict):
        out: list[set[int]] = [set() for _ in range(n_queries)]
        for key, rows in obj.items():
            qi = int(key)
            if not 0 <= qi < n_queries:
                raise ValueError(f"qrels names query {qi} outside [0, {n_queries})")
            out[qi] = {int(r) for r in ([rows] if isinstance(rows, int) else rows)}
        return out
    if isinstance(obj, list):
        return [{int(r) for r in ([rows] if isinstance(rows, int) else rows)} for rows in obj]
    raise ValueError(
        'qrels JSON must be {"query row": [candidate rows]} or a list (per query) of candidate rows'
    )


def load_data(
    path: str | os.PathLike, qrels: str | os.PathLike | None = None, direction: str = "t2i"
) -> ExplorerData:
    """Read an explorer data file (see the module docstring)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no explorer data file at {path}: pass a .safetensors with queries/candidates or "
            "image_emb/text_emb (docs/explorer.md)"
        )
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        meta = dict(f.metadata() or {})
        t = {k: f.get_tensor(k) for k in keys}

    def labels(name: str) -> list[str] | None:
        return [str(x) for x in json.loads(meta[name])] if name in meta else None

    if {"queries", "candidates"} <= keys:
        q, c = t["queries"], t["candidates"]
        if qrels is not None:
            relevant = _relevance_from_json(json.loads(Path(qrels).read_text()), q.shape[0])
        elif "qrels" in t:
            pairs = t["qrels"].long()
            if pairs.ndim != 2 or pairs.shape[1] != 2:
                raise ValueError(
                    f"qrels must be int64 [R, 2] (query row, candidate row), got {tuple(pairs.shape)}"
                )
            relevant = [set() for _ in range(q.shape[0])]
            for qi, ci in pairs.tolist():
                if not 0 <= qi < q.shape[0]:
                    raise ValueError(f"qrels names query {qi} outside [0, {q.shape[0]})")
                relevant[qi].add(ci)
        elif "relevant" in t:
            rel = t["relevant"].long().reshape(-1)
            relevant = [set() if int(r) < 0 else {int(r)} for r in rel]
        elif q.shape[0] == c.shape[0]:
            relevant = [{i} for i in range(q.shape[0])]
        else:
            raise ValueError(
                f"{path}: {q.shape[0]} queries and {c.shape[0]} candidates but no relevance; add a "
                "'qrels' [R, 2] or 'relevant' [Q] tensor, or pass a qrels JSON"
            )
        return ExplorerData(
            q,
            c,
            relevant,
            query_labels=labels("query_labels"),
            candidate_labels=labels("candidate_labels"),
            query_modality=meta.get("query_modality"),
            candidate_modality=meta.get("candidate_modality"),
        )
    if {"image_emb", "text_emb"} <= keys:
        img_l = labels("image_labels") or labels("image_ids")
        txt_l = labels("text_labels") or labels("text_ids")
        ql, cl = (txt_l, img_l) if direction == "t2i" else (img_l, txt_l)
        return from_pairs(
            t["image_emb"], t["text_emb"], direction, query_labels=ql, candidate_labels=cl
        )
    raise ValueError(
        f"{path} holds {sorted(keys)}; the explorer needs 'queries' + 'candidates' or "
        "'image_emb' + 'text_emb' (docs/explorer.md)"
    )


def save_data(
    path: str | os.PathLike,
    queries: torch.Tensor,
    candidates: torch.Tensor,
    relevant: Sequence[set[int]] | None = None,
    query_labels: Sequence[str] | None = None,
    candidate_labels: Sequence[str] | None = None,
    query_modality: str | None = None,
    candidate_modality: str | None = None,
) -> Path:
    """Write a retrieval data file (``queries``, ``candidates``, ``qrels``) atomically."""
    rel = list(relevant) if relevant is not None else [{i} for i in range(queries.shape[0])]
    data = ExplorerData(  # validates
        queries,
        candidates,
        rel,
        list(query_labels) if query_labels else None,
        list(candidate_labels) if candidate_labels else None,
        query_modality,
        candidate_modality,
    )
    pairs = [(qi, ci) for qi, r in enumerate(data.relevant) for ci in sorted(r)]
    tensors = {
        "queries": data.queries.contiguous(),
        "candidates": data.candidates.contiguous(),
        "qrels": torch.tensor(pairs, dtype=torch.long).reshape(-1, 2),
    }
    meta = {}
    if query_modality:
        meta["query_modality"] = query_modality
    if candidate_modality:
        meta["candidate_modality"] = candidate_modality
    if data.query_labels:
        meta["query_labels"] = json.dumps(data.query_labels)
    if data.candidate_labels:
        meta["candidate_labels"] = json.dumps(data.candidate_labels)
    return atomic_save_safetensors(path, tensors, meta or None, what="explorer data")
