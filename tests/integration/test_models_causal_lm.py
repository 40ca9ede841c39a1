"""Text-only LLM adapter on tiny random checkpoints (offline).

Hooks equal HF ``output_hidden_states`` bit for bit on every served architecture,
padding leaves each item's activations as they are alone, prompts are exactly the
tokenizer's chat template (or the raw prompt without one) and labels line up.
"""

from __future__ import annotations

import copy

import pytest
import torch
from PIL import Image

from saeprobe import Item, Modality
from saeprobe.capture import capture
from saeprobe.hooks import parse_hook_points, run_with_hooks
from saeprobe.models import adapter_class
from saeprobe.models.causal_lm import CausalLMAdapter, system_turn_span
from saeprobe.models.prompts import render_prompt
from saeprobe.testing.tiny.llama import (
    CONFIG_CLASSES,
    build,
    build_tokenizer_for_llama,
    tiny_causal_lm,
)

pytestmark = pytest.mark.integration

ITEMS = [
    Item("a", text="A man riding a wave on top of a surfboard."),
    Item("b", text="Two dogs."),
    Item("c", text="A plate of food with broccoli, rice and chicken.", prompt="raw"),
]

_TOKENIZER = build_tokenizer_for_llama()


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    path = build(tmp_path_factory.mktemp("llama"))
    return CausalLMAdapter.from_pretrained(str(path), dtype="float32")


def _check_hooks(adapter, items):
    batch = adapter.encode(items)
    n = adapter.n_layers
    points = parse_hook_points(["resid_pre.0", "0", str(n - 1), "final_norm"], n)
    hooked = run_with_hooks(adapter, batch, points, stop_early=False)
    with torch.inference_mode():
        out = adapter.forward(batch, output_hidden_states=True)
    ref, m = out.hidden_states, batch.attention_mask.bool()
    assert len(ref) == n + 1
    assert torch.equal(hooked["resid_pre.0"][m], ref[0][m])
    assert torch.equal(hooked["resid_post.0"][m], ref[1][m])
    assert torch.equal(hooked["final_norm"][m], ref[-1][m])
    assert torch.equal(hooked["final_norm"][m], out.last_hidden_state[m])
    assert not torch.allclose(hooked[f"resid_post.{n - 1}"][m], ref[-1][m])


def test_hooks_equal_output_hidden_states(adapter):
    assert adapter_class("LlamaForCausalLM") is CausalLMAdapter
    assert adapter.n_layers == 3 and adapter.d_model == 48
    _check_hooks(adapter, ITEMS)


@pytest.mark.parametrize("arch", sorted(CONFIG_CLASSES))
def test_every_architecture_has_the_same_structure(arch):
    """Each registered architecture loads with model.model.layers / .norm and hooks agree."""
    assert adapter_class(arch) is CausalLMAdapter
    model, tok = tiny_causal_lm(arch, _TOKENIZER)
    assert type(model).__name__ == arch
    _check_hooks(CausalLMAdapter(model, tok), ITEMS[:2])


def test_padding_keeps_each_item_as_alone(adapter):
    batch = adapter.encode(ITEMS)
    assert batch.attention_mask.sum(1).tolist() == [
        int(adapter.encode([it]).attention_mask.sum()) for it in ITEMS
    ]
    lengths = batch.attention_mask.sum(1)
    assert lengths.min() < lengths.max()
    # right padding: real tokens first, pad id after
    for b, k in enumerate(lengths.tolist()):
        assert batch.attention_mask[b, :k].all() and not batch.attention_mask[b, k:].any()
        assert (batch.input_ids[b, k:] == adapter.tokenizer.pad_token_id).all()
    points = parse_hook_points("final_norm", adapter.n_layers)
    together = run_with_hooks(adapter, batch, points)["final_norm"]
    for b, item in enumerate(ITEMS):
        single = adapter.encode([item])
        alone = run_with_hooks(adapter, single, points)["final_norm"][0]
        k = int(lengths[b])
        assert torch.equal(single.input_ids[0], batch.input_ids[b, :k])
        torch.testing.assert_close(together[b, :k], alone, rtol=1e-5, atol=1e-5)


