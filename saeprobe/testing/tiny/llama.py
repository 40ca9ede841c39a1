"""Tiny random text-only decoder LLMs (offline): Llama 3 style by default.

:func:`build` saves a tiny ``LlamaForCausalLM`` with a Llama-3.1-style chat template
(default system turn with the knowledge-cutoff header, ``| trim`` on contents) and a
tokenizer that prepends ``<|begin_of_text|>``. :func:`tiny_causal_lm` builds the same
tiny model for any architecture of :class:`saeprobe.models.causal_lm.CausalLMAdapter`
in memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .common import decoder, prepend_bos, save_all, special_ids

BOS = "<|begin_of_text|>"
EOS = "<|eot_id|>"
PAD = "<|finetune_right_pad_id|>"
SPECIAL_TOKENS = [BOS, "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", EOS, PAD]

#: Llama-3.1-Instruct-like template: BOS, a default system turn, trimmed user turns
LLAMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}{% set system_message = messages[0]['content'] | trim %}"
    "{% set messages = messages[1:] %}{% else %}{% set system_message = '' %}{% endif %}"
    "<|start_header_id|>system<|end_header_id|>\n\n"
    "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
    "{{ system_message }}<|eot_id|>"
    "{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] | trim }}<|eot_id|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)

#: tiny decoder shared by every architecture (head_dim 12, 3 layers, GQA 4/2)
TEXT_CONFIG: dict[str, Any] = decoder(head_dim=12)

#: config class of each architecture served by CausalLMAdapter
CONFIG_CLASSES: dict[str, str] = {
    "LlamaForCausalLM": "LlamaConfig",
    "Qwen2ForCausalLM": "Qwen2Config",
    "Qwen3ForCausalLM": "Qwen3Config",
    "MistralForCausalLM": "MistralConfig",
    "Gemma2ForCausalLM": "Gemma2Config",
    "Gemma3ForCausalLM": "Gemma3TextConfig",
    "Phi3ForCausalLM": "Phi3Config",
}


def build_tokenizer_for_llama(chat_template: str | None = LLAMA3_CHAT_TEMPLATE):
    """Offline byte-level BPE with Llama 3 special tokens; prepends BOS on plain encoding."""
    from ..tokenizer import build_tokenizer

    tok = build_tokenizer(
        SPECIAL_TOKENS,
        vocab_size=400,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        chat_template=chat_template,
    )
    return prepend_bos(tok, BOS)


def tiny_causal_lm(architecture: str = "LlamaForCausalLM", tokenizer: Any = None):
    """A tiny random ``architecture`` model (eval mode) and its tokenizer.

    Returns
    -------
    model : PreTrainedModel
    tokenizer : PreTrainedTokenizerFast
    """
    import torch
    import transformers

    if architecture not in CONFIG_CLASSES:
        raise ValueError(
            f"unknown architecture {architecture!r}; choose one of {sorted(CONFIG_CLASSES)}"
        )
    tok = tokenizer if tokenizer is not None else build_tokenizer_for_llama()
    config = getattr(transformers, CONFIG_CLASSES[architecture])(
        **TEXT_CONFIG,
        vocab_size=len(tok),
        **special_ids(tok),
    )
    config.architectures = [architecture]
    torch.manual_seed(0)
    model = getattr(transformers, architecture)(config).eval()
    return model, tok


def build_causal_lm(out_dir: Path, architecture: str = "LlamaForCausalLM") -> Path:
    """Save a tiny random ``architecture`` checkpoint and its tokenizer into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, tok = tiny_causal_lm(architecture)
    return save_all(out_dir, model, tok)


def build(out_dir: Path) -> Path:
    """Tiny random ``LlamaForCausalLM`` with a Llama-3.1-style chat template."""
    return build_causal_lm(out_dir, "LlamaForCausalLM")
