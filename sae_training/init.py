"""Setting up a run: the training device and a freshly initialised SAE."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from saeprobe.distributed import dist_info
from saeprobe.sae import SAE_REGISTRY, SAEConfig, create_sae

from .config import TrainConfig

__all__ = ["build_sae", "resolve_device"]


def resolve_device(name: str) -> torch.device:
    if name in ("auto", None, "cuda") and torch.cuda.is_available():
        info = dist_info()
        return torch.device(f"cuda:{info.local_rank}" if info.world_size > 1 else "cuda")
    if name in ("auto", None):
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    return dev


def build_sae(cfg: TrainConfig, d_in: int) -> Any:
    """A fresh SAE for ``cfg``, seeded with ``cfg.seed``.

    ``topk`` / ``batchtopk`` get ``k = cfg.k``; ``jumprelu`` / ``standard`` get no cap on
    their sparse codes (pass ``sae_kwargs={"k": ...}`` for one). The encoder is the decoder
    transpose when ``cfg.init_encoder_from_decoder`` (default recipe), else an independent
    ``nn.Linear``-style init (the paper's code).
    """
    kwargs: dict[str, Any] = {
        "arch": cfg.arch,
        "d_in": d_in,
        "d_sae": cfg.width,
        "k": cfg.k if SAE_REGISTRY[cfg.arch].k_required else None,
        "use_decoder_bias": bool(cfg.decoder_bias),
        "use_pre_encoder_bias": bool(cfg.decoder_bias),
        "l1_coeff": float(cfg.l1_coeff or 0.0),
    }
    known = {f.name for f in dataclasses.fields(SAEConfig)}
    unknown = sorted(set(cfg.sae_kwargs) - known)
    if unknown:
        raise ValueError(
            f"sae_kwargs has unknown SAEConfig fields {unknown}; valid: {sorted(known)}"
        )
    kwargs.update(cfg.sae_kwargs)
    torch.manual_seed(cfg.seed)
    sae = create_sae(SAEConfig(**kwargs))
    with torch.no_grad():
        if cfg.init_encoder_from_decoder:
            # dense-code archs start sparse: a full-size tied encoder makes half the
            # latents fire at init (reconstructions ~ sqrt(c) too large)
            scale = 1.0 if SAE_REGISTRY[cfg.arch].k_required else 0.1
            sae.W_enc.copy_(sae.W_dec * scale)
        else:
            torch.nn.init.kaiming_uniform_(sae.W_enc, a=math.sqrt(5))
    return sae
