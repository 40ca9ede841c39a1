"""The shape-scene generator and its writers (saeprobe.demo.scenes, saeprobe.demo.scenes_data)."""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from pathlib import Path

import pytest

from saeprobe.data import open_source
from saeprobe.data.coco import CocoCaptionSource
from saeprobe.data.mbeir import open_mbeir
from saeprobe.demo.scenes import (
    BACKGROUNDS,
    COLOURS,
    COUNT_WORDS,
    PLURALS,
    SHAPES,
    SIZES,
    Scene,
    attribute_diff,
    captions,
    edit,
    hard_negatives,
    jitter,
    make_splits,
    relation_between,
    render,
)
from saeprobe.demo.scenes_data import (
    SKIMAGE_CAPTIONS,
    write_coco_parquet,
    write_dataset,
    write_mbeir_tasks,
)

SIZES_SMALL = {"train": 60, "val": 20, "test": 40}


@pytest.fixture(scope="module")
def splits():
    return make_splits(0, SIZES_SMALL)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    res = write_dataset(root, seed=0, sizes={"train": 12, "val": 8, "test": 16})
    return root, res


def _files(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _words(text: str) -> list[str]:
    return [w.strip(",.:;") for w in text.split()]


# ------------------------------------------------------------------ determinism
def test_same_seed_same_scenes_and_pixels(splits):
    again = make_splits(0, SIZES_SMALL)
    assert again == splits
    s = splits["test"][3]
    assert render(s).tobytes() == render(Scene.from_dict(s.to_dict())).tobytes()
    other = make_splits(1, SIZES_SMALL)
    assert [s.key for s in other["test"]] != [s.key for s in splits["test"]]


def test_same_seed_byte_identical_files(dataset, tmp_path):
    root, _ = dataset
    write_dataset(tmp_path, seed=0, sizes={"train": 12, "val": 8, "test": 16})
    first, second = _files(root), _files(tmp_path)
    assert first == second
    assert any(name.endswith(".parquet") for name in first)


def test_test_split_does_not_depend_on_train_size(splits):
    bigger = make_splits(0, {**SIZES_SMALL, "train": 120})
    assert bigger["test"] == splits["test"] and bigger["val"] == splits["val"]


# ------------------------------------------------------------------ splits
def test_splits_disjoint_by_content(splits):
    keys = {name: [s.key for s in scenes] for name, scenes in splits.items()}
    for name, ks in keys.items():
        assert len(ks) == len(set(ks)) == SIZES_SMALL[name], name
    assert not set(keys["train"]) & set(keys["test"])
    assert not set(keys["train"]) & set(keys["val"])
    assert not set(keys["val"]) & set(keys["test"])
    ids = [s.id for scenes in splits.values() for s in scenes]
    assert len(ids) == len(set(ids))


def test_every_layout_and_count_occurs(splits):
    seen = Counter((s.layout, s.n) for scenes in splits.values() for s in scenes)
    assert {("group", 1), ("group", 2), ("group", 3), ("pair", 2), ("triple", 3)} <= set(seen)
    bgs = {s.background for scenes in splits.values() for s in scenes}
    textures = {s.texture for scenes in splits.values() for s in scenes}
    assert bgs == set(BACKGROUNDS) and len(textures) == 4


# ------------------------------------------------------------------ captions
def test_captions_name_every_object_and_the_structure(splits):
    for s in (s for scenes in splits.values() for s in scenes):
        caps = captions(s)
        assert len(caps) == 5 and len(set(caps)) == 5
        for c in caps:
            words = _words(c)
            assert len(words) <= 13, c
            for o in s.objects:
                assert o.size in words and o.colour in words, (c, o)
                assert o.shape in words or PLURALS[o.shape] in words, (c, o)
            if s.layout == "group" and s.n > 1:
                assert COUNT_WORDS[s.n] in words, c
        if s.layout == "pair":
            # the stated relation holds in the geometry, and caption 0 says it
            assert relation_between(s.objects[0], s.objects[1], ratio=1.5) == s.relation
            assert s.relation in _words(caps[0])
            assert caps[0].startswith("a " + s.objects[0].phrase)


def test_canonical_captions_unique_within_a_split(splits):
    for scenes in splits.values():
        firsts = [captions(s)[0] for s in scenes]
        assert len(firsts) == len(set(firsts))


def test_objects_have_their_colour_and_stay_inside(splits):
    """The drawn pixel at each object's centre is its colour (no background bleeds in)."""
    for s in splits["test"][:20]:
        im = render(s, 96)
        assert im.size == (96, 96) and im.mode == "RGB"
        for o in s.objects:
            assert o.radius <= o.x <= 1 - o.radius and o.radius <= o.y <= 1 - o.radius
            if o.shape == "crescent":
                continue  # its centre is cut out
            px = im.getpixel((int(o.x * 96), int(o.y * 96)))
            assert max(abs(a - b) for a, b in zip(px, COLOURS[o.colour])) <= 40, (s.id, o, px)


# ------------------------------------------------------------------ derived scenes
def _multisets(s: Scene):
    return (
        Counter(o.colour for o in s.objects),
        Counter(o.shape for o in s.objects),
        Counter(o.size for o in s.objects),
    )


def test_hard_negatives_differ_in_exactly_one_attribute(splits):
    rng = random.Random(0)
    for scenes in splits.values():
        keys = {s.key for s in scenes}
        for s in scenes:
            negs = hard_negatives(s, rng, avoid=keys)
            assert {"colour", "shape"} <= set(negs), s.id
            if s.layout == "pair":
                assert "relation" in negs
            if s.layout == "group":
                assert "count" in negs
            for attr, n in negs.items():
                assert attribute_diff(s, n) == [attr], (s.id, attr)
                assert n.key not in keys and n.layout == s.layout
                assert set(captions(n)).isdisjoint(captions(s))
                # independent check on the objects' attribute multisets
                cs, ss, zs = _multisets(s)
                cn, sn, zn = _multisets(n)
                same = {"colour": cs == cn, "shape": ss == sn, "size": zs == zn}
                if attr in same:
                    assert not same.pop(attr) and all(same.values()), (s.id, attr)
                    assert n.n == s.n
                elif attr == "relation":
                    assert all(same.values()) and n.relation != s.relation
                else:  # count
                    assert abs(n.n - s.n) == 1
                    assert {o.descriptor for o in n.objects} == {o.descriptor for o in s.objects}


def test_jitter_keeps_the_content(splits):
    rng = random.Random(0)
    moved = 0
    for s in splits["test"]:
        j = jitter(s, rng)
        assert j.key == s.key and captions(j) == captions(s)
        for a, b in zip(s.objects, j.objects):
            assert abs(a.x - b.x) <= 0.04 + 1e-9 and abs(a.y - b.y) <= 0.04 + 1e-9
            moved += (a.x, a.y) != (b.x, b.y)
        if s.layout == "pair":
            assert relation_between(j.objects[0], j.objects[1]) == s.relation
        assert render(j).tobytes() != render(s).tobytes()
    assert moved > 0


def test_edit_changes_one_attribute_named_in_the_instruction(splits):
    rng = random.Random(0)
    words = set(COLOURS) | set(SHAPES) | set(PLURALS.values()) | set(SIZES)
    for s in splits["test"]:
        made = edit(s, rng)
        assert made is not None
        text, attr, target = made
        assert attribute_diff(s, target) == [attr]
        assert len(text.split()) <= 12
        changed = [b for a, b in zip(s.objects, target.objects) if a != b]
        new_value = getattr(changed[0], attr)
        assert new_value in _words(text) or PLURALS.get(new_value) in _words(text), text
        assert [o.x for o in s.objects] == [o.x for o in target.objects]
        assert set(_words(text)) & words


# ------------------------------------------------------------------ writers
def test_coco_parquet_opens_with_saeprobe_readers(dataset):
    root, res = dataset
    path = res["coco"]["test"]
    assert path == root / "coco" / "test-00000-of-00001.parquet"
    source = open_source(str(path))
    assert isinstance(source, CocoCaptionSource)
    scenes = make_splits(0, {"train": 12, "val": 8, "test": 16})["test"]
    assert source.n_total == len(scenes) * 6  # each image, then its 5 captions
    items = list(source)
    assert items[0].id == scenes[0].id and items[0].image.size == (96, 96)
    assert [it.text for it in items[1:6]] == captions(scenes[0])
    assert items[0].image.tobytes() == render(scenes[0]).tobytes()
    assert len(source.pairs()) == len(scenes) * 5
    # a folder with three splits needs split=...
    assert open_source(str(root / "coco"), split="val").n_total == 8 * 6
    with pytest.raises(ValueError, match="several splits"):
        open_source(str(root / "coco"))
    # the scene column round-trips
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["question_id", "scene"]).to_pylist()
    assert Scene.from_dict(json.loads(table[0]["scene"])) == scenes[0]


