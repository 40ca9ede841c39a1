"""Feature cards, sweep inputs, figures, config round-trips, pairs files."""

from __future__ import annotations

import base64
import io
import json
import math

import pytest
import torch

from analysis import (
    AnalysisConfig,
    ConceptStatsAccumulator,
    TagConfig,
    build_card,
    load_pairs,
    save_pairs,
)
from analysis.figures import load_sweep, recall_curve
from saeprobe._types import Item


def test_card_with_items_and_thumbnails():
    from PIL import Image

    img = Image.new("RGB", (300, 150), (255, 0, 0))
    items = [Item("a", text="a red square"), Item("b", image=img), Item("c", text="x" * 500)]
    card = build_card(
        7,
        {"energy": 0.5, "modality_score": float("nan")},
        "bimodal",
        top=[(1, 2.5), (0, 1.0), (2, 0.5), (9, 0.1)],
        items=items,
        bridges_to=[(3, 0.25)],
        is_distractor=True,
        thumb_size=64,
    )
    t = card.top_inputs
    assert [x.sample_id for x in t] == [1, 0, 2, 9] and t[0].item_id == "b"
    png = Image.open(io.BytesIO(base64.b64decode(t[0].image_png)))
    assert png.format == "PNG" and png.size == (64, 32) and png.getpixel((10, 10)) == (255, 0, 0)
    assert t[1].text == "a red square" and t[1].image_png is None
    assert len(t[2].text) == 300 and t[3].item_id is None  # sample 9 is not in the items
    html = card.to_html()
    assert "data:image/png;base64," in html and "distractor" in html and "c3 (0.25)" in html
    assert "nan" in html
    # a dict / callable lookup works too
    card2 = build_card(1, {}, "textual", top=[(5, 1.0)], items={5: Item("z", text="t")})
    assert card2.top_inputs[0].item_id == "z"
    card3 = build_card(1, {}, "textual", top=[(5, 1.0)], items=lambda i: Item(f"id{i}", text="t"))
    assert card3.top_inputs[0].item_id == "id5"


def test_sweep_format_and_figures(tmp_path):
    one = {"x": [0, 1, 2], "recall": {"1": [0.1, 0.2, 0.3]}, "xlabel": "layer"}
    s = load_sweep(one)
    assert s == [{"name": "", "x": [0, 1, 2], "recall": {1: [0.1, 0.2, 0.3]}, "xlabel": "layer"}]
    p = tmp_path / "s.json"
    p.write_text(json.dumps({"series": [dict(one, name="m1"), dict(one, name="m2")]}))
    assert [x["name"] for x in load_sweep(p)] == ["m1", "m2"]
    fig = recall_curve(str(p), "t")
    assert len(fig.data) == 2 and list(fig.data[0].y) == [0.1, 0.2, 0.3]
    # the retrieval sweeps' format (saeprobe.sweeps): x_name + one series per method
    rs = {
        "x": [0.0, 0.1],
        "x_name": "alpha",
        "method": "realign",
        "recall": {"1": [0.2, 0.3]},
        "methods": {
            "realign": {"recall": {"1": [0.2, 0.3]}},
            "zca": {"recall": {"1": [0.1, None]}},
        },
    }
    got = load_sweep(rs)
    assert [x["name"] for x in got] == ["realign", "zca"] and got[0]["xlabel"] == "alpha"
    assert math.isnan(got[1]["recall"][1][1])
    with pytest.raises(ValueError, match='needs "x"'):
        load_sweep({"x": [1]})
    with pytest.raises(ValueError, match="2 values for 3 x"):
        load_sweep({"x": [1, 2, 3], "recall": {"1": [0.1, 0.2]}})


def test_config_round_trip_and_accumulator_merge():
    cfg = AnalysisConfig(tags=TagConfig(textual=0.8), ks=(1, 10), ablation_steps=[0, 3])
    back = AnalysisConfig.from_json(cfg.to_json())
    assert back == cfg and back.tags.textual == 0.8
    with pytest.raises(ValueError, match="modality_level"):
        AnalysisConfig(modality_level="pixel")
    g = torch.Generator().manual_seed(0)
    v, i = torch.rand(50, 3, generator=g), torch.randint(0, 9, (50, 3), generator=g)
    m, sid = torch.randint(0, 4, (50,), generator=g), torch.arange(50)
    a, b, whole = (ConceptStatsAccumulator(9, top_m=2) for _ in range(3))
    a.update(v[:20], i[:20], m[:20], sid[:20])
    b.update(v[20:], i[20:], m[20:], sid[20:])
    whole.update(v, i, m, sid)
    a.merge(b)
    ra, rw = a.result(), whole.result()
    assert torch.allclose(ra.energy, rw.energy) and torch.allclose(ra.frequency, rw.frequency)
    assert ra.top_inputs == rw.top_inputs


