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

from .registry import ADAPTERS, import_builtins

logger = logging.getLogger(__name__)


class BridgeUnsupportedError(ValueError):
    """TransformerLens has no bridge for a model's architecture."""


def bridge_architecture(adapter: Any) -> str:
    """The architecture name TransformerLens looks up: the loaded model's class name."""
    return type(adapter.model).__name__


def supported_bridge_architectures() -> list[str]:
    """Architecture names that TransformerLens can bridge (imports TransformerLens)."""
    from transformer_lens.factories import architecture_adapter_factory as factory

    factory.ArchitectureAdapterFactory.discover_entry_points()
    # runtime registrations live on the factory; the module constant holds the built-ins
    adapters = getattr(factory.ArchitectureAdapterFactory, "_adapters", None)
    return sorted(adapters if adapters is not None else factory.SUPPORTED_ARCHITECTURES)


def _use_native_norms(bridge: Any) -> int:
    """Make every bridged norm return its HF module's own output.

    TransformerLens re-implements LayerNorm / RMSNorm from the bridge config (the text
    decoder's): a vision tower's norms then get the decoder's ``eps`` (CLIP in LLaVA:
    1e-6 instead of 1e-5) or even RMS semantics (SigLIP in Gemma 3: no mean
    subtraction), and image-token activations drift from HF's. The native path fires
    the same hooks (``hook_scale``, ``hook_normalized``) and returns HF's output.
    Returns how many norms were switched.
    """
    from transformer_lens.model_bridge.generalized_components.normalization import (
        NormalizationBridge,
    )

    switched = 0
    for module in bridge.modules():
        if isinstance(module, NormalizationBridge) and not module.use_native_layernorm_autograd:
            module.use_native_layernorm_autograd = True
            switched += 1
    logger.debug("%d bridged norms run their HF module", switched)
    return switched


def make_bridge(adapter: Any, *, tokenizer: Any = None) -> Any:
    """Wrap ``adapter.model`` in a TransformerLens ``TransformerBridge``.

    The bridge is built around the already loaded model (no download, no copy, no
    ``boot_transformers``). TransformerLens wraps the model *in place*: its decoder
    layers become bridge blocks and attention switches to the eager implementation,
    so the adapter and the bridge then run the same modules and give the same
    activations (which may differ in the last bits from an SDPA run before bridging).
    A second call on the same adapter returns the same bridge.
    Bridged norms are set to run their HF module (TransformerLens' own re-implementation
    uses the decoder's eps and norm type for vision-tower norms too), so bridged
    activations equal HF's eager ones exactly.

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
    cached = getattr(adapter, "_tl_bridge", None)
    if cached is not None:  # the model is wrapped in place: one bridge per adapter
        return cached
    if getattr(adapter, "is_dual_encoder", False):
        raise BridgeUnsupportedError(
            f"{type(adapter).__name__} is a dual encoder; TransformerLens bridges decoder "
            "models only. Use saeprobe's own hook points (resid_post.L, final_norm)."
        )
    arch = bridge_architecture(adapter)
    supported = supported_bridge_architectures()
    if arch not in supported:
        import_builtins()
        both = sorted(set(ADAPTERS) & set(supported))
        raise BridgeUnsupportedError(
            f"TransformerLens has no bridge for {arch}; capture with the adapter's own hook "
            f"points instead (resid_pre.0, resid_post.L, final_norm: no bridge=...). Of "
            f"saeprobe's architectures it bridges {', '.join(both) or 'none'}."
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
            f"TransformerLens' bridge for {arch} needs a library that is missing ({exc}); "
            "install it, or capture with the adapter's own hook points (no bridge=...)."
        ) from exc
    _use_native_norms(bridge)
    adapter._tl_bridge = bridge
    logger.info("built a TransformerLens bridge for %s (%d blocks)", arch, int(bridge.cfg.n_layers))
    return bridge
