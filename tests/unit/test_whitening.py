"""Tests of saeprobe.whitening against float64 transcriptions of the formulas."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from saeprobe.whitening import (
    CovarianceAccumulator,
    Whitener,
    WhitenerConfig,
    canonical_method,
    realign,
    whiten_pair,
)

pytestmark = pytest.mark.numerics  # float tolerances: also run on the AVX2 code path


def _embeddings(n=600, d=32, seed=0, mean_scale=2.0):
    """Unit rows with a common mean and low-rank structure (like MLLM embeddings)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(d, generator=g) * mean_scale
    low = torch.randn(n, 4, generator=g) @ torch.randn(4, d, generator=g)
    x = base + 0.5 * low + 0.3 * torch.randn(n, d, generator=g)
    return F.normalize(x, dim=1)


def _realign64(X, alpha=0.1, eps=1e-5):
    """The paper's formula, float64, written directly."""
    X = X.double()
    n, d = X.shape
    mu = X.mean(0)
    xc = X - mu
    cov = xc.T @ xc / (n - 1)
    sh = (1 - alpha) * cov + alpha * torch.trace(cov) / d * torch.eye(d, dtype=torch.float64)
    s, u = torch.linalg.eigh(sh)
    w = u @ torch.diag(1.0 / torch.sqrt(s + eps)) @ u.T
    return F.normalize(xc @ w, dim=1)


def _reference_f32(X, alpha=0.1, batch_size=128):
    """Float32 transcription of the authors' reference algorithm: chunked mean and
    centred covariance, SVD of the shrunk covariance, chunked apply."""
    n, d = X.shape
    mean = torch.zeros(1, d)
    for i in range(0, n, batch_size):
        mean += X[i : i + batch_size].float().sum(0, keepdim=True)
    mean /= n
    cov = torch.zeros(d, d)
    for i in range(0, n, batch_size):
        b = X[i : i + batch_size].float() - mean
        cov += b.T @ b
    cov /= n - 1
    sh = (1 - alpha) * cov + alpha * torch.trace(cov) / d * torch.eye(d)
    u, s, _ = torch.linalg.svd(sh)
    w = u @ torch.diag(1.0 / torch.sqrt(s + 1e-5)) @ u.T
    out = torch.empty(n, d)
    for i in range(0, n, batch_size):
        out[i : i + batch_size] = F.normalize((X[i : i + batch_size].float() - mean) @ w, dim=1)
    return out


def test_realign_equals_float64_formula_and_reference():
    X = _embeddings()
    ours = realign(X)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours.double(), _realign64(X), atol=1e-5, rtol=0)
    torch.testing.assert_close(ours, _reference_f32(X), atol=1e-5, rtol=0)
    # rows are unit length
    torch.testing.assert_close(ours.norm(dim=1), torch.ones(len(X)), atol=1e-5, rtol=0)
    # a large-D path (blocked symmetric Gram, D >= 512) agrees too
    Xl = _embeddings(n=1200, d=520, seed=3, mean_scale=1.0)
    torch.testing.assert_close(
        realign(Xl, chunk_size=500).double(), _realign64(Xl), atol=1e-4, rtol=0
    )


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_realign_alpha(alpha):
    X = _embeddings(seed=1)
    w = Whitener("realign", alpha=alpha).fit(X)
    assert w.info["alpha"] == alpha
    torch.testing.assert_close(w.transform(X).double(), _realign64(X, alpha), atol=2e-5, rtol=0)


def test_zca_and_pca_whiten_to_identity():
    g = torch.Generator().manual_seed(2)
    d = 8
    mix = torch.randn(d, d, generator=g)
    X = torch.randn(20000, d, generator=g) @ mix + 3.0  # N >> D
    for method in ("zca", "pca"):
        w = Whitener(method, normalize=False, eps=0.0).fit(X)
        y = w.transform(X).double()
        cov = torch.cov(y.T)
        torch.testing.assert_close(cov, torch.eye(d, dtype=torch.float64), atol=1e-4, rtol=0)
        torch.testing.assert_close(
            y.mean(0), torch.zeros(d, dtype=torch.float64), atol=1e-4, rtol=0
        )
    # ZCA is the symmetric whitening matrix; PCA differs from it by a rotation
    wz = Whitener("zca", normalize=False).fit(X).weight
    torch.testing.assert_close(wz, wz.T, atol=1e-5, rtol=1e-5)
    wp = Whitener("pca", normalize=False, n_components=3).fit(X)
    assert wp.weight.shape == (d, 3)
    ev = wp.eigenvalues_
    assert (ev[:-1] >= ev[1:]).all()  # descending


