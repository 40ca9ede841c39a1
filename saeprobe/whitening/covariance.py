"""Mean and covariance of embeddings, accurate in float32 on every CPU and GPU.

Numerics
--------
The whitening matrix ``S^{-1/2}`` amplifies a relative error of the covariance ``S`` by up
to its condition number, so the covariance must be accurate to a few float32 units in the
last place (``u = 2^-24``), whatever BLAS kernel runs the products. A float32 GEMM that
sums ``K`` products in one accumulator has an error growing like ``sqrt(K) u`` (random
rounding) up to ``K u`` (worst case), and *how* it sums depends on the CPU's code path (the
AVX2 and AVX-512 kernels of MKL / oneDNN order the sums differently). So:

* rows are shifted by a provisional mean (that of the first chunk), so the products do not
  lose digits to a large common mean (MLLM embeddings have ``||mean|| ~ 0.9``);
* every float32 product covers at most :data:`PANEL_ROWS` rows and the panels are summed
  in float64, so the error is that of ``PANEL_ROWS``-term sums, independent of ``N`` and of
  the kernel's own blocking;
* the rank-one correction to the exact mean, the chunk merges and everything after are
  float64.
"""

from __future__ import annotations

import torch

__all__ = ["PANEL_ROWS", "CovarianceAccumulator", "gram", "in_memory_stats", "nonfinite_message"]

#: rows per float32 product before the float64 accumulation (error ~ sqrt(PANEL_ROWS) u)
PANEL_ROWS = 1024
_BLOCK_MIN = 128  # columns per block of the upper-triangle Gram (below: one full product)


