"""Data-source base classes: a deterministic, shardable sequence of :class:`~saeprobe.Item`.

A source first builds a light *plan* (one entry per item: id, text, where its
image lives) in a fixed order, applies ``limit``, then keeps this rank's part
(``shard_indices``). Images are decoded only when an item is yielded. Every
item carries ``meta["index"]``: its position in the global data order (before
sharding), which is the ``sample_id`` to use in activation stores.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .._types import Item
from ..distributed import shard_indices

logger = logging.getLogger(__name__)

MODES = ("images+captions", "images", "captions", "image_text")
VALIDATE = ("full", "header", "none")


class Pair(NamedTuple):
    """A matched (image item, caption item) pair, as global data-order indices."""

    image_index: int
    text_index: int
    image_id: str
    caption_index: int


@dataclass
class Entry:
    """One planned item (image not decoded yet)."""

    id: str
    text: str | None
    image_ref: Any
    prompt: str
    meta: dict = field(default_factory=dict)


@dataclass
class Row:
    """One image with its captions, as read from a source."""

    image_id: str
    image_ref: Any
    captions: list[Any]
    meta: dict = field(default_factory=dict)
    image_problem: str | None = None  # skip reason when image_ref is None


def decode_image(data: bytes, *, fast: bool = False):
    """Decode image bytes to an RGB ``PIL.Image`` (raises on corrupt data).

    ``fast=True`` decodes JPEGs at 1/8 scale (enough to detect truncation).
    """
    from PIL import Image

    im = Image.open(io.BytesIO(data))
    if fast and im.format == "JPEG":
        im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
    im.load()
    return im if fast else im.convert("RGB")


def check_image(data: bytes | None, validate: str) -> bool:
    """Whether ``data`` passes the ``validate`` level (``full``, ``header``, ``none``)."""
    if validate == "none":
        return True
    if not data:
        return False
    try:
        if validate == "full":
            decode_image(data, fast=True)
        else:
            from PIL import Image

            Image.open(io.BytesIO(data)).verify()
    except Exception:  # PIL raises many error types for bad data
        return False
    return True


class DataSource:
    """A deterministic sequence of items, with ``limit`` and ``(rank, world_size)`` sharding.

    Parameters
    ----------
    limit : int, optional
        Keep the first ``limit`` items of the global order (before sharding).
    rank, world_size : int
        Keep this rank's items only.
    shard : {"contiguous", "round_robin"}
        How items are dealt to ranks (see :func:`saeprobe.distributed.shard_indices`).

    Subclasses implement :meth:`_iter_entries` (global order) and
    :meth:`_load_image` and may add entries to :attr:`skipped`.
    """

    name = "source"

    def __init__(
        self,
        *,
        limit: int | None = None,
        rank: int = 0,
        world_size: int = 1,
        shard: str = "contiguous",
    ) -> None:
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        shard_indices(0, rank, world_size, shard)  # validates the arguments
        self.limit = limit
        self.rank = rank
        self.world_size = world_size
        self.shard = shard
        self.skipped: dict[str, int] = {}
        self.skipped_examples: dict[str, list[str]] = {}
        self._entries: list[Entry] | None = None

    # ---------------------------------------------------------------- subclass API
    def _iter_entries(self) -> Iterator[Entry]:
        raise NotImplementedError

    def _load_image(self, ref: Any):
        raise NotImplementedError

    def _where(self) -> str:
        return self.name

    @property
    def spec(self) -> dict:
        """JSON description of the source (type, path, mode, limit, ...) for fingerprints."""
        return {"type": self.name, "limit": self.limit}

    # ---------------------------------------------------------------- plan
    def _skip(self, what: str, n: int = 1, name: str | None = None) -> None:
        """Count ``n`` skipped rows for reason ``what`` (keeping a few ``name``s to show)."""
        self.skipped[what] = self.skipped.get(what, 0) + n
        examples = self.skipped_examples.setdefault(what, [])
        if name is not None and len(examples) < 5:
            examples.append(str(name))

    def skipped_summary(self) -> str:
        """``"2 missing image files (a.png, b.png), 1 empty captions"`` (empty when none)."""
        parts = []
        for what, n in sorted(self.skipped.items()):
            names = self.skipped_examples.get(what) or []
            more = ", ..." if n > len(names) else ""
            parts.append(f"{n} {what}" + (f" ({', '.join(names)}{more})" if names else ""))
        return ", ".join(parts)

    @property
    def entries(self) -> list[Entry]:
        """The global plan (all ranks), after ``limit``."""
        if self._entries is None:
            entries: list[Entry] = []
            if self.limit != 0:
                for e in self._iter_entries():
                    entries.append(e)
                    if self.limit is not None and len(entries) >= self.limit:
                        break
            if self.skipped:
                logger.warning("%s: skipped %s", self._where(), self.skipped_summary())
            if not entries and self.limit != 0:
                raise ValueError(f"{self._where()}: no usable items ({self._empty_hint()})")
            self._entries = entries
        return self._entries

    def _empty_hint(self) -> str:
        return f"skipped {self.skipped_summary() or 'no rows'}"

    @property
    def indices(self) -> range:
        """Global indices of this rank's items."""
        return shard_indices(len(self.entries), self.rank, self.world_size, self.shard)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def n_total(self) -> int:
        """Items over all ranks."""
        return len(self.entries)

    def item_ids(self) -> list[str]:
        """Ids of all items (every rank), in data order: for data fingerprints."""
        return [e.id for e in self.entries]

    def ids(self, all_ranks: bool = False) -> list[str]:
        """Item ids in order (this rank's, or all ranks' for fingerprints)."""
        if all_ranks:
            return [e.id for e in self.entries]
        return [self.entries[i].id for i in self.indices]

    # ---------------------------------------------------------------- items
    def item(self, index: int) -> Item:
        """The item at global data-order ``index`` (image decoded now)."""
        e = self.entries[index]
        image = None
        if e.image_ref is not None:
            try:
                image = self._load_image(e.image_ref)
            except Exception as exc:
                raise ValueError(
                    f"{self._where()}: image of item {e.id!r} cannot be decoded ({exc}); "
                    "open the source with validate='full' to skip undecodable images"
                ) from exc
        return Item(
            id=e.id, text=e.text, image=image, prompt=e.prompt, meta={**e.meta, "index": index}
        )

    def items(self, start: int = 0) -> Iterator[Item]:
        """This rank's items whose global index is ``>= start`` (resume point).

        With one rank, ``start`` simply skips the first ``start`` items; skipped
        items are not decoded.
        """
        for i in self.indices:
            if i >= start:
                yield self.item(i)

    def __iter__(self) -> Iterator[Item]:
        return self.items()

    def __repr__(self) -> str:
        n = len(self) if self._entries is not None else "?"
        return (
            f"{type(self).__name__}({self._where()}, items={n}, rank={self.rank}/{self.world_size})"
        )


