"""The field's SAE metrics (SAEBench / sae-lens names), each on hand-built inputs with known
answers; the streaming accumulator against the closed forms; reconstruction eval on a store."""

from __future__ import annotations

import math

import pytest
import torch

from saeprobe.sae.metrics import (
    SAEBENCH_CATEGORIES,
    SAEMetrics,
    ce_loss_score,
    density_summary,
    explained_variance,
    feature_density,
    feature_density_histogram,
    fvu,
    kl_div_score,
    kl_divergence,
    l0,
    saebench_nested,
)
from tests.helpers import identity_topk

X = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]])  # mean 0, total var 10


def test_reconstruction_metrics_closed_form():
    x_hat = 0.5 * X  # residual 0.5 x: sse = 0.25 * 10
    assert fvu(X, x_hat) == pytest.approx(0.25)
    assert explained_variance(X, x_hat) == pytest.approx(0.75)
    m = SAEMetrics(3)
    m.update(X, x_hat, torch.zeros(4, 1), torch.zeros(4, 1, dtype=torch.long))
    got = m.compute()
    assert got["fvu"] == pytest.approx(0.25) and got["explained_variance"] == pytest.approx(0.75)
    assert got["mse"] == pytest.approx(2.5 / 4)  # SAEBench: summed over d, mean over tokens
    assert got["cossim"] == pytest.approx(1.0)
    assert got["l2_ratio"] == pytest.approx(0.5)
    assert got["l2_norm_in"] == pytest.approx((1 + 1 + 2 + 2) / 4)
    assert got["l2_norm_out"] == pytest.approx(0.5 * 6 / 4)
    # E||x_hat||^2 / E<x, x_hat> = 0.25 / 0.5 (shrinkage)
    assert got["relative_reconstruction_bias"] == pytest.approx(0.5)
    assert got["n_tokens"] == 4


def test_fvu_uses_per_dimension_means():
    x = torch.tensor([[10.0, 0.0], [12.0, 0.0]])
    x_hat = torch.full_like(x, 11.0) * torch.tensor([1.0, 0.0])  # predicts the mean exactly
    assert fvu(x, x_hat) == pytest.approx(1.0) and explained_variance(x, x_hat) == pytest.approx(
        0.0
    )


def test_streaming_equals_one_batch():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 6, generator=g) + 3.0
    x_hat = x + 0.3 * torch.randn(50, 6, generator=g)
    z = torch.relu(torch.randn(50, 9, generator=g))
    one, parts = SAEMetrics(9), SAEMetrics(9)
    one.update(x, x_hat, z, None)
    for sl in (slice(0, 7), slice(7, 30), slice(30, 50)):
        parts.update(x[sl], x_hat[sl], z[sl], None)
    a, b = one.compute(), parts.compute()
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == pytest.approx(b[key], rel=1e-12), key
    assert a["fvu"] == pytest.approx(fvu(x, x_hat), rel=1e-12)
    assert a["l0"] == pytest.approx(l0(z)) and a["l1"] == pytest.approx(float(z.sum() / 50))


def _codes():
    """200 tokens, 5 latents, sparse codes [200, 2] with zero padding: latent 0 fires on all,
    1 on 30, 2 on 10, 3 on 1, 4 never."""
    n = 200
    values = torch.zeros(n, 2)
    indices = torch.zeros(n, 2, dtype=torch.long)
    values[:, 0], indices[:, 0] = 1.0, 0
    for lat, count, start in ((1, 30, 0), (2, 10, 30), (3, 1, 40)):
        values[start : start + count, 1] = 2.0
        indices[start : start + count, 1] = lat
    indices[41:, 1] = 4  # padding entries point at latent 4 with value 0: not firings
    return values, indices


def test_feature_density_and_saebench_density_metrics():
    values, indices = _codes()
    dens = feature_density(values, indices, 5)
    torch.testing.assert_close(
        dens, torch.tensor([1.0, 0.15, 0.05, 0.005, 0.0], dtype=torch.float64)
    )
    dense = torch.zeros(200, 5).scatter_add(1, indices, values)
    torch.testing.assert_close(feature_density(dense, None, 5), dens)
    s = density_summary(dens)
    assert s["frac_alive"] == pytest.approx(0.8) and s["dead_fraction"] == pytest.approx(0.2)
    assert s["freq_over_1_percent"] == pytest.approx(0.6)
    assert s["freq_over_10_percent"] == pytest.approx(0.4) == s["dense_fraction"]
    assert s["normalized_freq_over_1_percent"] == pytest.approx(1.2 / 1.205)
    assert s["normalized_freq_over_10_percent"] == pytest.approx(1.15 / 1.205)
    assert l0(values) == pytest.approx(241 / 200)


