"""Data sources: COCO-Caption parquet, image folders, dispatcher."""

from __future__ import annotations

import io
import json
import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from skimage import data as skdata

from saeprobe import Item
from saeprobe.data import (
    CocoCaptionSource,
    ImageFolderSource,
    detect_type,
    open_source,
)


def _small(arr) -> Image.Image:
    return Image.fromarray(arr).resize((48, 40))


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def photos():
    return {
        "a": _small(skdata.astronaut()),
        "c": _small(skdata.coffee()),
        "d": _small(skdata.camera()),  # grayscale
        "e": _small(skdata.chelsea()),
    }


@pytest.fixture(scope="module")
def images(photos):
    good = _encode(photos["a"], "JPEG")
    return {
        "a": good,
        "b": _encode(_small(skdata.rocket()), "JPEG")[:300],  # truncated JPEG
        "c": _encode(photos["c"], "PNG"),
        "d": _encode(photos["d"], "PNG"),
        "e": _encode(photos["e"], "JPEG"),
    }


IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def _table(rows, id_col="question_id", cap_col="answer", struct=True):
    img = [{"bytes": b, "path": f"{i}.jpg"} if struct else b for i, b, _ in rows]
    return pa.table(
        {
            id_col: [f"{i}.jpg" for i, _, _ in rows],
            "image": pa.array(img, type=IMAGE_TYPE if struct else pa.binary()),
            cap_col: pa.array([c for _, _, c in rows], type=pa.list_(pa.string())),
        }
    )


@pytest.fixture(scope="module")
def coco_dir(tmp_path_factory, images):
    root = tmp_path_factory.mktemp("coco") / "data"
    root.mkdir()
    t1 = _table(
        [
            ("a", images["a"], ["cap a0", "cap a1"]),
            ("b", images["b"], ["cap b0"]),
            ("c", images["c"], ["cap c0", "  ", "cap c2"]),
            ("d", images["d"], ["cap d0"]),
        ]
    )
    pq.write_table(t1, root / "val-00000-of-00002.parquet", row_group_size=3)
    t2 = _table([("e", images["e"], ["cap e0", "cap e1"])])
    pq.write_table(t2, root / "val-00001-of-00002.parquet")
    return root


ALL_IDS = [
    "a.jpg", "a.jpg#0", "a.jpg#1", "b.jpg#0", "c.jpg", "c.jpg#0", "c.jpg#2",
    "d.jpg", "d.jpg#0", "e.jpg", "e.jpg#0", "e.jpg#1",
]  # fmt: skip


def test_coco_images_and_captions(coco_dir, photos, caplog):
    with caplog.at_level(logging.WARNING, logger="saeprobe.data"):
        src = CocoCaptionSource(coco_dir)
        assert len(src) == 12
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert (
        "1 undecodable images" in warnings[0].message and "1 empty captions" in warnings[0].message
    )
    assert src.skipped == {"undecodable images": 1, "empty captions": 1}
    items = list(src)
    assert [it.id for it in items] == ALL_IDS == src.ids()
    assert all(isinstance(it, Item) for it in items)
    assert [it.meta["index"] for it in items] == list(range(12))
    by_id = {it.id: it for it in items}
    assert by_id["a.jpg#1"].text == "cap a1" and by_id["a.jpg#1"].image is None
    assert by_id["a.jpg#1"].prompt == "text" and by_id["a.jpg"].prompt == "image"
    assert by_id["c.jpg#2"].text == "cap c2"
    # images decode to RGB; PNG is lossless: equal to the source pixels
    for k in ("a", "c", "d", "e"):
        im = by_id[f"{k}.jpg"].image
        assert im.mode == "RGB" and im.size == (48, 40) and by_id[f"{k}.jpg"].text is None
    assert np.array_equal(np.asarray(by_id["c.jpg"].image), np.asarray(photos["c"]))
    d = np.asarray(by_id["d.jpg"].image)
    assert np.array_equal(d[..., 0], np.asarray(photos["d"])) and np.array_equal(
        d[..., 0], d[..., 2]
    )
    # JPEG: close to the source (lossy)
    err = np.abs(np.asarray(by_id["a.jpg"].image, float) - np.asarray(photos["a"], float)).mean()
    assert err < 12
    # pairs: indices of the image item and of each of its captions
    pairs = src.pairs()
    assert [(ALL_IDS[p.image_index], ALL_IDS[p.text_index]) for p in pairs] == [
        ("a.jpg", "a.jpg#0"), ("a.jpg", "a.jpg#1"), ("c.jpg", "c.jpg#0"), ("c.jpg", "c.jpg#2"),
        ("d.jpg", "d.jpg#0"), ("e.jpg", "e.jpg#0"), ("e.jpg", "e.jpg#1"),
    ]  # fmt: skip
    assert pairs[3].caption_index == 2


