"""Idefics3 / SmolVLM adapter on tiny random checkpoints (image splitting, labels, padding)."""

from __future__ import annotations

import pytest
import torch

from saeprobe import Item, Modality
from saeprobe.models import load_model
from saeprobe.models.prompts import render_prompt

pytestmark = pytest.mark.integration

BOS = {"idefics3": "<|begin_of_text|>", "smolvlm": "<|im_start|>"}


def _photos():
    from PIL import Image
    from skimage import data

    return Image.fromarray(data.astronaut()), Image.fromarray(data.chelsea())


def _items():
    astronaut, cat = _photos()
    return [
        Item("text", text="A cat sitting on a laptop keyboard."),
        Item("image", image=astronaut),
        Item("both", text="Two dogs play with a red ball.", image=cat),
    ]


@pytest.fixture(scope="module", params=["idefics3", "smolvlm"])
def adapter(request, tmp_path_factory):
    from saeprobe.testing import build_tiny_model

    out = build_tiny_model(request.param, tmp_path_factory.mktemp(request.param))
    ad = load_model(str(out))
    ad.family = request.param
    return ad


@pytest.fixture(scope="module")
def encoded(adapter):
    items = _items()
    batch = adapter.encode(items)
    with torch.no_grad():
        out = adapter.forward(batch, output_hidden_states=True)
    return items, batch, out


def test_architecture(adapter):
    arch = {
        "idefics3": "Idefics3ForConditionalGeneration",
        "smolvlm": "SmolVLMForConditionalGeneration",
    }
    assert type(adapter.model).__name__ == arch[adapter.family]
    assert type(adapter).__name__ == "Idefics3Adapter"
    assert adapter.n_layers == 2 and adapter.d_model == 32
    assert adapter.image_seq_len == 4


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
    assert len(hs) == adapter.n_layers + 1
    for i in range(adapter.n_layers - 1):
        assert torch.equal(seen[i][m], hs[i + 1][m])
    assert torch.equal(seen["n"][m], hs[-1][m])
    assert torch.equal(seen["n"][m], ref.last_hidden_state[m])
    assert not torch.equal(seen[adapter.n_layers - 1][m], hs[-1][m])  # hs[-1] is post-norm


def test_hook_exception_propagates(adapter, encoded):
    _, batch, _ = encoded

    class Stop(Exception):
        pass

    def boom(m, a, o):
        raise Stop

    h = adapter.layers()[0].register_forward_hook(boom)
    try:
        with pytest.raises(Stop):
            adapter.forward(batch)
    finally:
        h.remove()


def test_modality_labels(adapter, encoded):
    items, batch, _ = encoded
    tok = adapter.tokenizer
    ids, mod, att = batch.input_ids, batch.modality, batch.attention_mask.bool()
    assert torch.equal(mod == Modality.IMAGE, (ids == adapter.image_token_id) & att)
    assert not (mod == Modality.SYSTEM).any()
    # text item: image-free, exact chat-template rendering
    prompt, _ = render_prompt(items[0])
    assert tok.decode(ids[0][att[0]]) == f"{BOS[adapter.family]}User: {prompt}<end_of_utterance>\n"
    assert not (mod[0] == Modality.IMAGE).any()
    # image items: 2x2 crops + global view, 4 tokens each, wrappers are TEMPLATE
    wrappers = ["<fake_token_around_image>", "<global-img>", "<row_1_col_1>", "<row_2_col_2>"]
    wrapper_ids = torch.tensor(tok.convert_tokens_to_ids(wrappers))
    for b in (1, 2):
        assert int((mod[b] == Modality.IMAGE).sum()) == 5 * 4
        wpos = torch.isin(ids[b], wrapper_ids)
        assert wpos.sum() >= 4 and (mod[b][wpos] == Modality.TEMPLATE).all()
    for b, it in enumerate(items):
        text_ids = ids[b][(mod[b] == Modality.TEXT) & att[b]]
        if it.text is None:
            assert text_ids.numel() == 0
        else:
            assert tok.decode(text_ids).strip() == it.text
            # everything after the text is the instruction and end-of-turn: TEMPLATE
            last_text = int(torch.nonzero(mod[b] == Modality.TEXT).max())
            tail = mod[b][last_text + 1 :][att[b][last_text + 1 :]]
            assert (tail == Modality.TEMPLATE).all() and tail.numel() > 3


def test_matches_reference_processor(adapter, encoded):
    """Tokens and pixels equal what transformers' own processor code produces."""
    items, batch, _ = encoded
    tok = adapter.tokenizer
    if adapter.family == "idefics3":
        from transformers import AutoProcessor

        proc = AutoProcessor.from_pretrained(adapter.name_or_path)
        assert type(proc).__name__ == "Idefics3Processor"
        for row, it in ((1, items[1]), (2, items[2])):
            prompt, _ = render_prompt(it)
            msgs = [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}
            ]
            text = tok.apply_chat_template(msgs, tokenize=False)
            ref = proc(text=[text], images=[[it.image]], return_tensors="pt")
            n = int(batch.attention_mask[row].sum())
            assert torch.equal(batch.input_ids[row, :n], ref["input_ids"][0])
            assert torch.equal(batch.inputs["pixel_values"][row - 1], ref["pixel_values"][0])
    else:
        from transformers.models.smolvlm.processing_smolvlm import get_image_prompt_string

        for rows, cols in ((0, 0), (2, 2), (1, 3)):
            ref = get_image_prompt_string(
                rows, cols, 4, "<fake_token_around_image>", "<image>", "<global-img>"
            )
            assert adapter.image_prompt(rows, cols) == ref


def test_pixels_from_real_photos(adapter, encoded):
    _, batch, _ = encoded
    pv = batch.inputs["pixel_values"]
    assert pv.shape == (2, 5, 3, 32, 32)  # two image items, 2x2 crops + global view
    assert batch.inputs["pixel_attention_mask"].shape == (2, 5, 32, 32)
    ip = adapter.image_processor
    mean = torch.tensor(ip.image_mean).view(1, 1, 3, 1, 1)
    std = torch.tensor(ip.image_std).view(1, 1, 3, 1, 1)
    raw = pv * std + mean
    assert raw.min() >= -1e-4 and raw.max() <= 1 + 1e-4 and raw.std() > 0.1
    assert not torch.equal(pv[0], pv[1])


def test_batch_equals_single(adapter, encoded):
    items, batch, out = encoded
    assert batch.attention_mask[0].sum() < batch.attention_mask.shape[1]  # real padding
    for b, it in enumerate(items):
        one = adapter.encode([it])
        with torch.no_grad():
            single = adapter.forward(one, output_hidden_states=True).hidden_states
        n = int(one.attention_mask.sum())
        assert torch.equal(batch.input_ids[b, :n], one.input_ids[0])
        assert torch.equal(batch.modality[b, :n], one.modality[0])
        assert int(batch.attention_mask[b].sum()) == n
        for layer in range(len(single)):
            torch.testing.assert_close(
                out.hidden_states[layer][b, :n], single[layer][0], rtol=1e-5, atol=1e-5
            )


def test_bf16_load(adapter):
    ad = type(adapter).from_pretrained(adapter.name_or_path, dtype="bf16")
    assert ad.dtype == torch.bfloat16
    batch = ad.encode(_items()[1:2])
    with torch.no_grad():
        out = ad.forward(batch, output_hidden_states=True)
    assert out.hidden_states[-1].dtype == torch.bfloat16
    assert torch.isfinite(out.hidden_states[-1].float()).all()
