"""TransformerLens ``TransformerBridge`` support (tiny LLaVA, Gemma 3, Llama; offline).

The reference is an independently loaded copy of the same checkpoint with eager
attention (what the bridge switches the model to) and no bridge: HF
``output_hidden_states=True`` and saeprobe's adapter hooks. Bridge activations must
equal it bit for bit, image tokens included (``make_bridge`` makes TransformerLens
run the vision towers' norms as HF does: LLaVA's CLIP LayerNorms would otherwise get
the decoder's eps, Gemma 3's SigLIP LayerNorms RMS semantics).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image

from saeprobe import Item, Modality
from saeprobe.capture import capture
from saeprobe.hooks import (
    HookPointError,
    bridge_hook_module,
    bridge_hook_name,
    parse_hook_points,
    run_with_hooks,
)
from saeprobe.models import load_model
from saeprobe.models.bridge import BridgeUnsupportedError, make_bridge
from saeprobe.models.causal_lm import CausalLMAdapter
from saeprobe.testing import build_tiny_model
from saeprobe.testing.tiny.llama import build as build_tiny_llama

pytestmark = pytest.mark.integration

if importlib.util.find_spec("transformer_lens") is None:  # no import at collection (slow)
    pytest.skip("TransformerLens is not installed", allow_module_level=True)


def _load(family: str, path, **kwargs):
    if family == "llama":
        return CausalLMAdapter.from_pretrained(str(path), dtype="float32", **kwargs)
    return load_model(str(path), dtype="float32", **kwargs)


def _items(family: str) -> list[Item]:
    texts = [
        Item("a", text="A man riding a wave on top of a surfboard."),
        Item("b", text="Two dogs."),
    ]
    if family == "llama":
        return texts
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (40, 52, 3), dtype=np.uint8))
    return [*texts, Item("c", image=photo), Item("d", text="A red bus.", image=photo)]


def assert_same(case, got: torch.Tensor, ref: torch.Tensor) -> None:
    """``[B, T, d]`` tensors equal on every attended token."""
    assert torch.equal(got[case.mask], ref[case.mask])


class Case:
    def __init__(self, family, adapter, bridge, ref):
        self.family, self.adapter, self.bridge, self.ref = family, adapter, bridge, ref
        self.items = _items(family)
        self.batch = adapter.encode(self.items)
        self.mask = self.batch.attention_mask.bool()
        self.n = adapter.n_layers


@pytest.fixture(scope="module", params=["llava", "gemma3", "llama"])
def case(request, tmp_path_factory):
    family = request.param
    out = tmp_path_factory.mktemp(family)
    path = build_tiny_llama(out) if family == "llama" else build_tiny_model(family, out)
    adapter = _load(family, path)
    ref = _load(family, path, attn_implementation="eager")  # never bridged
    bridge = make_bridge(adapter)
    assert make_bridge(adapter) is bridge  # one bridge per adapter (the model is wrapped)
    return Case(family, adapter, bridge, ref)


def test_bridge_hooks_equal_hf_hidden_states(case):
    n, mask, batch = case.n, case.mask, case.batch
    names = [
        "resid_pre.0",
        "resid_post.0",
        f"resid_post.{n - 1}",
        "final_norm",
        f"blocks.{n - 2}.hook_out",
    ]
    got = run_with_hooks(
        case.bridge, batch, parse_hook_points(names, n, allow_tl=True), stop_early=False
    )
    with torch.inference_mode():
        hf = case.ref.forward(batch, output_hidden_states=True).hidden_states
    assert len(hf) == n + 1
    assert_same(case, got["resid_pre.0"], hf[0])
    assert_same(case, got["resid_post.0"], hf[1])
    assert_same(case, got[f"blocks.{n - 2}.hook_out"], hf[n - 1])
    assert_same(case, got["final_norm"], hf[-1])
    # the raw last-layer residual is not hidden_states[-1]; compare with the adapter hooks
    ref_hooks = run_with_hooks(case.ref, batch, parse_hook_points([n - 1], n), stop_early=False)
    last = f"resid_post.{n - 1}"
    assert_same(case, got[last], ref_hooks[last])
    assert not torch.allclose(got[last][mask], hf[-1][mask])
    # the bridge wraps the model in place: the adapter's own hooks then run the same
    # modules and agree with the bridge
    own = run_with_hooks(
        case.adapter, batch, parse_hook_points("0,final_norm", n), stop_early=False
    )
    assert torch.equal(own["resid_post.0"][mask], got["resid_post.0"][mask])
    assert torch.equal(own["final_norm"][mask], got["final_norm"][mask])


def test_bridge_name_mapping(case):
    bridge, n = case.bridge, case.n
    points = {
        p.name: p for p in parse_hook_points(["resid_pre.0", "-1", "final_norm"], n, allow_tl=True)
    }
    assert bridge_hook_name(points["resid_pre.0"]) == "blocks.0.hook_in"
    assert bridge_hook_name(points[f"resid_post.{n - 1}"]) == f"blocks.{n - 1}.hook_out"
    assert bridge_hook_name(points["final_norm"]) == "ln_final.hook_out"
    # resid_pre.L (L > 0) is canonicalised to resid_post.(L-1)
    (pre1,) = parse_hook_points("resid_pre.1", n, allow_tl=True)
    assert bridge_hook_name(pre1) == "blocks.0.hook_out"
    assert bridge_hook_module(bridge, pre1) is bridge.blocks[0].hook_out
    assert bridge_hook_module(bridge, points["resid_pre.0"]) is bridge.blocks[0].hook_in
    assert bridge_hook_module(bridge, points["final_norm"]) is bridge.ln_final.hook_out
    # HookedTransformer names resolve to the same hook point
    (legacy,) = parse_hook_points("blocks.1.hook_resid_post", n, allow_tl=True)
    assert bridge_hook_module(bridge, legacy) is bridge.blocks[1].hook_out
    (bad,) = parse_hook_points(f"blocks.{n + 5}.hook_out", n, allow_tl=True)
    with pytest.raises(HookPointError, match=f"no hook point 'blocks.{n + 5}.hook_out'"):
        bridge_hook_module(bridge, bad)
    # bridge names need a bridge
    with pytest.raises(HookPointError):
        run_with_hooks(case.adapter, case.batch, [legacy])


def _count_blocks(bridge):
    calls = [0] * len(bridge.blocks)
    handles = [
        block.register_forward_hook(lambda m, a, o, i=i: calls.__setitem__(i, calls[i] + 1))
        for i, block in enumerate(bridge.blocks)
    ]
    seen = []
    handles.append(bridge.unembed.register_forward_hook(lambda m, a, o: seen.append("unembed")))
    return calls, seen, handles


@pytest.mark.parametrize(
    "names, completed",
    [
        (["blocks.0.hook_out"], 0),  # stops inside block 0 (at its output hook)
        (["resid_post.1"], 1),
        # a bridge name and a canonical name: the forward runs until both are recorded
        (["blocks.0.hook_out", "resid_post.1"], 1),
        (["final_norm"], None),  # every block
    ],
)
def test_bridge_early_stop(case, names, completed):
    calls, seen, handles = _count_blocks(case.bridge)
    points = parse_hook_points(names, case.n, allow_tl=True)
    try:
        out = run_with_hooks(case.bridge, case.batch, points)
    finally:
        for h in handles:
            h.remove()
    completed = case.n if completed is None else completed
    assert calls == [1] * completed + [0] * (case.n - completed)
    assert seen == []  # the LM head never runs
    assert set(out) == {p.name for p in points}
    for h in out.values():
        assert h.shape[:2] == case.batch.input_ids.shape


def test_capture_through_bridge_equals_adapter(case):
    kw = {"batch_size": 2, "pools": ("mean", "last"), "progress": False}
    got = capture(
        case.adapter, case.items, ["blocks.0.hook_out", "final_norm"], bridge=case.bridge, **kw
    )
    ref = capture(case.ref, case.items, ["resid_post.0", "final_norm"], **kw)
    assert got.n_tokens == ref.n_tokens == int(case.mask.sum())
    for name in ("token_id", "modality", "sample_id", "position"):
        assert torch.equal(getattr(got, name), getattr(ref, name)), name
    assert torch.equal(got.acts["blocks.0.hook_out"], ref.acts["resid_post.0"])
    assert torch.equal(got.acts["final_norm"], ref.acts["final_norm"])
    for pool in ("mean", "last"):
        assert torch.equal(got.pooled["final_norm"][pool], ref.pooled["final_norm"][pool])
    if case.family != "llama":
        assert (got.modality == Modality.IMAGE).any()


def test_edit_through_bridge(case):
    """An edit at a bridge hook changes the downstream residual exactly as on the adapter."""
    n = case.n

    def shift(h):
        return h + 0.5

    bridged = run_with_hooks(
        case.bridge,
        case.batch,
        parse_hook_points("0,final_norm", n, allow_tl=True),
        edit={"resid_post.0": shift},
    )
    plain = run_with_hooks(
        case.ref, case.batch, parse_hook_points("0,final_norm", n), edit={"resid_post.0": shift}
    )
    unedited = run_with_hooks(case.ref, case.batch, parse_hook_points("final_norm", n))
    assert_same(case, bridged["final_norm"], plain["final_norm"])
    m = case.mask
    assert not torch.allclose(bridged["final_norm"][m], unedited["final_norm"][m])


def test_make_bridge_unsupported_architecture(tmp_path):
    adapter = load_model(str(build_tiny_model("qwen2_vl", tmp_path)), dtype="float32")
    with pytest.raises(
        BridgeUnsupportedError, match="no bridge for Qwen2VLForConditionalGeneration"
    ):
        make_bridge(adapter)
    # the suggestion names bridged saeprobe architectures
    with pytest.raises(BridgeUnsupportedError, match="LlavaForConditionalGeneration"):
        make_bridge(adapter)


def test_make_bridge_rejects_dual_encoders():
    from types import SimpleNamespace

    dual = SimpleNamespace(is_dual_encoder=True, model=torch.nn.Linear(2, 2))
    with pytest.raises(BridgeUnsupportedError, match="dual encoder"):
        make_bridge(dual)
