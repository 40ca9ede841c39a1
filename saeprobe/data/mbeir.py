"""M-BEIR task folders in the parquet layout of the MRBench mirror.

One folder per task (``MRBench/mbeir_<dataset>_task<K>``)::

    query-00000-of-00001.parquet     columns: id, text, image {bytes, path}
    corpus-00000-of-0000N.parquet    columns: id, text, image {bytes, path}
    qrels-00000-of-00001.parquet     columns: query-id, corpus-id[, score]

The folder suffix ``task<K>`` is M-BEIR's own 0-based task id (0 qt->ci,
1 qt->ct, 2 qt->(ci,ct), 3 qi->ct, 4 qi->ci, 6 (qi,qt)->ct, 7 (qi,qt)->ci,
8 (qi,qt)->(ci,ct)); the paper numbers the same task types 1..8
(:data:`TASKS`). :func:`open_mbeir` infers the paper's task type from which
modalities each side holds (the folder id only breaks the 7 / 8 tie), or takes
``task=N``.

Each side is a lazy sequence of :class:`~saeprobe.Item` (images decoded while
iterating, one parquet row group at a time), with the paper's prompt per side
set on ``Item.prompt``. Only the modalities the task uses are kept (e.g. a task-7
candidate is its image only, as in the authors' code).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._types import Item
from .base import decode_image

logger = logging.getLogger(__name__)

#: paper task type -> (query kind, candidate kind); kinds: text, image, image_text
TASKS: dict[int, tuple[str, str]] = {
    1: ("text", "image"),
    2: ("text", "text"),
    3: ("text", "image_text"),
    4: ("image", "text"),
    5: ("image", "image"),
    6: ("image_text", "text"),
    7: ("image_text", "image"),
    8: ("image_text", "image_text"),
}
#: paper task type -> (query prompt, candidate prompt) names in saeprobe.models.prompts.PROMPTS
PROMPTS_BY_TASK: dict[int, tuple[str, str]] = {
    1: ("text", "image"),
    2: ("text", "text"),
    3: ("text", "image_text"),
    4: ("image", "text"),
    5: ("image", "image"),
    6: ("image_text", "text"),
    7: ("image_question", "image"),
    8: ("image_text_8", "image_text_8"),
}
#: M-BEIR's 0-based task id (folder suffix) -> the paper's task type
MBEIR_ID_TO_TASK: dict[int, int] = {0: 1, 1: 2, 2: 3, 3: 4, 4: 5, 6: 6, 7: 7, 8: 8}
TASK_NAMES: dict[int, str] = {
    1: "qt->ci",
    2: "qt->ct",
    3: "qt->(ci,ct)",
    4: "qi->ct",
    5: "qi->ci",
    6: "(qi,qt)->ct",
    7: "(qi,qt)->ci",
    8: "(qi,qt)->(ci,ct)",
}
_FOLDER_TASK_RE = re.compile(r"task[_-]?(\d+)", re.IGNORECASE)
ID_COLUMNS = ("id", "_id", "qid", "did")
QREL_QUERY_COLUMNS = ("query-id", "query_id", "qid")
QREL_CORPUS_COLUMNS = ("corpus-id", "corpus_id", "did", "doc_id")

__all__ = [
    "MBEIR_ID_TO_TASK",
    "MBEIRSide",
    "MBEIRTask",
    "PROMPTS_BY_TASK",
    "TASKS",
    "find_task_files",
    "infer_task",
    "open_mbeir",
    "write_task_folder",
]


def find_task_files(path: str | os.PathLike) -> dict[str, list[Path]]:
    """``{"query": [...], "corpus": [...], "qrels": [...]}`` parquet files of a task folder."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"M-BEIR task folder {root} does not exist")
    out: dict[str, list[Path]] = {}
    for part in ("query", "corpus", "qrels"):
        files = sorted(root.glob(f"{part}-*.parquet")) or sorted(root.glob(f"{part}*.parquet"))
        if not files:
            files = sorted((root / part).glob("*.parquet")) if (root / part).is_dir() else []
        if not files:
            raise FileNotFoundError(
                f"no {part}-*.parquet in {root}; an M-BEIR task folder (MRBench layout) holds "
                "query-*.parquet, corpus-*.parquet and qrels-*.parquet"
            )
        out[part] = files
    return out


