"""Dual-encoder adapters (CLIP, SigLIP, SigLIP2 NaFlex) on tiny random checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from saeprobe import Item, Modality
from saeprobe.models import load_model

pytestmark = pytest.mark.integration

TEXTS = ["A man riding a wave on top of a surfboard.", "Two dogs", "A cat sitting on a laptop"]


def _photos():
    from PIL import Image
    from skimage import data

    return [Image.fromarray(data.astronaut()), Image.fromarray(data.chelsea())]


@pytest.fixture(scope="module", params=["clip", "siglip", "siglip2"])
def adapter(request, tmp_path_factory):
    from saeprobe.testing.tiny import clip, siglip

    build = {"clip": clip.build, "siglip": siglip.build, "siglip2": siglip.build_siglip2}
    out = tmp_path_factory.mktemp(request.param)
    build[request.param](out)
    ad = load_model(str(out))
    ad.family = request.param
    return ad


def _items(tower):
    if tower == "text":
        return [Item(f"t{i}", text=t) for i, t in enumerate(TEXTS)]
    return [Item(f"i{i}", image=im) for i, im in enumerate(_photos())]


def _layer_out(out):
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("tower", ["text", "vision"])
def test_hooks_match_hidden_states(adapter, tower):
    batch = adapter.encode(_items(tower))
    assert batch.tower == tower
    layers = adapter.layers(tower)
    assert len(layers) == 2 and adapter.n_layers == 2
    seen = {}
    handles = [
        layer.register_forward_hook(lambda m, a, o, i=i: seen.__setitem__(i, _layer_out(o)))
        for i, layer in enumerate(layers)
    ]
    norm = adapter.final_norm(tower)
    if norm is not None:
        handles.append(norm.register_forward_hook(lambda m, a, o: seen.__setitem__("norm", o)))
    with torch.no_grad():
        out = adapter.forward(batch, output_hidden_states=True)
    for h in handles:
        h.remove()
    m = batch.attention_mask.bool()
    hs = out.hidden_states
    assert len(hs) == len(layers) + 1
    for i in range(len(layers)):
        assert torch.equal(seen[i][m], hs[i + 1][m])
    assert seen[0].shape[-1] == adapter.d_model_of(tower)
    if norm is None:  # CLIP vision: encoder output is last_hidden_state
        assert adapter.family == "clip" and tower == "vision"
        assert torch.equal(out.last_hidden_state, hs[-1])
    else:  # final norm output is last_hidden_state; hidden_states[-1] is the raw layer output
        assert torch.equal(seen["norm"][m], out.last_hidden_state[m])
        ref = F.layer_norm(hs[-1], (hs[-1].shape[-1],), norm.weight, norm.bias, norm.eps)
        torch.testing.assert_close(ref[m], out.last_hidden_state[m], rtol=1e-5, atol=1e-5)


def test_text_labels(adapter):
    items = _items("text")
    batch = adapter.encode(items)
    tok = adapter.tokenizer
    for b, it in enumerate(items):
        ids = batch.input_ids[b]
        mod = batch.modality[b]
        att = batch.attention_mask[b].bool()
        special = set(tok.all_special_ids) - {tok.unk_token_id}  # <unk> comes from the text
        for t in range(ids.shape[0]):
            if not att[t]:
                continue
            if int(ids[t]) in special:
                assert mod[t] == Modality.TEMPLATE
            else:
                assert mod[t] == Modality.TEXT
        assert not (mod == Modality.IMAGE).any()
        text_ids = ids[att & (mod == Modality.TEXT)].tolist()
        assert len(text_ids) > 0
        if adapter.family != "siglip2":  # the Gemma-style Siglip2 tokenizer maps our BPE to <unk>s
            assert tok.decode(text_ids) == it.text[: len(tok.decode(text_ids))]
    if adapter.family == "clip":  # longest padding; BOS ... EOS
        assert batch.input_ids.shape[1] == int(batch.attention_mask.sum(1).max())
        assert (batch.input_ids[:, 0] == tok.bos_token_id).all()
    else:  # SigLIP pads to max_length and feeds no attention mask
        assert batch.input_ids.shape[1] == 16
        assert set(batch.inputs) == {"input_ids"}


def test_vision_labels_and_pixels(adapter):
    items = _items("vision")
    batch = adapter.encode(items)
    pv = batch.inputs["pixel_values"]
    assert (batch.input_ids == -1).all()
    if adapter.family == "siglip2":
        # NaFlex: [B, max_patches, 3*p*p] flattened patches, mask marks real patches
        assert pv.shape == (2, 16, 3 * 8 * 8)
        pam = batch.inputs["pixel_attention_mask"]
        assert torch.equal(batch.attention_mask, pam.long())
        h, w = batch.inputs["spatial_shapes"].tolist()[1]
        assert int(pam[1].sum()) == h * w < 16  # the non-square cat photo uses fewer patches
        assert (batch.modality[batch.attention_mask.bool()] == Modality.IMAGE).all()
    else:
        assert pv.shape == (2, 3, 32, 32)
        n_patches = (32 // 8) ** 2
        n_cls = 1 if adapter.family == "clip" else 0
        assert batch.modality.shape == (2, n_patches + n_cls)
        assert (batch.modality[:, :n_cls] == Modality.TEMPLATE).all()
        assert (batch.modality[:, n_cls:] == Modality.IMAGE).all()
        # undo the normalisation: the real photo lands in [0, 1] pixel space
        ip = adapter.image_processor
        mean = torch.tensor(ip.image_mean).view(1, 3, 1, 1)
        std = torch.tensor(ip.image_std).view(1, 3, 1, 1)
        raw = pv * std + mean
        assert raw.min() >= -1e-4 and raw.max() <= 1 + 1e-4 and raw.std() > 0.1
        assert not torch.equal(pv[0], pv[1])


@pytest.mark.parametrize("tower", ["text", "vision"])
def test_batch_equals_single(adapter, tower):
    items = _items(tower)
    batch = adapter.encode(items)
    with torch.no_grad():
        full = adapter.forward(batch, output_hidden_states=True).hidden_states
        emb = adapter.embed(batch)
    for b, it in enumerate(items):
        one = adapter.encode([it])
        with torch.no_grad():
            single = adapter.forward(one, output_hidden_states=True).hidden_states
            emb1 = adapter.embed(one)
        n = int(one.attention_mask.sum())
        mb = batch.attention_mask[b].bool()
        assert int(mb.sum()) == n
        assert torch.equal(batch.modality[b][mb], one.modality[0][one.attention_mask[0].bool()])
        for layer in range(len(full)):
            torch.testing.assert_close(
                full[layer][b][mb],
                single[layer][0][one.attention_mask[0].bool()],
                rtol=1e-5,
                atol=1e-5,
            )
        torch.testing.assert_close(emb[b], emb1[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tower", ["text", "vision"])
def test_embed_is_projected_pooled_state(adapter, tower):
    """embed() == the model's own projection recomputed from the tower's outputs."""
    batch = adapter.encode(_items(tower))
    m = adapter.model
    with torch.no_grad():
        emb = adapter.embed(batch)
        out = adapter.forward(batch)
        last = out.last_hidden_state
        if adapter.family == "clip" and tower == "text":
            eos = adapter.tokenizer.eos_token_id
            pos = (batch.input_ids == eos).int().argmax(1)
            ref = m.text_projection(last[torch.arange(last.shape[0]), pos])
        elif adapter.family == "clip":
            ref = m.visual_projection(m.vision_model.post_layernorm(last[:, 0]))
        elif tower == "text":  # SigLIP: head on the last position (a pad)
            ref = m.text_model.head(last[:, -1])
        else:
            ref = out.pooler_output
            assert ref is not None
    assert emb.shape == (len(batch.item_ids), 16)
    torch.testing.assert_close(emb, ref, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(emb.norm(dim=-1), torch.ones(emb.shape[0]))  # not normalised


def test_towers_and_errors(adapter):
    assert adapter.is_dual_encoder and adapter.towers == ("text", "vision")
    photo = _photos()[0]
    assert adapter.tower_of(Item("a", text="x")) == "text"
    assert adapter.tower_of(Item("b", image=photo)) == "vision"
    with pytest.raises(ValueError, match="split it"):
        adapter.tower_of(Item("c", text="x", image=photo))
    with pytest.raises(ValueError, match="separate batches"):
        adapter.encode([Item("a", text="x"), Item("b", image=photo)])
    with pytest.raises(ValueError, match="unknown tower"):
        adapter.layers("audio")
    assert adapter.d_model_of("text") == 32
    assert adapter.d_model_of("vision") == (48 if adapter.family == "clip" else 16)


def test_bf16_load(adapter):
    ad = type(adapter).from_pretrained(adapter.name_or_path, dtype="bf16")
    assert ad.dtype == torch.bfloat16
    batch = ad.encode(_items("vision")[:1])
    with torch.no_grad():
        emb = ad.embed(batch)
    assert emb.dtype == torch.bfloat16 and np.isfinite(emb.float().numpy()).all()
