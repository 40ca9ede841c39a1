"""Writing items as an M-BEIR task folder (MRBench parquet layout)."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import pyarrow as pa

from ..._types import Item
from ...atomic import atomic_write_parquet

__all__ = ["write_task_folder"]


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
        rows = max(1, min(1000, t.num_rows))
        atomic_write_parquet(out / name, t, what="task file", row_group_size=rows)

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