def _pick(columns: list[str], options: tuple[str, ...], what: str, where: Path) -> str:
    for c in options:
        if c in columns:
            return c
    raise ValueError(f"{where}: no {what} column (looked for {list(options)}; found {columns})")


def _image_bytes(value: Any) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, dict):
        value = value.get("bytes")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value) or None
    return None


def _text(value: Any) -> str | None:
    if isinstance(value, str) and value.strip():
        return value
    return None


class MBEIRSide:
    """Queries or candidates of a task: a lazy, ordered sequence of items.

    Attributes
    ----------
    ids : list[str]
        Item ids in data order.
    kind : str
        ``text``, ``image`` or ``image_text``: the modalities this side uses.
    prompt : str
        Prompt name set on the items.
    """

    def __init__(
        self,
        files: list[Path],
        side: str,
        kind: str,
        prompt: str,
        *,
        task: int,
        limit: int | None = None,
    ) -> None:
        import pyarrow.parquet as pq

        self.files = files
        self.side = side
        self.kind = kind
        self.prompt = prompt
        self.task = task
        self.limit = limit
        ids: list[str] = []
        self._row_groups: list[tuple[int, int, int, int]] = []  # (file, rg, start, n)
        self._columns: list[dict[str, str | None]] = []
        for fi, f in enumerate(files):
            pf = pq.ParquetFile(f)
            names = pf.schema_arrow.names
            id_col = _pick(names, ID_COLUMNS, "id", f)
            self._columns.append(
                {
                    "id": id_col,
                    "text": "text" if "text" in names else None,
                    "image": "image" if "image" in names else None,
                }
            )
            col = pf.read(columns=[id_col]).column(0).to_pylist()
            start = len(ids)
            ids.extend(str(v) for v in col)
            off = start
            for rg in range(pf.num_row_groups):
                n = pf.metadata.row_group(rg).num_rows
                self._row_groups.append((fi, rg, off, n))
                off += n
        if limit is not None:
            ids = ids[:limit]
        dup = len(ids) - len(set(ids))
        if dup:
            raise ValueError(
                f"{files[0].parent}: {dup} duplicate {side} ids; ids must be unique per side"
            )
        self.ids = ids

    def __len__(self) -> int:
        return len(self.ids)

    def _make_item(self, index: int, id_: str, text: Any, image: Any) -> Item | None:
        use_text = "text" in self.kind
        use_image = "image" in self.kind
        t = _text(text) if use_text else None
        b = _image_bytes(image) if use_image else None
        if t is None and b is None:
            return None
        img = decode_image(b) if b is not None else None
        if (t is None) == (not use_text) and (b is None) == (not use_image):
            prompt = self.prompt
        else:  # a row lacking one of the side's modalities: prompt of what it has
            prompt = "image_text" if (t and img is not None) else ("text" if t else "image")
        return Item(
            id=id_,
            text=t,
            image=img,
            prompt=prompt,
            meta={"index": index, "side": self.side, "task": self.task},
        )

    def items(self, start: int = 0, stop: int | None = None) -> Iterator[Item]:
        """Items with data-order index in ``[start, stop)`` (images decoded now).

        Rows without any of the side's modalities raise (they cannot be embedded).
        """
        import pyarrow.parquet as pq

        stop = len(self) if stop is None else min(stop, len(self))
        need_text = "text" in self.kind
        need_image = "image" in self.kind
        open_files: dict[int, Any] = {}
        for fi, rg, off, n in self._row_groups:
            if off + n <= start or off >= stop:
                continue
            pf = open_files.get(fi) or pq.ParquetFile(self.files[fi])
            open_files[fi] = pf
            cols = self._columns[fi]
            wanted = [cols["id"]]
            if need_text and cols["text"]:
                wanted.append(cols["text"])
            if need_image and cols["image"]:
                wanted.append(cols["image"])
            table = pf.read_row_group(rg, columns=wanted)
            data = {c: table.column(c).to_pylist() for c in wanted}
            for j in range(n):
                i = off + j
                if i < start or i >= stop:
                    continue
                text = data[cols["text"]][j] if cols["text"] in data else None
                image = data[cols["image"]][j] if cols["image"] in data else None
                item = self._make_item(i, self.ids[i], text, image)
                if item is None:
                    raise ValueError(
                        f"{self.files[fi]}: {self.side} {self.ids[i]!r} has no "
                        f"{' or '.join(k for k in ('text', 'image') if k in self.kind)}, which task "
                        f"{self.task} ({TASK_NAMES[self.task]}) needs; fix the row or pass the "
                        "right --task"
                    )
                yield item

    def __iter__(self) -> Iterator[Item]:
        return self.items()

    def __getitem__(self, index: int) -> Item:
        if index < 0:
            index += len(self)
        for item in self.items(index, index + 1):
            return item
        raise IndexError(index)

    def __repr__(self) -> str:
        return f"MBEIRSide({self.side}, n={len(self)}, kind={self.kind}, prompt={self.prompt})"


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