def test_mbeir_folders_task_types_qrels_and_hard_negatives(dataset):
    root, res = dataset
    folders = res["mbeir"]["test"]
    assert sorted(folders) == [1, 2, 4, 5, 7]
    n = 16
    expected_relevant = {1: 1, 2: 4, 4: 5, 5: 1, 7: 1}
    for paper_task, folder in folders.items():
        task = open_mbeir(folder)
        assert task.task == paper_task, folder
        assert open_source(str(folder)).task == paper_task
        assert len(task.queries) == n
        rows = [json.loads(line) for line in (folder / "items.jsonl").read_text().splitlines()]
        corpus_roles = Counter(r["role"] for r in rows if r["side"] == "corpus")
        assert corpus_roles["hard_negative"] >= n, (paper_task, corpus_roles)
        role_of = {r["id"]: r["role"] for r in rows if r["side"] == "corpus"}
        for qid in task.queries.ids:
            rel = task.qrels[qid]
            assert len(rel) == expected_relevant[paper_task]
            assert all(role_of[c] == "positive" for c in rel)
        assert all(len(r) == expected_relevant[paper_task] for r in task.relevant_rows())
        q = task.queries[0]
        if paper_task in (1, 2):
            assert q.text and q.image is None
        elif paper_task in (4, 5):
            assert q.image is not None and q.text is None
        else:
            assert q.image is not None and q.text.startswith(("make the", "turn the"))


