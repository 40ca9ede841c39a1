"""Matryoshka BatchTopK and Gated SAEs: codes against closed-form references, the sparse fast
path against the dense reference, nested prefixes, and planted-dictionary recovery through
``sae_training.train``."""

from __future__ import annotations

import pytest
import torch

from sae_training import TrainConfig, train
from saeprobe.sae import GatedSAE, MatryoshkaBatchTopKSAE, SAEConfig, create_sae
from saeprobe.sae.matryoshka import batch_topk_rows, resolve_widths

D, C, K = 12, 48, 4


pytestmark = pytest.mark.usefixtures("one_thread")


def planted(n: int, d: int = 32, m: int = 128, active: int = 4, seed: int = 0):
    """``x = z @ D``: ``m`` unit-norm atoms, ``active`` per row, values in [0.5, 2.5]."""
    D_ = torch.randn(m, d, generator=torch.Generator().manual_seed(0))
    D_ = D_ / D_.norm(dim=1, keepdim=True)
    g = torch.Generator().manual_seed(1000 + seed)
    idx = torch.rand(n, m, generator=g).argsort(1)[:, :active]
    z = torch.zeros(n, m).scatter_(1, idx, torch.rand(n, active, generator=g) * 2 + 0.5)
    return z @ D_, D_


def fvu64(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    x, x_hat = x.double(), x_hat.double()
    return float((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def recovered(D_: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    W = W.detach()
    return (D_ @ (W / W.norm(dim=1, keepdim=True)).T).max(1).values


def _gated(bias=True, pre=True) -> GatedSAE:
    sae = create_sae(
        arch="gated", d_in=D, d_sae=C, k=None, dtype="float64",
        use_decoder_bias=bias, use_pre_encoder_bias=pre,
    )  # fmt: skip
    with torch.no_grad():
        for p in (sae.b_enc, sae.b_mag, sae.r_mag):
            p.normal_(0, 0.3)
        if bias:
            sae.b_dec.normal_(0, 0.5)
    return sae


def test_gated_codes_are_gate_times_magnitude():
    sae = _gated()
    x = torch.randn(20, D, dtype=torch.float64)
    xc = x - sae.b_dec
    gate = xc @ sae.W_enc.T + sae.b_enc
    mag = xc @ (sae.W_enc * sae.r_mag.exp()[:, None]).T + sae.b_mag
    ref = (gate > 0).double() * mag.relu()
    z = sae.encode(x)
    torch.testing.assert_close(z, ref.detach())
    assert 0 < int((z > 0).sum()) < z.numel()
    torch.testing.assert_close(sae(x), (ref @ sae.W_dec + sae.b_dec).detach())


def test_gated_loss_terms_closed_form():
    sae = _gated()
    x = torch.randn(16, D, dtype=torch.float64)
    out = sae.training_forward(x, l1_coeff=0.5)
    with torch.no_grad():
        xc = x - sae.b_dec
        gate = (xc @ sae.W_enc.T + sae.b_enc).relu()
        l1 = (gate * sae.W_dec.norm(dim=1)).sum() / (16 * C)
        aux = ((gate @ sae.W_dec + sae.b_dec) - x).pow(2).mean()
        mse = (sae(x) - x).pow(2).mean()
    for name, ref in (("l1", l1), ("aux", aux), ("mse", mse)):
        torch.testing.assert_close(out.terms[name].detach(), ref)
    torch.testing.assert_close(out.loss.detach(), mse + aux + 0.5 * l1)
    out.loss.backward()
    # the frozen-decoder aux path and the L1 train the gate bias, which the step does not
    assert sae.b_enc.grad.abs().sum() > 0 and sae.r_mag.grad.abs().sum() > 0


def test_resolve_widths_defaults_and_errors():
    assert resolve_widths(None, 256) == [16, 32, 64, 128, 256]
    assert resolve_widths(None, 8) == [1, 2, 4, 8]
    assert resolve_widths([16, 64], 256) == [16, 64, 256]
    for bad in ([64, 32, 256], [0, 256], [16, 512]):
        with pytest.raises(ValueError, match="strictly increasing"):
            resolve_widths(bad, 256)
    sae = create_sae(arch="matryoshka_batchtopk", d_in=D, d_sae=C, k=K)
    assert sae.cfg.matryoshka_widths == [3, 6, 12, 24, 48]


def test_batch_topk_rows_pads_per_row():
    acts = torch.tensor([[3.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0], [2.0, 5.0, 4.0, 0.5]])
    idx, valid, kept = batch_topk_rows(acts, 5)
    dense = torch.zeros_like(acts).scatter_add(1, idx, acts.gather(1, idx) * valid)  # pads add 0
    ref = torch.tensor([[3.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0], [2.0, 5.0, 4.0, 0.0]])
    torch.testing.assert_close(dense, ref)
    assert valid.sum(1).tolist() == [2, 0, 3] and sorted(kept.tolist()) == [1.0, 2.0, 3.0, 4.0, 5.0]


@pytest.mark.parametrize("bias", [False, True])
def test_matryoshka_fast_path_equals_dense_reference(bias):
    torch.manual_seed(0)
    cfg = SAEConfig(
        arch="matryoshka_batchtopk", d_in=D, d_sae=C, k=K, dtype="float64",
        use_decoder_bias=bias, use_pre_encoder_bias=bias, matryoshka_widths=[6, 20, 48],
    )  # fmt: skip
    a = create_sae(cfg)
    with torch.no_grad():
        a.b_enc.normal_(0, 0.3)
    b = create_sae(SAEConfig.from_dict(cfg.to_dict()))
    b.load_state_dict(a.state_dict())
    x = torch.randn(24, D, dtype=torch.float64)
    outs = []
    for sae, fast in ((a, True), (b, False)):
        out = sae.training_forward(x, l1_coeff=0.3, fast=fast)
        out.loss.backward()
        outs.append(out)
    torch.testing.assert_close(outs[0].loss, outs[1].loss)
    assert set(outs[0].terms) >= {"mse_6", "mse_20", "mse_48"}
    for name in ("mse_6", "mse_20", "mse_48", "l1", "l0"):
        torch.testing.assert_close(outs[0].terms[name], outs[1].terms[name])
    assert int((outs[0].values > 0).sum()) == 24 * K
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
    torch.testing.assert_close(a.threshold, b.threshold)
    # the level loss is the mean of the prefix reconstructions' MSE
    with torch.no_grad():
        z = b._batch_topk(b.pre_acts(x))
        bd = b.b_dec if bias else 0
        mses = [((z[:, :m] @ b.W_dec[:m] + bd) - x).pow(2).mean() for m in (6, 20, 48)]
    torch.testing.assert_close(
        outs[1].loss.detach(), torch.stack(mses).mean() + 0.3 * outs[1].terms["l1"].detach()
    )


def _train(arch: str, x: torch.Tensor, **kw):
    cfg = TrainConfig(
        arch=arch, width=256, k=4, batch_size=128, warmup_steps=20, log_interval=8,
        dead_window_tokens=2048, progress=False, autocast="none", device="cpu", **kw,
    )  # fmt: skip
    return train(cfg, x)


def test_matryoshka_recovers_planted_dictionary_and_nests():
    x, D_ = planted(8192)
    held, _ = planted(2048, seed=1)
    widths = [32, 128, 256]
    res = _train("matryoshka_batchtopk", x, lr=5e-3, epochs=8,
                 sae_kwargs={"matryoshka_widths": widths})  # fmt: skip
    sae = res.sae.eval()
    assert isinstance(sae, MatryoshkaBatchTopKSAE) and sae.cfg.matryoshka_widths == widths
    with torch.no_grad():
        fvu = fvu64(held, sae(held))
    cos = recovered(D_, sae.dictionary)
    assert fvu < 0.2, f"held-out FVU {fvu:.3f}"
    assert float((cos > 0.9).float().mean()) >= 0.8, f"planted atoms recovered {cos}"
    assert res.history[-1]["step"] == res.step and 3.0 < res.metrics["l0"] < 5.0
    assert {"loss_mse_32", "loss_mse_128", "loss_mse_256"} <= set(res.history[-1])
    assert float(sae.threshold) > 0  # inference: JumpReLU with the learned threshold


def tiered(n: int, d: int = 32, n_freq: int = 8, n_rare: int = 120, seed: int = 0):
    """Planted data with 8 frequent atoms (one per row, 12.5% each) and 120 rare ones (three
    per row, 2.5% each); returns ``(x, D)`` with the frequent atoms first."""
    D_ = torch.randn(n_freq + n_rare, d, generator=torch.Generator().manual_seed(5))
    D_ = D_ / D_.norm(dim=1, keepdim=True)
    g = torch.Generator().manual_seed(100 + seed)
    z = torch.zeros(n, n_freq + n_rare)
    z[torch.arange(n), torch.randint(0, n_freq, (n,), generator=g)] = (
        torch.rand(n, generator=g) * 2 + 0.5
    )
    rare = torch.rand(n, n_rare, generator=g).argsort(1)[:, :3] + n_freq
    z.scatter_(1, rare, torch.rand(n, 3, generator=g) * 2 + 0.5)
    return z @ D_, D_


def test_matryoshka_puts_frequent_concepts_in_the_first_prefix():
    """Nested prefixes: the first 32 latents must reconstruct on their own, so they take the
    frequent atoms; a BatchTopK SAE trained the same way scatters them over all 256."""
    x, D_ = tiered(8192)
    placed = {}
    for arch, kw in (
        ("matryoshka_batchtopk", {"sae_kwargs": {"matryoshka_widths": [8, 32, 256]}}),
        ("batchtopk", {}),
    ):
        sae = _train(arch, x, lr=5e-3, epochs=8, **kw).sae.eval()
        W = sae.dictionary.detach()
        cos = D_[:8] @ (W / W.norm(dim=1, keepdim=True)).T
        best, val = cos.argmax(1), cos.max(1).values
        assert bool((val > 0.8).all()), f"{arch}: frequent atoms recovered {val}"
        placed[arch] = int((best < 32).sum())
    assert placed["matryoshka_batchtopk"] >= 6 and placed["batchtopk"] <= 4, placed


def test_gated_recovers_planted_dictionary():
    x, D_ = planted(4096)
    held, _ = planted(2048, seed=1)
    res = _train("gated", x, lr=3e-3, epochs=8, l1_coeff=20.0)
    sae = res.sae.eval()
    assert isinstance(sae, GatedSAE)
    with torch.no_grad():
        fvu = fvu64(held, sae(held))
        l0 = float((sae.encode(held) > 0).sum(1).float().mean())
    cos = recovered(D_, sae.dictionary)
    assert fvu < 0.2, f"held-out FVU {fvu:.3f}"
    assert float((cos > 0.9).float().mean()) >= 0.8, f"planted atoms recovered {cos}"
    assert l0 < 16, f"L0 {l0:.1f}: the gate L1 keeps the codes sparse"
    assert res.history[-1]["loss_aux"] > 0  # the gate's frozen-decoder reconstruction
