"""PaliGemma and PaliGemma2 adapters on tiny random checkpoints (offline)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from skimage import data

from saeprobe import Modality
from saeprobe._types import Item
from saeprobe.models import load_model
from saeprobe.models.prompts import render_prompt
from saeprobe.testing import build_tiny_model

pytestmark = pytest.mark.integration

FAMILIES = ["paligemma", "paligemma2"]


def _items() -> list[Item]:
    return [
        Item("txt", text="A cat sitting on a laptop."),
        Item("img", image=Image.fromarray(data.astronaut())),
        Item("both", text="Two dogs play.", image=Image.fromarray(data.chelsea())),
    ]


def _out(x):
    return x[0] if isinstance(x, tuple) else x


@pytest.fixture(scope="module", params=FAMILIES)
def run(request, tmp_path_factory):
    """Tiny model of one family, a mixed padded batch and its hooked forward pass."""
    family = request.param
    path = build_tiny_model(family, tmp_path_factory.mktemp(family))
    adapter = load_model(str(path))
    items = _items()
    batch = adapter.encode(items)
    captured: dict[str, torch.Tensor] = {}

    def keep(name):
        return lambda m, a, o: captured.__setitem__(name, _out(o).detach().clone())

    handles = [
        layer.register_forward_hook(keep(f"layer{i}")) for i, layer in enumerate(adapter.layers())
    ]
    handles.append(adapter.final_norm().register_forward_hook(keep("norm")))
    with torch.no_grad():
        out = adapter.forward(batch, output_hidden_states=True)
    for h in handles:
        h.remove()
    return family, path, adapter, items, batch, out, captured


def test_text_config_family(run):
    family, _, adapter, *_ = run
    want = {"paligemma": "gemma", "paligemma2": "gemma2"}[family]
    assert adapter.model.config.text_config.model_type == want
    assert type(adapter).__name__ == "PaliGemmaAdapter"


def test_hooks_match_hidden_states(run):
    _, _, adapter, _, batch, out, captured = run
    hs = out.hidden_states
    n = adapter.n_layers
    assert len(hs) == n + 1
    assert adapter.d_model == hs[-1].shape[-1] == adapter.model.config.text_config.hidden_size
    m = batch.attention_mask.bool()
    for i in range(n - 1):
        assert torch.equal(captured[f"layer{i}"][m], hs[i + 1][m]), f"layer {i}"
    assert torch.equal(captured["norm"][m], hs[-1][m])
    assert not torch.allclose(captured[f"layer{n - 1}"][m], hs[-1][m])


def test_modality_labels_and_prefix_layout(run):
    _, _, adapter, items, batch, _, _ = run
    tok = adapter.processor.tokenizer
    image_id = adapter.model.config.image_token_id
    n_img = adapter.processor.image_seq_length
    for b, item in enumerate(items):
        m = batch.attention_mask[b].bool()
        ids, mod = batch.input_ids[b][m], batch.modality[b][m]
        # every row (text-only too: blank image) starts with the image tokens, then <bos>
        assert (ids[:n_img] == image_id).all() and ids[n_img] == tok.bos_token_id
        assert torch.equal(mod == Modality.IMAGE, ids == image_id)
        assert set(mod.tolist()) <= {Modality.TEMPLATE, Modality.TEXT, Modality.IMAGE}
        text_pos = (mod == Modality.TEXT).nonzero().flatten()
        if item.text:
            assert tok.decode(ids[text_pos]) == item.text
            assert torch.equal(text_pos, torch.arange(text_pos[0], text_pos[-1] + 1))
        else:
            assert text_pos.numel() == 0
        prompt, _ = render_prompt(item)
        assert tok.decode(ids[n_img - 1 :]) == f"<image><bos>{prompt}\n"
        # the whole prompt is PaliGemma's prefix
        assert (batch.inputs["token_type_ids"][b][m] == 0).all()


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


def test_padded_batch_matches_single_items(run):
    _, _, adapter, items, batch, out, _ = run
    assert (batch.attention_mask == 0).any()
    assert (batch.attention_mask[:, 0] == 1).all()
    for b, item in enumerate(items):
        single = adapter.encode([item])
        with torch.no_grad():
            hs = adapter.forward(single, output_hidden_states=True).hidden_states
        m = batch.attention_mask[b].bool()
        assert torch.equal(single.input_ids[0], batch.input_ids[b][m])
        assert torch.equal(single.modality[0], batch.modality[b][m])
        for k in (1, -1):
            torch.testing.assert_close(hs[k][0], out.hidden_states[k][b][m], atol=1e-5, rtol=1e-5)


def test_hook_exception_propagates(run):
    _, _, adapter, items, _, _, _ = run

    class Stop(Exception):
        pass

    def raise_stop(*_):
        raise Stop

    h = adapter.layers()[1].register_forward_hook(raise_stop)
    try:
        with pytest.raises(Stop):
            adapter.forward(adapter.encode(items[:1]))
    finally:
        h.remove()


def test_bf16(run):
    _, path, _, items, _, _, _ = run
    bf = load_model(str(path), dtype="bf16")
    assert bf.dtype == torch.bfloat16
    with torch.no_grad():
        hs = bf.forward(bf.encode(items[2:]), output_hidden_states=True).hidden_states
    assert hs[-1].dtype == torch.bfloat16 and torch.isfinite(hs[-1].float()).all()
