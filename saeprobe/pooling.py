"""Pooling of per-token hidden states into one embedding per input.

Every pool takes ``hidden [B, T, d]``, ``attention_mask [B, T]`` and
``modality [B, T]`` and returns ``[B, d]`` in float32 (statistics in float32
whatever the model dtype). Rows with no token to pool give NaN.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ._types import Modality


def _masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    w = mask.to(torch.float32)
    total = torch.einsum("btd,bt->bd", hidden.to(torch.float32), w)
    count = w.sum(1, keepdim=True)
    return total / count  # NaN where count == 0, by design


def pool_mean(hidden, attention_mask, modality):
    """Mean over all attended tokens (the paper's embedding)."""
    return _masked_mean(hidden, attention_mask.bool())


def pool_mean_data(hidden, attention_mask, modality):
    """Mean over attended tokens except the leading system prompt."""
    return _masked_mean(hidden, attention_mask.bool() & (modality != Modality.SYSTEM))


def pool_last(hidden, attention_mask, modality):
    """The last attended token (works for left and right padding)."""
    mask = attention_mask.bool()
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = torch.where(mask, positions, torch.full_like(positions, -1)).amax(1)
    out = hidden[torch.arange(hidden.shape[0], device=hidden.device), last.clamp_min(0)]
    out = out.to(torch.float32)
    out[last < 0] = float("nan")
    return out


def _modality_pool(kind: Modality) -> Callable:
    def pool(hidden, attention_mask, modality):
        return _masked_mean(hidden, attention_mask.bool() & (modality == kind))

    pool.__doc__ = f"Mean over attended {kind.name.lower()} tokens (NaN if none)."
    return pool


POOLS: dict[str, Callable] = {
    "mean": pool_mean,
    "mean_data": pool_mean_data,
    "last": pool_last,
    "mean_text": _modality_pool(Modality.TEXT),
    "mean_image": _modality_pool(Modality.IMAGE),
    "mean_template": _modality_pool(Modality.TEMPLATE),
}

#: pooling that uses the model's own projected embedding (dual encoders only)
NATIVE = "native"


def check_pools(names) -> list[str]:
    """Validate pool names (``native`` included)."""
    names = [names] if isinstance(names, str) else list(names)
    bad = [n for n in names if n not in POOLS and n != NATIVE]
    if bad:
        raise ValueError(f"unknown pooling {bad}; choose from {sorted([*POOLS, NATIVE])}")
    return names


def pool(name: str, hidden, attention_mask, modality) -> torch.Tensor:
    """Apply the pooling called ``name`` (see :data:`POOLS`)."""
    check_pools([name])
    if name == NATIVE:
        raise ValueError(
            "'native' pooling is the dual encoder's own embedding; see ModelAdapter.embed"
        )
    return POOLS[name](hidden, attention_mask, modality)
