"""One side (queries or corpus) of an M-BEIR task folder: a lazy, ordered item sequence."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from ..._types import Item
from ..base import decode_image
from .tasks import TASK_NAMES

__all__ = ["ID_COLUMNS", "MBEIRSide", "find_task_files", "side_modalities"]

ID_COLUMNS = ("id", "_id", "qid", "did")


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


def side_modalities(files: list[Path], sample: int = 256) -> str | None:
    """Kind (text / image / image_text) of a side, from the first ``sample`` rows."""
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
