"""Shared helpers for adapters: per-token modality labels and batch padding.

Any adapter can use these (they only depend on torch):

* :func:`label_tokens` turns the character offsets of a tokenised prompt into
  :class:`~saeprobe.Modality` labels (IMAGE by token id, SYSTEM for leading
  system-prompt characters, TEXT for tokens overlapping the item's own text,
  TEMPLATE elsewhere).
* :func:`locate_text` renders a chat template once with a sentinel in place of
  the user text and returns the exact character span the text will occupy.
* :func:`pad_sequences` right- or left-pads 1-D tensors into a ``[B, T]`` batch
  and returns the attention mask.

Example
-------
>>> enc = tokenizer(prompt, return_offsets_mapping=True, add_special_tokens=False)
>>> modality = label_tokens(enc["offset_mapping"], text_span, enc["input_ids"],
...                         image_token_ids={image_id}, system_end=sys_end)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

import torch

from .._types import Modality

__all__ = [
    "SYSTEM_TURN_MARKERS",
    "PaddedBatch",
    "TextLocation",
    "label_tokens",
    "locate_text",
    "pad_sequences",
    "system_turn_span",
]

#: a string that no tokenizer chat template alters and no real text contains
SENTINEL = "<<saeprobe-item-text-5f0c2b>>"


def label_tokens(
    offsets: Sequence[Sequence[int]] | torch.Tensor,
    text_span: tuple[int, int] | None,
    input_ids: Sequence[int] | torch.Tensor,
    image_token_ids: Iterable[int] = (),
    system_end: int | None = None,
) -> torch.Tensor:
    """Modality label of every token of one tokenised prompt.

    Rules, in priority order:

    1. ``IMAGE`` where ``input_ids`` is one of ``image_token_ids``;
    2. ``SYSTEM`` where the token starts before character ``system_end``
       (the end of the leading system-prompt turn; ``None`` or 0 = no system turn);
    3. ``TEXT`` where the token's characters ``[start, end)`` overlap ``text_span``;
    4. ``TEMPLATE`` everywhere else (chat markup, instructions, empty-offset tokens).

    Parameters
    ----------
    offsets : [T, 2] ints
        Character ``(start, end)`` of each token in the prompt string, as returned by
        a fast tokenizer with ``return_offsets_mapping=True``.
    text_span : (start, end) | None
        Character span of the item's own text in the prompt string.
    input_ids : [T] ints
        Token ids (same length as ``offsets``).
    image_token_ids : iterable of int
        All image placeholder ids of the family.
    system_end : int | None
        Character offset where the leading system turn ends.

    Returns
    -------
    Int8Tensor [T]
    """
    ids = torch.as_tensor(input_ids, dtype=torch.long).reshape(-1)
    off = torch.as_tensor(offsets, dtype=torch.long).reshape(-1, 2)
    if off.shape[0] != ids.shape[0]:
        raise ValueError(
            f"label_tokens: {off.shape[0]} offsets for {ids.shape[0]} tokens; pass the "
            "offset_mapping of the same tokenisation as input_ids"
        )
    start, end = off[:, 0], off[:, 1]
    out = torch.full(ids.shape, int(Modality.TEMPLATE), dtype=torch.int8)
    if text_span is not None:
        s, e = text_span
        if e > s:
            overlap = (end > start) & (start < e) & (end > s)
            out[overlap] = int(Modality.TEXT)
    if system_end:
        out[(start < system_end) & (end > start)] = int(Modality.SYSTEM)
    image_ids = sorted({int(i) for i in image_token_ids})
    if image_ids:
        out[torch.isin(ids, torch.tensor(image_ids, dtype=torch.long))] = int(Modality.IMAGE)
    return out


class TextLocation(NamedTuple):
    """Where the user text sits in a rendered prompt.

    Attributes
    ----------
    prompt : str
        The full rendered prompt with the text in place.
    text_span : (start, end) | None
        Character span of the item's own text (``None`` when it has none).
    """

    prompt: str
    text_span: tuple[int, int] | None


def locate_text(
    render: Callable[[str], str],
    prompt_text: str,
    span_in_prompt: tuple[int, int] | None,
) -> TextLocation:
    """Render a template around ``prompt_text`` and find the item text's exact span.

    ``render(s)`` must return the full prompt with ``s`` inserted verbatim once (e.g. a
    chat template applied to a user message whose text content is ``s``). The template
    is rendered with a sentinel, so the span is exact even when the item text also
    occurs elsewhere (in a system prompt, say).

    Parameters
    ----------
    render : callable str -> str
    prompt_text : str
        The filled prompt (item text plus instruction), see
        :func:`saeprobe.models.prompts.render_prompt`.
    span_in_prompt : (start, end) | None
        Span of the item text inside ``prompt_text``.
    """
    rendered = render(SENTINEL)
    if rendered.count(SENTINEL) != 1:
        raise ValueError(
            "the chat template did not copy the user text verbatim exactly once; "
            "cannot locate the item text for modality labels"
        )
    at = rendered.index(SENTINEL)
    prompt = rendered[:at] + prompt_text + rendered[at + len(SENTINEL) :]
    span = None if span_in_prompt is None else (at + span_in_prompt[0], at + span_in_prompt[1])
    return TextLocation(prompt, span)


class PaddedBatch(NamedTuple):
    """Output of :func:`pad_sequences`.

    Attributes
    ----------
    values : Tensor [B, T]
    attention_mask : LongTensor [B, T]
        1 on real entries, 0 on padding.
    """

    values: torch.Tensor
    attention_mask: torch.Tensor


def pad_sequences(
    seqs: Sequence[torch.Tensor | Sequence[int]],
    pad_value: int | float,
    side: str = "right",
    dtype: torch.dtype | None = None,
) -> PaddedBatch:
    """Pad 1-D sequences to a ``[B, T]`` batch.

    Parameters
    ----------
    seqs : sequence of [T_b] tensors or int lists
    pad_value : int | float
        Fill value of padded entries.
    side : {"right", "left"}
        Where the padding goes. Right padding keeps every real token at the position
        it has when encoded alone (causal models give identical activations).
    dtype : torch.dtype | None
        Output dtype (default: that of the first sequence, ``long`` for lists).

    Returns
    -------
    PaddedBatch
    """
    if side not in ("right", "left"):
        raise ValueError(f"padding side must be 'right' or 'left', got {side!r}")
    if not seqs:
        raise ValueError("pad_sequences needs at least one sequence")
    tensors = [torch.as_tensor(s).reshape(-1) for s in seqs]
    dtype = dtype or tensors[0].dtype
    n = max(t.shape[0] for t in tensors)
    values = torch.full((len(tensors), n), pad_value, dtype=dtype)
    mask = torch.zeros((len(tensors), n), dtype=torch.long)
    for b, t in enumerate(tensors):
        k = t.shape[0]
        sl = slice(0, k) if side == "right" else slice(n - k, n)
        values[b, sl] = t.to(dtype)
        mask[b, sl] = 1
    return PaddedBatch(values, mask)


#: (start, end) markers of a leading system turn in the chat formats saeprobe knows
SYSTEM_TURN_MARKERS: tuple[tuple[str, str], ...] = (
    ("<|im_start|>system", "<|im_end|>"),  # ChatML: Qwen2/3, SmolLM2
    ("<|start_header_id|>system<|end_header_id|>", "<|eot_id|>"),  # Llama 3
    ("<|system|>", "<|end|>"),  # Phi-3
)


def system_turn_span(prompt: str, before: int | None = None) -> tuple[int, int] | None:
    """Character span ``[start, end)`` of the system turn of a rendered chat prompt.

    The turn must end before character ``before`` (the start of the user text) when
    given; a newline right after its end marker belongs to it.

    Returns
    -------
    (start, end) | None
        ``None`` when the prompt has no system turn of a known format.
    """
    limit = len(prompt) if before is None else before
    for start_marker, end_marker in SYSTEM_TURN_MARKERS:
        start = prompt.find(start_marker, 0, limit)
        if start < 0:
            continue
        end = prompt.find(end_marker, start + len(start_marker), limit)
        if end < 0:
            continue
        end += len(end_marker)
        if prompt[end : end + 1] == "\n":
            end += 1
        return start, end
    return None
