"""eval-sae: splice an SAE into a tiny MLLM, CE / KL / loss recovered."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sae_training.evaluate import evaluate_splice
from saeprobe import Item, Modality
from saeprobe.sae import SAEConfig, create_sae
from tests.helpers import identity_topk

pytestmark = pytest.mark.integration

WORDS = "a cat a dog a man riding a wave on top of a surfboard near the sea".split()


def _items(n: int) -> list[Item]:
    from PIL import Image

    out = []
    rng = np.random.default_rng(0)
    for i in range(n):
        if i == 2:  # one image item: image tokens are spliced but never scored
            pixels = (rng.random((40, 32, 3)) * 255).astype("uint8")
            out.append(Item(f"img{i}", image=Image.fromarray(pixels)))
        else:
            out.append(Item(f"txt{i}", text=" ".join(WORDS[i % 4 : i % 4 + 6 + i % 5])))
    return out


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from saeprobe.testing import available_families, build_tiny_model

    family = "qwen2_vl" if "qwen2_vl" in available_families() else available_families()[0]
    return build_tiny_model(family, tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def adapter(model_dir):
    from saeprobe import load_model

    torch.manual_seed(0)
    return load_model(str(model_dir), dtype="float32")


def _zero_sae(d: int):
    sae = create_sae(SAEConfig(arch="topk", d_in=d, d_sae=2 * d, k=4))
    with torch.no_grad():
        for p in sae.parameters():
            p.zero_()
    return sae


def _hf_loss(adapter, items) -> float:
    """Reference CE: the HF model's own ``labels=`` loss over the same target positions."""
    batch = adapter.encode(items)
    mask = batch.attention_mask.bool()
    target = mask.clone()
    target[:, 1:] &= mask[:, :-1]
    target[:, 0] = False
    target &= torch.isin(
        batch.modality.long(), torch.tensor([int(Modality.TEXT), int(Modality.TEMPLATE)])
    )
    labels = torch.where(target, batch.input_ids, torch.full_like(batch.input_ids, -100))
    with torch.inference_mode():
        return float(adapter.model(**batch.inputs, labels=labels, use_cache=False).loss)


@pytest.mark.parametrize("hook", ["final_norm", "resid_post.1"])
def test_identity_sae_recovers_everything_and_zero_sae_nothing(adapter, hook):
    items = _items(5)
    d = adapter.d_model
    perfect = evaluate_splice(adapter, identity_topk(d), items, hook, batch_size=5)
    assert perfect.n_items == 5 and perfect.n_tokens > 20
    assert perfect.fvu < 1e-10
    assert perfect.ce_sae == pytest.approx(perfect.ce_clean, abs=1e-5)
    assert abs(perfect.kl_sae) < 1e-5 and perfect.kl_zero > 1e-3
    assert perfect.loss_recovered == pytest.approx(1.0, abs=1e-3)
    assert abs(perfect.ce_zero - perfect.ce_clean) > 1e-3  # a meaningful denominator
    # the clean CE is the model's own next-token loss on the same positions
    assert perfect.ce_clean == pytest.approx(_hf_loss(adapter, items), rel=1e-4)

    # the same numbers under SAEBench's names, plus the spliced tokens' SAE metrics
    m = perfect.metrics
    assert m["ce_loss_score"] == perfect.loss_recovered and m["ce_loss_with_sae"] == perfect.ce_sae
    assert m["ce_loss_without_sae"] == perfect.ce_clean
    assert m["ce_loss_with_ablation"] == perfect.ce_zero
    assert m["kl_div_score"] == pytest.approx(1.0, abs=1e-3)
    assert m["explained_variance"] == pytest.approx(1.0, abs=1e-9) and m["fvu"] == perfect.fvu
    assert m["l0"] == pytest.approx(d)  # one of +e_i / -e_i per nonzero coordinate
    assert m["cossim"] == pytest.approx(1.0) and 0 < m["frac_alive"] <= 1
    assert set(perfect.saebench()) >= {
        "model_behavior_preservation", "model_performance_preservation",
        "reconstruction_quality", "sparsity", "misc_metrics",
    }  # fmt: skip
    assert sum(perfect.density_histogram["counts"]) + perfect.density_histogram["n_dead"] == 2 * d

    zero = evaluate_splice(adapter, _zero_sae(d), items, hook, batch_size=2)
    assert zero.metrics["l0"] == 0 and zero.metrics["dead_fraction"] == 1.0
    assert zero.metrics["kl_div_score"] == pytest.approx(0.0, abs=1e-6)
    assert zero.loss_recovered == pytest.approx(0.0, abs=1e-6)
    assert zero.ce_sae == pytest.approx(zero.ce_zero, rel=1e-6)
    assert zero.kl_sae == pytest.approx(zero.kl_zero, rel=1e-6)
    # batching does not change the numbers
    assert zero.ce_clean == pytest.approx(perfect.ce_clean, rel=1e-5)


def test_zero_ablation_of_final_norm_is_uniform_prediction(adapter):
    # zeroing hidden_states[-1] leaves logits = lm_head(0) = 0 (no bias): CE = log(vocab)
    res = evaluate_splice(
        adapter, _zero_sae(adapter.d_model), _items(4), "final_norm", skip_system=False
    )
    vocab = adapter.model.get_output_embeddings().weight.shape[0]
    assert res.ce_zero == pytest.approx(np.log(vocab), rel=1e-5)