class ImageCaptionSource(DataSource):
    """Images with captions, expanded into items by ``mode``.

    Modes
    -----
    ``images+captions`` (default, the paper's SAE data)
        Per image: one image item (prompt ``image``, id = image id) followed by
        one text item per caption (prompt ``text``, id ``"{image_id}#{j}"``).
    ``images``
        Image items only. ``captions``: caption items only.
    ``image_text``
        One image+caption item per caption (prompt ``image_text``).

    Parameters
    ----------
    mode : str
        One of the modes above.
    validate : {"full", "header", "none"}
        How images are checked while planning: ``full`` decodes them (JPEGs at
        1/8 scale) and skips undecodable ones, ``header`` only parses headers,
        ``none`` trusts them (a corrupt image then raises when its item is read).
    """

    def __init__(self, *, mode: str = "images+captions", validate: str = "full", **kw) -> None:
        super().__init__(**kw)
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {list(MODES)}")
        if validate not in VALIDATE:
            raise ValueError(f"unknown validate {validate!r}; choose one of {list(VALIDATE)}")
        self.mode = mode
        self.validate = validate

    @property
    def needs_images(self) -> bool:
        return self.mode != "captions"

    @property
    def needs_captions(self) -> bool:
        return self.mode != "images"

    def _rows(self) -> Iterator[Row]:
        raise NotImplementedError

    def _read_image_bytes(self, ref: Any) -> bytes | None:
        raise NotImplementedError

    def _load_image(self, ref: Any):
        data = self._read_image_bytes(ref)
        if not data:
            raise ValueError("no image bytes")
        return decode_image(data)

    @property
    def spec(self) -> dict:
        return {**super().spec, "mode": self.mode}

    def _iter_entries(self) -> Iterator[Entry]:
        for row in self._rows():
            image_ok = False
            if self.needs_images:
                if row.image_ref is None:
                    self._skip(row.image_problem or "rows without an image", name=row.image_id)
                else:
                    image_ok = self.validate == "none" or check_image(
                        self._read_image_bytes(row.image_ref), self.validate
                    )
                    if not image_ok:
                        self._skip("undecodable images", name=row.image_id)
            captions: list[tuple[int, str]] = []
            if self.needs_captions:
                for j, c in enumerate(row.captions):
                    if isinstance(c, str) and c.strip():
                        captions.append((j, c.strip()))
                    else:
                        self._skip("empty captions", name=f"{row.image_id}#{j}")
            base = {**row.meta, "image_id": row.image_id}
            if self.mode in ("images+captions", "images") and image_ok:
                yield Entry(row.image_id, None, row.image_ref, "image", {**base, "kind": "image"})
            if self.mode in ("images+captions", "captions"):
                for j, text in captions:
                    yield Entry(
                        f"{row.image_id}#{j}",
                        text,
                        None,
                        "text",
                        {**base, "kind": "caption", "caption_index": j},
                    )
            if self.mode == "image_text" and image_ok:
                for j, text in captions:
                    yield Entry(
                        f"{row.image_id}#{j}",
                        text,
                        row.image_ref,
                        "image_text",
                        {**base, "kind": "image_text", "caption_index": j},
                    )

    def pairs(self) -> list[Pair]:
        """Matched (image item, caption item) pairs in global data-order indices.

        Only in ``images+captions`` mode, where images and captions are separate
        items (their activations are joined on ``sample_id`` in a store).
        """
        if self.mode != "images+captions":
            raise ValueError(f"pairs() needs mode='images+captions', this source has {self.mode!r}")
        image_at: dict[str, int] = {}
        out = []
        for i, e in enumerate(self.entries):
            if e.meta["kind"] == "image":
                image_at[e.meta["image_id"]] = i
            elif e.meta["image_id"] in image_at:
                out.append(
                    Pair(
                        image_at[e.meta["image_id"]], i, e.meta["image_id"], e.meta["caption_index"]
                    )
                )
        return out
