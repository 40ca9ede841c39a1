"""One explorer setting (:class:`EvalConfig`), its result (:class:`EvalResult`), and the
strict validation of user input they share with the HTTP API.

Feature ids must be integers (``True``, ``1.5`` and ``"3"`` are refused), alpha a finite
number in ``[0, 1]``, and the names of the operator, whitening and sides one of
:data:`OPS`, :data:`WHITEN`, :data:`SIDES`; every refusal is a one-line ``ValueError``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = [
    "OPS",
    "SIDES",
    "WHITEN",
    "EvalConfig",
    "EvalResult",
    "check_index",
    "check_int",
    "check_number",
    "feature_ids",
    "json_safe",
]

OPS = ("subtract", "zero", "project")
WHITEN = ("none", "realign")
SIDES = ("both", "query", "candidate")


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def check_int(v: Any, what: str, lo: int | None = None, hi: int | None = None) -> int:
    """``v`` as an int in ``[lo, hi]`` (booleans, floats and strings are refused)."""
    if not _is_int(v):
        raise ValueError(f"{what} must be an integer, got {v!r} ({type(v).__name__})")
    v = int(v)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        span = f"[{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
        raise ValueError(f"{what} must lie in {span}, got {v}")
    return v


def check_index(v: Any, n: int, what: str) -> int:
    """A row index in ``[0, n)``."""
    if not _is_int(v):
        raise ValueError(f"{what} must be an integer, got {v!r} ({type(v).__name__})")
    v = int(v)
    if not 0 <= v < n:
        raise ValueError(f"{what} {v} is outside [0, {n})")
    return v


def check_number(v: Any, what: str, lo: float, hi: float) -> float:
    """A finite real number in ``[lo, hi]`` (booleans and strings are refused)."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise ValueError(f"{what} must be a number in [{lo}, {hi}], got {v!r}")
    v = float(v)
    if not math.isfinite(v) or not lo <= v <= hi:
        raise ValueError(f"{what} must lie in [{lo}, {hi}], got {v}")
    return v


def feature_ids(ablate: Any, c: int | None = None) -> tuple[int, ...]:
    """Sorted unique feature ids from a list / tensor / array of integers.

    Raises
    ------
    ValueError
        Not a sequence of integers, or an id outside ``[0, c)``.
    """
    if isinstance(ablate, torch.Tensor):
        ablate = ablate.numpy(force=True)
    if isinstance(ablate, np.ndarray):
        if ablate.dtype.kind not in "iu":
            raise ValueError(f"ablate must hold integer feature ids, got a {ablate.dtype} array")
        ablate = ablate.reshape(-1).tolist()
    if isinstance(ablate, (str, bytes, dict)) or not isinstance(ablate, Iterable):
        raise ValueError(
            f"ablate must be a list of integer feature ids, got {type(ablate).__name__}"
        )
    for v in ablate:
        if not _is_int(v):
            raise ValueError(
                f"ablate must be a list of integer feature ids, got {v!r} ({type(v).__name__})"
            )
    ids = sorted({int(i) for i in ablate})
    if c is not None and ids and (ids[0] < 0 or ids[-1] >= c):
        raise ValueError(
            f"feature ids must lie in [0, {c}) (the SAE width), got {ids[0]}..{ids[-1]}"
        )
    return tuple(ids)


def _choice(v: Any, options: Sequence[str], what: str) -> str:
    if not isinstance(v, str) or v not in options:
        raise ValueError(f"unknown {what} {v!r}; use one of {', '.join(options)}")
    return v


@dataclass(frozen=True)
class EvalConfig:
    """One explorer setting (hashable; the cache key).

    Attributes
    ----------
    ablate : tuple[int, ...]
        Concepts to remove (sorted, unique).
    op : str
        ``subtract``, ``zero`` or ``project`` (see :func:`analysis.ablate`).
    whiten : str
        ``none`` or ``realign``.
    alpha : float
        ReAlign shrinkage (0.1 without whitening, where it is unused).
    sides : str
        Ablate ``both`` sides, only the ``query`` side or only the ``candidate`` side.
    """

    ablate: tuple[int, ...] = ()
    op: str = "subtract"
    whiten: str = "none"
    alpha: float = 0.1
    sides: str = "both"

    @classmethod
    def make(
        cls,
        ablate: Sequence[int] | torch.Tensor = (),
        op: str = "subtract",
        whiten: str | bool | None = "none",
        alpha: float = 0.1,
        sides: str = "both",
        c: int | None = None,
    ) -> EvalConfig:
        """Validated config (one-line ``ValueError`` for bad input)."""
        op = _choice(op, OPS, "ablation op")
        if whiten is None or whiten is False:
            whiten = "none"
        elif whiten is True:
            whiten = "realign"
        whiten = _choice(whiten, WHITEN, "whitening")
        sides = _choice(sides, SIDES, "sides")
        alpha = check_number(alpha, "alpha", 0.0, 1.0)
        ids = feature_ids(ablate, c)
        if whiten == "none":
            alpha = 0.1
        return cls(ids, op, whiten, alpha, sides)

    @property
    def ablation(self) -> tuple[tuple[int, ...], str, str]:
        """The part that decides the ablated embeddings (whitening aside)."""
        return (self.ablate, self.op, self.sides)


def json_safe(obj: Any) -> Any:
    """Replace NaN / inf by ``None`` and numpy / torch scalars by Python ones, recursively."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (np.generic, torch.Tensor)) and getattr(obj, "ndim", 0) == 0:
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


@dataclass
class EvalResult:
    """Metrics of one setting next to the baseline.

    Attributes
    ----------
    config : EvalConfig
    metrics, baseline : dict[str, float]
        ``R@1``, ``R@5``, ``R@10`` (those ``<= N``), ``MRR`` (within the top 10, from
        :func:`saeprobe.ranking.ranking_metrics`), ``median_rank`` (full ranking).
    ranks : ndarray [Q]
        1-based rank of each query's best-ranked relevant candidate (0: none relevant).
    top : Tensor [Q, K]
        Ranked candidate rows, best first.
    seconds : float
        Compute time (0 when served from the cache).
    path : str
        ``fast`` (Gram update) or ``direct`` (embeddings recomputed).
    """

    config: EvalConfig
    metrics: dict[str, float]
    baseline: dict[str, float]
    ranks: np.ndarray
    top: torch.Tensor
    seconds: float
    path: str
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-friendly summary (no per-query arrays)."""
        return json_safe(
            {
                "config": asdict(self.config),
                "metrics": self.metrics,
                "baseline": self.baseline,
                "delta": {
                    k: self.metrics[k] - self.baseline[k]
                    for k in self.metrics
                    if k in self.baseline
                },
                "n_ablated": len(self.config.ablate),
                "seconds": self.seconds,
                "path": self.path,
            }
        )
