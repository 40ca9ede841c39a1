"""LLaVA 1.5 and LLaVA-NeXT adapters on tiny random checkpoints (offline)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from skimage import data

from saeprobe import Modality
from saeprobe._types import Item
from saeprobe.models import load_model
from saeprobe.models.prompts import render_prompt
from saeprobe.testing import build_tiny_model

pytestmark = pytest.mark.integration

FAMILIES = ["llava", "llava_next"]


def _items() -> list[Item]:
    return [
        Item("txt", text="A cat sitting on a laptop."),
        Item("img", image=Image.fromarray(data.astronaut())),  # 512 x 512
        Item("both", text="Two dogs play.", image=Image.fromarray(data.chelsea())),  # 300 x 451
    ]


def _expected_prompt(family: str, item: Item) -> str:
    """The full prompt as the family's chat template lays it out (image runs collapsed)."""
    text, _ = render_prompt(item)
    image = "<image>\n" if item.image is not None else ""
    if family == "llava":
        return f"<s>USER: {image}{text} "
    return f"<s>[INST] {image}{text} [/INST]"


def _out(x):
    return x[0] if isinstance(x, tuple) else x


@pytest.fixture(scope="module", params=FAMILIES)
def run(request, tmp_path_factory):
    """Tiny model of one family, a mixed padded batch and its hooked forward pass."""
    family = request.param
    path = build_tiny_model(family, tmp_path_factory.mktemp(family))
    adapter = load_model(str(path))
    items = _items()
    batch = adapter.encode(items)
    captured: dict[str, torch.Tensor] = {}
    handles = [
        layer.register_forward_hook(
            lambda m, a, o, i=i: captured.__setitem__(f"layer{i}", _out(o).detach().clone())
        )
        for i, layer in enumerate(adapter.layers())
    ]
    handles.append(
        adapter.layers()[0].register_forward_pre_hook(
            lambda m, a, kw: captured.__setitem__(
                "pre0", (a[0] if a else kw["hidden_states"]).clone()
            ),
            with_kwargs=True,
        )
    )
    handles.append(
        adapter.final_norm().register_forward_hook(
            lambda m, a, o: captured.__setitem__("norm", _out(o).detach().clone())
        )
    )
    with torch.no_grad():
        out = adapter.forward(batch, output_hidden_states=True)
    for h in handles:
        h.remove()
    return family, path, adapter, items, batch, out, captured


def test_hooks_match_hidden_states(run):
    family, _, adapter, _, batch, out, captured = run
    hs = out.hidden_states
    n = adapter.n_layers
    assert len(hs) == n + 1
    assert adapter.d_model == hs[-1].shape[-1] == adapter.model.config.text_config.hidden_size
    m = batch.attention_mask.bool()
    assert torch.equal(captured["pre0"][m], hs[0][m])
    for i in range(n - 1):
        assert torch.equal(captured[f"layer{i}"][m], hs[i + 1][m]), f"layer {i}"
    assert torch.equal(captured["norm"][m], hs[-1][m])
    # the last layer's raw output is not hidden_states[-1] (that is the final-norm output)
    assert not torch.allclose(captured[f"layer{n - 1}"][m], hs[-1][m])


def test_modality_labels_and_prompt_layout(run):
    family, _, adapter, items, batch, _, _ = run
    tok = adapter.processor.tokenizer
    image_id = adapter.model.config.image_token_id
    assert adapter.image_token_ids == (image_id,)
    for b, item in enumerate(items):
        m = batch.attention_mask[b].bool()
        ids, mod = batch.input_ids[b][m], batch.modality[b][m]
        assert torch.equal(mod == Modality.IMAGE, ids == image_id)
        assert set(mod.tolist()) <= {Modality.TEMPLATE, Modality.TEXT, Modality.IMAGE}
        text_pos = (mod == Modality.TEXT).nonzero().flatten()
        if item.text:
            assert tok.decode(ids[text_pos]) == item.text
            assert torch.equal(text_pos, torch.arange(text_pos[0], text_pos[-1] + 1))
        else:
            assert text_pos.numel() == 0
        # collapse each run of image tokens and compare with the template's layout
        keep = torch.ones_like(ids, dtype=torch.bool)
        keep[1:] = ~((ids[1:] == image_id) & (ids[:-1] == image_id))
        assert tok.decode(ids[keep]) == _expected_prompt(family, item)