def test_coco_modes(coco_dir):
    imgs = CocoCaptionSource(coco_dir, mode="images")
    assert imgs.ids() == ["a.jpg", "c.jpg", "d.jpg", "e.jpg"]
    caps = CocoCaptionSource(coco_dir, mode="captions")
    assert caps.ids() == [i for i in ALL_IDS if "#" in i]
    assert caps.skipped == {"empty captions": 1}  # images are not even read
    it = CocoCaptionSource(coco_dir, mode="image_text")
    items = list(it)
    assert [x.id for x in items] == [i for i in ALL_IDS if "#" in i and not i.startswith("b")]
    assert all(x.image is not None and x.text and x.prompt == "image_text" for x in items)
    with pytest.raises(ValueError, match="pairs"):
        imgs.pairs()
    with pytest.raises(ValueError, match="unknown mode"):
        CocoCaptionSource(coco_dir, mode="both")


@pytest.mark.parametrize("world_size", [2, 3, 5])
@pytest.mark.parametrize("shard", ["contiguous", "round_robin"])
def test_coco_sharding_covers_every_item_once(coco_dir, world_size, shard):
    seen = []
    for r in range(world_size):
        src = CocoCaptionSource(
            coco_dir, rank=r, world_size=world_size, shard=shard, mode="captions"
        )
        ids = [(it.meta["index"], it.id) for it in src]
        assert len(ids) == len(src)
        seen.extend(ids)
    caps = [i for i in ALL_IDS if "#" in i]
    assert sorted(seen) == list(enumerate(caps))


def test_coco_limit_start_and_validate_none(coco_dir):
    src = CocoCaptionSource(coco_dir, limit=5)
    assert src.ids() == ALL_IDS[:5]
    assert [it.id for it in src.items(start=3)] == ALL_IDS[3:5]
    sharded = CocoCaptionSource(coco_dir, limit=5, rank=1, world_size=2)
    assert sharded.ids() == ALL_IDS[3:5] and sharded.ids(all_ranks=True) == ALL_IDS[:5]
    lazy = CocoCaptionSource(coco_dir, validate="none")
    assert lazy.ids()[3] == "b.jpg"  # corrupt image not detected while planning
    with pytest.raises(ValueError, match=r"'b.jpg'.*validate='full'"):
        lazy.item(3)
    header = CocoCaptionSource(coco_dir, validate="header", mode="images")
    assert len(header) in (4, 5)  # header checks do not always catch truncation


def test_coco_variants_and_errors(tmp_path, images):
    # raw binary image column, "captions" and "id" columns, single file, glob
    t = _table([("x", images["a"], ["one", "two"])], id_col="id", cap_col="captions", struct=False)
    pq.write_table(t, tmp_path / "one.parquet")
    src = open_source(tmp_path / "one.parquet")
    assert isinstance(src, CocoCaptionSource)
    assert src.ids() == ["x.jpg", "x.jpg#0", "x.jpg#1"]
    assert src.item(0).image.size == (48, 40)
    assert open_source(str(tmp_path / "*.parquet")).ids() == src.ids()
    # missing caption column
    pq.write_table(pa.table({"image": [images["a"]], "id": ["z"]}), tmp_path / "nocap.parquet")
    with pytest.raises(ValueError, match=r"nocap.parquet: no caption column.*'answer'"):
        CocoCaptionSource(tmp_path / "nocap.parquet").ids()
    assert CocoCaptionSource(tmp_path / "nocap.parquet", mode="images").ids() == ["z"]
    # nothing usable
    bad = _table([("b", images["b"], ["", None])])
    pq.write_table(bad, tmp_path / "bad.parquet")
    with pytest.raises(
        ValueError,
        match=r"no usable items.*2 empty captions \(b.jpg#0, b.jpg#1\), 1 undecodable images \(b.jpg\)",
    ):
        len(CocoCaptionSource(tmp_path / "bad.parquet"))
    # several splits in one folder
    pq.write_table(t, tmp_path / "val-00000-of-00001.parquet")
    pq.write_table(t, tmp_path / "test-00000-of-00001.parquet")
    with pytest.raises(ValueError, match=r"several splits \['test', 'val'\]"):
        CocoCaptionSource(tmp_path)
    assert len(CocoCaptionSource(tmp_path, split="val")) == 3
    with pytest.raises(FileNotFoundError):
        CocoCaptionSource(tmp_path / "nope.parquet")


