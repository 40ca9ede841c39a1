"""Sparse Top-K kernels: fast path vs the dense eager reference (loss and every gradient)."""

from __future__ import annotations

import pytest
import torch

from saeprobe.sae import SAEConfig, create_sae, kernels

pytestmark = pytest.mark.numerics  # float tolerances: also run on the AVX2 code path

D, C, K, B = 16, 96, 6, 24


def _sae(dtype, bias=True):
    cfg = SAEConfig(
        arch="topk",
        d_in=D,
        d_sae=C,
        k=K,
        dtype=dtype,
        use_decoder_bias=bias,
        use_pre_encoder_bias=bias,
    )
    sae = create_sae(cfg)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.2)
        sae.W_enc.add_(0.3 * torch.randn_like(sae.W_enc))
        if bias:
            sae.b_dec.normal_(0, 0.5)
    return sae


def _run(sae, x, fast, **kw):
    sae.zero_grad(set_to_none=True)
    out = sae.training_forward(x, fast=fast, **kw)
    out.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in sae.named_parameters()}
    return out, grads


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-12), ("float32", 2e-5)])
@pytest.mark.parametrize("bias", [True, False])
def test_fast_matches_eager_loss_and_grads(dtype, tol, bias):
    sae = _sae(dtype, bias)
    x = torch.randn(B, D, dtype=sae.W_enc.dtype) * 2
    dead = torch.zeros(C, dtype=torch.bool)
    dead[::3] = True
    kw = dict(l1_coeff=0.01, auxk_coeff=0.25, k_aux=8, dead_mask=dead)
    fast, gf = _run(sae, x, True, **kw)
    eager, ge = _run(sae, x, False, **kw)
    torch.testing.assert_close(fast.loss, eager.loss, rtol=tol, atol=tol)
    for name in ("mse", "l1", "auxk", "l0"):
        torch.testing.assert_close(fast.terms[name], eager.terms[name], rtol=tol, atol=tol)
    assert fast.terms["auxk"] > 0
    torch.testing.assert_close(fast.x_hat, eager.x_hat, rtol=tol, atol=tol)
    assert set(gf) == set(ge) == ({"W_enc", "b_enc", "W_dec"} | ({"b_dec"} if bias else set()))
    for n in gf:
        torch.testing.assert_close(gf[n], ge[n], rtol=tol * 10, atol=tol * 10, msg=n)
    # the paper's L1: 0.01 * mean |z| over the dense [B, c] matrix
    z = kernels.dense_codes(fast.values.detach(), fast.indices, C)
    torch.testing.assert_close(fast.terms["l1"], z.abs().mean(), rtol=tol, atol=tol)
    torch.testing.assert_close(fast.terms["mse"], (fast.x_hat - x).pow(2).mean())


def test_primitives_against_dense_math():
    W = torch.randn(C, D, dtype=torch.float64)
    idx = torch.randint(0, C, (B, K))
    w = torch.randn(B, K, dtype=torch.float64)
    R = torch.randn(B, D, dtype=torch.float64)
    G = torch.zeros(B, C, dtype=torch.float64)
    G.index_put_((torch.arange(B)[:, None].expand(B, K), idx), w, accumulate=True)
    torch.testing.assert_close(kernels.gather_sum(W, idx, w), G @ W)
    torch.testing.assert_close(kernels.scatter_rows(idx, w, R, C), G.T @ R)
    torch.testing.assert_close(kernels.rows_dot(W, idx, R), (W[idx] * R[:, None, :]).sum(-1))


def test_auxk_is_the_normalised_residual_loss():
    sae = _sae("float64", bias=False)
    x = torch.randn(B, D, dtype=torch.float64)
    dead = torch.zeros(C, dtype=torch.bool)
    dead[10:30] = True
    out = sae.training_forward(x, auxk_coeff=1.0, k_aux=4, dead_mask=dead)
    with torch.no_grad():
        pre = x @ sae.W_enc.T + sae.b_enc
        masked = pre.masked_fill(~dead, float("-inf"))
        top = masked.topk(4, 1)
        z = torch.zeros_like(pre).scatter(1, top.indices, top.values.relu())
        e = x - out.x_hat
        ref = ((z @ sae.W_dec - e) ** 2).sum() / ((e - e.mean(0)) ** 2).sum()
    torch.testing.assert_close(out.terms["auxk"], ref)
    none = sae.training_forward(x, auxk_coeff=1.0, dead_mask=torch.zeros(C, dtype=torch.bool))
    assert none.terms["auxk"] == 0


def test_cpu_bf16_autocast_fast_matches_eager():
    sae = _sae("float32")
    x = torch.randn(B, D)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast, gf = _run(sae, x, True, l1_coeff=0.01)
        eager, ge = _run(sae, x, False, l1_coeff=0.01)
    assert fast.loss.dtype == torch.float32 and sae.W_enc.grad.dtype == torch.float32
    assert torch.equal(fast.indices.sort(1).values, eager.indices.sort(1).values)
    torch.testing.assert_close(fast.loss, eager.loss, rtol=1e-3, atol=1e-5)
    for n in gf:  # bf16 matmuls in both: agree to bf16 precision (fast keeps sparse grads fp32)
        scale = ge[n].abs().max().item()
        torch.testing.assert_close(gf[n], ge[n], rtol=0, atol=1e-2 * scale, msg=n)