def _decode(tok, ids):
    return tok.decode(ids.tolist())


def test_prompt_is_the_chat_template_and_labels(adapter):
    tok = adapter.tokenizer
    batch = adapter.encode(ITEMS[:1])
    prompt_text, _ = render_prompt(ITEMS[0])
    expected = tok.apply_chat_template(
        [{"role": "user", "content": prompt_text}], tokenize=False, add_generation_prompt=False
    )
    # the Llama 3 template trims the content: the prompt's trailing space goes
    assert batch.extra["prompts"][0] == expected
    assert expected.endswith("one word:<|eot_id|>")
    ids, mod = batch.input_ids[0], batch.modality[0]
    assert torch.equal(ids, torch.tensor(tok(expected, add_special_tokens=False)["input_ids"]))
    assert _decode(tok, ids[mod == Modality.TEXT]) == ITEMS[0].text
    system = _decode(tok, ids[mod == Modality.SYSTEM])
    assert system.startswith("<|start_header_id|>system<|end_header_id|>")
    assert system.endswith("Today Date: 26 Jul 2024\n\n<|eot_id|>")
    assert mod[0] == Modality.TEMPLATE and ids[0] == tok.bos_token_id  # BOS is not system prompt
    template = _decode(tok, ids[mod == Modality.TEMPLATE])
    assert "Summarize the above sentence in one word:" in template
    assert not (mod == Modality.IMAGE).any()
    # the raw prompt item: its text only, no instruction
    raw = adapter.encode([ITEMS[2]])
    assert _decode(tok, raw.input_ids[0][raw.modality[0] == Modality.TEXT]) == ITEMS[2].text
    assert "Summarize" not in raw.extra["prompts"][0]


def test_raw_prompt_without_chat_template(adapter):
    tok = copy.deepcopy(adapter.tokenizer)
    tok.chat_template = None
    plain = CausalLMAdapter(adapter.model, tok)
    batch = plain.encode(ITEMS[:2])
    for b, item in enumerate(ITEMS[:2]):
        prompt_text, _ = render_prompt(item)
        assert batch.extra["prompts"][b] == prompt_text
        k = int(batch.attention_mask[b].sum())
        ids, mod = batch.input_ids[b, :k], batch.modality[b, :k]
        assert torch.equal(ids, torch.tensor(tok(prompt_text)["input_ids"]))
        assert ids[0] == tok.bos_token_id and mod[0] == Modality.TEMPLATE
        assert _decode(tok, ids[mod == Modality.TEXT]) == item.text
        assert not (mod == Modality.SYSTEM).any()
    res = capture(plain, ITEMS[:2], ["final_norm"], pools=("mean",), progress=False)
    assert res.n_tokens == int(batch.attention_mask.sum())
    assert torch.isfinite(res.acts["final_norm"]).all()


def test_system_turn_span_formats():
    chatml = (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM<|im_end|>\n"
        "<|im_start|>user\nhello<|im_end|>\n"
    )
    start, end = system_turn_span(chatml, chatml.index("hello"))
    assert (start, chatml[end:].startswith("<|im_start|>user")) == (0, True)
    phi3 = "<|system|>\nBe brief.<|end|>\n<|user|>\nhi<|end|>\n"
    start, end = system_turn_span(phi3, phi3.index("hi"))
    assert phi3[start:end] == "<|system|>\nBe brief.<|end|>\n"
    # a system marker after the user text does not count; no system turn at all
    assert system_turn_span("<|user|>\nhi<|end|>\n<|system|>\nx<|end|>", 9) is None
    assert system_turn_span("<bos><start_of_turn>user\nhi<end_of_turn>\n") is None


def test_image_item_is_rejected(adapter):
    with pytest.raises(ValueError, match="text-only"):
        adapter.encode([Item("x", text="a cat", image=Image.new("RGB", (8, 8)))])