def test_image_tokens_and_pixels(run):
    family, _, adapter, items, batch, _, _ = run
    cfg = adapter.model.config
    tile, patch = cfg.vision_config.image_size, cfg.vision_config.patch_size
    n_img = (batch.input_ids == cfg.image_token_id).sum(1).tolist()
    assert n_img[0] == 0
    pv = batch.inputs["pixel_values"]
    if family == "llava":
        # one 28 px crop per photo, (28 / 7)^2 patch tokens (CLS dropped)
        assert pv.shape == (2, 3, tile, tile)
        assert n_img[1:] == [(tile // patch) ** 2] * 2
    else:
        sizes = [it.image.size[::-1] for it in items[1:]]  # (height, width)
        assert batch.inputs["image_sizes"].tolist() == [list(s) for s in sizes]
        want = [_anyres_tokens(h, w, tile, patch, cfg.image_grid_pinpoints) for h, w in sizes]
        assert n_img[1:] == want
        assert want[0] != want[1]  # the two photo sizes give different counts
        assert pv.shape[0] == 2 and pv.shape[2:] == (3, tile, tile)
        assert pv.shape[1] == 1 + max(
            _best_fit(h, w, cfg.image_grid_pinpoints)[0]
            * _best_fit(h, w, cfg.image_grid_pinpoints)[1]
            // tile**2
            for h, w in sizes
        )
    # CLIP normalisation of real photos: values in [-1.8, 2.2], two photos differ
    assert pv.min() >= -1.80 and pv.max() <= 2.15
    assert not torch.allclose(pv[0], pv[1])


def _best_fit(h: int, w: int, pinpoints) -> tuple[int, int]:
    """Pinpoint keeping most of the original resolution, then wasting least area."""
    best, best_key = None, None
    for ph, pw in pinpoints:
        s = min(pw / w, ph / h)
        effective = min(int(h * s) * int(w * s), h * w)
        key = (effective, -(ph * pw - effective))
        if best_key is None or key > best_key:
            best, best_key = (ph, pw), key
    return best


def _anyres_tokens(h: int, w: int, tile: int, patch: int, pinpoints) -> int:
    """LLaVA-NeXT image token count: base tile + unpadded grid + one newline per row."""
    ph, pw = _best_fit(h, w, pinpoints)
    rows, cols = ph // tile * (tile // patch), pw // tile * (tile // patch)
    if w / h > cols / rows:  # wider than the grid: letterboxed rows are dropped
        pad = (rows - int(round(h * cols / w, 7))) // 2
        rows -= 2 * pad
    else:
        pad = (cols - int(round(w * rows / h, 7))) // 2
        cols -= 2 * pad
    base = (tile // patch) ** 2  # CLS dropped
    return base + rows * cols + rows


def test_padded_batch_matches_single_items(run):
    _, _, adapter, items, batch, out, _ = run
    assert (batch.attention_mask == 0).any()  # the batch really is padded
    assert (batch.attention_mask[:, 0] == 1).all()  # right padding
    for b, item in enumerate(items):
        single = adapter.encode([item])
        with torch.no_grad():
            hs = adapter.forward(single, output_hidden_states=True).hidden_states
        m = batch.attention_mask[b].bool()
        assert torch.equal(single.input_ids[0], batch.input_ids[b][m])
        assert torch.equal(single.modality[0], batch.modality[b][m])
        for k in (1, -1):
            torch.testing.assert_close(hs[k][0], out.hidden_states[k][b][m], atol=1e-5, rtol=1e-5)


def test_hook_exception_propagates(run):
    _, _, adapter, items, _, _, _ = run

    class Stop(Exception):
        pass

    def raise_stop(*_):
        raise Stop

    h = adapter.layers()[0].register_forward_hook(raise_stop)
    try:
        with pytest.raises(Stop):
            adapter.forward(adapter.encode(items[:1]))
    finally:
        h.remove()


def test_bf16_and_bad_text(run):
    family, path, adapter, items, _, _, _ = run
    bf = load_model(str(path), dtype="bf16")
    assert bf.dtype == torch.bfloat16
    with torch.no_grad():
        hs = bf.forward(bf.encode(items[2:]), output_hidden_states=True).hidden_states
    assert hs[-1].dtype == torch.bfloat16 and torch.isfinite(hs[-1].float()).all()
    with pytest.raises(ValueError, match="image placeholder"):
        adapter.encode([Item("x", text="look <image> here")])


def test_processor_without_clip_cls_count_is_fixed(run, caplog):
    """A processor saved without patch size / CLS count gets them from the model config."""
    _, _, adapter, items, batch, _, _ = run
    proc = adapter.processor
    saved = proc.patch_size, proc.vision_feature_select_strategy, proc.num_additional_image_tokens
    try:
        proc.patch_size, proc.vision_feature_select_strategy = None, None
        proc.num_additional_image_tokens = 0
        with caplog.at_level("WARNING", logger="saeprobe.models.llava"):
            fixed = type(adapter)(adapter.model, proc, adapter.name_or_path)
        assert "num_additional_image_tokens=1" in caplog.text
        assert proc.patch_size == adapter.model.config.vision_config.patch_size
        assert proc.vision_feature_select_strategy == "default"
        assert torch.equal(fixed.encode(items).input_ids, batch.input_ids)
    finally:
        proc.patch_size, proc.vision_feature_select_strategy, proc.num_additional_image_tokens = (
            saved
        )