def test_width_mismatch_is_a_clear_error(adapter):
    with pytest.raises(ValueError, match="d_in=8 but final_norm of this model has width"):
        evaluate_splice(adapter, _zero_sae(8), _items(2))


def test_eval_sae_cli(adapter, model_dir, tmp_path, capsys):
    from saeprobe.cli import main

    sae_dir = tmp_path / "sae"
    identity_topk(adapter.d_model).save(sae_dir)
    data = tmp_path / "texts.txt"
    data.write_text("\n".join(it.text for it in _items(6) if it.text) + "\n")
    out = tmp_path / "eval.json"
    rc = main(
        [
            "eval-sae",
            "--sae",
            str(sae_dir),
            "--model",
            str(model_dir),
            "--data",
            str(data),
            "--hook",
            "final_norm",
            "--limit",
            "3",
            "--device",
            "cpu",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    res = json.loads(out.read_text())
    assert res["n_items"] == 3 and res["loss_recovered"] == pytest.approx(1.0, abs=1e-3)
    assert "loss recovered" in printed.out


def test_eval_sae_cli_store_metrics_and_card(adapter, model_dir, tmp_path, capsys):
    """--activations (no model) and --model together, --card: eval.json + the card's metrics."""
    from saeprobe import Modality
    from saeprobe.cli import main
    from saeprobe.sae.card import read_card_metadata
    from saeprobe.store import ActivationStoreWriter

    d = adapter.d_model
    sae_dir = tmp_path / "sae"
    identity_topk(d).save(sae_dir)
    x = torch.randn(40, d, generator=torch.Generator().manual_seed(3))
    with ActivationStoreWriter(tmp_path / "store", d=d, dtype="fp32", fingerprint="f") as w:
        w.add(x, torch.arange(40) // 4, torch.arange(40) % 4, torch.zeros(40, dtype=torch.long),
              torch.full((40,), int(Modality.TEXT), dtype=torch.int8))  # fmt: skip
    data = tmp_path / "texts.txt"
    data.write_text("\n".join(it.text for it in _items(6) if it.text) + "\n")
    out = tmp_path / "eval.json"
    argv = ["eval-sae", "--sae", str(sae_dir), "--activations", str(tmp_path / "store"),
            "--model", str(model_dir), "--data", str(data), "--limit", "3", "--device", "cpu",
            "--out", str(out), "--card", "--no-progress"]  # fmt: skip
    rc = main(argv)
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    res = json.loads(out.read_text())
    assert res["loss_recovered"] == pytest.approx(1.0, abs=1e-3)  # the splice, top level
    rec = res["reconstruction"]
    assert rec["n_tokens"] == 40 and rec["metrics"]["explained_variance"] == pytest.approx(1.0)
    assert rec["saebench"]["sparsity"]["l0"] == pytest.approx(d)
    kept = json.loads((sae_dir / "eval.json").read_text())
    assert set(kept) == {"reconstruction", "splice"}
    head = read_card_metadata(sae_dir)
    sm = head["sae_metrics"]
    assert sm["explained_variance"] == pytest.approx(1.0) and sm["l0"] == pytest.approx(d)
    assert sm["ce_loss_score"] == pytest.approx(1.0, abs=1e-3) and "kl_div_score" in sm
    assert head["sae_metrics_source"].startswith("held-out evaluation")
    assert "explained variance" in printed.out and "loss recovered" in printed.out
    assert main(["eval-sae", "--sae", str(sae_dir)]) == 2  # nothing to evaluate
    assert "nothing to evaluate" in capsys.readouterr().err


def test_train_on_the_fly_capture(adapter):
    """CaptureSource: model -> shuffle buffer -> trainer, no disk; every token once per epoch."""
    from sae_training import TrainConfig
    from sae_training.sources import CaptureSource
    from sae_training.trainer import train
    from saeprobe.capture import capture

    items = _items(6)
    ref = (
        capture(adapter, items, ["final_norm"], batch_size=3, skip_system=True, progress=False)
        .acts["final_norm"]
        .float()
    )
    src = CaptureSource(
        adapter,
        items,
        "final_norm",
        capture_batch_size=3,
        buffer_tokens=40,
        drop_system=True,
        seed=0,
    )
    batches = list(src.batches(0, 16))
    got = torch.cat(batches)
    assert all(b.shape[0] == 16 for b in batches[:-1]) and got.shape == ref.shape
    key = lambda t: t[torch.argsort(t[:, 0] * 1e3 + t[:, 1])]  # noqa: E731
    torch.testing.assert_close(key(got), key(ref), rtol=1e-5, atol=1e-5)  # same multiset
    assert not torch.allclose(got, ref)  # but shuffled
    again = list(src.batches(0, 16, start=2))  # deterministic: resume skips batches exactly
    assert len(again) == len(batches) - 2
    for a, b in zip(again, batches[2:], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    res = train(
        TrainConfig(
            width=32, k=4, lr=1e-3, batch_size=16, epochs=1, progress=False, warmup_steps=1
        ),
        src,
    )
    assert res.tokens == ref.shape[0] and res.step == len(batches)
