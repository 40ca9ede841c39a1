"""PaliGemma and PaliGemma2 adapters on tiny random checkpoints (offline)."""

from __future__ import annotations

import pytest
import torch

from saeprobe._types import Item
from saeprobe.models.prompts import render_prompt
from tests import adapter_checks as checks

pytestmark = pytest.mark.integration

FAMILIES = ["paligemma", "paligemma2"]


@pytest.fixture(scope="module", params=FAMILIES)
def run(request, tmp_path_factory):
    """Tiny model of one family, a mixed padded batch and its hooked forward pass."""
    return checks.hooked_run(request.param, tmp_path_factory, checks.mixed_items())


def test_text_config_family(run):
    family, _, adapter, *_ = run
    want = {"paligemma": "gemma", "paligemma2": "gemma2"}[family]
    assert adapter.model.config.text_config.model_type == want
    assert type(adapter).__name__ == "PaliGemmaAdapter"


def test_modality_labels_and_prefix_layout(run):
    _, _, adapter, items, batch, _, _ = run
    tok = adapter.processor.tokenizer
    image_id = adapter.model.config.image_token_id
    n_img = adapter.processor.image_seq_length
    for (b, ids, mod), item in zip(checks.unpadded_rows(batch), items, strict=True):
        # every row (text-only too: blank image) starts with the image tokens, then <bos>
        assert (ids[:n_img] == image_id).all() and ids[n_img] == tok.bos_token_id
        checks.assert_row_labels(tok, ids, mod, item, image_id)
        prompt, _ = render_prompt(item)
        assert tok.decode(ids[n_img - 1 :]) == f"<image><bos>{prompt}\n"
        # the whole prompt is PaliGemma's prefix
        assert (batch.inputs["token_type_ids"][b][batch.attention_mask[b].bool()] == 0).all()


def test_pixels_and_blank_image(run):
    _, _, adapter, _, batch, _, _ = run
    side = adapter.model.config.vision_config.image_size
    pv = batch.inputs["pixel_values"]
    assert pv.shape == (3, 3, side, side)
    # text-only item: a black image normalised with mean = std = 0.5 -> all -1
    assert torch.equal(pv[0], torch.full_like(pv[0], -1.0))
    # real photos are in [-1, 1] and not constant
    assert pv[1:].min() >= -1.0 and pv[1:].max() <= 1.0 and pv[1].std() > 0.1
    assert not torch.allclose(pv[1], pv[2])


def test_prefix_is_bidirectional(run):
    """Image tokens see the text after them (PaliGemma's prefix-LM attention)."""
    _, _, adapter, items, _, _, _ = run
    photo = items[1].image
    b = adapter.encode(
        [Item("a", text="A cat.", image=photo), Item("b", text="A dog.", image=photo)]
    )
    assert torch.equal(b.inputs["pixel_values"][0], b.inputs["pixel_values"][1])
    with torch.no_grad():
        hs = adapter.forward(b, output_hidden_states=True).hidden_states
    assert torch.equal(hs[0][0, 0], hs[0][1, 0])
    assert not torch.allclose(hs[1][0, 0], hs[1][1, 0])


class TestHookedRun(checks.HookedRunChecks):
    @staticmethod
    def hooked_module(adapter):
        return adapter.layers()[1]
