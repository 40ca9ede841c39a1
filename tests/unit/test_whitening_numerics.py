"""Whitening accuracy against float64 references, with tolerances from float32 error bounds.

Error model (stated in docs/retrieval.md, "Numerics"): with ``u = 2^-24`` and ``p =``
:data:`saeprobe.whitening.covariance.PANEL_ROWS`, every float32 product of the Gram sums at
most ``p`` terms and the panels are summed in float64, so (probabilistic bound for p-term
float32 sums, Higham & Mary 2019) the covariance is correct to a relative ``~ sqrt(p) u``
whatever the BLAS kernel. Its inverse square root amplifies that error along the mixed
eigen-directions by ``~ sqrt(kappa)`` (kappa: condition number of the covariance actually
inverted), hence the bound used below::

    max |cov(y) - I|  <=  sqrt(p) * u * sqrt(kappa)

The old implementation (one float32 product per 16,384-row chunk) broke it on AVX2 CPUs.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from saeprobe.whitening import Whitener, gram, realign
from saeprobe.whitening.covariance import PANEL_ROWS, in_memory_stats

pytestmark = pytest.mark.numerics

U32 = 2.0**-24


def _issue_data():
    """The data of the report: d=8, condition number 744, a common mean of 3."""
    g = torch.Generator().manual_seed(2)
    mix = torch.randn(8, 8, generator=g)
    return torch.randn(20000, 8, generator=g) @ mix + 3.0


def _mllm_like(n=40000, d=256, seed=0, rank=32):
    """Unit rows with a large common mean and low-rank structure (kappa ~ 3e4)."""
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(d, generator=g)
    basis = torch.randn(rank, d, generator=g) / d**0.5
    z = torch.randn(n, rank, generator=g) * torch.linspace(3, 0.3, rank)
    x = 1.2 * mean / mean.norm() + z @ basis + 0.02 * torch.randn(n, d, generator=g)
    return F.normalize(x, dim=1)


def _ill_conditioned(n=40000, d=64, cond=1e5, seed=1):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    s = torch.logspace(0, -0.5 * math.log10(cond), d, dtype=torch.float64)
    x = (torch.randn(n, d, generator=g, dtype=torch.float64) * s) @ q.T + 5.0
    return x.float()


DATA = {"issue": _issue_data, "mllm": _mllm_like, "ill": _ill_conditioned}


def _cov64(X):
    X64 = X.double()
    xc = X64 - X64.mean(0)
    return xc.T @ xc / (X.shape[0] - 1)


def _bound(cov: torch.Tensor) -> float:
    ev = torch.linalg.eigvalsh(cov)
    return math.sqrt(PANEL_ROWS) * U32 * math.sqrt(float(ev.max() / ev.min()))


@pytest.mark.parametrize("name", sorted(DATA))
@pytest.mark.parametrize("method", ["zca", "pca"])
def test_whitened_covariance_is_identity_within_float32_bound(name, method):
    X = DATA[name]()
    cov = _cov64(X)
    y = Whitener(method, normalize=False, eps=0.0).fit(X).transform(X).double()
    err = (torch.cov(y.T) - torch.eye(X.shape[1], dtype=torch.float64)).abs().max().item()
    assert err <= _bound(cov), f"{name}/{method}: {err:.2e} > bound {_bound(cov):.2e}"
    assert y.mean(0).abs().max().item() <= 1e-4


def test_at_least_as_accurate_as_plain_float32():
    """The report's comparison: centre, X^T X / (n-1), eigh, U diag(l^-1/2) U^T in float32."""
    X = _issue_data()
    eye = torch.eye(8, dtype=torch.float64)
    m = X.mean(0)
    xc = X - m
    ev, vec = torch.linalg.eigh(xc.T @ xc / (len(X) - 1))
    plain = (xc @ ((vec * ev.rsqrt()) @ vec.T)).double()
    ours = Whitener("zca", normalize=False, eps=0.0).fit(X).transform(X).double()
    e_plain = (torch.cov(plain.T) - eye).abs().max().item()
    e_ours = (torch.cov(ours.T) - eye).abs().max().item()
    assert e_ours <= e_plain


@pytest.mark.parametrize("name", sorted(DATA))
def test_covariance_relative_error_within_panel_bound(name):
    """||S_hat - S||_F / ||S||_F <= 6 sqrt(p) u (a 6-sigma probabilistic bound; the
    float64 panel sums and the rank-one mean correction add nothing at this scale)."""
    X = DATA[name]()
    mean, scatter = in_memory_stats(X, torch.device("cpu"), 16384)
    ref = _cov64(X) * (X.shape[0] - 1)
    rel = ((scatter - ref).norm() / ref.norm()).item()
    assert rel <= 6 * math.sqrt(PANEL_ROWS) * U32
    assert (mean - X.double().mean(0)).abs().max().item() <= 4 * U32 * X.abs().max().item()


@pytest.mark.parametrize("rows", [1, 1023, 1024, 1025, 5000])
def test_panelled_gram_equals_float64(rows):
    g = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 600, generator=g)
    got = gram(x)
    ref = x.double().T @ x.double()
    assert torch.equal(got, got.T)
    # each entry: a <= PANEL_ROWS-term float32 sum, 6 sigma of sqrt(p) u times sum |a_k b_k|
    scale = x.double().abs().T @ x.double().abs()
    assert ((got - ref).abs() <= 6 * math.sqrt(PANEL_ROWS) * U32 * scale + 1e-30).all()


def test_realign_output_within_bound_of_float64_formula():
    """ReAlign outputs (unit rows): the whitened coordinates inherit the bound above, for
    the shrunk covariance (kappa <= 1 + (1 - alpha) / alpha * D)."""
    X = _mllm_like(n=20000, d=128, seed=3)
    n, d = X.shape
    X64 = X.double()
    mu = X64.mean(0)
    cov = _cov64(X)
    sh = 0.9 * cov + 0.1 * torch.trace(cov) / d * torch.eye(d, dtype=torch.float64)
    ev, vec = torch.linalg.eigh(sh)
    ref = F.normalize((X64 - mu) @ ((vec * (ev + 1e-5).rsqrt()) @ vec.T), dim=1)
    err = (realign(X).double() - ref).abs().max().item()
    assert err <= _bound(sh)
