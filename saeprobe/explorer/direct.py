"""The direct path: ablated (and whitened) embeddings recomputed, then exhaustive scoring.

Without whitening the ablated embeddings come from :func:`analysis.ablate` and the scores
are their inner products. With ReAlign (fitted on the queries and on the candidates
separately, as in the paper's reference code) the whitening of side ``s`` is
``W_s = U_s diag(f_s) U_s^T`` with ``(U_s, lambda_s)`` the eigendecomposition of its
covariance and ``f_s = 1 / sqrt((1 - alpha) lambda_s + alpha tr / d + eps)``: alpha only
rescales the spectrum. So, per ablation, the centred rows are rotated once into their
eigenbasis (``P_s = (X_s - mu_s) U_s``), and a new alpha costs one ``[Q, d] x [d, N]``
product::

    <e_q, e_c> = (P_q diag(f_q) U_q^T U_c diag(f_c)) P_c^T / (|P_q f_q| |P_c f_c|)

which equals ``realign(X_q) realign(X_c)^T`` (:func:`saeprobe.whitening.realign`) up to
float32 rounding.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import torch

from saeprobe.whitening import in_memory_stats, realign

from .config import EvalConfig
from .vectors import Vectors

logger = logging.getLogger(__name__)

__all__ = ["DirectScorer", "Spectrum", "fit_spectrum", "realign_scale"]

EPS = 1e-5  # the paper's ReAlign eps (saeprobe.whitening default)


class Spectrum(NamedTuple):
    """Mean and covariance eigendecomposition of one side (float64).

    Attributes
    ----------
    mean : Tensor [d]
    evals : Tensor [d]
        Eigenvalues of ``scatter / (n - 1)``, descending.
    evecs : Tensor [d, d]
        Matching eigenvectors (columns).
    """

    mean: torch.Tensor
    evals: torch.Tensor
    evecs: torch.Tensor


def fit_spectrum(x: torch.Tensor, chunk_size: int = 16384) -> Spectrum:
    """Mean and covariance spectrum of ``x [n, d]`` (the statistics ReAlign fits)."""

    n, d = x.shape
    if n < 2:
        raise ValueError(
            f"ReAlign needs at least 2 embeddings per side to fit a covariance, got {n}"
        )
    if n <= d:
        logger.debug(
            "ReAlign on %d rows of width %d: rank-deficient covariance, shrinkage keeps it invertible",
            n,
            d,
        )
    mean, scatter = in_memory_stats(x, x.device, chunk_size)
    evals, evecs = torch.linalg.eigh(scatter / (n - 1))
    return Spectrum(mean, evals.flip(0), evecs.flip(1))


def realign_scale(spec: Spectrum, alpha: float, eps: float = EPS) -> torch.Tensor:
    """``f = 1 / sqrt((1 - alpha) lambda + alpha tr / d + eps)`` [d] float64."""
    lam = spec.evals
    shrunk = lam * (1.0 - alpha) + alpha * float(lam.sum()) / lam.numel() if alpha > 0 else lam
    return shrunk.clamp_min(0).add(eps).rsqrt()


class _Fit(NamedTuple):
    pq: torch.Tensor  # [Q, d] float32, centred queries in their eigenbasis
    pc: torch.Tensor  # [N, d] float32
    rot: torch.Tensor  # [d, d] float64, U_q^T U_c
    spec_q: Spectrum
    spec_c: Spectrum


class DirectScorer:
    """Scores from recomputed embeddings; ReAlign fits cached per ablation.

    Parameters
    ----------
    vectors : Vectors
    max_cached : int
        Ablated embeddings / whitening fits kept (most recent first).
    """

    #: scores per block (64 MB): each block streams all candidates once, so blocks are large
    block_scores = 1 << 24

    def __init__(self, vectors: Vectors, max_cached: int = 2) -> None:
        self.v = vectors
        self.max_cached = max(1, int(max_cached))
        self._emb: OrderedDict[EvalConfig, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._fits: OrderedDict[tuple, _Fit] = OrderedDict()
        self._spectra: OrderedDict[tuple, Spectrum] = OrderedDict()

    @staticmethod
    def _get(cache: OrderedDict, key):
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        return None

    def _put(self, cache: OrderedDict, key, value, size: int | None = None) -> None:
        cache[key] = value
        while len(cache) > (size or self.max_cached):
            cache.popitem(last=False)

    def embeddings(self, cfg: EvalConfig) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit-norm ``(queries [Q, d], candidates [N, d])``: :func:`analysis.ablate`, then
        :func:`saeprobe.whitening.realign` on each side when ``cfg.whiten == "realign"``."""
        hit = self._get(self._emb, cfg)
        if hit is not None:
            return hit
        base = EvalConfig(cfg.ablate, cfg.op, "none", 0.1, cfg.sides)
        q, c = self._get(self._emb, base) or self.v.ablated(cfg)
        self._put(self._emb, base, (q, c))
        if cfg.whiten == "realign":
            q, c = realign(q, alpha=cfg.alpha), realign(c, alpha=cfg.alpha)
            self._put(self._emb, cfg, (q, c))
        return q, c

    @staticmethod
    def _spectrum_key(side: str, cfg: EvalConfig) -> tuple:
        """A side the setting leaves alone keeps the fit of its raw embeddings (``zero``
        with nothing ablated still acts: it reconstructs)."""
        touched = cfg.sides == "both" or cfg.sides == ("query" if side == "q" else "candidate")
        return (side, cfg.ablate, cfg.op) if touched else (side,)

    def _spectra_of(
        self, cfg: EvalConfig, q: torch.Tensor, c: torch.Tensor
    ) -> tuple[Spectrum, Spectrum]:
        keys = {"q": self._spectrum_key("q", cfg), "c": self._spectrum_key("c", cfg)}
        have = {side: self._get(self._spectra, key) for side, key in keys.items()}
        todo = {side: x for side, x in (("q", q), ("c", c)) if have[side] is None}
        if len(todo) == 2 and (os.cpu_count() or 1) > 1:  # the two eigendecompositions side by side
            with ThreadPoolExecutor(2, thread_name_prefix="explorer-fit") as pool:
                have.update(zip(todo, pool.map(fit_spectrum, todo.values())))
        else:
            have.update({side: fit_spectrum(x) for side, x in todo.items()})
        for side in todo:
            self._put(self._spectra, keys[side], have[side], 4)
        return have["q"], have["c"]

    def _fit(self, cfg: EvalConfig) -> _Fit:
        key = cfg.ablation
        hit = self._get(self._fits, key)
        if hit is not None:
            return hit
        q, c = self.embeddings(EvalConfig(cfg.ablate, cfg.op, "none", 0.1, cfg.sides))
        spec_q, spec_c = self._spectra_of(cfg, q, c)
        pq = (q - spec_q.mean.float()) @ spec_q.evecs.float()
        pc = (c - spec_c.mean.float()) @ spec_c.evecs.float()
        fit = _Fit(pq, pc, spec_q.evecs.T @ spec_c.evecs, spec_q, spec_c)
        self._put(self._fits, key, fit)
        return fit

    def blocks(
        self, cfg: EvalConfig, blocks: Sequence, exact: bool = True
    ) -> Iterator[tuple[object, torch.Tensor]]:
        """Yield ``(rows, scores [b, N])`` per block of query rows (cosines when ``exact``,
        else without the per-query scale); a block is valid until the next one is asked for."""
        if cfg.whiten == "none":
            q, c = self.embeddings(cfg)
            for r in blocks:
                yield r, q[r] @ c.T
            return
        f = self._fit(cfg)
        fq, fc = realign_scale(f.spec_q, cfg.alpha), realign_scale(f.spec_c, cfg.alpha)
        M = (fq[:, None] * f.rot * fc[None, :]).float()
        inv_c = (f.pc * f.pc) @ (fc * fc).float()
        inv_c = inv_c.sqrt_().clamp_min_(1e-12).reciprocal_()
        inv_q = None
        if exact:
            inv_q = ((f.pq * f.pq) @ (fq * fq).float()).sqrt_().clamp_min_(1e-12).reciprocal_()
        y = f.pq @ M  # [Q, d]: queries whitened, then mapped into the candidates' eigenbasis
        pcT = f.pc.T
        buf = None
        for r in blocks:
            yr = y[r]
            if buf is None or buf.shape[0] < yr.shape[0]:
                buf = torch.empty(yr.shape[0], pcT.shape[1])
            s = torch.mm(yr, pcT, out=buf[: yr.shape[0]]).mul_(inv_c)
            yield r, s.mul_(inv_q[r, None]) if exact else s
