"""An M-BEIR task folder: its two sides and relevance judgements (:func:`open_mbeir`)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from .side import MBEIRSide, _pick, find_task_files, side_modalities
from .tasks import TASK_NAMES, TASK_TYPES, infer_task

logger = logging.getLogger(__name__)

__all__ = ["MBEIRTask", "open_mbeir"]

QREL_QUERY_COLUMNS = ("query-id", "query_id", "qid")
QREL_CORPUS_COLUMNS = ("corpus-id", "corpus_id", "did", "doc_id")


@dataclass
class MBEIRTask:
    """A loaded M-BEIR task folder.

    Attributes
    ----------
    path : Path
    task : int
        The paper's task type (1-8).
    queries, corpus : MBEIRSide
        Lazy item sequences.
    qrels : dict[str, set[str]]
        Query id -> relevant corpus ids (known ids only).
    gains : dict[str, dict[str, float]] | None
        Graded relevance when the qrels carry a non-binary ``score`` column.
    """

    path: Path
    task: int
    queries: MBEIRSide
    corpus: MBEIRSide
    qrels: dict[str, set[str]]
    gains: dict[str, dict[str, float]] | None = None
    info: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name

    def relevant_rows(self, graded: bool = False) -> list:
        """Per query (in order), the relevant candidate row indices (set, or dict
        row -> gain with ``graded=True`` and a score column)."""
        row_of = {cid: i for i, cid in enumerate(self.corpus.ids)}
        out: list = []
        for qid in self.queries.ids:
            if graded and self.gains is not None:
                g = self.gains.get(qid, {})
                out.append({row_of[c]: v for c, v in g.items() if c in row_of})
            else:
                out.append({row_of[c] for c in self.qrels.get(qid, ()) if c in row_of})
        return out

    def spec(self) -> dict:
        """JSON description (for cache fingerprints)."""
        return {"type": "mbeir", "path": str(self.path), "task": self.task, **self.info}

    def __repr__(self) -> str:
        return (
            f"MBEIRTask({self.name}, task {self.task} {TASK_NAMES[self.task]}, "
            f"{len(self.queries)} queries, {len(self.corpus)} candidates)"
        )


def _read_qrels(files: list[Path]) -> tuple[list[str], list[str], list[float] | None]:
    qs: list[str] = []
    cs: list[str] = []
    scores: list[float] | None = []
    for f in files:
        t = pq.read_table(f)
        names = t.column_names
        qc = _pick(names, QREL_QUERY_COLUMNS, "query-id", f)
        cc = _pick(names, QREL_CORPUS_COLUMNS, "corpus-id", f)
        qs.extend(str(v) for v in t.column(qc).to_pylist())
        cs.extend(str(v) for v in t.column(cc).to_pylist())
        if "score" in names and scores is not None:
            scores.extend(float(v) if v is not None else 1.0 for v in t.column("score").to_pylist())
        else:
            scores = None
    return qs, cs, scores


def open_mbeir(
    path: str | os.PathLike,
    *,
    task: int | None = None,
    limit_queries: int | None = None,
    limit_corpus: int | None = None,
    **_ignored: Any,
) -> MBEIRTask:
    """Load an M-BEIR task folder (MRBench parquet layout).

    Parameters
    ----------
    path : str | Path
        The task folder.
    task : int | None
        The paper's task type 1-8 (default: inferred from the modalities).
    limit_queries : int | None
        Keep the first N queries (the corpus stays whole, so scores are comparable).
    limit_corpus : int | None
        Keep the first N candidates (for smoke tests; changes the task).

    Returns
    -------
    MBEIRTask
    """
    if limit_queries is None and _ignored.get("limit") is not None:
        limit_queries = int(_ignored["limit"])  # open_source(..., limit=N)
    root = Path(path)
    files = find_task_files(root)
    if task is None:
        task = infer_task(
            side_modalities(files["query"]), side_modalities(files["corpus"]), str(root)
        )
        logger.info(
            "%s: task %d (%s) inferred from the modalities", root.name, task, TASK_NAMES[task]
        )
    elif task not in TASK_TYPES:
        raise ValueError(f"task must be one of 1-8 (the paper's M-BEIR task types), got {task}")
    t = TASK_TYPES[task]
    queries = MBEIRSide(
        files["query"], "query", t.query_kind, t.query_prompt, task=task, limit=limit_queries
    )
    corpus = MBEIRSide(
        files["corpus"], "corpus", t.corpus_kind, t.corpus_prompt, task=task, limit=limit_corpus
    )
    qrels, gains, graded = _match_qrels(
        root, files["qrels"], queries, corpus, limit_queries, limit_corpus
    )
    info = {
        "n_queries": len(queries),
        "n_corpus": len(corpus),
        "n_qrels": sum(len(v) for v in qrels.values()),
        "limit_queries": limit_queries,
        "limit_corpus": limit_corpus,
    }
    return MBEIRTask(root, task, queries, corpus, qrels, gains if graded else None, info)


def _match_qrels(root, files, queries, corpus, limit_queries, limit_corpus):
    """``(qrels, gains, graded)`` restricted to known ids, with a warning per problem."""
    q_ids, c_ids, scores = _read_qrels(files)
    known_q, known_c = set(queries.ids), set(corpus.ids)
    qrels: dict[str, set[str]] = {}
    gains: dict[str, dict[str, float]] = {}
    unknown_q = unknown_c = 0
    for j, (q, c) in enumerate(zip(q_ids, c_ids)):
        s = scores[j] if scores is not None else 1.0
        if s <= 0:
            continue
        if q not in known_q:
            unknown_q += 1
        elif c not in known_c:
            unknown_c += 1
        else:
            qrels.setdefault(q, set()).add(c)
            gains.setdefault(q, {})[c] = s
    if q_ids and not qrels:
        raise ValueError(
            f"{root}: none of the {len(q_ids)} qrels name a known query and candidate id "
            f"(e.g. query-id {q_ids[0]!r}, corpus-id {c_ids[0]!r}); the qrels do not belong "
            "to this query/corpus"
        )
    if unknown_q and limit_queries is None:
        logger.warning("%s: %d qrels name unknown query ids (dropped)", root.name, unknown_q)
    if unknown_c:
        extra = " (limit_corpus is set)" if limit_corpus else ""
        logger.warning(
            "%s: %d qrels name corpus ids missing from the corpus (dropped)%s",
            root.name,
            unknown_c,
            extra,
        )
    no_rel = sum(1 for q in queries.ids if q not in qrels)
    if no_rel:
        logger.warning(
            "%s: %d of %d queries have no relevant candidate; they count as misses",
            root.name,
            no_rel,
            len(queries),
        )
    graded = scores is not None and any(v != 1.0 for g in gains.values() for v in g.values())
    return qrels, gains, graded
