"""Test-time whitening of embeddings: ReAlign and related linear maps.

Every method is an affine map followed by a row re-normalisation,
``e = normalize(x @ W + b)`` with ``b = -mu @ W``, so fitting reduces to statistics
(:mod:`.covariance`: mean and covariance, float32 products accumulated in float64) plus a
method from the registry (:mod:`.methods`), and applying is one matrix product per chunk
(:class:`Whitener`). Imports only saeprobe's primitives (``atomic``).

Methods: ``realign`` (the paper's: ZCA of ``(1 - alpha) Sigma + alpha tr(Sigma)/D I``,
alpha = 0.1, eps = 1e-5), ``zca``, ``pca``, ``ledoit_wolf``, ``oas``, ``abtt``
(all-but-the-top), ``distractor`` (project out given directions), ``none``; register more
with :func:`register_whitening`. Statistics modes of :func:`whiten_pair`: ``separate`` (the
authors' reference code), ``candidates``, ``support``, ``joint``.
"""

from __future__ import annotations

from .covariance import CovarianceAccumulator, gram, in_memory_stats
from .functional import STATS_MODES, realign, whiten_pair
from .methods import (
    WHITENING_METHODS,
    FitStats,
    WhiteningMethod,
    available_methods,
    canonical_method,
    register_whitening,
)
from .whitener import Whitener, WhitenerConfig

#: the built-in method names (the live list: :func:`available_methods`)
METHODS = available_methods()

__all__ = [
    "METHODS",
    "STATS_MODES",
    "WHITENING_METHODS",
    "CovarianceAccumulator",
    "FitStats",
    "Whitener",
    "WhitenerConfig",
    "WhiteningMethod",
    "available_methods",
    "canonical_method",
    "gram",
    "in_memory_stats",
    "realign",
    "register_whitening",
    "whiten_pair",
]