def _panel_gram(x: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    """``x^T x`` of one panel into ``scratch`` [D, D] (float32), upper block triangle only
    for ``D >= 512`` (blocks below the diagonal are left stale: :func:`gram` mirrors)."""
    d = x.shape[1]
    nb = min(8, d // _BLOCK_MIN)
    if x.dtype in (torch.float16, torch.bfloat16):  # CUDA: tensor cores, float32 accumulation
        try:
            return scratch.copy_(torch.mm(x.T, x, out_dtype=torch.float32))
        except (RuntimeError, TypeError):
            x = x.float()
            return torch.mm(x.T, x, out=scratch)
    if nb < 2:
        return torch.mm(x.T, x, out=scratch)
    cuts = [d * i // nb for i in range(nb + 1)]
    for lo, hi in zip(cuts[:-1], cuts[1:]):  # block row i: columns from block i on
        scratch[lo:hi, lo:].addmm_(x[:, lo:hi].T, x[:, lo:], beta=0)
    return scratch


def gram(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``x^T x`` summed over panels of :data:`PANEL_ROWS` rows in float64.

    Parameters
    ----------
    x : [n, D]
        float32 (or fp16 on CUDA; bf16 and CPU half inputs are multiplied in float32).
    out : FloatTensor [D, D] | None
        float64 accumulator added to (a new one when None).

    Returns
    -------
    DoubleTensor [D, D], symmetric.
    """
    n, d = x.shape
    if out is None:
        out = torch.zeros(d, d, dtype=torch.float64, device=x.device)
    if x.dtype == torch.bfloat16 or (x.dtype == torch.float16 and not x.is_cuda):
        x = x.float()
    nb = min(8, d // _BLOCK_MIN)
    triangle = nb >= 2 and x.dtype == torch.float32
    cuts = [d * i // nb for i in range(nb + 1)] if triangle else []
    scratch = torch.empty(d, d, dtype=torch.float32, device=x.device)
    for s in range(0, n, PANEL_ROWS):
        part = _panel_gram(x[s : s + PANEL_ROWS], scratch)
        if not triangle:
            out += part
            continue
        for lo, hi in zip(cuts[:-1], cuts[1:]):
            out[lo:hi, lo:] += part[lo:hi, lo:]
    for lo, hi in zip(cuts[:-1], cuts[1:]):  # mirror the strict upper blocks (out stays symmetric)
        out[hi:, lo:hi] = out[lo:hi, hi:].T
    return out


def nonfinite_message(x: torch.Tensor, offset: int = 0) -> str:
    """One line naming the rows of ``x`` with NaN / inf and the fix."""
    bad = (~torch.isfinite(x)).any(dim=1).nonzero().flatten() + offset
    rows = ", ".join(str(int(i)) for i in bad[:5])
    more = "..." if bad.numel() > 5 else ""
    return (
        f"embeddings contain NaN/inf in {bad.numel()} rows (rows {rows}{more}); recompute them "
        "(e.g. load the model in bf16/fp32 instead of fp16) or drop those rows"
    )


def in_memory_stats(
    X: torch.Tensor, device: torch.device, chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and centred scatter of ``X`` in one pass over chunks of ``chunk`` rows.

    Returns
    -------
    (mean [D] float64, scatter ``sum (x - mu)(x - mu)^T`` [D, D] float64)
    """
    n, d = X.shape
    # fp16 on CUDA: shifted rows stay fp16 (rounding below the inputs' own) for tensor-core
    # products with float32 accumulation; bf16 would round the shifted rows to 8 bits, so
    # bf16 (and everything on CPU) is shifted and multiplied in float32
    half_cuda = device.type == "cuda" and X.dtype == torch.float16
    cdt = X.dtype if half_cuda else torch.float32
    shift = X[:chunk].to(device, torch.float32).mean(0)
    shift_c = shift.to(cdt)
    total = torch.zeros(d, dtype=torch.float64, device=device)
    scatter = torch.zeros(d, d, dtype=torch.float64, device=device)
    buf = torch.empty(min(chunk, n), d, dtype=cdt, device=device)  # reused across chunks
    for s in range(0, n, chunk):
        x = X[s : s + chunk].to(device, cdt, non_blocking=True)
        xs = torch.sub(x, shift_c, out=buf[: x.shape[0]])
        total += xs.sum(0).double()  # ATen's cascade sum: float32 error ~ u log(n)
        gram(xs, scatter)
    if not torch.isfinite(total).all() or not torch.isfinite(scatter).all():
        for s in range(0, n, chunk):
            xs = X[s : s + chunk].float()
            if not torch.isfinite(xs).all():
                raise ValueError(nonfinite_message(xs, offset=s))
        raise ValueError("whitening statistics overflowed: rescale the embeddings")
    dm = total / n  # mean of the shifted rows
    scatter -= n * torch.outer(dm, dm)
    return shift.double() + dm, scatter


class CovarianceAccumulator:
    """One-pass, chunked mean / covariance (and the moments Ledoit-Wolf needs).

    Each chunk is centred on its own mean and its scatter computed with :func:`gram`; chunks
    are merged in float64 with Chan et al.'s pairwise update, so the result is stable for
    embeddings with a large common mean and for inputs larger than memory.

    Parameters
    ----------
    dim : int
    device : torch.device | str | None
        Where statistics are computed (chunks are moved there).
    fourth_moments : bool
        Also accumulate ``sum ||x||^4`` and ``sum ||x||^2 x`` (for Ledoit-Wolf).
    """

    def __init__(self, dim: int, device=None, fourth_moments: bool = False):
        self.dim = int(dim)
        self.device = torch.device(device) if device is not None else None
        self.fourth_moments = fourth_moments
        self.n = 0
        self._mean: torch.Tensor | None = None  # float64 [D]
        self._m2: torch.Tensor | None = None  # float64 [D, D] centred scatter
        self._sq2 = 0.0  # sum ||x||^4
        self._sqx: torch.Tensor | None = None  # sum ||x||^2 x

    def update(self, x: torch.Tensor) -> CovarianceAccumulator:
        """Add a chunk ``[n, D]``."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected a chunk [n, {self.dim}], got shape {tuple(x.shape)}")
        if x.shape[0] == 0:
            return self
        x = x.to(self.device or x.device)
        xf = x if x.dtype == torch.float32 else x.float()
        nb = x.shape[0]
        mb = xf.sum(0, dtype=torch.float64) / nb
        if not torch.isfinite(mb).all():
            raise ValueError(nonfinite_message(xf))
        xc = xf - mb.float()
        # centring on the float32-rounded mean: correct the scatter by the rounding offset
        off = xc.sum(0, dtype=torch.float64) / nb
        m2b = gram(xc) - nb * torch.outer(off, off)
        if self.fourth_moments:
            sq = (xf * xf).sum(1, dtype=torch.float64)
            self._sq2 += float((sq * sq).sum())
            sqx = sq @ xf.double()
            self._sqx = sqx if self._sqx is None else self._sqx + sqx
        self._absorb(nb, mb, m2b)
        return self

    def _absorb(self, nb: int, mb: torch.Tensor, m2b: torch.Tensor) -> None:
        if self.n == 0:
            self.n, self._mean, self._m2 = nb, mb, m2b
            return
        na = self.n
        n = na + nb
        delta = mb.to(self._mean.device) - self._mean
        self._m2 = self._m2 + m2b.to(self._m2.device) + torch.outer(delta, delta) * (na * nb / n)
        self._mean = self._mean + delta * (nb / n)
        self.n = n

    def merge(self, other: CovarianceAccumulator) -> CovarianceAccumulator:
        """Merge another accumulator (e.g. from another rank)."""
        if other.n == 0:
            return self
        self._sq2 += other._sq2
        if other._sqx is not None:
            sqx = other._sqx.to(self._sqx.device if self._sqx is not None else other._sqx.device)
            self._sqx = sqx if self._sqx is None else self._sqx + sqx
        self._absorb(other.n, other._mean, other._m2)
        return self

    @property
    def mean(self) -> torch.Tensor:
        """float64 [D]"""
        self.need(1)
        return self._mean

    def covariance(self) -> torch.Tensor:
        """Unbiased covariance (``/(n - 1)``), float64 [D, D]."""
        self.need(2)
        return self._m2 / (self.n - 1)

    def scatter(self) -> torch.Tensor:
        """Centred scatter ``sum (x - mu)(x - mu)^T``, float64 [D, D]."""
        self.need(1)
        return self._m2

    def sum_sq_dev_sq(self) -> float:
        """``sum_i ||x_i - mu||^4`` (needs ``fourth_moments=True``)."""
        if not self.fourth_moments:
            raise RuntimeError("accumulator was built without fourth_moments=True")
        self.need(1)
        mu = self._mean
        g = self._m2 + self.n * torch.outer(mu, mu)  # sum x x^T
        c = float(mu @ mu)
        sum_a = float(torch.trace(g))
        sum_b2 = float(mu @ g @ mu)
        sum_ab = float(self._sqx @ mu)
        n = self.n
        val = self._sq2 + 4 * sum_b2 + n * c * c - 4 * sum_ab + 2 * c * sum_a - 4 * c * (n * c)
        return max(val, 0.0)

    def need(self, k: int) -> None:
        """Raise a one-line error when fewer than ``k`` samples were added."""
        if self.n < k:
            raise ValueError(
                f"whitening statistics need at least {k} samples, got {self.n}; "
                "pass more embeddings"
            )