def test_pairs_file_round_trip(tmp_path):
    x, y = torch.randn(4, 6), torch.randn(4, 6)
    p = save_pairs(
        tmp_path / "p.safetensors",
        x,
        y,
        image_ids=["a", "b", "c", "d"],
        text_ids=["a", "b", "c", "d"],
        metadata={"model": "m"},
    )
    pairs = load_pairs(p)
    assert torch.equal(pairs.image_emb, x) and torch.equal(pairs.text_emb, y)
    assert pairs.ids == ["a", "b", "c", "d"] and pairs.metadata["model"] == "m"
    save_pairs(tmp_path / "q.safetensors", x, y, image_ids=[1, 2, 3, 4], text_ids=[1, 2, 4, 3])
    with pytest.raises(ValueError, match="ids do not match: row 2 has image id 3 but text id 4"):
        load_pairs(tmp_path / "q.safetensors")
    save_pairs(tmp_path / "s.safetensors", x, y, image_ids=["a", "b"], text_ids=["a", "b"])
    with pytest.raises(ValueError, match="2 ids for 4 rows"):
        load_pairs(tmp_path / "s.safetensors")
    with pytest.raises(ValueError, match="lacks"):
        from safetensors.torch import save_file

        save_file({"image_emb": x}, str(tmp_path / "t.safetensors"))
        load_pairs(tmp_path / "t.safetensors")
    with pytest.raises(ValueError, match="differ"):
        save_pairs(tmp_path / "r.safetensors", x, y[:3])


def test_retrieval_task_groups_shared_images():
    from analysis import Pairs
    from analysis.pipeline import retrieval_task

    x = torch.randn(3, 4)
    pairs = Pairs(x, x, image_keys=["a", "a", "b"])
    q, c, rel = retrieval_task(pairs, "text")
    assert q.tolist() == [0, 1, 2] and c.tolist() == [0, 2] and rel == [{0}, {0}, {1}]
    q, c, rel = retrieval_task(pairs, "image")
    assert q.tolist() == [0, 2] and c.tolist() == [0, 1, 2] and rel == [{0, 1}, {2}]
    q, c, rel = retrieval_task(Pairs(x, x), "text")
    assert q.tolist() == c.tolist() == [0, 1, 2] and rel == [{0}, {1}, {2}]


def test_pairs_from_capture_folder(tmp_path):
    from safetensors.torch import save_file

    from analysis.pairs import pairs_from_capture
    from saeprobe.data import Pair

    emb = torch.arange(5 * 3, dtype=torch.float32).view(5, 3)
    # rows stored out of data order on purpose: sample_index says which item each row is
    save_file(
        {
            "final_norm.mean": emb,
            "final_norm.last": emb + 1,
            "sample_index": torch.tensor([4, 0, 1, 2, 3]),
        },
        str(tmp_path / "pooled.safetensors"),
    )
    (tmp_path / "pooled.json").write_text(json.dumps({"item_ids": list("abcde"), "keys": []}))

    class Source:
        def pairs(self):  # image item 0 with captions 1, 2; image item 3 with caption 4
            return [Pair(0, 1, "img0", 0), Pair(0, 2, "img0", 1), Pair(3, 4, "img3", 0)]

    pairs = pairs_from_capture(tmp_path, Source())
    # sample 0 -> row 1, 1 -> 2, 2 -> 3, 3 -> 4, 4 -> 0
    assert torch.equal(pairs.image_emb, emb[[1, 1, 4]]) and torch.equal(
        pairs.text_emb, emb[[2, 3, 0]]
    )
    assert pairs.image_keys == ["img0", "img0", "img3"] and pairs.ids[1] == "img0#1"
    assert torch.equal(
        pairs_from_capture(tmp_path, Source(), "final_norm.last").image_emb, emb[[1, 1, 4]] + 1
    )
    with pytest.raises(ValueError, match="available"):
        pairs_from_capture(tmp_path, Source(), "final_norm.max")
