"""What a training run returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["TrainResult"]


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns.

    Attributes
    ----------
    sae : nn.Module
        The trained SAE (on the training device).
    metrics : dict
        Final reconstruction metrics over the last logging window (mse, fvu, r2, l0,
        dead, tokens_per_s, ...).
    step, tokens : int
        Optimizer steps taken and tokens consumed (all ranks).
    bad_batches : int
        Batches skipped for NaN / Inf.
    out_dir : Path | None
    history : list[dict]
        Every logged record.
    """

    sae: Any
    metrics: dict[str, Any]
    step: int
    tokens: int
    bad_batches: int = 0
    out_dir: Path | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