def _side_modalities(files: list[Path], sample: int = 256) -> str | None:
    """Kind (text / image / image_text) of a side, from the first ``sample`` rows."""
    import pyarrow.parquet as pq

    has_text = has_image = False
    for f in files:
        pf = pq.ParquetFile(f)
        names = pf.schema_arrow.names
        cols = [c for c in ("text", "image") if c in names]
        if not cols or pf.metadata.num_rows == 0:
            continue
        for batch in pf.iter_batches(batch_size=sample, columns=cols):
            d = batch.to_pydict()
            has_text = has_text or any(_text(v) for v in d.get("text", []))
            has_image = has_image or any(_image_bytes(v) for v in d.get("image", []))
            break
        break
    if has_text and has_image:
        return "image_text"
    if has_text:
        return "text"
    if has_image:
        return "image"
    return None


def infer_task(query_kind: str | None, corpus_kind: str | None, folder: str = "") -> int:
    """The paper's task type (1-8) from each side's modalities; the folder's
    ``task<K>`` suffix (M-BEIR's 0-based id) only decides 7 vs 8."""
    if query_kind is None or corpus_kind is None:
        side = "queries" if query_kind is None else "candidates"
        raise ValueError(
            f"cannot infer the task type of {folder!r}: its {side} have neither text nor images "
            "in the first rows; pass --task N (1-8)"
        )
    matches = [t for t, kinds in TASKS.items() if kinds == (query_kind, corpus_kind)]
    m = _FOLDER_TASK_RE.search(Path(folder).name) if folder else None
    hint = int(m.group(1)) if m else None
    if query_kind == "image_text" and corpus_kind == "image_text" and hint == 7:
        return 7  # e.g. a CIRR corpus with captions: the task uses images only
    if query_kind == "image" and corpus_kind == "image_text" and hint == 3:
        return 4  # an i->t folder whose candidate rows also carry images
    if not matches:
        raise ValueError(
            f"{folder!r}: queries are {query_kind}, candidates {corpus_kind}: not one of the "
            "paper's 8 task types (M-BEIR id 5, qi->(ci,ct), is not evaluated); pass --task N"
        )
    task = matches[0]
    if hint is not None and MBEIR_ID_TO_TASK.get(hint) not in (None, task):
        logger.info(
            "%s: modalities say task %d (%s); the folder suffix task%d (M-BEIR id) says %s",
            folder,
            task,
            TASK_NAMES[task],
            hint,
            MBEIR_ID_TO_TASK.get(hint),
        )
    return task