def test_feature_density_histogram_on_log10_bins():
    dens = torch.tensor([1.0, 0.15, 0.05, 0.005, 0.0, 1e-12])
    h = feature_density_histogram(dens, n_bins=8, log10_min=-8.0)
    assert h["bin_edges"] == [-8.0, -7.0, -6.0, -5.0, -4.0, -3.0, -2.0, -1.0, 0.0]
    # 1e-12 is clamped into the first bin; 0.15 and 1.0 fall in [-1, 0]
    assert h["counts"] == [1, 0, 0, 0, 0, 1, 1, 2] and h["n_dead"] == 1


def test_downstream_scores_and_kl():
    assert ce_loss_score(2.0, 2.5, 4.0) == pytest.approx(0.75)
    assert ce_loss_score(2.0, 2.0, 4.0) == 1.0 and ce_loss_score(2.0, 4.0, 4.0) == 0.0
    assert math.isnan(ce_loss_score(2.0, 2.0, 2.0))
    assert kl_div_score(0.1, 0.4) == pytest.approx(0.75)
    p = torch.log(torch.tensor([[0.5, 0.5], [0.9, 0.1]]))
    q = torch.log(torch.tensor([[0.25, 0.75], [0.9, 0.1]])) + 3.0  # logits: any offset
    kl = kl_divergence(p, q)
    assert kl[0] == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(2 / 3), rel=1e-6)
    assert kl[1] == pytest.approx(0.0, abs=1e-7)


def test_saebench_grouping():
    flat = {"kl_div_score": 0.9, "ce_loss_score": 0.8, "explained_variance": 0.7, "l0": 50.0,
            "frac_alive": 0.99, "n_tokens": 10, "something_else": 1}  # fmt: skip
    nested = saebench_nested(flat)
    assert nested == {
        "model_behavior_preservation": {"kl_div_score": 0.9},
        "model_performance_preservation": {"ce_loss_score": 0.8},
        "reconstruction_quality": {"explained_variance": 0.7},
        "sparsity": {"l0": 50.0},
        "misc_metrics": {"frac_alive": 0.99},
        "token_stats": {"n_tokens": 10},
    }
    assert "l0" in SAEBENCH_CATEGORIES["sparsity"]


def test_evaluate_reconstruction_on_a_store(tmp_path):
    from sae_training.evaluate import evaluate_reconstruction
    from saeprobe import Modality
    from saeprobe.store import ActivationStoreWriter

    x = torch.tensor([[1.0, 2.0], [-1.0, 3.0], [5.0, 5.0]])
    mods = torch.tensor([int(Modality.TEXT), int(Modality.IMAGE), int(Modality.SYSTEM)])
    with ActivationStoreWriter(tmp_path / "s", d=2, dtype="fp32", fingerprint="f") as w:
        w.add(x, torch.tensor([0, 0, 1]), torch.arange(3), torch.arange(3), mods.to(torch.int8))
    sae = identity_topk(2)
    res = evaluate_reconstruction(sae, tmp_path / "s")  # the SYSTEM token is dropped
    m = res.metrics
    assert res.n_tokens == 2 and m["fvu"] == pytest.approx(0.0, abs=1e-12)
    assert m["explained_variance"] == pytest.approx(1.0) and m["cossim"] == pytest.approx(1.0)
    # token 0 fires latents 0 (x0 > 0) and 1; token 1 fires 2 (-x0 > 0) and 1; latent 3 never
    assert m["l0"] == pytest.approx(2.0) and m["l1"] == pytest.approx((3 + 4) / 2)
    assert m["frac_alive"] == pytest.approx(0.75) and m["dead_fraction"] == pytest.approx(0.25)
    assert m["dense_fraction"] == pytest.approx(0.75)
    assert res.density_histogram["n_dead"] == 1 and sum(res.density_histogram["counts"]) == 3
    assert res.saebench()["sparsity"] == {"l0": m["l0"], "l1": m["l1"]}
    full = evaluate_reconstruction(sae, tmp_path / "s", drop_system=False, max_tokens=3)
    assert full.n_tokens == 3
    with pytest.raises(ValueError, match="d_in=3"):
        evaluate_reconstruction(identity_topk(3), x)