@pytest.fixture()
def folder(tmp_path, images, photos):
    root = tmp_path / "imgs"
    (root / "sub").mkdir(parents=True)
    (root / "a.jpg").write_bytes(images["a"])
    (root / "sub" / "c.png").write_bytes(images["c"])
    (root / "broken.jpg").write_bytes(images["b"])
    return root


def _write_csv(root, rows):
    lines = ["image,caption"] + [f'{i},"{c}"' for i, c in rows]
    (root / "captions.csv").write_text("\n".join(lines) + "\n")


def test_folder_with_captions(folder, photos):
    _write_csv(
        folder,
        [("sub/c.png", "a cup"), ("a.jpg", "an astronaut"), ("sub/c.png", ""),
         ("broken.jpg", "a rocket"), ("missing.jpg", "nothing"), ("sub/c.png", "coffee")],
    )  # fmt: skip
    src = open_source(folder)
    assert isinstance(src, ImageFolderSource) and src.mode == "images+captions"
    assert src.ids() == [
        "sub/c.png", "sub/c.png#0", "sub/c.png#2", "a.jpg", "a.jpg#0", "broken.jpg#0", "missing.jpg#0",
    ]  # fmt: skip
    assert src.skipped == {"empty captions": 1, "undecodable images": 1, "missing image files": 1}
    items = list(src)
    assert np.array_equal(np.asarray(items[0].image), np.asarray(photos["c"]))
    assert items[2].text == "coffee" and items[4].text == "an astronaut"
    assert [(p.image_index, p.text_index) for p in src.pairs()] == [(0, 1), (0, 2), (3, 4)]
    # jsonl takes precedence and gives the same plan
    (folder / "captions.jsonl").write_text(
        "".join(json.dumps({"image": i, "caption": c}) + "\n" for i, c in [("a.jpg", "x")])
    )
    assert ImageFolderSource(folder).ids() == ["a.jpg", "a.jpg#0"]
    assert ImageFolderSource(folder, captions="captions.csv").n_total == 7


def test_folder_without_captions_and_errors(folder):
    src = ImageFolderSource(folder)
    assert src.mode == "images" and src.ids() == ["a.jpg", "sub/c.png"]
    assert src.skipped == {"undecodable images": 1}
    with pytest.raises(ValueError, match="needs captions"):
        ImageFolderSource(folder, mode="captions")
    (folder / "captions.csv").write_text("file,text\na.jpg,hello\n")
    with pytest.raises(ValueError, match=r"captions.csv: missing column 'image'"):
        ImageFolderSource(folder).ids()


def test_detect_type(tmp_path, coco_dir, folder, monkeypatch):
    assert detect_type(coco_dir) == "coco"
    assert detect_type(folder) == "folder"
    assert detect_type(f"folder:{coco_dir}") == "folder"
    mb = tmp_path / "mbeir"
    (mb / "query").mkdir(parents=True)
    (mb / "cand_pool").mkdir()
    assert detect_type(mb) == "mbeir"
    task = tmp_path / "task7"
    task.mkdir()
    for part in ("query", "corpus", "qrels"):
        (task / f"{part}-00000-of-00001.parquet").write_bytes(b"")
    assert detect_type(task) == "mbeir"  # parquet files, but M-BEIR's (MRBench layout)
    import saeprobe.data.mbeir as mbeir

    calls = []
    monkeypatch.setattr(mbeir, "open_mbeir", lambda path, **kw: calls.append((path, kw)) or "ok")
    assert open_source(task, limit_queries=3) == "ok"
    assert calls == [(str(task), {"limit_queries": 3})]
    src = open_source({"type": "coco", "path": str(coco_dir), "mode": "images", "limit": 2})
    assert src.ids() == ["a.jpg", "c.jpg"] and src.spec["mode"] == "images"
    assert src.item_ids() == src.ids() and src.spec["path"] == str(coco_dir)
    assert open_source(src.spec).ids() == src.ids()  # spec round-trips
    assert open_source(ImageFolderSource(folder).spec).ids() == ImageFolderSource(folder).ids()
    with pytest.raises(FileNotFoundError):
        detect_type(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no parquet files, images or M-BEIR"):
        detect_type(tmp_path / "empty")
