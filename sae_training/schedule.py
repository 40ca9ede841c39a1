"""The learning-rate schedule: linear warm-up, constant, then a decay to 0."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

__all__ = ["LRSchedule"]


@dataclass
class LRSchedule:
    """Linear warm-up over ``warmup`` steps, constant, then ``decay`` to 0 over the last
    ``decay_steps`` of ``total`` steps (no decay when ``total`` is unknown)."""

    base_lr: float
    warmup: int = 0
    decay_steps: int = 0
    total: int | None = None
    shape: str = "linear"

    def __call__(self, step: int) -> float:
        lr = self.base_lr
        if self.warmup > 0 and step < self.warmup:
            lr *= (step + 1) / self.warmup
        if self.total and self.decay_steps > 0:
            start = self.total - self.decay_steps
            if step >= start:
                frac = max(0.0, (self.total - step) / self.decay_steps)
                lr *= frac if self.shape == "linear" else 0.5 * (1 - math.cos(math.pi * frac))
        return lr

    def state_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
