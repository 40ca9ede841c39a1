"""Gemma 3 vision adapter on a tiny random checkpoint (soft image tokens, labels, padding)."""

from __future__ import annotations

import pytest
import torch

from saeprobe import Item, Modality
from saeprobe.models import load_model
from saeprobe.models.prompts import render_prompt

pytestmark = pytest.mark.integration


def _items():
    from PIL import Image
    from skimage import data

    return [
        Item("text", text="A cat sitting on a laptop keyboard."),
        Item("image", image=Image.fromarray(data.astronaut())),
        Item("both", text="Two dogs play with a red ball.", image=Image.fromarray(data.chelsea())),
    ]


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    from saeprobe.testing import build_tiny_model

    return load_model(str(build_tiny_model("gemma3", tmp_path_factory.mktemp("gemma3"))))


@pytest.fixture(scope="module")
def encoded(adapter):
    items = _items()
    batch = adapter.encode(items)
    with torch.no_grad():
        out = adapter.forward(batch, output_hidden_states=True)
    return items, batch, out


def test_structure(adapter):
    assert type(adapter).__name__ == "Gemma3Adapter"
    assert type(adapter.processor).__name__ == "Gemma3Processor"
    assert adapter.n_layers == 2 and adapter.d_model == 32


def test_hooks_match_hidden_states(adapter, encoded):
    _, batch, ref = encoded
    seen = {}
    handles = [
        layer.register_forward_hook(
            lambda m, a, o, i=i: seen.__setitem__(i, o[0] if isinstance(o, tuple) else o)
        )
        for i, layer in enumerate(adapter.layers())
    ]
    handles.append(
        adapter.final_norm().register_forward_hook(lambda m, a, o: seen.__setitem__("n", o))
    )
    with torch.no_grad():
        adapter.forward(batch)
    for h in handles:
        h.remove()
    m = batch.attention_mask.bool()
    hs = ref.hidden_states
    assert len(hs) == 3
    assert torch.equal(seen[0][m], hs[1][m])
    assert torch.equal(seen["n"][m], hs[-1][m])
    assert not torch.equal(seen[1][m], hs[-1][m])  # hidden_states[-1] is post-norm


def test_modality_labels_and_template(adapter, encoded):
    items, batch, _ = encoded
    tok = adapter.tokenizer
    ids, mod, att = batch.input_ids, batch.modality, batch.attention_mask.bool()
    assert torch.equal(mod == Modality.IMAGE, (ids == adapter.image_token_id) & att)
    assert torch.equal(batch.inputs["token_type_ids"].bool(), mod == Modality.IMAGE)
    assert not (mod == Modality.SYSTEM).any()
    # the chat template trims the prompt (Gemma's `| trim`): no trailing space
    prompt, _ = render_prompt(items[0])
    want = f"<bos><start_of_turn>user\n{prompt.strip()}<end_of_turn>\n"
    assert tok.decode(ids[0][att[0]]) == want
    boi_eoi = torch.tensor(tok.convert_tokens_to_ids(["<start_of_image>", "<end_of_image>"]))
    for b in (1, 2):
        assert int((mod[b] == Modality.IMAGE).sum()) == 4
        wrap = torch.isin(ids[b], boi_eoi)
        assert int(wrap.sum()) == 2 and (mod[b][wrap] == Modality.TEMPLATE).all()
    for b, it in enumerate(items):
        text_ids = ids[b][(mod[b] == Modality.TEXT) & att[b]]
        if it.text is None:
            assert text_ids.numel() == 0
        else:
            assert tok.decode(text_ids).strip() == it.text
    assert (mod[~att] == Modality.TEMPLATE).all()


def test_matches_gemma3_processor(adapter, encoded):
    """Tokens, token types and pixels equal Gemma3Processor's for image items."""
    items, batch, _ = encoded
    proc = adapter.processor
    for row, k in ((1, 0), (2, 1)):
        it = items[row]
        prompt, _ = render_prompt(it)
        msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        text = proc.apply_chat_template(msgs, tokenize=False)
        ref = proc(text=[text], images=[[it.image]], return_tensors="pt", add_special_tokens=False)
        n = int(batch.attention_mask[row].sum())
        assert torch.equal(batch.input_ids[row, :n], ref["input_ids"][0])
        assert torch.equal(batch.inputs["token_type_ids"][row, :n], ref["token_type_ids"][0])
        assert torch.equal(batch.inputs["pixel_values"][k], ref["pixel_values"][0])
    pv = batch.inputs["pixel_values"]
    assert pv.shape == (2, 3, 32, 32)
    ip = adapter.image_processor
    raw = pv * torch.tensor(ip.image_std).view(1, 3, 1, 1) + torch.tensor(ip.image_mean).view(
        1, 3, 1, 1
    )
    assert raw.min() >= -1e-4 and raw.max() <= 1 + 1e-4 and raw.std() > 0.1


def test_token_types_make_image_block_bidirectional(adapter, encoded):
    _, batch, out = encoded
    inputs = {k: v for k, v in batch.inputs.items() if k != "token_type_ids"}
    with torch.no_grad():
        causal = adapter.model.model(**inputs, use_cache=False).last_hidden_state
    img = batch.modality == Modality.IMAGE
    first = img & ~torch.nn.functional.pad(img, (1, 0))[:, :-1]  # first soft token of each image
    # the first image token sees the later image tokens only through the bidirectional block
    assert not torch.allclose(causal[first], out.last_hidden_state[first])
    before = torch.cumsum(img.int(), 1) == 0
    torch.testing.assert_close(causal[before], out.last_hidden_state[before])


def test_hook_exception_propagates(adapter, encoded):
    _, batch, _ = encoded

    class Stop(Exception):
        pass

    def boom(m, a, o):
        raise Stop

    h = adapter.final_norm().register_forward_hook(boom)
    try:
        with pytest.raises(Stop):
            adapter.forward(batch)
    finally:
        h.remove()


def test_batch_equals_single(adapter, encoded):
    items, batch, out = encoded
    assert batch.attention_mask.sum(1).min() < batch.attention_mask.shape[1]
    for b, it in enumerate(items):
        one = adapter.encode([it])
        with torch.no_grad():
            single = adapter.forward(one, output_hidden_states=True).hidden_states
        n = int(one.attention_mask.sum())
        assert torch.equal(batch.input_ids[b, :n], one.input_ids[0])
        assert torch.equal(batch.modality[b, :n], one.modality[0])
        for layer in range(len(single)):
            torch.testing.assert_close(
                out.hidden_states[layer][b, :n], single[layer][0], rtol=1e-5, atol=1e-5
            )


def test_bf16_load(adapter):
    ad = type(adapter).from_pretrained(adapter.name_or_path, dtype="bf16")
    assert ad.dtype == torch.bfloat16
    with torch.no_grad():
        out = ad.forward(ad.encode(_items()[2:]), output_hidden_states=True)
    assert out.hidden_states[-1].dtype == torch.bfloat16
    assert torch.isfinite(out.hidden_states[-1].float()).all()
