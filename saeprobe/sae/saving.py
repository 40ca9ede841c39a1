"""Writing SAEs in the sae-lens layout (``cfg.json`` + ``sae_weights.safetensors``) with a
hub-ready model card (``README.md``, :mod:`.card`).

Architecture-specific parts come from the SAE class itself (``sae_lens_architecture``,
``sae_lens_extra_state``, ``sae_lens_omit``), so a registered architecture saves without edits
here.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..atomic import atomic_save_safetensors, atomic_write_text
from .card import write_card
from .files import CFG_FILENAME, WEIGHTS_FILENAME

if TYPE_CHECKING:
    from .base import SAE

logger = logging.getLogger(__name__)

__all__ = ["CFG_FILENAME", "WEIGHTS_FILENAME", "sae_lens_cfg", "sae_lens_state_dict", "save_sae"]

SAE_LENS_VERSION = "6.54.12"


def sae_lens_cfg(sae: SAE) -> dict[str, Any]:
    """The sae-lens ``cfg.json`` dict of ``sae``."""
    cfg = sae.cfg
    arch = sae.sae_lens_architecture or cfg.arch
    meta = {"sae_lens_version": SAE_LENS_VERSION, "sae_lens_training_version": SAE_LENS_VERSION}
    meta.update(cfg.metadata)
    if "hook_point" in cfg.metadata and "hook_name" not in cfg.metadata:
        meta["hook_name"] = cfg.metadata["hook_point"]
    out: dict[str, Any] = {
        "architecture": arch,
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": cfg.dtype,
        "device": "cpu",
        "apply_b_dec_to_input": bool(cfg.use_pre_encoder_bias),
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": meta,
        "saeprobe": cfg.to_dict(),
    }
    if arch == "topk":
        out["k"] = cfg.k
        out["rescale_acts_by_decoder_norm"] = False
    return out


def sae_lens_state_dict(sae: SAE) -> dict[str, torch.Tensor]:
    """Weights in sae-lens names and shapes (``W_enc`` is ``[d, c]``)."""
    sd = {
        "W_enc": sae.W_enc.detach().t().contiguous(),
        "W_dec": sae.W_dec.detach().contiguous(),
        "b_enc": sae.b_enc.detach().contiguous(),
        "b_dec": (
            sae.b_dec.detach().contiguous()
            if sae.b_dec is not None
            else torch.zeros(sae.cfg.d_in, dtype=sae.W_dec.dtype, device=sae.W_dec.device)
        ),
    }
    sd.update(sae.sae_lens_extra_state())
    for name in sae.sae_lens_omit:
        sd.pop(name, None)
    return {k: v.cpu() for k, v in sd.items()}


def save_sae(sae: SAE, path: str | Path, *, card: bool = True) -> Path:
    """Write ``sae`` to the directory ``path`` (created) in the sae-lens layout, atomically per
    file, with its model card ``README.md`` unless ``card=False`` (see :func:`.card.write_card`:
    training and eval files already in ``path`` are read)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    sd = sae_lens_state_dict(sae)
    cfg = sae_lens_cfg(sae)
    atomic_save_safetensors(path / WEIGHTS_FILENAME, sd, what="SAE weights")
    atomic_write_text(path / CFG_FILENAME, json.dumps(cfg, indent=2), what="SAE config")
    if card:
        write_card(path, cfg)
    logger.info("saved %s SAE (d_in=%d, d_sae=%d) to %s", sae.cfg.arch, sae.d_in, sae.d_sae, path)
    return path
