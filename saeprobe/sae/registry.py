"""Registry of SAE architectures: ``arch`` name -> ``SAE`` subclass (fill it with
:func:`register_sae`; build a fresh SAE with :func:`saeprobe.sae.create_sae`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import SAE

SAE_REGISTRY: dict[str, type[SAE]] = {}


def register_sae(name: str) -> Callable[[type[SAE]], type[SAE]]:
    """Class decorator registering an ``SAE`` subclass under ``name``."""

    def deco(cls: type[SAE]) -> type[SAE]:
        SAE_REGISTRY[name] = cls
        return cls

    return deco


def available_archs() -> list[str]:
    return sorted(SAE_REGISTRY)
