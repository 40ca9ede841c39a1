"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL adapters on tiny random checkpoints (offline).

Each family: build with the real config / model / PIL image processor classes, save,
load back through :func:`saeprobe.models.load_model`, encode a padded batch of a text,
an image (a real photo) and an image+text item, and check hooks, labels, padding and
image processing against HF's own outputs and independent computations.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from saeprobe import Item, Modality
from saeprobe.models import adapter_class, load_model

pytestmark = pytest.mark.integration

FAMILIES = {
    # family: (adapter class name, has the default system turn)
    "qwen2_vl": ("Qwen2VLAdapter", True),
    "qwen2_5_vl": ("Qwen2_5_VLAdapter", True),
    "qwen3_vl": ("Qwen3VLAdapter", False),
}
SYSTEM_TURN = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"


def _photos():
    from skimage import data

    return Image.fromarray(data.astronaut()), Image.fromarray(data.chelsea())


def _items():
    astronaut, cat = _photos()
    return [
        Item("txt", text="A cat sitting on a laptop keyboard."),
        Item("img", image=astronaut),
        Item("both", text="Two dogs play with a red ball.", image=cat),
    ]


@pytest.fixture(scope="module", params=list(FAMILIES))
def built(request, tmp_path_factory):
    from saeprobe.testing import build_tiny_model

    family = request.param
    path = build_tiny_model(family, tmp_path_factory.mktemp(family))
    adapter = load_model(str(path))
    items = _items()
    batch = adapter.encode(items)
    layers = adapter.layers()
    captured: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(module, args, output):
            captured[name] = (output[0] if isinstance(output, tuple) else output).detach()

        return hook

    handles = [layer.register_forward_hook(keep(f"layer{i}")) for i, layer in enumerate(layers)]
    handles.append(adapter.final_norm().register_forward_hook(keep("norm")))
    try:
        with torch.no_grad():
            out = adapter.forward(batch, output_hidden_states=True)
    finally:
        for h in handles:
            h.remove()
    return {
        "family": family,
        "path": path,
        "adapter": adapter,
        "items": items,
        "batch": batch,
        "out": out,
        "captured": captured,
    }


def test_registry_and_structure(built):
    adapter = built["adapter"]
    assert type(adapter).__name__ == FAMILIES[built["family"]][0]
    cfg = adapter.model.config
    assert adapter_class(cfg.architectures[0]) is type(adapter)
    assert adapter.n_layers == cfg.text_config.num_hidden_layers == 3
    assert adapter.d_model == cfg.text_config.hidden_size
    if built["family"] == "qwen3_vl":
        assert adapter_class("Qwen3VLMoeForConditionalGeneration") is type(adapter)


def test_hooks_equal_hidden_states(built):
    """(a) layer / final-norm hook outputs == HF hidden_states, bit for bit."""
    out, cap, batch = built["out"], built["captured"], built["batch"]
    hs = out.hidden_states
    n = built["adapter"].n_layers
    assert len(hs) == n + 1
    mask = batch.attention_mask.bool()
    for i in range(n - 1):
        assert torch.equal(cap[f"layer{i}"][mask], hs[i + 1][mask]), i
    assert torch.equal(cap["norm"][mask], hs[-1][mask])
    assert torch.equal(cap["norm"][mask], out.last_hidden_state[mask])
    # hidden_states[-1] is the final norm's output, not the raw last layer
    assert not torch.allclose(cap[f"layer{n - 1}"][mask], hs[-1][mask])