def _read_qrels(files: list[Path]) -> tuple[list[str], list[str], list[float] | None]:
    import pyarrow.parquet as pq

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
            _side_modalities(files["query"]), _side_modalities(files["corpus"]), str(root)
        )
        logger.info(
            "%s: task %d (%s) inferred from the modalities", root.name, task, TASK_NAMES[task]
        )
    elif task not in TASKS:
        raise ValueError(f"task must be one of 1-8 (the paper's M-BEIR task types), got {task}")
    qkind, ckind = TASKS[task]
    qprompt, cprompt = PROMPTS_BY_TASK[task]
    queries = MBEIRSide(files["query"], "query", qkind, qprompt, task=task, limit=limit_queries)
    corpus = MBEIRSide(files["corpus"], "corpus", ckind, cprompt, task=task, limit=limit_corpus)
    q_ids, c_ids, scores = _read_qrels(files["qrels"])
    known_q = set(queries.ids)
    known_c = set(corpus.ids)
    qrels: dict[str, set[str]] = {}
    gains: dict[str, dict[str, float]] = {}
    unknown_q = unknown_c = 0
    for j, (q, c) in enumerate(zip(q_ids, c_ids)):
        s = scores[j] if scores is not None else 1.0
        if s <= 0:
            continue
        if q not in known_q:
            unknown_q += 1
            continue
        if c not in known_c:
            unknown_c += 1
            continue
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
        logger.warning(
            "%s: %d qrels name corpus ids missing from the corpus (dropped)%s",
            root.name,
            unknown_c,
            " (limit_corpus is set)" if limit_corpus else "",
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
    info = {
        "n_queries": len(queries),
        "n_corpus": len(corpus),
        "n_qrels": sum(len(v) for v in qrels.values()),
        "limit_queries": limit_queries,
        "limit_corpus": limit_corpus,
    }
    return MBEIRTask(
        path=root,
        task=task,
        queries=queries,
        corpus=corpus,
        qrels=qrels,
        gains=gains if graded else None,
        info=info,
    )


def write_task_folder(
    out_dir: str | os.PathLike,
    queries: list[Item],
    corpus: list[Item],
    qrels: dict[str, Any],
    *,
    corpus_shards: int = 1,
    image_format: str = "PNG",
) -> Path:
    """Write items as an M-BEIR task folder (MRBench parquet layout).

    Useful to evaluate your own data with ``saeprobe retrieve`` and for tests.

    Parameters
    ----------
    out_dir : path
        Created if missing (e.g. ``.../mbeir_mydata_task0``).
    queries, corpus : list of Item
        ``image`` (PIL image or encoded bytes) and / or ``text``.
    qrels : dict
        Query id -> relevant corpus ids (a set / list), or -> ``{corpus id: score}``
        (written as a ``score`` column).
    corpus_shards : int
        Number of ``corpus-*.parquet`` files.
    """
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def encode(image: Any) -> dict | None:
        if image is None:
            return None
        if isinstance(image, (bytes, bytearray)):
            return {"bytes": bytes(image), "path": None}
        buf = io.BytesIO()
        image.save(buf, format=image_format)
        return {"bytes": buf.getvalue(), "path": None}

    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([("id", pa.string()), ("text", pa.string()), ("image", image_type)])

    def table(items: list[Item]) -> pa.Table:
        return pa.table(
            {
                "id": [it.id for it in items],
                "text": [it.text for it in items],
                "image": [encode(it.image) for it in items],
            },
            schema=schema,
        )

    def write(t: pa.Table, name: str) -> None:
        tmp = out / (name + ".tmp")
        pq.write_table(t, tmp, row_group_size=max(1, min(1000, t.num_rows)))
        os.replace(tmp, out / name)

    write(table(list(queries)), "query-00000-of-00001.parquet")
    n = len(corpus)
    shards = max(1, min(corpus_shards, n))
    bounds = [round(i * n / shards) for i in range(shards + 1)]
    for s in range(shards):
        part = list(corpus[bounds[s] : bounds[s + 1]])
        write(table(part), f"corpus-{s:05d}-of-{shards:05d}.parquet")
    q_col, c_col, s_col = [], [], []
    graded = False
    for q, rel in qrels.items():
        if isinstance(rel, dict):
            graded = True
            pairs = list(rel.items())
        else:
            pairs = [(c, 1.0) for c in rel]
        for c, s in pairs:
            q_col.append(str(q))
            c_col.append(str(c))
            s_col.append(float(s))
    cols: dict[str, Any] = {"query-id": q_col, "corpus-id": c_col}
    if graded:
        cols["score"] = s_col
    write(pa.table(cols), "qrels-00000-of-00001.parquet")
    return out
