"""Chameleon adapter on a tiny random checkpoint with a tiny VQ-VAE (offline)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from saeprobe import Modality
from saeprobe.models import load_model
from saeprobe.models.prompts import render_prompt
from tests import adapter_checks as checks

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Tiny Chameleon, a mixed padded batch and its hooked forward pass."""
    return checks.hooked_run("chameleon", tmp_path_factory, checks.mixed_items())


def test_adapter_class(run):
    assert type(run.adapter).__name__ == "ChameleonAdapter"


def test_modality_labels_and_layout(run):
    _, _, adapter, items, batch, _, _ = run
    tok = adapter.processor.tokenizer
    image_id = adapter.model.config.image_token_id
    n_img = adapter.processor.image_seq_length
    assert adapter.image_token_ids == (image_id,)
    for (_, ids, mod), item in zip(checks.unpadded_rows(batch), items, strict=True):
        checks.assert_row_labels(tok, ids, mod, item, image_id)
        assert int((ids == image_id).sum()) == (n_img if item.image is not None else 0)
        # "<image>" + prompt, no chat template; the processor adds bos, boi/eoi and sep
        prompt, _ = render_prompt(item)
        image = "<racm3:break><image><eoss>" if item.image is not None else ""
        want = f"<s>{image}{prompt}<reserved08706>"
        assert tok.decode(checks.collapse_image_runs(ids, image_id)) == want


def test_vq_codes_fill_image_positions(run):
    """The model swaps VQ-VAE codes in at exactly the IMAGE positions."""
    _, _, adapter, _, batch, out, _ = run
    inner = adapter.model.model
    with torch.no_grad():
        codes = inner.get_image_tokens(batch.inputs["pixel_values"])  # [2, n_img] bpe ids
        want = inner.embed_tokens(codes).reshape(-1, adapter.d_model)
    img = batch.modality == Modality.IMAGE
    assert torch.equal(out.hidden_states[0][img], want)
    # code ids are the IMGIMG*Z tokens of the tokenizer
    names = adapter.processor.tokenizer.convert_ids_to_tokens(codes.flatten().tolist())
    assert all(n.startswith("IMGIMG") and n.endswith("Z") for n in names)


def test_resize_then_processor(run):
    _, path, adapter, items, batch, _, _ = run
    photo = items[2].image  # 451 x 300
    side = adapter.model.config.vq_config.resolution
    assert adapter.image_resize == (224, 224)
    assert adapter.prepare_image(items[2]).size == (224, 224)
    pv = batch.inputs["pixel_values"]
    assert pv.shape == (2, 3, side, side)
    ref = adapter.processor.image_processor(photo.resize((224, 224), Image.Resampling.BICUBIC))
    torch.testing.assert_close(pv[1], torch.as_tensor(ref["pixel_values"][0]), atol=1e-6, rtol=0)
    # without the resize the processor centre-crops the wide photo: different pixels
    raw = load_model(str(path), image_resize=None)
    assert raw.prepare_image(items[2]).size == photo.size
    assert not torch.allclose(raw.encode(items[2:]).inputs["pixel_values"][0], pv[1])
    small = load_model(str(path), image_resize=(48, 40))
    assert small.prepare_image(items[2]).size == (48, 40)
    with pytest.raises(ValueError, match="image_resize"):
        load_model(str(path), image_resize=(0, 10))


class TestHookedRun(checks.HookedRunChecks):
    @staticmethod
    def hooked_module(adapter):
        return adapter.final_norm()
