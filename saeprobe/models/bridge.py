"""TransformerLens ``TransformerBridge`` around an adapter's model.

A bridge exposes TransformerLens hook names (``blocks.{i}.hook_out``,
``blocks.{i}.attn.hook_pattern``, ``ln_final.hook_out``, ...) on the loaded HF
model. saeprobe's capture and hooks accept it directly::

    bridge = make_bridge(adapter)
    capture(adapter, items, ["blocks.3.hook_out", "final_norm"], bridge=bridge)

``resid_pre.0``, ``resid_post.L`` and ``final_norm`` map to ``blocks.0.hook_in``,
``blocks.L.hook_out`` and ``ln_final.hook_out`` (see :mod:`saeprobe.hooks`).

TransformerLens (an optional dependency) is imported only when a bridge is built.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

logger = logging.getLogger(__name__)


class BridgeUnsupportedError(ValueError):
    """TransformerLens has no bridge for a model's architecture."""


def bridge_architecture(adapter: Any) -> str:
    """The architecture name TransformerLens looks up: the loaded model's class name."""
    return type(adapter.model).__name__


def supported_bridge_architectures() -> list[str]:
    """Architecture names that TransformerLens can bridge (imports TransformerLens)."""
    from transformer_lens.factories.architecture_adapter_factory import ArchitectureAdapterFactory

    ArchitectureAdapterFactory.discover_entry_points()
    return sorted(ArchitectureAdapterFactory._adapters)


def make_bridge(adapter: Any, *, tokenizer: Any = None) -> Any:
    """Wrap ``adapter.model`` in a TransformerLens ``TransformerBridge``.

    The bridge is built around the already loaded model (no download, no copy, no
    ``boot_transformers``). TransformerLens wraps the model *in place*: its decoder
    layers become bridge blocks and attention switches to the eager implementation,
    so the adapter and the bridge then run the same modules and give the same
    activations (which may differ in the last bits from an SDPA run before bridging).

    Parameters
    ----------
    adapter : ModelAdapter
        A loaded MLLM or text LLM adapter (not a dual encoder).
    tokenizer : tokenizer | None
        Handed to the bridge for string inputs (TransformerLens may set its pad token
        and padding side); saeprobe feeds token ids and needs none.

    Returns
    -------
    transformer_lens.model_bridge.TransformerBridge

    Raises
    ------
    BridgeUnsupportedError
        TransformerLens has no bridge for the architecture, or its bridge needs a
        library that is not installed.
    """
    if getattr(adapter, "is_dual_encoder", False):
        raise BridgeUnsupportedError(
            f"{type(adapter).__name__} is a dual encoder; TransformerLens bridges decoder "
            "models only. Use saeprobe's own hook points (resid_post.L, final_norm)."
        )
    arch = bridge_architecture(adapter)
    supported = supported_bridge_architectures()
    if arch not in supported:
        mllms = [a for a in supported if "ConditionalGeneration" in a][:12]
        raise BridgeUnsupportedError(
            f"TransformerLens has no bridge for {arch}; capture with the adapter's own hook "
            f"points instead (resid_pre.0, resid_post.L, final_norm: no bridge=...). Bridged "
            f"multimodal architectures include {', '.join(mllms)}."
        )
    from transformer_lens.model_bridge.sources import build_bridge_from_module

    model = adapter.model
    try:
        with warnings.catch_warnings():
            # vision-tower hook aliases that do not resolve are not saeprobe's concern
            warnings.filterwarnings("ignore", message="Hook alias", category=UserWarning)
            bridge = build_bridge_from_module(
                model, arch, hf_config=model.config, tokenizer=tokenizer
            )
    except ImportError as exc:
        raise BridgeUnsupportedError(
            f"TransformerLens' bridge for {arch} cannot be built here: {exc} saeprobe does not "
            "need it; capture with the adapter's own hook points instead (no bridge=...)."
        ) from exc
    logger.info("built a TransformerLens bridge for %s (%d blocks)", arch, int(bridge.cfg.n_layers))
    return bridge
