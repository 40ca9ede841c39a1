"""Registry of SAE architectures: ``arch`` name -> ``SAE`` subclass."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .base import SAE
    from .config import SAEConfig

SAE_REGISTRY: dict[str, type[SAE]] = {}


def register_sae(name: str) -> Callable[[type[SAE]], type[SAE]]:
    """Class decorator registering an ``SAE`` subclass under ``name``."""

    def deco(cls: type[SAE]) -> type[SAE]:
        SAE_REGISTRY[name] = cls
        return cls

    return deco


def available_archs() -> list[str]:
    return sorted(SAE_REGISTRY)


def create_sae(cfg: SAEConfig | None = None, **kwargs: Any) -> SAE:
    """Build a randomly initialised SAE from a config (or ``SAEConfig`` keyword arguments)."""
    from .config import SAEConfig

    if cfg is None:
        cfg = SAEConfig(**kwargs)
    elif kwargs:
        raise ValueError("pass either cfg or SAEConfig keyword arguments, not both")
    if cfg.arch not in SAE_REGISTRY:
        raise ValueError(f"unknown SAE arch {cfg.arch!r}; registered: {', '.join(SAE_REGISTRY)}")
    return SAE_REGISTRY[cfg.arch](cfg)
