"""What a concept fires on: its top-activating items in a model's activation store, and the
per-token activations of those items (for text highlighting and image heatmaps).

At start-up the store is streamed once through the SAE (:func:`top_samples`); only the
``top_m`` best samples per concept are kept (``O(c * top_m)`` memory, plus one batch). A
card then reads the tokens of its few samples back (:meth:`ActivationStore.read_samples`)
and re-encodes just those, so nothing of size ``tokens x k`` stays in memory.
"""

from __future__ import annotations

import logging
import time
from typing import Any, NamedTuple

import torch

from analysis import encode_all
from saeprobe._types import Modality

logger = logging.getLogger(__name__)

__all__ = ["ConceptContent", "TokenActivations", "TopSamples", "top_samples"]

_SHIFT = 1 << 32  # key = concept * _SHIFT + sample id


class TopSamples(NamedTuple):
    """Per concept, its best samples by maximum token activation.

    Attributes
    ----------
    sample_id : LongTensor [c, top_m]
        Store sample ids, best first (-1: fewer samples fire).
    activation : FloatTensor [c, top_m]
        Their maximum activation of the concept.
    """

    sample_id: torch.Tensor
    activation: torch.Tensor


class TokenActivations(NamedTuple):
    """The (non-system) tokens of one sample and one concept's activation on each.

    Attributes
    ----------
    position, token_id, modality : Tensor [T]
    activation : FloatTensor [T]
    """

    position: torch.Tensor
    token_id: torch.Tensor
    modality: torch.Tensor
    activation: torch.Tensor


def _max_per_key(keys: torch.Tensor, vals: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    uniq, inv = torch.unique(keys, return_inverse=True)
    out = torch.full((uniq.numel(),), float("-inf"))
    out.scatter_reduce_(0, inv, vals, reduce="amax")
    return uniq, out


def _prune(keys: torch.Tensor, vals: torch.Tensor, top_m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the ``top_m`` largest values per concept (``keys // _SHIFT``)."""
    order = torch.argsort(vals, descending=True, stable=True)
    keys, vals = keys[order], vals[order]
    concept = keys // _SHIFT
    order = torch.argsort(concept, stable=True)
    keys, vals, concept = keys[order], vals[order], concept[order]
    start = torch.ones_like(concept, dtype=torch.bool)
    start[1:] = concept[1:] != concept[:-1]
    first = torch.cummax(torch.where(start, torch.arange(concept.numel()), 0), 0).values
    keep = (torch.arange(concept.numel()) - first) < top_m
    return keys[keep], vals[keep]


def top_samples(sae: Any, store: Any, top_m: int = 8, batch_size: int = 8192) -> TopSamples:
    """Stream ``store`` (SYSTEM tokens left out) through ``sae`` once and keep, per concept,
    the ``top_m`` samples with the largest activation on any of their tokens."""

    c = int(sae.dictionary.shape[0])
    pool_k = torch.empty(0, dtype=torch.long)
    pool_v = torch.empty(0)
    for b in store.batches(
        batch_size, shuffle=False, fields=("acts", "sample_id"), exclude=["system"]
    ):
        codes = encode_all(sae, b.acts.float())
        v = codes.values.float().reshape(-1)
        k = (codes.indices.long() * _SHIFT + b.sample_id.long()[:, None]).reshape(-1)
        live = v > 0
        keys, vals = _max_per_key(torch.cat([pool_k, k[live]]), torch.cat([pool_v, v[live]]))
        pool_k, pool_v = _prune(keys, vals, top_m)
    sid = torch.full((c, top_m), -1, dtype=torch.long)
    act = torch.zeros(c, top_m)
    if pool_k.numel():
        concept = pool_k // _SHIFT
        start = torch.ones_like(concept, dtype=torch.bool)
        start[1:] = concept[1:] != concept[:-1]
        first = torch.cummax(torch.where(start, torch.arange(concept.numel()), 0), 0).values
        slot = torch.arange(concept.numel()) - first
        sid[concept, slot] = pool_k % _SHIFT
        act[concept, slot] = pool_v
    return TopSamples(sid, act)


class ConceptContent:
    """Top-activating samples of every concept of one model's store, and their tokens.

    Parameters
    ----------
    sae : SAE
    store : ActivationStore
    top_m : int
        Samples kept per concept.
    """

    def __init__(self, sae: Any, store: Any, top_m: int = 8) -> None:
        t0 = time.perf_counter()
        self.sae, self.store = sae, store
        self.top = top_samples(sae, store, top_m)
        self.item_ids = self._item_ids()
        logger.info(
            "concept content of %s: %d tokens encoded in %.2fs",
            store.path,
            store.n_tokens,
            time.perf_counter() - t0,
        )

    def _item_ids(self) -> list[str] | None:
        """Item id of each store sample id (from the store's pooled rows), if known."""
        try:
            _, sid, ids = self.store.read_pooled()
        except Exception:  # noqa: BLE001 - a store without pooled rows: sample id = item row
            return None
        out: list[str] = [""] * (int(sid.max()) + 1 if sid.numel() else 0)
        for s, i in zip(sid.tolist(), ids):
            out[s] = i
        return out

    def item_id(self, sample_id: int) -> str | None:
        if self.item_ids is None or not 0 <= sample_id < len(self.item_ids):
            return None
        return self.item_ids[sample_id] or None

    def samples(self, concept: int, n: int) -> list[tuple[int, float]]:
        """``(sample id, max activation)`` of the concept's ``n`` best samples."""
        sid, act = self.top.sample_id[concept, :n], self.top.activation[concept, :n]
        return [(int(s), float(a)) for s, a in zip(sid, act) if s >= 0]

    def tokens(self, concept: int, sample_ids: list[int]) -> dict[int, TokenActivations]:
        """Per sample, its non-system tokens and the concept's activation on each."""

        if not sample_ids:
            return {}
        b = self.store.read_samples(
            sample_ids, ("acts", "sample_id", "position", "token_id", "modality")
        )
        codes = encode_all(self.sae, b.acts.float())
        act = (codes.values.float() * (codes.indices == concept)).sum(1)
        keep = b.modality.long() != int(Modality.SYSTEM)
        out = {}
        for s in sample_ids:
            m = keep & (b.sample_id == s)
            order = torch.argsort(b.position[m])
            out[s] = TokenActivations(
                b.position[m][order], b.token_id[m][order], b.modality[m][order], act[m][order]
            )
        return out
