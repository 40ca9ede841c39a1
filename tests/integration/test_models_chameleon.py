"""Chameleon adapter on a tiny random checkpoint with a tiny VQ-VAE (offline)."""

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


def _items() -> list[Item]:
    return [
        Item("txt", text="A cat sitting on a laptop."),
        Item("img", image=Image.fromarray(data.astronaut())),
        Item("both", text="Two dogs play.", image=Image.fromarray(data.chelsea())),
    ]


def _out(x):
    return x[0] if isinstance(x, tuple) else x


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Tiny Chameleon, a mixed padded batch and its hooked forward pass."""
    path = build_tiny_model("chameleon", tmp_path_factory.mktemp("chameleon"))
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
    return path, adapter, items, batch, out, captured


def test_hooks_match_hidden_states(run):
    _, adapter, _, batch, out, captured = run
    hs = out.hidden_states
    n = adapter.n_layers
    assert type(adapter).__name__ == "ChameleonAdapter"
    assert len(hs) == n + 1
    assert adapter.d_model == hs[-1].shape[-1] == adapter.model.config.hidden_size
    m = batch.attention_mask.bool()
    for i in range(n - 1):
        assert torch.equal(captured[f"layer{i}"][m], hs[i + 1][m]), f"layer {i}"
    assert torch.equal(captured["norm"][m], hs[-1][m])
    assert not torch.allclose(captured[f"layer{n - 1}"][m], hs[-1][m])


def test_modality_labels_and_layout(run):
    _, adapter, items, batch, _, _ = run
    tok = adapter.processor.tokenizer
    image_id = adapter.model.config.image_token_id
    n_img = adapter.processor.image_seq_length
    assert adapter.image_token_ids == (image_id,)
    for b, item in enumerate(items):
        m = batch.attention_mask[b].bool()
        ids, mod = batch.input_ids[b][m], batch.modality[b][m]
        assert torch.equal(mod == Modality.IMAGE, ids == image_id)
        assert int((ids == image_id).sum()) == (n_img if item.image is not None else 0)
        assert set(mod.tolist()) <= {Modality.TEMPLATE, Modality.TEXT, Modality.IMAGE}
        text_pos = (mod == Modality.TEXT).nonzero().flatten()
        if item.text:
            assert tok.decode(ids[text_pos]) == item.text
            assert torch.equal(text_pos, torch.arange(text_pos[0], text_pos[-1] + 1))
        else:
            assert text_pos.numel() == 0
        # "<image>" + prompt, no chat template; the processor adds bos, boi/eoi and sep
        keep = torch.ones_like(ids, dtype=torch.bool)
        keep[1:] = ~((ids[1:] == image_id) & (ids[:-1] == image_id))
        prompt, _ = render_prompt(item)
        image = "<racm3:break><image><eoss>" if item.image is not None else ""
        assert tok.decode(ids[keep]) == f"<s>{image}{prompt}<reserved08706>"


def test_vq_codes_fill_image_positions(run):
    """The model swaps VQ-VAE codes in at exactly the IMAGE positions."""
    _, adapter, _, batch, out, _ = run
    inner = adapter.model.model
    with torch.no_grad():
        codes = inner.get_image_tokens(batch.inputs["pixel_values"])  # [2, n_img] bpe ids
        want = inner.embed_tokens(codes).reshape(-1, adapter.d_model)
    img = batch.modality == Modality.IMAGE
    assert torch.equal(out.hidden_states[0][img], want)
    # code ids are the IMGIMG*Z tokens of the tokenizer
    names = adapter.processor.tokenizer.convert_ids_to_tokens(codes.flatten().tolist())
    assert all(n.startswith("IMGIMG") and n.endswith("Z") for n in names)


def test_resize_then_processor(run):
    path, adapter, items, batch, _, _ = run
    photo = items[2].image  # 451 x 300
    side = adapter.model.config.vq_config.resolution
    assert adapter.image_resize == (224, 224)
    assert adapter.prepare_image(items[2]).size == (224, 224)
    pv = batch.inputs["pixel_values"]
    assert pv.shape == (2, 3, side, side)
    ref = adapter.processor.image_processor(photo.resize((224, 224), Image.Resampling.BICUBIC))
    torch.testing.assert_close(pv[1], torch.as_tensor(ref["pixel_values"][0]), atol=1e-6, rtol=0)
    # without the resize the processor centre-crops the wide photo: different pixels
    raw = load_model(str(path), image_resize=None)
    assert raw.prepare_image(items[2]).size == photo.size
    assert not torch.allclose(raw.encode(items[2:]).inputs["pixel_values"][0], pv[1])
    small = load_model(str(path), image_resize=(48, 40))
    assert small.prepare_image(items[2]).size == (48, 40)
    with pytest.raises(ValueError, match="image_resize"):
        load_model(str(path), image_resize=(0, 10))


def test_padded_batch_matches_single_items(run):
    _, adapter, items, batch, out, _ = run
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
    _, adapter, items, _, _, _ = run

    class Stop(Exception):
        pass

    def raise_stop(*_):
        raise Stop

    h = adapter.final_norm().register_forward_hook(raise_stop)
    try:
        with pytest.raises(Stop):
            adapter.forward(adapter.encode(items[:1]))
    finally:
        h.remove()


def test_bf16(run):
    path, _, items, _, _, _ = run
    bf = load_model(str(path), dtype="bf16")
    assert bf.dtype == torch.bfloat16
    with torch.no_grad():
        hs = bf.forward(bf.encode(items[2:]), output_hidden_states=True).hidden_states
    assert hs[-1].dtype == torch.bfloat16 and torch.isfinite(hs[-1].float()).all()
