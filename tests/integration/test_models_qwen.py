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
from tests import adapter_checks as checks

pytestmark = pytest.mark.integration

FAMILIES = {
    # family: (adapter class name, has the default system turn)
    "qwen2_vl": ("Qwen2VLAdapter", True),
    "qwen2_5_vl": ("Qwen2_5_VLAdapter", True),
    "qwen3_vl": ("Qwen3VLAdapter", False),
}
SYSTEM_TURN = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"


@pytest.fixture(scope="module", params=list(FAMILIES))
def run(request, tmp_path_factory):
    return checks.hooked_run(request.param, tmp_path_factory, checks.mixed_items(checks.LONG_TEXTS))


def test_registry_and_structure(run):
    adapter = run.adapter
    assert type(adapter).__name__ == FAMILIES[run.family][0]
    cfg = adapter.model.config
    assert adapter_class(cfg.architectures[0]) is type(adapter)
    assert adapter.n_layers == cfg.text_config.num_hidden_layers == 3
    assert adapter.d_model == cfg.text_config.hidden_size
    if run.family == "qwen3_vl":
        assert adapter_class("Qwen3VLMoeForConditionalGeneration") is type(adapter)


def test_modality_labels(run):
    """(b) IMAGE == image-token positions; TEXT decodes to the item text; SYSTEM prefix."""
    adapter, batch, items = run.adapter, run.batch, run.items
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
    has_system = FAMILIES[run.family][1]
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


def test_image_processor_handled_the_photo(run):
    """(d) pixel_values / grid from the real (PIL) image processor, checked independently."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    adapter, batch = run.adapter, run.batch
    ip = adapter.processor.image_processor
    p, tp, merge = ip.patch_size, ip.temporal_patch_size, ip.merge_size
    vc = adapter.model.config.vision_config
    assert (p, tp, merge) == (vc.patch_size, vc.temporal_patch_size, vc.spatial_merge_size)
    pv, grids = batch.inputs["pixel_values"], batch.inputs["image_grid_thw"]
    assert pv.shape == (int(grids.prod(1).sum()), 3 * tp * p * p)
    offset = 0
    for g, photo in zip(grids.tolist(), checks.photos()):
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


class TestHookedRun(checks.HookedRunChecks):
    """(a) layer / final-norm hook outputs == HF hidden_states, bit for bit; (c) a padded
    batch gives the same per-item activations as each item alone; hook errors propagate;
    bf16 runs the image items."""

    bf16_items = slice(1, None)


def test_bad_inputs(run):
    adapter = load_model(str(run.path), dtype="bf16")
    with pytest.raises(ValueError, match="single tower"):
        adapter.encode(run.items, tower="text")
    with pytest.raises(ValueError, match="image tokens"):
        adapter.encode([Item("x", text="look <|image_pad|>", image=checks.photos()[0])])


def test_processor_chat_template_file(run, tmp_path):
    """The processor's chat_template.json is used; a folder without any template fails clearly."""
    src = run.path
    dst = tmp_path / "m"
    shutil.copytree(src, dst)
    (dst / "chat_template.jinja").unlink()
    cls = type(run.adapter)
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
