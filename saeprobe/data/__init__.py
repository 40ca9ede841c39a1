"""Data sources yielding :class:`~saeprobe.Item` in a deterministic, shardable order.

``open_source(path_or_spec, **kw)`` picks the source from the path:

- ``*.parquet`` file, a glob, or a folder of parquet files: :class:`CocoCaptionSource`
- a folder with images (and ``captions.csv`` / ``captions.jsonl``): :class:`ImageFolderSource`
- an M-BEIR task folder (``query-/corpus-/qrels-*.parquet``, or a folder named
  ``mbeir_*``): ``saeprobe.data.mbeir.open_mbeir`` (``from saeprobe.data.mbeir import ...``)

A ``"coco:"`` / ``"folder:"`` / ``"mbeir:"`` prefix, or a dict
``{"type": ..., "path": ..., **options}``, forces the type.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .base import MODES, DataSource, Entry, ImageCaptionSource, Pair, decode_image
from .coco import CocoCaptionSource
from .folder import IMAGE_EXTENSIONS, ImageFolderSource

_TYPES = ("coco", "folder", "mbeir")


def _open_mbeir(path: str, **kw: Any):
    from .mbeir import open_mbeir  # pyarrow-heavy: loaded when an M-BEIR folder is opened

    return open_mbeir(path, **kw)


def _looks_like_mbeir(p: Path) -> bool:
    """M-BEIR: an MRBench task folder (query-/corpus-/qrels-*.parquet), a folder named
    ``mbeir_*``, the original layout (``query/``, ``cand_pool/``) or ``mbeir_*.jsonl`` files."""
    if p.is_file():
        return p.suffix == ".jsonl" and "mbeir" in p.name.lower()
    if not p.is_dir():
        return False
    names = {c.name for c in p.iterdir()}
    if p.name.lower().startswith("mbeir_") or {"query", "cand_pool"} & names:
        return True
    if any(n.startswith("qrels") and n.endswith(".parquet") for n in names):
        return True
    return any(n.startswith("mbeir_") and n.endswith(".jsonl") for n in names)


def detect_type(path: str | os.PathLike) -> str:
    """``"coco"``, ``"folder"`` or ``"mbeir"`` for a path (see module docs)."""
    text = str(path)
    for t in _TYPES:
        if text.startswith(t + ":"):
            return t
    if any(ch in text for ch in "*?["):
        return "coco"
    p = Path(text)
    if not p.exists():
        raise FileNotFoundError(f"data path {text} does not exist")
    if p.is_file():
        if p.suffix == ".parquet":
            return "coco"
        if _looks_like_mbeir(p):
            return "mbeir"
        raise ValueError(
            f"cannot tell the data type of {text}: expected a .parquet file or glob "
            "(COCO-Caption), an image folder, or an M-BEIR folder; prefix it with coco:, "
            "folder: or mbeir:"
        )
    if _looks_like_mbeir(p):
        return "mbeir"
    if (p / "captions.csv").is_file() or (p / "captions.jsonl").is_file():
        return "folder"
    if next(p.rglob("*.parquet"), None) is not None:
        return "coco"
    if any(f.suffix.lower() in IMAGE_EXTENSIONS for f in p.rglob("*") if f.is_file()):
        return "folder"
    raise ValueError(
        f"{text} holds no parquet files, images or M-BEIR data; "
        "point at a COCO-Caption parquet folder, an image folder or an M-BEIR folder"
    )


def open_source(path_or_spec: str | os.PathLike | dict, **kw: Any):
    """Open a data source by path (type detected) or spec dict.

    Parameters
    ----------
    path_or_spec : str | Path | dict
        A path (optionally ``"coco:..."``, ``"folder:..."``, ``"mbeir:..."``) or
        ``{"type": "coco", "path": ..., **options}`` (a source's ``spec`` round-trips).
    **kw
        Source options (``mode``, ``limit``, ``rank``, ``world_size``, ``split``, ...).
    """
    if isinstance(path_or_spec, dict):
        spec = dict(path_or_spec)
        if "path" not in spec:
            raise ValueError(f"data spec {path_or_spec} has no 'path'")
        path = str(spec.pop("path"))
        kind = spec.pop("type", None) or detect_type(path)
        spec.pop("files", None)  # derived key of CocoCaptionSource.spec
        kw = {**spec, **kw}
    else:
        path = str(path_or_spec)
        kind = detect_type(path)
    if path.startswith(kind + ":"):
        path = path[len(kind) + 1 :]
    if kind == "coco":
        return CocoCaptionSource(path, **kw)
    if kind == "folder":
        return ImageFolderSource(path, **kw)
    if kind == "mbeir":
        return _open_mbeir(path, **kw)
    raise ValueError(f"unknown data type {kind!r}; use one of {list(_TYPES)}")


__all__ = [
    "MODES",
    "CocoCaptionSource",
    "DataSource",
    "Entry",
    "ImageCaptionSource",
    "ImageFolderSource",
    "Pair",
    "decode_image",
    "detect_type",
    "open_source",
]
