"""Idefics3 / SmolVLM adapter on tiny random checkpoints (image splitting, labels, padding)."""

from __future__ import annotations

import pytest
import torch

from saeprobe import Modality
from saeprobe.models.prompts import render_prompt
from tests import adapter_checks as checks

pytestmark = pytest.mark.integration

BOS = {"idefics3": "<|begin_of_text|>", "smolvlm": "<|im_start|>"}


def _items():
    return checks.mixed_items(checks.LONG_TEXTS, ids=("text", "image", "both"))


@pytest.fixture(scope="module", params=["idefics3", "smolvlm"])
def run(request, tmp_path_factory):
    """Tiny Idefics3 / SmolVLM, a mixed padded batch and its hooked forward pass."""
    return checks.hooked_run(request.param, tmp_path_factory, _items())


def test_architecture(run):
    adapter = run.adapter
    arch = {
        "idefics3": "Idefics3ForConditionalGeneration",
        "smolvlm": "SmolVLMForConditionalGeneration",
    }
    assert type(adapter.model).__name__ == arch[run.family]
    assert type(adapter).__name__ == "Idefics3Adapter"
    assert adapter.n_layers == 2 and adapter.d_model == 32
    assert adapter.image_seq_len == 4


def test_modality_labels(run):
    _, _, adapter, items, batch, _, _ = run
    tok = adapter.tokenizer
    ids, mod, att = batch.input_ids, batch.modality, batch.attention_mask.bool()
    assert torch.equal(mod == Modality.IMAGE, (ids == adapter.image_token_id) & att)
    assert not (mod == Modality.SYSTEM).any()
    # text item: image-free, exact chat-template rendering
    prompt, _ = render_prompt(items[0])
    assert tok.decode(ids[0][att[0]]) == f"{BOS[run.family]}User: {prompt}<end_of_utterance>\n"
    assert not (mod[0] == Modality.IMAGE).any()
    # image items: 2x2 crops + global view, 4 tokens each, wrappers are TEMPLATE
    wrappers = ["<fake_token_around_image>", "<global-img>", "<row_1_col_1>", "<row_2_col_2>"]
    wrapper_ids = torch.tensor(tok.convert_tokens_to_ids(wrappers))
    for b in (1, 2):
        assert int((mod[b] == Modality.IMAGE).sum()) == 5 * 4
        wpos = torch.isin(ids[b], wrapper_ids)
        assert wpos.sum() >= 4 and (mod[b][wpos] == Modality.TEMPLATE).all()
    checks.assert_text_decodes(tok, batch, items)
    for b, it in enumerate(items):
        if it.text is not None:
            # everything after the text is the instruction and end-of-turn: TEMPLATE
            last_text = int(torch.nonzero(mod[b] == Modality.TEXT).max())
            tail = mod[b][last_text + 1 :][att[b][last_text + 1 :]]
            assert (tail == Modality.TEMPLATE).all() and tail.numel() > 3


def test_matches_reference_processor(run):
    """Tokens and pixels equal what transformers' own processor code produces."""
    _, _, adapter, items, batch, _, _ = run
    tok = adapter.tokenizer
    if run.family == "idefics3":
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


def test_pixels_from_real_photos(run):
    _, _, adapter, _, batch, _, _ = run
    pv = batch.inputs["pixel_values"]
    assert pv.shape == (2, 5, 3, 32, 32)  # two image items, 2x2 crops + global view
    assert batch.inputs["pixel_attention_mask"].shape == (2, 5, 32, 32)
    ip = adapter.image_processor
    mean = torch.tensor(ip.image_mean).view(1, 1, 3, 1, 1)
    std = torch.tensor(ip.image_std).view(1, 1, 3, 1, 1)
    raw = pv * std + mean
    assert raw.min() >= -1e-4 and raw.max() <= 1 + 1e-4 and raw.std() > 0.1
    assert not torch.equal(pv[0], pv[1])


def test_batch_is_padded(run):
    assert run.batch.attention_mask[0].sum() < run.batch.attention_mask.shape[1]  # real padding


class TestHookedRun(checks.HookedRunChecks):
    hook_items = slice(None)
    bf16_items = slice(1, 2)
