"""Hooks and capture on every supported family (tiny random checkpoints, offline).

For each family: hooked activations equal HF ``output_hidden_states=True`` of the same
forward to the last bit, the forward stops after the deepest hook point, pooled
embeddings equal the pooling of HF's hidden states, and per-token labels line up.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from saeprobe import Item, Modality
from saeprobe.capture import capture, iter_captures
from saeprobe.hooks import HookPointError, ResidualHooks, parse_hook_points, run_with_hooks
from saeprobe.models import load_model
from saeprobe.testing import available_families, build_tiny_model

pytestmark = pytest.mark.integration

FAMILIES = available_families()


def _photo(size=(64, 48)) -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut()).resize(size)


@pytest.fixture(scope="module", params=FAMILIES)
def adapter(request, tmp_path_factory):
    path = build_tiny_model(request.param, tmp_path_factory.mktemp(request.param))
    return load_model(str(path), dtype="float32")


def _items(adapter):
    from saeprobe.models.causal_lm import CausalLMAdapter

    if isinstance(adapter, CausalLMAdapter):  # text-only decoder LLM
        return [
            Item("a", text="A man riding a wave on top of a surfboard."),
            Item("b", text="Two dogs play with a red ball."),
            Item("c", text="What colour is the car?"),
        ], None
    if adapter.is_dual_encoder:
        return [
            Item("t0", text="A cat sitting on a laptop."),
            Item("t1", text="Two dogs play with a red ball in the green park today."),
        ], "text"
    return [
        Item("a", text="A man riding a wave on top of a surfboard."),
        Item("b", image=_photo()),
        Item("c", text="What colour is the car?", image=_photo((40, 56)), prompt="image_question"),
    ], None


def test_hooks_equal_output_hidden_states(adapter):
    items, tower = _items(adapter)
    batch = adapter.encode(items, tower=tower) if tower else adapter.encode(items)
    n = len(adapter.layers(tower))
    points = parse_hook_points(["resid_pre.0", "0", str(n - 1), "final_norm"], n)
    hooked = run_with_hooks(adapter, batch, points, tower=tower, stop_early=False)
    with torch.inference_mode():
        out = adapter.forward(batch, output_hidden_states=True)
    ref = out.hidden_states
    assert len(ref) == n + 1
    mask = batch.attention_mask.bool()
    assert torch.equal(hooked["resid_pre.0"][mask], ref[0][mask])
    assert torch.equal(hooked["resid_post.0"][mask], ref[1][mask])
    # final_norm is the per-token output of the model's final norm: HF's last_hidden_state,
    # which for MLLMs is also hidden_states[-1] (CLIP's text tower returns the raw residual there)
    assert torch.equal(hooked["final_norm"][mask], out.last_hidden_state[mask])
    if not adapter.is_dual_encoder:
        assert torch.equal(hooked["final_norm"][mask], ref[-1][mask])
    if adapter.final_norm(tower) is not None:
        # the raw residual after the last layer is not the final-norm output
        assert not torch.allclose(hooked[f"resid_post.{n - 1}"][mask], out.last_hidden_state[mask])


def test_early_stop_skips_later_layers(adapter):
    items, tower = _items(adapter)
    batch = adapter.encode(items, tower=tower) if tower else adapter.encode(items)
    layers = adapter.layers(tower)
    calls = [0] * len(layers)
    handles = [
        layer.register_forward_hook(lambda m, a, o, i=i: calls.__setitem__(i, calls[i] + 1))
        for i, layer in enumerate(layers)
    ]
    try:
        points = parse_hook_points("0", len(layers))
        out = run_with_hooks(adapter, batch, points, tower=tower)
    finally:
        for h in handles:
            h.remove()
    assert calls[0] == 1
    assert sum(calls[1:]) == 0, f"later layers ran: {calls}"
    assert out["resid_post.0"].shape[:2] == batch.input_ids.shape


def test_capture_tokens_and_pools(adapter):
    items, tower = _items(adapter)
    res = capture(
        adapter,
        items,
        ["final_norm"],
        batch_size=2,
        pools=("mean", "last"),
        tower=tower,
        progress=False,
    )
    assert res.n_items == len(items)
    assert res.acts["final_norm"].shape == (res.n_tokens, adapter.d_model_of(tower))
    # reference: each item alone through HF output_hidden_states
    for i, item in enumerate(items):
        single = adapter.encode([item], tower=tower) if tower else adapter.encode([item])
        with torch.inference_mode():
            h = adapter.forward(single).last_hidden_state[0]
        m = single.attention_mask[0].bool()
        expected_mean = h[m].float().mean(0)
        assert torch.allclose(res.pooled["final_norm"]["mean"][i], expected_mean, atol=1e-4)
        toks = res.acts["final_norm"][res.sample_id == i]
        assert toks.shape[0] == int(m.sum())
        assert torch.allclose(toks, h[m], atol=1e-4)
        assert torch.equal(res.token_id[res.sample_id == i], single.input_ids[0][m])
        assert torch.equal(
            res.position[res.sample_id == i], torch.arange(int(m.sum()), dtype=torch.int32)
        )
    if not adapter.is_dual_encoder and any(it.image is not None for it in items):
        img_tokens = res.modality == Modality.IMAGE
        assert img_tokens.any()
        # PaliGemma gives text-only inputs a blank image (the paper's recipe)
        if not getattr(adapter, "text_items_get_image", False):
            assert not img_tokens[res.sample_id == 0].any()
        assert (res.modality[res.sample_id == 0] == Modality.TEXT).any()


def test_bad_layer_index(adapter):
    n = adapter.n_layers
    with pytest.raises(HookPointError, match="out of range"):
        parse_hook_points(str(n + 3), n)


def test_hooks_are_removed(adapter):
    tower = "text" if adapter.is_dual_encoder else None
    n = len(adapter.layers(tower))
    before = len(adapter.layers(tower)[0]._forward_hooks)
    with ResidualHooks(adapter, parse_hook_points("0,final_norm", n), tower=tower):
        assert len(adapter.layers(tower)[0]._forward_hooks) == before + 1
    assert len(adapter.layers(tower)[0]._forward_hooks) == before


def test_skip_system_and_start(adapter):
    items, tower = _items(adapter)
    all_batches = list(iter_captures(adapter, items, "final_norm", batch_size=1, tower=tower))
    resumed = list(iter_captures(adapter, items, "final_norm", batch_size=1, tower=tower, start=1))
    assert [b.sample_index.tolist() for b in resumed] == [
        b.sample_index.tolist() for b in all_batches[1:]
    ]
    skipped = list(
        iter_captures(adapter, items, "final_norm", batch_size=1, tower=tower, skip_system=True)
    )
    for b in skipped:
        assert not (b.modality == Modality.SYSTEM).any()
