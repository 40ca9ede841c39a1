"""What to do with batches holding NaN / Inf activations: skip a few, stop on many."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from saeprobe.errors import SaeprobeError

logger = logging.getLogger(__name__)

__all__ = ["BadBatchPolicy", "BadDataError"]


class BadDataError(SaeprobeError, RuntimeError):
    """Too many batches with NaN / Inf activations."""


@dataclass
class BadBatchPolicy:
    """Counts bad batches and raises :class:`BadDataError` past the limits.

    Attributes
    ----------
    max_consecutive : int
        More consecutive bad batches than this stop the run.
    max_fraction : float
        Past ``max_consecutive`` bad batches in total, a bad share above this stops the run.
    total, consecutive, seen : int
        Bad batches so far, the current run of them, and all batches seen.
    """

    max_consecutive: int = 10
    max_fraction: float = 0.01
    total: int = 0
    consecutive: int = 0
    seen: int = 0

    def good(self) -> None:
        self.consecutive = 0

    def bad(self, where: str) -> None:
        """Record a skipped batch (``where`` names it in the log)."""
        self.total += 1
        self.consecutive += 1
        logger.warning("skipping %s: NaN/Inf in the activations (%d bad so far)", where, self.total)
        if self.consecutive > self.max_consecutive:
            raise BadDataError(
                f"{self.consecutive} consecutive batches had NaN/Inf activations (limit "
                f"{self.max_consecutive}); check the capture dtype (fp16 overflow?) or the store"
            )
        frac = self.total / max(self.seen, 1)
        if self.total > self.max_consecutive and frac > self.max_fraction:
            raise BadDataError(
                f"{self.total} of {self.seen} batches ({frac:.1%}) had NaN/Inf activations "
                f"(limit {self.max_fraction:.1%}); check the capture or the store"
            )

    def state(self) -> list[int]:
        return [self.total, self.consecutive, self.seen]

    def load(self, state: list[int]) -> None:
        self.total, self.consecutive, self.seen = (int(v) for v in state)
