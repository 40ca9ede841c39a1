"""``create_sae``: a freshly initialised SAE of a registered architecture."""

from __future__ import annotations

from typing import Any

from .base import SAE
from .config import SAEConfig
from .registry import SAE_REGISTRY

__all__ = ["create_sae"]


def create_sae(cfg: SAEConfig | None = None, **kwargs: Any) -> SAE:
    """Build a randomly initialised SAE from a config (or ``SAEConfig`` keyword arguments)."""
    if cfg is None:
        cfg = SAEConfig(**kwargs)
    elif kwargs:
        raise ValueError("pass either cfg or SAEConfig keyword arguments, not both")
    if cfg.arch not in SAE_REGISTRY:
        raise ValueError(f"unknown SAE arch {cfg.arch!r}; registered: {', '.join(SAE_REGISTRY)}")
    return SAE_REGISTRY[cfg.arch](cfg)
