"""Offset-based modality labels, text location in templates, and padding helpers."""

from __future__ import annotations

import pytest
import torch

from saeprobe import Modality
from saeprobe.models._labels import SENTINEL, label_tokens, locate_text, pad_sequences

T, X, IMG, SYS = (
    int(Modality.TEMPLATE),
    int(Modality.TEXT),
    int(Modality.IMAGE),
    int(Modality.SYSTEM),
)


def test_label_tokens_rules_and_priority():
    # prompt: "<s>sys|<im><im>|hello world|!"  (offsets by hand)
    offsets = [(0, 3), (3, 6), (6, 7), (7, 7), (7, 7), (8, 13), (13, 19), (19, 20), (20, 20)]
    ids = [1, 2, 3, 9, 9, 4, 5, 6, 0]
    # system ends at char 6; text span covers "ello wor" (partial overlaps count)
    out = label_tokens(offsets, (9, 17), ids, image_token_ids=[9], system_end=6)
    assert out.dtype == torch.int8
    assert out.tolist() == [SYS, SYS, T, IMG, IMG, X, X, T, T]


def test_label_tokens_image_beats_text_and_system():
    offsets = [(0, 5), (5, 10)]
    out = label_tokens(offsets, (0, 10), [7, 8], image_token_ids={7, 8}, system_end=10)
    assert out.tolist() == [IMG, IMG]


def test_label_tokens_no_text_no_system():
    out = label_tokens(torch.tensor([[0, 2], [2, 4]]), None, torch.tensor([1, 2]))
    assert out.tolist() == [T, T]
    # an empty span labels nothing
    assert label_tokens([(0, 2)], (1, 1), [1]).tolist() == [T]


def test_label_tokens_length_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="offsets for"):
        label_tokens([(0, 1)], None, [1, 2])


def test_locate_text_finds_the_user_slot_not_an_earlier_copy():
    text = "cat"
    prompt_text = "cat\nSummarize: "

    def render(s):
        return f"<sys>a cat here</sys><user>{s}</user>"

    loc = locate_text(render, prompt_text, (0, 3))
    assert loc.prompt == "<sys>a cat here</sys><user>cat\nSummarize: </user>"
    s, e = loc.text_span
    assert loc.prompt[s:e] == text
    assert s == len("<sys>a cat here</sys><user>")
    assert locate_text(render, "no text", None).text_span is None


def test_locate_text_rejects_templates_that_drop_or_repeat_the_text():
    with pytest.raises(ValueError, match="verbatim"):
        locate_text(lambda s: "fixed", "x", (0, 1))
    with pytest.raises(ValueError, match="verbatim"):
        locate_text(lambda s: s + s, "x", (0, 1))
    assert SENTINEL not in locate_text(lambda s: "[" + s + "]", "x", (0, 1)).prompt


def test_pad_sequences_right_and_left():
    seqs = [torch.tensor([1, 2, 3]), torch.tensor([4])]
    right = pad_sequences(seqs, 0)
    assert right.values.tolist() == [[1, 2, 3], [4, 0, 0]]
    assert right.attention_mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    left = pad_sequences([[1, 2, 3], [4]], -1, side="left")
    assert left.values.tolist() == [[1, 2, 3], [-1, -1, 4]]
    assert left.attention_mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert left.values.dtype == torch.long
    f = pad_sequences([torch.tensor([1.5]), torch.tensor([2.5, 3.5])], 0.0, dtype=torch.float64)
    assert f.values.dtype == torch.float64 and f.values[0, 1] == 0.0
    with pytest.raises(ValueError, match="padding side"):
        pad_sequences(seqs, 0, side="middle")
    with pytest.raises(ValueError, match="at least one"):
        pad_sequences([], 0)


def test_text_labels_with_a_real_byte_level_tokenizer():
    """TEXT tokens are exactly the minimal token run covering the item text."""
    from saeprobe.testing.tokenizer import build_tokenizer

    tok = build_tokenizer(["<|a|>", "<|img|>"], vocab_size=300)
    img = tok.convert_tokens_to_ids("<|img|>")
    cases = [
        ("<|a|>system prompt<|a|><|img|><|img|>", "A cat sitting on a laptop", "\nSummarize: "),
        ("user: the", " quick brown fox", "jumps over"),  # text glued to neighbours
        ("", "Two dogs", " play"),
    ]
    for prefix, text, suffix in cases:
        prompt = prefix + text + suffix
        span = (len(prefix), len(prefix) + len(text))
        enc = tok(prompt, add_special_tokens=False, return_offsets_mapping=True)
        sys_end = prefix.find("<|img|>") if "<|img|>" in prefix else None
        lab = label_tokens(enc["offset_mapping"], span, enc["input_ids"], [img], sys_end)
        ids = torch.tensor(enc["input_ids"])
        assert torch.equal(lab == IMG, ids == img)
        idx = (lab == X).nonzero().flatten().tolist()
        assert idx == list(range(idx[0], idx[-1] + 1))  # one contiguous run
        decoded = tok.decode(ids[idx].tolist())
        assert text in decoded
        # minimal: dropping either end token loses part of the text
        assert text not in tok.decode(ids[idx[1:]].tolist())
        assert text not in tok.decode(ids[idx[:-1]].tolist())
        if sys_end:
            sys_idx = (lab == SYS).nonzero().flatten().tolist()
            assert sys_idx == list(range(len(sys_idx)))
            assert tok.decode(ids[sys_idx].tolist()) == prefix[:sys_end]
