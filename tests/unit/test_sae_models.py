"""SAE architectures: shapes, codes against float64 references, config round trip, helpers."""

from __future__ import annotations

import pytest
import torch

from saeprobe.sae import (
    ARCHS,
    SAE_REGISTRY,
    SAEConfig,
    SparseCodes,
    create_sae,
    geometric_median,
)
from tests.helpers import random_sae

pytestmark = pytest.mark.numerics  # float tolerances: also run on the AVX2 code path

D, C, K = 12, 48, 5


def _make(arch: str, k: int | None = K, **kw):
    """A random float64 ``arch`` SAE (extra parameters non-zero; ``kw``: config fields)."""
    return random_sae(arch, D, C, k, dtype="float64", **kw)


@pytest.mark.parametrize("arch", ARCHS)
def test_shapes_and_consistency(arch):
    k = K if SAE_REGISTRY[arch].k_required else None  # no k_max cap: exact sparse codes
    sae = _make(arch, k=k, use_decoder_bias=True, use_pre_encoder_bias=True)
    x = torch.randn(3, 7, D, dtype=torch.float64)
    z = sae.encode(x)
    sc = sae.encode_sparse(x)
    assert isinstance(sc, SparseCodes)
    assert z.shape == (3, 7, C)
    assert sc.values.shape == sc.indices.shape and sc.values.shape[:2] == (3, 7)
    dense = torch.zeros(21, C, dtype=torch.float64).scatter(
        1, sc.indices.reshape(21, -1), sc.values.reshape(21, -1)
    )
    torch.testing.assert_close(dense.reshape(3, 7, C), z)
    assert (z >= 0).all()
    x_hat = sae(x)
    assert x_hat.shape == x.shape
    torch.testing.assert_close(sae.decode(z), x_hat)
    torch.testing.assert_close(sae.decode_sparse(*sc), x_hat)
    assert sae.dictionary.shape == (C, D)


def test_topk_codes_match_float64_reference():
    sae = _make("topk", use_decoder_bias=True, use_pre_encoder_bias=True)
    with torch.no_grad():
        sae.b_dec.normal_()
    x = torch.randn(20, D, dtype=torch.float64)
    pre = (x - sae.b_dec) @ sae.W_enc.T + sae.b_enc
    a = pre.relu()  # the paper's order: ReLU, then keep the top k
    ref = torch.zeros_like(a).scatter(1, a.topk(K, 1).indices, a.topk(K, 1).values)
    torch.testing.assert_close(sae.encode(x), ref.detach())
    assert ((sae.encode(x) > 0).sum(1) <= K).all()
    x_hat_ref = ref @ sae.W_dec + sae.b_dec
    torch.testing.assert_close(sae(x), x_hat_ref.detach())


def test_topk_with_few_positive_preacts_equals_relu_then_topk():
    sae = _make("topk")
    with torch.no_grad():
        sae.b_enc.fill_(-50.0)
        sae.b_enc[:2] = 50.0  # exactly two positive latents per row, k=5
    x = torch.randn(6, D, dtype=torch.float64)
    z = sae.encode(x)
    assert ((z > 0).sum(1) == 2).all()
    a = (x @ sae.W_enc.T + sae.b_enc).relu()
    torch.testing.assert_close(z, a.detach())


def test_jumprelu_and_standard_codes():
    x = torch.randn(9, D, dtype=torch.float64)
    j = _make("jumprelu")
    pre = x @ j.W_enc.T + j.b_enc
    ref = pre.relu() * (pre > j.threshold)
    torch.testing.assert_close(j.encode(x), ref.detach())
    s = _make("standard")
    torch.testing.assert_close(s.encode(x), (x @ s.W_enc.T + s.b_enc).relu().detach())
    # encode_sparse pads to the largest count per batch, capped at k
    v, i = s.encode_sparse(x)
    z = s.encode(x)
    assert int((z > 0).sum(1).max()) > K  # the cap matters here
    assert v.shape[1] == K
    torch.testing.assert_close(v, z.topk(K, 1).values)
    # the reconstruction uses every active latent, not the capped sparse codes
    ref = (z @ s.W_dec).detach()
    torch.testing.assert_close(s(x).detach(), ref)


def test_batchtopk_training_keeps_k_times_batch_and_learns_threshold():
    sae = _make("batchtopk")
    with torch.no_grad():
        sae.threshold.zero_()
    x = torch.randn(8, D, dtype=torch.float64)
    out = sae.training_forward(x)
    nnz = int((out.values > 0).sum())
    assert nnz == 8 * K
    assert float(sae.threshold) > 0


def test_unit_norm_dictionary_and_parallel_grad_removal():
    sae = _make("topk")
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(C, 1, dtype=torch.float64) * 3 + 0.1)
    x = torch.randn(16, D, dtype=torch.float64)
    sae.training_forward(x, l1_coeff=0.01).loss.backward()
    sae.remove_parallel_grads_()
    par = (sae.W_dec.grad * sae.W_dec).sum(1)
    assert par.abs().max() < 1e-12
    sae.normalize_dictionary_()
    torch.testing.assert_close(sae.dictionary.norm(dim=1), torch.ones(C, dtype=torch.float64))
    fresh = create_sae(arch="topk", d_in=D, d_sae=C, k=K)
    torch.testing.assert_close(fresh.dictionary.norm(dim=1), torch.ones(C))
    torch.testing.assert_close(fresh.W_enc, fresh.W_dec)  # encoder = decoder^T init


def test_init_from_data_geometric_median_and_mean():
    sae = _make("topk", use_decoder_bias=True)
    x = torch.tensor([[0.0] * D, [1.0] * D, [10.0] * D], dtype=torch.float64)
    sae.init_from_data_(x)  # collinear points: the geometric median is the middle one
    torch.testing.assert_close(
        sae.b_dec.detach(), torch.ones(D, dtype=torch.float64), atol=1e-4, rtol=0
    )
    sae.init_from_data_(x, method="mean")
    torch.testing.assert_close(sae.b_dec.detach(), torch.full((D,), 11 / 3, dtype=torch.float64))
    pts = torch.randn(50, 3, dtype=torch.float64)
    gm = geometric_median(pts)
    # optimality: the gradient of sum ||p - y|| vanishes at the median
    g = ((gm - pts) / (gm - pts).norm(dim=1, keepdim=True)).sum(0)
    assert g.norm() < 1e-4


def test_config_json_round_trip_and_validation():
    cfg = SAEConfig(
        arch="jumprelu",
        d_in=8,
        d_sae=32,
        k=None,
        dtype="bf16",
        use_decoder_bias=True,
        jumprelu_bandwidth=0.05,
        metadata={"model_name": "m", "hook_point": "final_norm"},
    )
    back = SAEConfig.from_json(cfg.to_json())
    assert back == cfg and back.dtype == "bfloat16"
    with pytest.raises(ValueError, match="use_decoder_bias"):
        SAEConfig(d_in=4, d_sae=8, k=2, use_pre_encoder_bias=True)
    with pytest.raises(ValueError, match="0 < k <= d_sae"):
        SAEConfig(d_in=4, d_sae=8, k=9)
    with pytest.raises(ValueError, match="unknown SAE arch"):
        SAEConfig(arch="no_such_arch", d_in=4, d_sae=8)
    assert set(SAE_REGISTRY) == set(ARCHS)


def test_d_mismatch_is_a_clear_error():
    sae = _make("topk")
    with pytest.raises(ValueError, match="d_in=12"):
        sae.encode(torch.randn(2, D + 1, dtype=torch.float64))
