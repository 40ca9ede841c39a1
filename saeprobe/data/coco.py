"""COCO-Caption parquet files as published by lmms-lab (``lmms-lab/COCO-Caption2017``).

Rows hold ``image`` (``{"bytes": ..., "path": ...}``), ids (``question_id``,
``id``, ``file_name``) and ``answer`` (the list of captions). Common variants
of these column names are accepted (see :data:`IMAGE_COLUMNS`, ...).
"""

from __future__ import annotations

import glob
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .base import ImageCaptionSource, Row

logger = logging.getLogger(__name__)

IMAGE_COLUMNS = ("image", "img", "image_bytes", "jpg", "png")
CAPTION_COLUMNS = ("answer", "captions", "caption", "sentences", "sentences_raw", "text")
ID_COLUMNS = ("question_id", "file_name", "image_id", "id", "filename", "img_id")
_SPLIT_RE = re.compile(r"^([A-Za-z0-9_]+?)-\d{5}-of-\d{5}\.parquet$")


def resolve_parquet_files(path: str | os.PathLike, split: str | None = None) -> list[Path]:
    """Parquet files of ``path`` (a file, a folder searched recursively, or a glob), sorted.

    With ``split``, keep files named ``{split}-NNNNN-of-NNNNN.parquet`` or lying in
    a folder named ``split``. Without it, a folder holding several such splits
    is an error (pass ``split``).
    """
    text = str(path)
    if any(ch in text for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(text, recursive=True))
    elif Path(text).is_dir():
        files = sorted(Path(text).rglob("*.parquet"))
    elif Path(text).is_file():
        files = [Path(text)]
    else:
        raise FileNotFoundError(f"COCO-Caption parquet path {text} does not exist")
    files = [f for f in files if f.is_file() and f.suffix == ".parquet"]
    if not files:
        raise ValueError(f"no .parquet files found at {text}; expected COCO-Caption parquet files")

    def split_of(f: Path) -> str | None:
        m = _SPLIT_RE.match(f.name)
        return m.group(1) if m else None

    if split is not None:
        kept = [f for f in files if split_of(f) == split or f.parent.name == split]
        if not kept:
            found = sorted({s for s in map(split_of, files) if s})
            raise ValueError(
                f"no parquet files of split {split!r} at {text}; splits found: {found}"
            )
        return kept
    splits = sorted({s for s in map(split_of, files) if s})
    if len(splits) > 1:
        raise ValueError(
            f"{text} holds several splits {splits}; pass split=... (e.g. split='val', the "
            "captioned split of lmms-lab/COCO-Caption2017)"
        )
    return files