def test_modality_labels(built):
    """(b) IMAGE == image-token positions; TEXT decodes to the item text; SYSTEM prefix."""
    adapter, batch, items = built["adapter"], built["batch"], built["items"]
    tok = adapter.processor.tokenizer
    cfg = adapter.model.config
    mask = batch.attention_mask.bool()
    mod = batch.modality
    assert mod.dtype == torch.int8
    is_img = batch.input_ids == cfg.image_token_id
    assert torch.equal((mod == Modality.IMAGE) & mask, is_img & mask)
    grids = batch.inputs["image_grid_thw"]
    merge = cfg.vision_config.spatial_merge_size
    expected_img = [0, int(grids[0].prod()) // merge**2, int(grids[1].prod()) // merge**2]
    assert (is_img & mask).sum(1).tolist() == expected_img
    assert torch.equal(batch.inputs["mm_token_type_ids"].bool(), is_img & mask)
    has_system = FAMILIES[built["family"]][1]
    for b, item in enumerate(items):
        ids, lab = batch.input_ids[b][mask[b]], mod[b][mask[b]]
        text_idx = (lab == Modality.TEXT).nonzero().flatten()
        if item.text:
            assert text_idx.numel() > 0
            assert item.text in tok.decode(ids[text_idx])
            # contiguous and minimal
            assert torch.equal(text_idx, torch.arange(text_idx[0], text_idx[-1] + 1))
            assert item.text not in tok.decode(ids[text_idx[1:]])
        else:
            assert text_idx.numel() == 0
        sys_idx = (lab == Modality.SYSTEM).nonzero().flatten()
        if has_system:
            assert torch.equal(sys_idx, torch.arange(len(sys_idx)))
            assert tok.decode(ids[sys_idx]) == SYSTEM_TURN
        else:
            assert sys_idx.numel() == 0
        templ = tok.decode(ids[lab == Modality.TEMPLATE])
        assert templ.startswith("<|im_start|>user\n")
        assert templ.endswith(" in one word: <|im_end|>\n")
        assert "Summarize" in templ and item.id == batch.item_ids[b]
        # the full prompt is the chat template of one user turn, no generation prompt
        assert tok.decode(ids) == batch.extra["prompts"][b]
        assert not batch.extra["prompts"][b].endswith("<|im_start|>assistant\n")


def test_padding_matches_single_items(built):
    """(c) a padded batch gives the same per-item activations as each item alone."""
    adapter, out, batch = built["adapter"], built["out"], built["batch"]
    lengths = batch.attention_mask.sum(1)
    assert len(set(lengths.tolist())) > 1  # the batch is really padded
    assert batch.attention_mask[:, 0].all()  # right padding
    for b, item in enumerate(built["items"]):
        single = adapter.encode([item])
        n = int(lengths[b])
        assert single.input_ids.shape[1] == n
        assert torch.equal(single.input_ids[0], batch.input_ids[b, :n])
        assert torch.equal(single.modality[0], batch.modality[b, :n])
        with torch.no_grad():
            ref = adapter.forward(single, output_hidden_states=True).hidden_states
        for layer in (1, len(ref) - 1):
            torch.testing.assert_close(
                out.hidden_states[layer][b, :n], ref[layer][0], atol=1e-5, rtol=1e-5
            )


def test_image_processor_handled_the_photo(built):
    """(d) pixel_values / grid from the real (PIL) image processor, checked independently."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    adapter, batch = built["adapter"], built["batch"]
    ip = adapter.processor.image_processor
    p, tp, merge = ip.patch_size, ip.temporal_patch_size, ip.merge_size
    vc = adapter.model.config.vision_config
    assert (p, tp, merge) == (vc.patch_size, vc.temporal_patch_size, vc.spatial_merge_size)
    pv, grids = batch.inputs["pixel_values"], batch.inputs["image_grid_thw"]
    assert pv.shape == (int(grids.prod(1).sum()), 3 * tp * p * p)
    offset = 0
    for g, photo in zip(grids.tolist(), _photos()):
        w, h = photo.size
        rh, rw = smart_resize(h, w, p * merge, ip.size.shortest_edge, ip.size.longest_edge)
        assert g == [1, rh // p, rw // p]
        # per-channel means of the patches == those of the resized, normalised photo
        ref = np.asarray(photo.resize((rw, rh), Image.BICUBIC), dtype=np.float64) / 255.0
        ref = (ref - np.asarray(ip.image_mean)) / np.asarray(ip.image_std)
        n = g[0] * g[1] * g[2]
        patches = pv[offset : offset + n].double().reshape(n, 3, tp, p, p)
        got = patches.mean(dim=(0, 2, 3, 4)).numpy()
        np.testing.assert_allclose(got, ref.mean(axis=(0, 1)), atol=2e-3)
        offset += n


def test_hook_exception_propagates(built):
    adapter = built["adapter"]
    batch = adapter.encode(built["items"][:1])

    class Stop(Exception):
        pass

    def boom(module, args, output):
        raise Stop

    h = adapter.layers()[0].register_forward_hook(boom)
    try:
        with pytest.raises(Stop), torch.no_grad():
            adapter.forward(batch)
    finally:
        h.remove()


def test_bf16_load_and_bad_inputs(built):
    adapter = load_model(str(built["path"]), dtype="bf16")
    assert adapter.dtype == torch.bfloat16
    batch = adapter.encode(built["items"][1:])
    with torch.no_grad():
        out = adapter.forward(batch)
    assert out.last_hidden_state.dtype == torch.bfloat16
    assert torch.isfinite(out.last_hidden_state.float()).all()
    with pytest.raises(ValueError, match="single tower"):
        adapter.encode(built["items"], tower="text")
    with pytest.raises(ValueError, match="image tokens"):
        adapter.encode([Item("x", text="look <|image_pad|>", image=_photos()[0])])


def test_processor_chat_template_file(built, tmp_path):
    """The processor's chat_template.json is used; a folder without any template fails clearly."""
    src = built["path"]
    dst = tmp_path / "m"
    shutil.copytree(src, dst)
    (dst / "chat_template.jinja").unlink()
    cls = type(built["adapter"])
    template = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'][-1]['text'] }}<|im_end|>\n{% endfor %}"
    cfg = json.loads((dst / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (dst / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="no chat template"):
        cls.load_processor(str(dst))
    (dst / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    proc = cls.load_processor(str(dst))
    assert proc.chat_template == template
    assert proc.render("hi", with_image=False) == "<|im_start|>user\nhi<|im_end|>\n"
