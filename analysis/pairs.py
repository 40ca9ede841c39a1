"""Matched image-text pairs of pooled embeddings (the input of bridge / attribution / ablation).

File format (``.safetensors``), row ``p`` of each tensor is pair ``p``:

* ``image_emb`` float [P, d] and ``text_emb`` float [P, d]: pooled embeddings (e.g. the
  capture's ``pooled["final_norm"]["mean"]`` of the image input and of its caption);
* optional ``image_id`` / ``text_id`` int64 [P]: a pair key per row (e.g. the COCO image id);
  when both are present they must be equal row by row;
* optional safetensors metadata ``image_ids`` / ``text_ids``: JSON lists of string ids, also
  checked row by row; ``image_keys``: JSON list, one key per row naming the image (rows with
  the same key share one image, e.g. the 5 captions of a COCO image: retrieval then searches
  each image once); ``model`` / ``hook_point``.

Write one with :func:`save_pairs`, or build pairs from a capture folder
(``pooled.safetensors``) and its data source with :func:`pairs_from_capture`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from saeprobe.atomic import atomic_save_safetensors
from saeprobe.store import load_pooled


@dataclass
class Pairs:
    """Matched pooled embeddings: ``image_emb [P, d]``, ``text_emb [P, d]``, optional ids."""

    image_emb: torch.Tensor
    text_emb: torch.Tensor
    ids: list[str] | None = None
    metadata: dict = field(default_factory=dict)
    image_keys: list[str] | None = None

    def __post_init__(self) -> None:
        check_pairs(self.image_emb, self.text_emb)
        if self.image_keys is not None and len(self.image_keys) != self.image_emb.shape[0]:
            raise ValueError(
                f"{len(self.image_keys)} image keys for {self.image_emb.shape[0]} pairs; give one per row"
            )

    @property
    def n(self) -> int:
        return int(self.image_emb.shape[0])

    @property
    def d(self) -> int:
        return int(self.image_emb.shape[1])


def check_pairs(image_emb: torch.Tensor, text_emb: torch.Tensor) -> None:
    if image_emb.ndim != 2 or text_emb.ndim != 2:
        raise ValueError(
            f"pairs need image_emb [P, d] and text_emb [P, d], got {tuple(image_emb.shape)} and "
            f"{tuple(text_emb.shape)}"
        )
    if image_emb.shape != text_emb.shape:
        raise ValueError(
            f"image_emb {tuple(image_emb.shape)} and text_emb {tuple(text_emb.shape)} differ: "
            "row p of each must be the same matched pair"
        )
    if image_emb.shape[0] == 0:
        raise ValueError("the pairs file holds no pairs")


def _check_ids(a: list, b: list, what: str) -> None:
    if len(a) != len(b):
        raise ValueError(f"pairs: {len(a)} image {what} but {len(b)} text {what}")
    for p, (x, y) in enumerate(zip(a, b)):
        if x != y:
            raise ValueError(
                f"pairs whose ids do not match: row {p} has image {what[:-1]} {x!r} but text "
                f"{what[:-1]} {y!r}; align the rows so row p of both is the same pair"
            )


def load_pairs(path: str | os.PathLike) -> Pairs:
    """Read a pairs ``.safetensors`` file (see the module docstring); checks ids."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"pairs file {path} does not exist")
    if path.is_dir():
        cand = path / "pairs.safetensors"
        if not cand.exists():
            raise ValueError(f"{path} is a folder without pairs.safetensors; pass the file")
        path = cand
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        meta = dict(f.metadata() or {})
        missing = {"image_emb", "text_emb"} - keys
        if missing:
            raise ValueError(
                f"pairs file {path} lacks {sorted(missing)}; it needs image_emb [P, d] and "
                "text_emb [P, d] (see docs/analysis.md)"
            )
        t = {k: f.get_tensor(k) for k in keys}
    img, txt = t["image_emb"].float(), t["text_emb"].float()
    check_pairs(img, txt)
    ids = None
    if "image_id" in t and "text_id" in t:
        _check_ids(t["image_id"].tolist(), t["text_id"].tolist(), "ids")
        ids = [str(x) for x in t["image_id"].tolist()]
    if "image_ids" in meta and "text_ids" in meta:
        a, b = json.loads(meta["image_ids"]), json.loads(meta["text_ids"])
        _check_ids(a, b, "ids")
        ids = [str(x) for x in a]
    if ids is not None and len(ids) != img.shape[0]:
        raise ValueError(f"pairs: {len(ids)} ids for {img.shape[0]} rows")
    keys = [str(x) for x in json.loads(meta["image_keys"])] if "image_keys" in meta else None
    return Pairs(img, txt, ids, meta, keys)


