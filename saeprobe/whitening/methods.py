"""The whitening methods, one registry: name -> :class:`WhiteningMethod`.

Every method turns fitted statistics (:class:`FitStats`) into a float64 matrix ``W``
``[D, D']``; the :class:`~saeprobe.whitening.Whitener` folds the centring into a bias and
applies ``normalize(x @ W + b)``. Add a method with::

    @register_whitening("mine", aliases=("my-method",))
    class Mine(WhiteningMethod):
        def weight(self, stats, info):
            ...  # float64 [D, D']

Built-in: ``realign`` (the paper's), ``zca``, ``pca``, ``ledoit_wolf``, ``oas``, ``abtt``,
``distractor``, ``none``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

logger = logging.getLogger(__name__)

__all__ = [
    "WHITENING_METHODS",
    "FitStats",
    "WhiteningMethod",
    "available_methods",
    "canonical_method",
    "get_method",
    "register_whitening",
]

WHITENING_METHODS: dict[str, type[WhiteningMethod]] = {}
_ALIASES: dict[str, str] = {}


def register_whitening(
    name: str, aliases: tuple[str, ...] = ()
) -> Callable[[type[WhiteningMethod]], type[WhiteningMethod]]:
    """Class decorator registering a :class:`WhiteningMethod` under ``name`` (and aliases)."""

    def deco(cls: type[WhiteningMethod]) -> type[WhiteningMethod]:
        cls.name = name
        WHITENING_METHODS[name] = cls
        for alias in aliases:
            _ALIASES[alias] = name
        return cls

    return deco


def available_methods() -> tuple[str, ...]:
    """Registered method names, in registration order."""
    return tuple(WHITENING_METHODS)


def canonical_method(name: str) -> str:
    """Normalise a method name (``"lw"`` -> ``"ledoit_wolf"``, ...)."""
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in WHITENING_METHODS:
        raise ValueError(
            f"unknown whitening method {name!r}; choose one of {', '.join(WHITENING_METHODS)}"
        )
    return key


def get_method(name: str) -> WhiteningMethod:
    """An instance of the registered method ``name`` (aliases accepted)."""
    return WHITENING_METHODS[canonical_method(name)]()


@dataclass
class FitStats:
    """What a method may use to build its matrix.

    Attributes
    ----------
    mean : DoubleTensor [D]
    scatter : DoubleTensor [D, D] | None
        Centred scatter ``sum (x - mu)(x - mu)^T`` (None for methods without covariance).
    n : int
        Samples fitted.
    config : WhitenerConfig
    sum_r2 : float | None
        ``sum ||x - mu||^4`` (methods with ``fourth_moments``).
    directions : Tensor [m, D] | None
        ``distractor``: the directions removed.
    precise : bool
        Eigendecompose in float64 (float32 inputs); False for fp16 inputs on CUDA.
    """

    mean: torch.Tensor
    scatter: torch.Tensor | None
    n: int
    config: Any
    sum_r2: float | None = None
    directions: torch.Tensor | None = None
    precise: bool = True

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])


class WhiteningMethod:
    """Base class: one whitening method.

    Attributes
    ----------
    name : str
        Set by :func:`register_whitening`.
    needs_covariance : bool
        The fit accumulates a covariance (else only the mean, when centring).
    centers : bool
        Default of :attr:`WhitenerConfig.center`.
    fourth_moments : bool
        The fit also accumulates ``sum ||x - mu||^4``.
    """

    name = "?"
    needs_covariance = True
    centers = True
    fourth_moments = False

    def weight(self, stats: FitStats, info: dict[str, Any]) -> torch.Tensor:
        """The float64 matrix ``W [D, D']``; may record diagnostics in ``info``."""
        raise NotImplementedError


# ------------------------------------------------------------------ spectral methods
class SpectralMethod(WhiteningMethod):
    """Methods built from the eigendecomposition of the (shrunk) covariance.

    Attributes
    ----------
    inverts : bool
        ``W`` scales by ``1/sqrt(eigenvalue)`` (so a rank-deficient covariance matters).
    shrinks : bool
        The covariance is shrunk towards ``tr(Sigma)/D I`` first.
    """

    inverts = True
    shrinks = False

    def shrinkage(self, stats: FitStats) -> float:
        """Intensity ``a`` of ``(1 - a) Sigma + a tr(Sigma)/D I``."""
        return 0.0

    def from_spectrum(
        self, evals: torch.Tensor, evecs: torch.Tensor, stats: FitStats, info: dict
    ) -> torch.Tensor:
        raise NotImplementedError

    def weight(self, stats: FitStats, info: dict[str, Any]) -> torch.Tensor:
        n, d = stats.n, stats.dim
        if n < 2:
            raise ValueError(
                f"{self.name} whitening needs at least 2 embeddings to estimate a covariance, got {n}"
            )
        if n <= d:
            msg = (
                f"only {n} samples for {d} dimensions: the covariance is rank-deficient "
                f"(rank <= {n - 1})"
            )
            if self.shrinks:
                msg += "; shrinkage keeps it invertible"
            elif self.inverts:
                msg += "; plain whitening amplifies the null space by 1/sqrt(eps): use realign, ledoit_wolf or oas"
            logger.warning(msg)
            info["rank_deficient"] = True
        sigma = stats.scatter / (n - 1)
        a = float(self.shrinkage(stats))
        info["alpha"] = a
        if a > 0:
            tr = torch.trace(sigma)
            sigma = sigma * (1 - a)
            sigma.diagonal().add_(a * tr / d)
        eig_dtype = torch.float64 if stats.precise else torch.float32
        evals, evecs = torch.linalg.eigh(sigma.to(eig_dtype))  # ascending
        evals, evecs = evals.double().flip(0), evecs.double().flip(1)
        info["_eigenvalues"] = evals
        return self.from_spectrum(evals, evecs, stats, info)


def _inv_sqrt(evals: torch.Tensor, eps: float) -> torch.Tensor:
    return evals.clamp_min(0).add(eps).rsqrt()


@register_whitening("zca")
class ZCA(SpectralMethod):
    """Plain ZCA whitening ``W = U diag(1/sqrt(s + eps)) U^T``."""

    def from_spectrum(self, evals, evecs, stats, info):
        return (evecs * _inv_sqrt(evals, stats.config.eps)) @ evecs.T


@register_whitening("realign", aliases=("shrinkage",))
class ReAlign(ZCA):
    """The paper's ReAlign: ZCA of ``(1 - alpha) Sigma + alpha tr(Sigma)/D I``."""

    shrinks = True

    def shrinkage(self, stats):
        return stats.config.alpha


@register_whitening("pca")
class PCA(SpectralMethod):
    """PCA whitening ``W = U diag(1/sqrt(s + eps))`` (top ``n_components`` columns)."""

    def from_spectrum(self, evals, evecs, stats, info):
        k = stats.config.n_components
        k = stats.dim if k is None else k
        return evecs[:, :k] * _inv_sqrt(evals, stats.config.eps)[:k]


def _mle_covariance(stats) -> tuple[int, torch.Tensor, int, float]:
    """``(n, S = scatter / n, D, tr(S) / D)``: what both shrinkage formulas start from."""
    s = stats.scatter / stats.n
    d = s.shape[0]
    return stats.n, s, d, float(torch.trace(s)) / d


@register_whitening("ledoit_wolf", aliases=("lw", "ledoit-wolf", "ledoitwolf"))
class LedoitWolf(ZCA):
    """ZCA of the Ledoit-Wolf (2004) shrinkage covariance (intensity from the data)."""

    fourth_moments = True
    shrinks = True

    def shrinkage(self, stats):
        """scikit-learn's formula for the MLE covariance ``S = scatter / n``."""
        n, s, d, mu = _mle_covariance(stats)
        fro2 = float((s * s).sum())
        delta = (fro2 - 2 * mu * float(torch.trace(s)) + d * mu * mu) / d  # ||S - mu I||^2 / d
        beta = min((stats.sum_r2 / n - fro2) / (d * n), delta)
        return 0.0 if delta <= 0 else float(max(beta, 0.0) / delta)


@register_whitening("oas")
class OAS(ZCA):
    """ZCA with the Oracle Approximating Shrinkage intensity (Chen et al. 2010)."""

    shrinks = True

    def shrinkage(self, stats):
        n, s, d, mu = _mle_covariance(stats)
        alpha = float((s * s).mean())
        num = alpha + mu * mu
        den = (n + 1) * (alpha - mu * mu / d)
        return 1.0 if den == 0 else float(min(num / den, 1.0))


@register_whitening("abtt", aliases=("all-but-the-top", "all_but_the_top"))
class AllButTheTop(SpectralMethod):
    """Mu & Viswanath (2018): centre, project out the top principal directions."""

    inverts = False

    def from_spectrum(self, evals, evecs, stats, info):
        d = stats.dim
        k = stats.config.n_components
        k = min(max(1, d // 100) if k is None else k, d)
        info["n_removed"] = int(k)
        top = evecs[:, :k]
        return torch.eye(d, dtype=torch.float64, device=top.device) - top @ top.T


# ------------------------------------------------------------------ direction / identity
@register_whitening("distractor")
class DistractorRemoval(WhiteningMethod):
    """Project out the span of given directions (e.g. SAE decoder rows of distractors)."""

    needs_covariance = False
    centers = False

    def weight(self, stats, info):
        d = stats.dim
        if stats.directions is None:
            raise ValueError(
                "method='distractor' needs directions=[m, D] (e.g. SAE decoder rows of the "
                "distractor concepts)"
            )
        dirs = stats.directions.to(stats.mean.device, torch.float64)
        if dirs.ndim != 2 or dirs.shape[1] != d:
            raise ValueError(
                f"distractor directions must be [m, {d}], got shape {tuple(dirs.shape)}"
            )
        u, s, _ = torch.linalg.svd(dirs.T, full_matrices=False)
        keep = s > s.max() * 1e-6 if s.numel() else s.bool()
        q = u[:, keep]
        info["n_removed"] = int(q.shape[1])
        return torch.eye(d, device=q.device, dtype=torch.float64) - q @ q.T


@register_whitening("none", aliases=("base", "identity"))
class Identity(WhiteningMethod):
    """No whitening (rows re-normalised)."""

    needs_covariance = False
    centers = False

    def weight(self, stats, info):
        return torch.eye(stats.dim, dtype=torch.float64, device=stats.mean.device)
