"""LLaVA 1.5 and LLaVA-NeXT adapters on tiny random checkpoints (offline)."""

from __future__ import annotations

import pytest
import torch

from saeprobe._types import Item
from saeprobe.models.prompts import render_prompt
from tests import adapter_checks as checks

pytestmark = pytest.mark.integration

FAMILIES = ["llava", "llava_next"]


def _expected_prompt(family: str, item: Item) -> str:
    """The full prompt as the family's chat template lays it out (image runs collapsed)."""
    text, _ = render_prompt(item)
    image = "<image>\n" if item.image is not None else ""
    if family == "llava":
        return f"<s>USER: {image}{text} "
    return f"<s>[INST] {image}{text} [/INST]"


@pytest.fixture(scope="module", params=FAMILIES)
def run(request, tmp_path_factory):
    """Tiny model of one family, a mixed padded batch and its hooked forward pass (the first
    layer's input captured too)."""
    return checks.hooked_run(request.param, tmp_path_factory, checks.mixed_items(), pre0=True)


def test_modality_labels_and_prompt_layout(run):
    family, _, adapter, items, batch, _, _ = run
    tok = adapter.processor.tokenizer
    image_id = adapter.model.config.image_token_id
    assert adapter.image_token_ids == (image_id,)
    for (_, ids, mod), item in zip(checks.unpadded_rows(batch), items, strict=True):
        checks.assert_row_labels(tok, ids, mod, item, image_id)
        # collapse each run of image tokens and compare with the template's layout
        assert tok.decode(checks.collapse_image_runs(ids, image_id)) == _expected_prompt(
            family, item
        )


def test_image_tokens_and_pixels(run):
    family, _, adapter, items, batch, _, _ = run
    cfg = adapter.model.config
    tile, patch = cfg.vision_config.image_size, cfg.vision_config.patch_size
    n_img = (batch.input_ids == cfg.image_token_id).sum(1).tolist()
    assert n_img[0] == 0
    pv = batch.inputs["pixel_values"]
    if family == "llava":
        # one 28 px crop per photo, (28 / 7)^2 patch tokens (CLS dropped)
        assert pv.shape == (2, 3, tile, tile)
        assert n_img[1:] == [(tile // patch) ** 2] * 2
    else:
        sizes = [it.image.size[::-1] for it in items[1:]]  # (height, width)
        assert batch.inputs["image_sizes"].tolist() == [list(s) for s in sizes]
        want = [_anyres_tokens(h, w, tile, patch, cfg.image_grid_pinpoints) for h, w in sizes]
        assert n_img[1:] == want
        assert want[0] != want[1]  # the two photo sizes give different counts
        assert pv.shape[0] == 2 and pv.shape[2:] == (3, tile, tile)
        assert pv.shape[1] == 1 + max(
            _best_fit(h, w, cfg.image_grid_pinpoints)[0]
            * _best_fit(h, w, cfg.image_grid_pinpoints)[1]
            // tile**2
            for h, w in sizes
        )
    # CLIP normalisation of real photos: values in [-1.8, 2.2], two photos differ
    assert pv.min() >= -1.80 and pv.max() <= 2.15
    assert not torch.allclose(pv[0], pv[1])


def _best_fit(h: int, w: int, pinpoints) -> tuple[int, int]:
    """Pinpoint keeping most of the original resolution, then wasting least area."""
    best, best_key = None, None
    for ph, pw in pinpoints:
        s = min(pw / w, ph / h)
        effective = min(int(h * s) * int(w * s), h * w)
        key = (effective, -(ph * pw - effective))
        if best_key is None or key > best_key:
            best, best_key = (ph, pw), key
    return best


def _anyres_tokens(h: int, w: int, tile: int, patch: int, pinpoints) -> int:
    """LLaVA-NeXT image token count: base tile + unpadded grid + one newline per row."""
    ph, pw = _best_fit(h, w, pinpoints)
    rows, cols = ph // tile * (tile // patch), pw // tile * (tile // patch)
    if w / h > cols / rows:  # wider than the grid: letterboxed rows are dropped
        pad = (rows - int(round(h * cols / w, 7))) // 2
        rows -= 2 * pad
    else:
        pad = (cols - int(round(w * rows / h, 7))) // 2
        cols -= 2 * pad
    base = (tile // patch) ** 2  # CLS dropped
    return base + rows * cols + rows


class TestHookedRun(checks.HookedRunChecks):
    pass


def test_bad_text(run):
    _, _, adapter, _, _, _, _ = run
    with pytest.raises(ValueError, match="image placeholder"):
        adapter.encode([Item("x", text="look <image> here")])


def test_processor_without_clip_cls_count_is_fixed(run, caplog):
    """A processor saved without patch size / CLS count gets them from the model config."""
    _, _, adapter, items, batch, _, _ = run
    proc = adapter.processor
    saved = proc.patch_size, proc.vision_feature_select_strategy, proc.num_additional_image_tokens
    try:
        proc.patch_size, proc.vision_feature_select_strategy = None, None
        proc.num_additional_image_tokens = 0
        with caplog.at_level("WARNING", logger="saeprobe.models.llava"):
            fixed = type(adapter)(adapter.model, proc, adapter.name_or_path)
        assert "num_additional_image_tokens=1" in caplog.text
        assert proc.patch_size == adapter.model.config.vision_config.patch_size
        assert proc.vision_feature_select_strategy == "default"
        assert torch.equal(fixed.encode(items).input_ids, batch.input_ids)
    finally:
        proc.patch_size, proc.vision_feature_select_strategy, proc.num_additional_image_tokens = (
            saved
        )
