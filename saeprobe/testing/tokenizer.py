"""A small byte-level BPE tokenizer trained offline (no hub access)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

_CORPUS = [
    "Summarize the above sentence in one word: ",
    "Summarize the above image in one word: ",
    "Summarize above image and sentence in one word: ",
    "Summarize the above image with the question in one word: ",
    "Summarize the above image and the sentence in one word: ",
    "A man riding a wave on top of a surfboard.",
    "A cat sitting on a laptop keyboard next to a cup of coffee.",
    "Two dogs play with a red ball in the green park.",
    "A plate of food with broccoli, rice and chicken.",
    "What colour is the car parked near the building?",
    "system user assistant You are a helpful assistant.",
    "The quick brown fox jumps over the lazy dog 0123456789.",
]


def build_tokenizer(
    special_tokens: Sequence[str] = (),
    *,
    vocab_size: int = 400,
    extra_corpus: Iterable[str] = (),
    bos_token: str | None = None,
    eos_token: str | None = None,
    pad_token: str | None = None,
    unk_token: str | None = None,
    chat_template: str | None = None,
    **init_kwargs,
):
    """Train a byte-level BPE on a fixed small corpus and wrap it as a fast HF tokenizer.

    Parameters
    ----------
    special_tokens : sequence of str
        Added as special tokens (get the first ids after the byte alphabet merges).
    vocab_size : int
        Target vocabulary size (special tokens included).
    bos_token, eos_token, pad_token, unk_token : str | None
        Names of those roles; each must also appear in ``special_tokens`` or is added.
    chat_template : str | None
        Jinja chat template to attach.

    Returns
    -------
    transformers.PreTrainedTokenizerFast
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    roles = [t for t in (bos_token, eos_token, pad_token, unk_token) if t]
    specials = list(dict.fromkeys([*special_tokens, *roles]))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=max(vocab_size, 256 + len(specials) + 8),
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([*_CORPUS, *extra_corpus] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos_token,
        eos_token=eos_token,
        pad_token=pad_token,
        unk_token=unk_token,
        **init_kwargs,
    )
    if specials:
        fast.add_special_tokens(
            {"additional_special_tokens": [t for t in specials if t not in roles]}
        )
    if chat_template is not None:
        fast.chat_template = chat_template
    return fast
