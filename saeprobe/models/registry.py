"""Registry of model adapters keyed by HF architecture name."""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any

from .base import ModelAdapter

logger = logging.getLogger(__name__)

#: architecture name -> adapter class
ADAPTERS: dict[str, type[ModelAdapter]] = {}

#: modules that define built-in adapters (imported lazily on first lookup)
BUILTIN_MODULES: list[str] = [
    "qwen2_vl",
    "qwen2_5_vl",
    "qwen3_vl",
    "llava",
    "paligemma",
    "chameleon",
    "idefics3",
    "gemma3",
    "clip",
    "siglip",
    "causal_lm",
]


class UnknownArchitectureError(ValueError):
    """No adapter is registered for a model's architecture."""


def register_adapter(cls: type[ModelAdapter]) -> type[ModelAdapter]:
    """Class decorator: register an adapter under each of its ``architectures``."""
    if not cls.architectures:
        raise ValueError(f"{cls.__name__} declares no architectures")
    for arch in cls.architectures:
        ADAPTERS[arch] = cls
    return cls


_imported = False


def import_builtins() -> None:
    """Import every built-in adapter module once; one that fails to import is an error (a
    renamed or broken file must not silently drop a family)."""
    global _imported
    if _imported:
        return
    for mod in BUILTIN_MODULES:
        importlib.import_module(f"saeprobe.models.{mod}")
    _imported = True


def adapter_class(architecture: str) -> type[ModelAdapter]:
    """Adapter class for an HF architecture name (e.g. ``Qwen2VLForConditionalGeneration``)."""
    import_builtins()
    try:
        return ADAPTERS[architecture]
    except KeyError:
        raise UnknownArchitectureError(
            f"no saeprobe adapter for architecture {architecture!r}; known: "
            f"{', '.join(sorted(ADAPTERS))}. Add one (one file + a registry line, see "
            "docs/adding-a-model.md)."
        ) from None


def read_config(name_or_path: str, **kwargs: Any) -> Any:
    """The HF config of a hub id or local folder (no weights are read); ``kwargs`` go to
    ``AutoConfig.from_pretrained`` (e.g. ``gguf_file``)."""
    from transformers import AutoConfig

    _check_local_path(name_or_path)
    try:
        return AutoConfig.from_pretrained(name_or_path, **kwargs)
    except (OSError, ValueError) as exc:
        raise OSError(
            f"cannot read the config of {name_or_path!r}: {exc}. Pass a local folder with a "
            "config.json or a Hugging Face hub id that is cached or reachable."
        ) from exc


def layer_count(config: Any, tower: str | None = None) -> int | None:
    """Decoder (or tower) layers of an HF config, when it says (None when it does not)."""
    sub = getattr(config, "vision_config", None) if tower == "vision" else None
    if sub is None:
        sub = config.get_text_config() if hasattr(config, "get_text_config") else config
    n = getattr(sub, "num_hidden_layers", None)
    return int(n) if isinstance(n, int) else None


def architecture_of(name_or_path: str, **kwargs: Any) -> str:
    """Read ``config.architectures[0]`` of a hub id or local folder.

    ``kwargs`` go to ``AutoConfig.from_pretrained`` (e.g. ``gguf_file``). A config without
    ``architectures`` (GGUF files have none) falls back to the causal-LM class of its
    ``model_type``.
    """
    config = read_config(name_or_path, **kwargs)
    archs = getattr(config, "architectures", None) or []
    if archs:
        return archs[0]
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    fallback = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(getattr(config, "model_type", ""))
    if fallback:
        return fallback
    raise UnknownArchitectureError(
        f"{name_or_path!r} has no 'architectures' entry in its config.json; set it to the "
        "model class name (e.g. Qwen2VLForConditionalGeneration)."
    )


def _check_local_path(name_or_path: str) -> None:
    """A name that can only be a path (absolute, ``./``, ``~``, or more than one ``/``) must
    exist: say so instead of the hub's "Repo id must be in the form ..." error."""
    text = str(name_or_path)
    looks_local = text.startswith(("/", ".", "~")) or text.count("/") > 1 or "\\" in text
    if looks_local and not Path(text).expanduser().exists():
        raise FileNotFoundError(
            f"model folder {text} does not exist; pass an existing folder (with config.json) "
            "or a hub id such as Qwen/Qwen2-VL-2B-Instruct"
        )


def load_model(name_or_path: str, *, dtype=None, device=None, **kwargs: Any) -> ModelAdapter:
    """Load any supported model (hub id or local folder) wrapped in its adapter.

    Extra ``kwargs`` go to the adapter's loader (e.g. ``gguf_file="model.gguf"``).
    """
    config_kwargs = {
        k: kwargs[k] for k in ("gguf_file", "revision", "trust_remote_code") if k in kwargs
    }
    cls = adapter_class(architecture_of(name_or_path, **config_kwargs))
    logger.info("loading %s with %s", name_or_path, cls.__name__)
    return cls.from_pretrained(name_or_path, dtype=dtype, device=device, **kwargs)