def test_statistics_modes():
    q = _embeddings(n=300, seed=4)
    c = _embeddings(n=500, seed=5)
    s = _embeddings(n=400, seed=6)
    # separate: each set with its own statistics (reference code)
    qs, cs = whiten_pair(q, c, "realign", stats="separate")
    torch.testing.assert_close(qs.double(), _realign64(q), atol=1e-5, rtol=0)
    torch.testing.assert_close(cs.double(), _realign64(c), atol=1e-5, rtol=0)
    # candidates: candidate statistics for both
    qc, cc = whiten_pair(q, c, "realign", stats="candidates")
    cd = c.double()
    mu = cd.mean(0)
    cov = torch.cov(cd.T)
    d = cov.shape[0]
    sh = 0.9 * cov + 0.1 * torch.trace(cov) / d * torch.eye(d, dtype=torch.float64)
    ev, u = torch.linalg.eigh(sh)
    w = (u * (ev + 1e-5).rsqrt()) @ u.T
    torch.testing.assert_close(
        qc.double(), F.normalize((q.double() - mu) @ w, dim=1), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(cc, cs, atol=1e-6, rtol=0)
    # support: queries with support statistics, candidates with their own
    qsup, csup = whiten_pair(q, c, "realign", stats="support", support=s)
    ws = Whitener("realign").fit(s)
    torch.testing.assert_close(qsup, ws.transform(q), atol=1e-6, rtol=0)
    torch.testing.assert_close(csup, cs, atol=1e-6, rtol=0)
    # joint: statistics of the union
    qj, cj = whiten_pair(q, c, "realign", stats="joint")
    wj = Whitener("realign").fit(torch.cat([q, c]))
    torch.testing.assert_close(qj, wj.transform(q), atol=2e-6, rtol=0)
    with pytest.raises(ValueError, match="support=\\[S, D\\]"):
        whiten_pair(q, c, stats="support")
    with pytest.raises(ValueError, match="query dim 32 != candidate dim 16"):
        whiten_pair(q, c[:, :16])


def test_streaming_equals_in_memory():
    X = _embeddings(n=1000, seed=7)
    mem = Whitener("realign").fit(X)
    stream = Whitener("realign").fit(X[i : i + 97] for i in range(0, 1000, 97))
    scale = float(mem.weight.abs().max())  # entries up to 1/sqrt(smallest eigenvalue)
    torch.testing.assert_close(stream.weight, mem.weight, atol=1e-5 * scale, rtol=0)
    torch.testing.assert_close(stream.bias, mem.bias, atol=1e-5 * scale, rtol=0)
    torch.testing.assert_close(stream.transform(X), mem.transform(X), atol=1e-5, rtol=0)
    # accumulator statistics vs float64 torch.cov, and merging two halves
    acc = CovarianceAccumulator(32)
    for i in range(0, 1000, 333):
        acc.update(X[i : i + 333])
    torch.testing.assert_close(acc.covariance(), torch.cov(X.double().T), atol=1e-7, rtol=1e-5)
    a, b = CovarianceAccumulator(32).update(X[:400]), CovarianceAccumulator(32).update(X[400:])
    torch.testing.assert_close(a.merge(b).covariance(), acc.covariance(), atol=1e-9, rtol=1e-6)


def _cov64(X):
    """Float64 ``(centred X, biased covariance s, mean eigenvalue of s)``."""
    X = X.double()
    xc = X - X.mean(0)
    s = xc.T @ xc / X.shape[0]
    return xc, s, torch.trace(s) / X.shape[1]


def _lw64(X):
    """Ledoit-Wolf shrinkage intensity, float64, from its definition (sklearn's form)."""
    n, d = X.shape
    xc, s, mu = _cov64(X)
    delta = ((s - mu * torch.eye(d, dtype=torch.float64)) ** 2).sum() / d
    beta = sum(((torch.outer(x, x) - s) ** 2).sum() for x in xc) / (n * n) / d
    return float(min(beta, delta) / delta)


def _oas64(X):
    """OAS shrinkage intensity, float64, from its definition (sklearn's form)."""
    n, d = X.shape
    _, s, mu = _cov64(X)
    a = (s**2).mean()
    return float(min((a + mu**2) / ((n + 1) * (a - mu**2 / d)), 1.0))


def test_automatic_shrinkage():
    X = _embeddings(n=60, d=16, seed=8)
    lw = Whitener("ledoit_wolf").fit(X)
    assert lw.info["alpha"] == pytest.approx(_lw64(X), rel=1e-4, abs=1e-6)
    lws = Whitener("lw").fit(X[i : i + 7] for i in range(0, 60, 7))
    assert lws.info["alpha"] == pytest.approx(lw.info["alpha"], rel=1e-4, abs=1e-6)
    oas = Whitener("oas").fit(X)
    assert oas.info["alpha"] == pytest.approx(_oas64(X), rel=1e-5)
    # the chosen alpha is what the transform uses
    torch.testing.assert_close(
        oas.transform(X).double(), _realign64(X, alpha=oas.info["alpha"]), atol=2e-5, rtol=0
    )


def test_all_but_the_top_and_distractor_removal():
    X = _embeddings(n=500, seed=9)
    w = Whitener("abtt", n_components=3).fit(X)
    y = w.transform(X).double()
    xc = X.double() - X.double().mean(0)
    _, _, vh = torch.linalg.svd(xc, full_matrices=False)
    top = vh[:3]
    assert (y @ top.T).abs().max() < 1e-5
    proj = xc - (xc @ top.T) @ top
    torch.testing.assert_close(y, F.normalize(proj, dim=1), atol=1e-5, rtol=0)
    # distractor directions: remove their span (non-orthogonal, one redundant), no centring
    g = torch.Generator().manual_seed(10)
    dirs = torch.randn(2, 32, generator=g)
    dirs = torch.cat([dirs, dirs[:1] + 2 * dirs[1:2]])
    wd = Whitener("distractor", directions=dirs).fit(X)
    assert wd.info["n_removed"] == 2
    yd = wd.transform(X).double()
    assert (yd @ dirs.double().T).abs().max() < 1e-5
    q, _ = torch.linalg.qr(dirs[:2].double().T)
    ref = F.normalize(X.double() - (X.double() @ q) @ q.T, dim=1)
    torch.testing.assert_close(yd, ref, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="needs directions"):
        Whitener("distractor")
    with pytest.raises(ValueError, match="must be \\[m, 32\\]"):
        Whitener("distractor", directions=torch.randn(2, 5)).fit(X)


def test_none_and_method_names():
    X = _embeddings(n=50) * 3
    torch.testing.assert_close(Whitener("none").fit_transform(X), F.normalize(X, dim=1))
    assert canonical_method("LW") == "ledoit_wolf"
    assert canonical_method("all-but-the-top") == "abtt"
    with pytest.raises(ValueError, match="unknown whitening method 'foo'"):
        Whitener("foo")


def test_save_load_roundtrip(tmp_path):
    X = _embeddings(n=200, seed=11)
    w = Whitener("pca", n_components=5, alpha=0.2).fit(X)
    w.save(tmp_path / "w")
    w2 = Whitener.load(tmp_path / "w")
    assert w2.config == w.config
    assert w2.info == w.info
    torch.testing.assert_close(w2.transform(X), w.transform(X))
    assert WhitenerConfig.from_dict(w.config.to_dict()) == w.config
    wd = Whitener("distractor", directions=torch.randn(2, 32)).fit(X)
    wd.save(tmp_path / "d")
    torch.testing.assert_close(Whitener.load(tmp_path / "d").transform(X), wd.transform(X))
    with pytest.raises(FileNotFoundError, match="no whitener.json"):
        Whitener.load(tmp_path / "missing")


def test_half_inputs_use_float32_statistics():
    X = _embeddings(n=400, seed=12)
    xh = X.half()
    yh = realign(xh)
    assert yh.dtype == torch.float16
    ref = _realign64(xh.float())
    torch.testing.assert_close(yh.double(), ref, atol=2e-3, rtol=0)
    y32 = Whitener("realign").fit(xh).transform(xh, out_dtype=torch.float32)
    torch.testing.assert_close(y32.double(), ref, atol=2e-5, rtol=0)


def test_bad_inputs(caplog):
    X = _embeddings(n=10, d=32)
    with caplog.at_level(logging.WARNING, logger="saeprobe.whitening"):
        y = realign(X)  # fewer samples than dims: warns, shrinkage still works
    assert "rank-deficient" in caplog.text
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.double(), _realign64(X), atol=1e-4, rtol=0)
    bad = _embeddings(n=50).clone()
    bad[7, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN/inf .*rows 7"):
        realign(bad)
    with pytest.raises(ValueError, match="NaN/inf"):
        Whitener().fit(iter([bad[:20], bad[20:]]))
    w = Whitener().fit(_embeddings(n=50))
    with pytest.raises(ValueError, match="dim 16 does not match the whitener's dim 32"):
        w.transform(torch.randn(3, 16))
    with pytest.raises(ValueError, match="at least 2 embeddings"):
        realign(torch.randn(1, 4))
    with pytest.raises(RuntimeError, match="not fitted"):
        Whitener().transform(X)
    # a row equal to the mean whitens to zero: stays zero, with a warning
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="saeprobe.whitening"):
        z = w.transform(w.mean_[None, :].clone())
    assert z.abs().max() == 0 and "zero after whitening" in caplog.text
    zin = torch.zeros(2, 32)
    zin[1, 0] = 1.0
    zn = Whitener("none").fit(zin).transform(zin)
    assert zn[0].abs().max() == 0 and zn[1, 0] == 1.0


@pytest.mark.parametrize("d", [100, 511, 512, 1000, 1024, 2100])
def test_block_triangle_gram_equals_full_product(d):
    from saeprobe.whitening import gram as _gram

    torch.manual_seed(d)
    x = torch.randn(300, d)
    ref = x.double().T @ x.double()
    got = _gram(x)
    assert torch.allclose(got.double(), ref, rtol=1e-5, atol=1e-3)
    assert torch.equal(got, got.T)
    acc = torch.eye(d)
    _gram(x, acc)  # accumulates
    assert torch.allclose(acc.double(), ref + torch.eye(d, dtype=torch.float64), atol=1e-3)