def test_mbeir_hard_negatives_are_one_attribute_away(dataset):
    root, res = dataset
    rows = [
        json.loads(line)
        for line in (res["mbeir"]["test"][1] / "items.jsonl").read_text().splitlines()
    ]
    by_id = {r["id"]: Scene.from_dict(r["scene"]) for r in rows if r["side"] == "corpus"}
    negs = [r for r in rows if r["role"] == "hard_negative"]
    assert {r["attribute"] for r in negs} >= {"colour", "shape", "size"}
    for r in negs:
        base = r["id"].split("~")[0]
        assert attribute_diff(by_id[base], by_id[r["id"]]) == [r["attribute"]]


def test_skimage_out_of_domain_task(dataset):
    _, res = dataset
    task = open_mbeir(res["ood"])
    assert task.task == 1 and len(task.queries) == len(SKIMAGE_CAPTIONS)
    assert task.qrels["astronaut#0"] == {"astronaut"}
    assert task.corpus[0].image.size == (96, 96)


def test_writers_check_their_arguments(splits, tmp_path):
    with pytest.raises(ValueError, match="no scene task"):
        write_mbeir_tasks(tmp_path, splits["test"][:2], tasks=(3,))
    with pytest.raises(ValueError, match="unknown splits"):
        make_splits(0, {"dev": 3})
    out = write_coco_parquet(tmp_path / "x.parquet", splits["val"][:3], image_size=64)
    assert open_source(str(out)).item(0).image.size == (64, 64)