class CocoCaptionSource(ImageCaptionSource):
    """COCO-Caption parquet data (see :class:`~saeprobe.data.base.ImageCaptionSource` modes).

    Parameters
    ----------
    path : str | Path
        A parquet file, a folder of parquet files (recursive) or a glob.
    split : str, optional
        Keep only this split's files (``val`` / ``test`` in lmms-lab's layout).
    mode : str
        ``images+captions`` (default: each image once with the image prompt and
        each caption alone with the text prompt), ``images``, ``captions`` or
        ``image_text``.
    image_column, caption_column, id_column : str, optional
        Column names; default: the first of :data:`IMAGE_COLUMNS` /
        :data:`CAPTION_COLUMNS` / :data:`ID_COLUMNS` present.
    validate, limit, rank, world_size, shard
        See :class:`~saeprobe.data.base.ImageCaptionSource`.

    Item ids: the image id (``question_id``, else ``file_name``, ``image_id``,
    ``id``; else ``"{file stem}:{row}"``), and ``"{image_id}#{j}"`` for the
    ``j``-th caption.
    """

    name = "coco"

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        split: str | None = None,
        image_column: str | None = None,
        caption_column: str | None = None,
        id_column: str | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self.path = path
        self.split = split
        self.files = resolve_parquet_files(path, split)
        self._columns = {"image": image_column, "caption": caption_column, "id": id_column}
        self._cache_key: tuple[int, int] | None = None
        self._cache: list[Any] = []
        self._file_columns: dict[int, dict[str, str | None]] = {}

    def _where(self) -> str:
        return f"COCO-Caption parquet {self.path}"

    @property
    def spec(self) -> dict:
        return {
            **super().spec,
            "path": str(self.path),
            "files": [f.name for f in self.files],
            "split": self.split,
        }

    def _empty_hint(self) -> str:
        what = "image rows" if self.needs_images else "captions"
        return f"expected {what} in {[f.name for f in self.files]}; {super()._empty_hint()}"

    # ---------------------------------------------------------------- columns
    def _resolve_columns(self, index: int, schema_names: list[str]) -> dict[str, str | None]:
        f = self.files[index]

        def pick(kind: str, candidates: tuple[str, ...], required: bool) -> str | None:
            given = self._columns[kind]
            if given is not None:
                if given not in schema_names:
                    raise ValueError(
                        f"{f}: column {given!r} ({kind}) not found; columns are {schema_names}"
                    )
                return given
            for c in candidates:
                if c in schema_names:
                    return c
            if required:
                raise ValueError(
                    f"{f}: no {kind} column (expected one of {list(candidates)}, found "
                    f"{schema_names}); pass {kind}_column=..."
                )
            return None

        cols = {
            "image": pick("image", IMAGE_COLUMNS, self.needs_images),
            "caption": pick("caption", CAPTION_COLUMNS, self.needs_captions),
            "id": pick("id", ID_COLUMNS, False),
        }
        self._file_columns[index] = cols
        return cols

    # ---------------------------------------------------------------- rows
    def _rows(self) -> Iterator[Row]:
        import pyarrow.parquet as pq

        for fi, f in enumerate(self.files):
            pf = pq.ParquetFile(f)
            cols = self._resolve_columns(fi, pf.schema_arrow.names)
            meta_cols = [c for c in (cols["id"], cols["caption"]) if c]
            row_in_file = 0
            for rg in range(pf.num_row_groups):
                if meta_cols:
                    table = pf.read_row_group(rg, columns=meta_cols)
                    ids = table.column(cols["id"]).to_pylist() if cols["id"] else None
                    caps = table.column(cols["caption"]).to_pylist() if cols["caption"] else None
                    n = table.num_rows
                else:
                    n = pf.metadata.row_group(rg).num_rows
                    ids = caps = None
                for r in range(n):
                    image_id = ids[r] if ids is not None else None
                    if image_id is None or str(image_id) == "":
                        image_id = f"{f.stem}:{row_in_file}"
                    captions = _as_captions(caps[r]) if caps is not None else []
                    ref = (fi, rg, r) if cols["image"] else None
                    yield Row(str(image_id), ref, captions, {"file": f.name, "row": row_in_file})
                    row_in_file += 1

    def _read_image_bytes(self, ref: tuple[int, int, int]) -> bytes | None:
        fi, rg, r = ref
        if self._cache_key != (fi, rg):
            import pyarrow.parquet as pq

            col = self._file_columns[fi]["image"]
            table = pq.ParquetFile(self.files[fi]).read_row_group(rg, columns=[col])
            self._cache = table.column(0).to_pylist()
            self._cache_key = (fi, rg)
        value = self._cache[r]
        if isinstance(value, dict):
            data = value.get("bytes")
            if not data and value.get("path"):
                p = Path(value["path"])
                p = p if p.is_absolute() else self.files[fi].parent / p
                data = p.read_bytes() if p.is_file() else None
            return data
        if isinstance(value, (bytes, bytearray)):
            return bytes(value)
        return None


def _as_captions(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):  # e.g. {"raw": ...}
        value = value.get("raw", value.get("text"))
        return _as_captions(value)
    if isinstance(value, (list, tuple)):
        out = []
        for v in value:
            if isinstance(v, dict):
                v = v.get("raw", v.get("text", v.get("caption")))
            out.append(v)
        return out
    return [str(value)]
