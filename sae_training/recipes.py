"""Training recipes: named sets of defaults filled into a :class:`TrainConfig`.

``paper``
    The paper's setting: Adam lr 8e-4, batch 4096 tokens, grad-norm clip 1.0,
    loss = MSE + 0.01 * mean|z|, k = 50, 5 epochs, no AuxK, no warm-up, no decoder bias.
``default``
    A modern Top-K recipe: AuxK loss on dead latents (``k_aux = min(d/2, 512)``,
    coefficient 1/32), encoder initialised as the decoder transpose, ``b_dec`` from
    the data, linear LR warm-up then decay to 0 over the last 20% of steps, no L1.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from .config import TrainConfig

RECIPES: dict[str, dict[str, Any]] = {
    "paper": {
        "lr": 8e-4,
        "batch_size": 4096,
        "epochs": 5,
        "grad_clip": 1.0,
        "l1_coeff": 0.01,
        "auxk_coeff": 0.0,
        "warmup_steps": 0,
        "decay_steps": 0,
        "init_from_data": False,
        "decoder_bias": False,
        "init_encoder_from_decoder": False,
    },
    "default": {
        "lr": None,  # 2e-4 / sqrt(width / 2**14), see default_lr
        "batch_size": 4096,
        "epochs": 5,
        "grad_clip": 1.0,
        "l1_coeff": 0.0,
        "auxk_coeff": 1 / 32,
        "warmup_steps": 1000,
        "decay_steps": None,  # 20% of the run
        "init_from_data": True,
        "decoder_bias": True,
        "init_encoder_from_decoder": True,
    },
}


def default_lr(width: int) -> float:
    """OpenAI's Top-K scaling rule: 2e-4 at 16k latents, ``~ 1/sqrt(width)``."""
    return 2e-4 / math.sqrt(width / 2**14)


def apply_recipe(cfg: TrainConfig) -> TrainConfig:
    """Fill every ``None`` field of ``cfg`` from its recipe; explicit values win.

    ``epochs`` is only filled when ``total_tokens`` is unset.
    """
    if cfg.recipe not in RECIPES:
        raise ValueError(f"unknown recipe {cfg.recipe!r}; use one of {', '.join(RECIPES)}")
    changes: dict[str, Any] = {}
    for name, value in RECIPES[cfg.recipe].items():
        if getattr(cfg, name) is not None:
            continue
        if name == "epochs" and cfg.total_tokens is not None:
            continue
        if name == "lr" and value is None:
            value = default_lr(cfg.width)
        changes[name] = value
    return dataclasses.replace(cfg, **changes)


def resolve_k_aux(cfg: TrainConfig, d_in: int) -> int:
    """AuxK's number of dead latents used: ``cfg.k_aux`` or ``min(d_in // 2, 512)``."""
    k_aux = cfg.k_aux if cfg.k_aux is not None else min(max(d_in // 2, 1), 512)
    return min(k_aux, cfg.width)


def resolve_decay_steps(cfg: TrainConfig, total_steps: int | None) -> int:
    """Number of final steps with LR decay (``None`` = 20% of a known run length)."""
    if cfg.decay_steps is not None:
        return cfg.decay_steps
    return int(0.2 * total_steps) if total_steps else 0
