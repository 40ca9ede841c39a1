"""Gemma 3 vision adapter on a tiny random checkpoint (soft image tokens, labels, padding)."""

from __future__ import annotations

import pytest
import torch

from saeprobe import Modality
from saeprobe.models.prompts import render_prompt
from tests import adapter_checks as checks

pytestmark = pytest.mark.integration


def _items():
    return checks.mixed_items(checks.LONG_TEXTS, ids=("text", "image", "both"))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Tiny Gemma 3, a mixed padded batch and its hooked forward pass."""
    return checks.hooked_run("gemma3", tmp_path_factory, _items())


def test_structure(run):
    adapter = run.adapter
    assert type(adapter).__name__ == "Gemma3Adapter"
    assert type(adapter.processor).__name__ == "Gemma3Processor"
    assert adapter.n_layers == 2 and adapter.d_model == 32


def test_modality_labels_and_template(run):
    _, _, adapter, items, batch, _, _ = run
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
    checks.assert_text_decodes(tok, batch, items)
    assert (mod[~att] == Modality.TEMPLATE).all()


def test_matches_gemma3_processor(run):
    """Tokens, token types and pixels equal Gemma3Processor's for image items."""
    _, _, adapter, items, batch, _, _ = run
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


def test_token_types_make_image_block_bidirectional(run):
    _, _, adapter, _, batch, out, _ = run
    inputs = {k: v for k, v in batch.inputs.items() if k != "token_type_ids"}
    with torch.no_grad():
        causal = adapter.model.model(**inputs, use_cache=False).last_hidden_state
    img = batch.modality == Modality.IMAGE
    first = img & ~torch.nn.functional.pad(img, (1, 0))[:, :-1]  # first soft token of each image
    # the first image token sees the later image tokens only through the bidirectional block
    assert not torch.allclose(causal[first], out.last_hidden_state[first])
    before = torch.cumsum(img.int(), 1) == 0
    torch.testing.assert_close(causal[before], out.last_hidden_state[before])


class TestHookedRun(checks.HookedRunChecks):
    hook_items = slice(None)

    @staticmethod
    def hooked_module(adapter):
        return adapter.final_norm()
