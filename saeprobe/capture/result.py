"""What a capture returns: :class:`CaptureResult`, and merging streamed batches into one."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .._types import Modality
from .stream import CaptureBatch, TokenRecords

__all__ = ["CaptureResult", "merge_batches"]


@dataclass
class CaptureResult(TokenRecords):
    """What :func:`capture` collected (in memory) or wrote (to a store): the fields of
    :class:`TokenRecords` (token tensors empty when written to a store), plus:

    Attributes
    ----------
    n_tokens, n_items : int
    seconds : float
    modality_counts : dict[str, int]
    bytes_written : int
    out : str | None
    resumed_from : int
        First sample index computed (0 for a fresh capture).
    stores : dict[str, str]
        Store folder of each hook point (written to a store).
    """

    n_tokens: int = 0
    n_items: int = 0
    seconds: float = 0.0
    modality_counts: dict[str, int] = field(default_factory=dict)
    bytes_written: int = 0
    out: str | None = None
    resumed_from: int = 0
    stores: dict[str, str] = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        return self.n_tokens / self.seconds if self.seconds > 0 else float("nan")

    def summary(self) -> str:
        counts = ", ".join(f"{k}={v:,}" for k, v in self.modality_counts.items())
        size = f", {self.bytes_written / 2**20:.1f} MiB written" if self.bytes_written else ""
        return (
            f"{self.n_items:,} items, {self.n_tokens:,} tokens in {self.seconds:.1f} s "
            f"({self.tokens_per_s:,.0f} tokens/s); modality: {counts}{size}"
        )


def _modality_counts(modality: torch.Tensor) -> dict[str, int]:
    counts = torch.bincount(modality.long().clamp_min(0), minlength=len(Modality))
    return {m.name.lower(): int(counts[int(m)]) for m in Modality}


def merge_batches(parts: list[CaptureBatch], seconds: float) -> CaptureResult:
    def cat(tensors, dtype):
        return torch.cat(tensors) if tensors else torch.empty(0, dtype=dtype)

    names = list(parts[0].acts) if parts else []
    pooled_names = {h: list(p) for h, p in parts[0].pooled.items()} if parts else {}
    modality = cat([p.modality for p in parts], torch.int8)
    return CaptureResult(
        acts={n: torch.cat([p.acts[n] for p in parts]) for n in names},
        sample_id=cat([p.sample_id for p in parts], torch.long),
        position=cat([p.position for p in parts], torch.int32),
        token_id=cat([p.token_id for p in parts], torch.long),
        modality=modality,
        pooled={
            h: {k: torch.cat([p.pooled[h][k] for p in parts]) for k in ks}
            for h, ks in pooled_names.items()
        },
        sample_index=cat([p.sample_index for p in parts], torch.long),
        item_ids=[i for p in parts for i in p.item_ids],
        n_tokens=int(modality.numel()),
        n_items=sum(len(p.item_ids) for p in parts),
        seconds=seconds,
        modality_counts=_modality_counts(modality),
    )
