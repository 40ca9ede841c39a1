"""A plain folder of images, optionally with ``captions.csv`` / ``captions.jsonl``.

The captions file has columns ``image`` (path relative to the folder) and
``caption``; an image may have several rows (one per caption). Without a
captions file, every image file under the folder (recursive, sorted) is an
image item.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .base import ImageCaptionSource, Row

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
CAPTION_FILES = ("captions.jsonl", "captions.csv")


def _find_captions(root: Path) -> Path | None:
    for name in CAPTION_FILES:
        if (root / name).is_file():
            return root / name
    return None


class ImageFolderSource(ImageCaptionSource):
    """Images in a folder, with captions from ``captions.jsonl`` / ``captions.csv``.

    Parameters
    ----------
    root : str | Path
        The folder.
    captions : str | Path | None
        Captions file (default: ``captions.jsonl``, else ``captions.csv`` in
        ``root``; ``False`` ignores captions).
    mode : str, optional
        As in :class:`~saeprobe.data.base.ImageCaptionSource`; default
        ``images+captions`` with a captions file, else ``images``.
    validate, limit, rank, world_size, shard
        See :class:`~saeprobe.data.base.ImageCaptionSource`.

    Item ids: the image path relative to ``root`` (POSIX), ``"{path}#{j}"``
    for its ``j``-th caption. Images appear in the order of their first row in
    the captions file.
    """

    name = "folder"

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        captions: str | os.PathLike | bool | None = None,
        mode: str | None = None,
        **kw: Any,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root} does not exist")
        if captions is False:
            self.captions_file = None
        elif captions is None or captions is True:
            self.captions_file = _find_captions(self.root)
            if captions is True and self.captions_file is None:
                raise FileNotFoundError(f"{self.root} has no {' or '.join(CAPTION_FILES)}")
        else:
            self.captions_file = Path(captions)
            if not self.captions_file.is_absolute() and not self.captions_file.exists():
                self.captions_file = self.root / self.captions_file
            if not self.captions_file.is_file():
                raise FileNotFoundError(f"captions file {captions} does not exist")
        if mode is None:
            mode = "images+captions" if self.captions_file else "images"
        super().__init__(mode=mode, **kw)
        if self.needs_captions and self.captions_file is None:
            raise ValueError(
                f"mode {mode!r} needs captions but {self.root} has no {' or '.join(CAPTION_FILES)}"
                " (columns image, caption); use mode='images'"
            )

    def _where(self) -> str:
        return f"image folder {self.root}"

    @property
    def spec(self) -> dict:
        return {
            **super().spec,
            "path": str(self.root),
            "captions": self.captions_file.name if self.captions_file else None,
        }

    def _empty_hint(self) -> str:
        src = self.captions_file or f"image files {IMAGE_EXTENSIONS}"
        return f"expected images and captions from {src}; {super()._empty_hint()}"

    def _read_caption_rows(self) -> list[dict]:
        f = self.captions_file
        assert f is not None
        rows: list[dict] = []
        if f.suffix == ".jsonl":
            with open(f, encoding="utf-8") as fh:
                for n, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        rows.append(json.loads(line))
                    except ValueError as exc:
                        raise ValueError(f"{f}: line {n} is not valid JSON ({exc})") from exc
            columns = set().union(*(r.keys() for r in rows)) if rows else set()
        else:
            with open(f, encoding="utf-8", newline="") as fh:
                reader = csv.DictReader(fh)
                columns = set(reader.fieldnames or [])
                rows = list(reader)
        for col in ("image", "caption"):
            if col not in columns and (col == "image" or self.needs_captions):
                raise ValueError(
                    f"{f}: missing column {col!r}; expected columns 'image' (path relative to "
                    f"{self.root}) and 'caption', found {sorted(columns)}"
                )
        return rows

    def _rows(self) -> Iterator[Row]:
        if self.captions_file is None:
            for p in sorted(self.root.rglob("*")):
                if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
                    yield Row(p.relative_to(self.root).as_posix(), p, [], {})
            return
        grouped: dict[str, list[Any]] = {}
        for r in self._read_caption_rows():
            image = r.get("image")
            if not image:
                self._skip("rows without an image path")
                continue
            grouped.setdefault(Path(str(image)).as_posix(), []).append(r.get("caption"))
        for image, captions in grouped.items():
            p = self.root / image
            if self.needs_images and not p.is_file():
                # captions of a missing image are kept (they are valid text)
                yield Row(image, None, captions, {"path": image}, "missing image files")
            else:
                yield Row(image, p, captions, {"path": image})

    def _read_image_bytes(self, ref: Path) -> bytes | None:
        try:
            return Path(ref).read_bytes()
        except OSError:
            return None