def save_pairs(
    path: str | os.PathLike,
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    image_ids: list | torch.Tensor | None = None,
    text_ids: list | torch.Tensor | None = None,
    metadata: dict | None = None,
    image_keys: list | None = None,
) -> Path:
    """Write a pairs file atomically. Integer ids go to ``image_id``/``text_id`` tensors,
    string ids to the metadata."""
    check_pairs(image_emb, text_emb)
    path = Path(path)
    tensors = {
        "image_emb": image_emb.detach().float().cpu().contiguous().clone(),
        "text_emb": text_emb.detach().float().cpu().contiguous().clone(),
    }
    meta = {k: str(v) for k, v in (metadata or {}).items()}
    for name, ids in (("image", image_ids), ("text", text_ids)):
        if ids is None:
            continue
        if isinstance(ids, torch.Tensor) or all(isinstance(x, int) for x in ids):
            tensors[f"{name}_id"] = torch.as_tensor(ids, dtype=torch.long).reshape(-1)
        else:
            meta[f"{name}_ids"] = json.dumps([str(x) for x in ids])
    if image_keys is not None:
        meta["image_keys"] = json.dumps([str(x) for x in image_keys])
    return atomic_save_safetensors(path, tensors, meta, what="pairs file")


def _check_item_ids(capture_dir, source, sample_index: list[int], item_ids: list[str]) -> None:
    """The capture's items must be the data source's items at the same indices."""
    ids_fn = getattr(source, "item_ids", None)
    if not callable(ids_fn):
        return
    source_ids = ids_fn()
    for s, captured in zip(sample_index, item_ids, strict=True):
        given = source_ids[s] if s < len(source_ids) else None
        if given != captured:
            raise ValueError(
                f"the capture in {capture_dir} does not match the data source: item {s} is "
                f"{captured!r} in the capture but {given!r} in --data; pass the data source "
                "the capture was made from"
            )


def pairs_from_capture(capture_dir: str | os.PathLike, source, key: str | None = None) -> Pairs:
    """Matched pairs from a capture folder's ``pooled.safetensors`` and its data source.

    ``source.pairs()`` (an ``images+captions`` source, see :mod:`saeprobe.data`) gives the
    (image item, caption item) data-order indices; ``key`` picks the pooled embedding
    (``"<hook point>.<pool>"``, default: the only ``*.mean`` one).
    """
    pooled, item_ids = load_pooled(capture_dir)
    keys = sorted(k for k in pooled if k != "sample_index")
    if key is None:
        means = [k for k in keys if k.endswith(".mean")]
        if len(means) != 1:
            raise ValueError(f"pick the pooled embedding with --pool-key, one of {keys}")
        key = means[0]
    if key not in pooled:
        raise ValueError(f"pooled embedding {key!r} not in {capture_dir}; available: {keys}")
    if not hasattr(source, "pairs"):
        raise ValueError("the data source has no matched pairs (use an images+captions source)")
    rows = {int(s): r for r, s in enumerate(pooled["sample_index"].tolist())}
    _check_item_ids(capture_dir, source, pooled["sample_index"].tolist(), item_ids)
    img_rows, txt_rows, ids, img_keys = [], [], [], []
    for p in source.pairs():
        if p.image_index in rows and p.text_index in rows:
            img_rows.append(rows[p.image_index])
            txt_rows.append(rows[p.text_index])
            ids.append(f"{p.image_id}#{p.caption_index}")
            img_keys.append(str(p.image_id))
    if not img_rows:
        raise ValueError(
            f"no matched pair of the data source was captured in {capture_dir}; pass the data "
            "source used for the capture"
        )
    emb = pooled[key].float()
    meta = {"source": str(capture_dir), "pooled_key": key}
    return Pairs(emb[img_rows], emb[txt_rows], ids, meta, img_keys)
