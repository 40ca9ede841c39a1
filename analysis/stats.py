"""Concept statistics from sparse codes of labelled inputs, accumulated over batches.

Per concept ``i`` (``z`` = SAE codes, one row per token or per pooled input):

* ``energy[i] = E[z_i]`` over all rows; ``energy_share[i] = energy[i] / sum_j energy[j]``;
* ``frequency[i]`` = share of rows where ``z_i != 0``;
* ``energy_text[i] = E_tau[z_i]``, ``energy_image[i] = E_iota[z_i]`` (means over text / image rows);
* ``modality_score[i] = E_tau[z_i] / (E_iota[z_i] + E_tau[z_i])``: 1 = purely textual,
  0 = purely visual (the paper's convention; ``convention="image"`` gives ``1 - score``,
  the Papadimitriou et al. 2025 convention). NaN where both energies are 0 or a modality
  has no rows at all.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from saeprobe import Modality

from .codes import check_codes

logger = logging.getLogger(__name__)

N_LABELS = 4  # Modality values 0..3


@dataclass
class ConceptStats:
    """Per-concept statistics (all tensors ``[c]``, float64).

    ``modality_convention`` says what 1 means in ``modality_score``: ``"text"`` (paper) or
    ``"image"``. ``n_rows`` counts rows per modality label name.
    """

    energy: torch.Tensor
    energy_share: torch.Tensor
    frequency: torch.Tensor
    energy_text: torch.Tensor
    energy_image: torch.Tensor
    modality_score: torch.Tensor
    n_rows: dict[str, int]
    modality_convention: str = "text"
    top_inputs: dict[int, list[tuple[int, float]]] = field(default_factory=dict)

    @property
    def c(self) -> int:
        return int(self.energy.shape[0])


def modality_score(
    energy_text: torch.Tensor, energy_image: torch.Tensor, convention: str = "text"
) -> torch.Tensor:
    """``E_tau / (E_iota + E_tau)`` (``convention="text"``) or ``E_iota / (...)`` (``"image"``).

    NaN where the denominator is 0 (concept never active on text nor image rows).
    """
    if convention not in ("text", "image"):
        raise ValueError(f"modality convention must be 'text' or 'image', got {convention!r}")
    et, ei = energy_text.double(), energy_image.double()
    den = et + ei
    num = et if convention == "text" else ei
    out = torch.full_like(den, float("nan"))
    ok = den > 0
    out[ok] = num[ok] / den[ok]
    return out


class ConceptStatsAccumulator:
    """Streaming concept statistics over batches of sparse codes.

    Memory: ``O(labels * c)`` float64 sums and counts (about 1 MB at c = 32768), plus
    ``O(c * top_m)`` entries when tracking top-activating inputs.

    Parameters
    ----------
    c : int
        Dictionary size.
    top_m : int
        Keep the ``top_m`` inputs (sample ids) with the largest activation per concept
        (activation of an input = max over its rows); 0 disables.
    text_labels, image_labels : tuple of int
        Modality labels counted as text (tau) and image (iota) rows.
    """

    def __init__(
        self,
        c: int,
        top_m: int = 0,
        text_labels: Iterable[int] = (int(Modality.TEXT),),
        image_labels: Iterable[int] = (int(Modality.IMAGE),),
    ) -> None:
        self.c = int(c)
        self.top_m = int(top_m)
        self.text_labels = tuple(int(x) for x in text_labels)
        self.image_labels = tuple(int(x) for x in image_labels)
        self.sums = torch.zeros(N_LABELS * self.c, dtype=torch.float64)
        self.nnz = torch.zeros(N_LABELS * self.c, dtype=torch.float64)
        self.rows = torch.zeros(N_LABELS, dtype=torch.long)
        self._top_key = torch.zeros(0, dtype=torch.long)
        self._top_val = torch.zeros(0, dtype=torch.float32)

    def update(
        self,
        values: torch.Tensor,
        indices: torch.Tensor,
        modality: torch.Tensor | None,
        sample_id: torch.Tensor | None = None,
    ) -> None:
        """Add a batch: ``values, indices [N, k]``, ``modality [N]`` (Modality ints),
        ``sample_id [N]`` (needed when ``top_m > 0``)."""
        if modality is None:
            raise ValueError(
                "codes have no modality labels: pass modality [N] (saeprobe.Modality per row) "
                "so text and image energies can be computed"
            )
        values, indices = check_codes(values.detach().cpu(), indices.detach().cpu(), self.c)
        modality = torch.as_tensor(modality).detach().cpu().long().reshape(-1)
        if modality.shape[0] != values.shape[0]:
            raise ValueError(
                f"modality has {modality.shape[0]} labels for {values.shape[0]} code rows; "
                "pass one label per row"
            )
        if modality.numel() and (int(modality.min()) < 0 or int(modality.max()) >= N_LABELS):
            raise ValueError(f"modality labels must be saeprobe.Modality values 0..{N_LABELS - 1}")
        n, k = values.shape
        self.rows += torch.bincount(modality, minlength=N_LABELS)
        if n == 0 or k == 0:
            return
        key = (modality[:, None] * self.c + indices).reshape(-1)
        v = values.reshape(-1).double()
        self.sums.index_add_(0, key, v)
        self.nnz.index_add_(0, key, (v != 0).double())
        if self.top_m > 0:
            if sample_id is None:
                raise ValueError("sample_id [N] is required when top_m > 0")
            self._update_top(values, indices, torch.as_tensor(sample_id).cpu().long().reshape(-1))

    def _update_top(self, values: torch.Tensor, indices: torch.Tensor, sid: torch.Tensor) -> None:
        import numpy as np

        if int(sid.max()) >= 1 << 40 or int(sid.min()) < 0:
            raise ValueError("sample ids must lie in [0, 2**40) to track top inputs")
        key = ((indices << 40) | sid[:, None].expand_as(indices)).reshape(-1)
        key = np.concatenate([self._top_key.numpy(), key.numpy()])
        val = np.concatenate([self._top_val.numpy(), values.reshape(-1).float().numpy()])
        keep = val > 0
        key, val = key[keep], val[keep]
        # best activation per (concept, sample): sort by key then value descending
        o = np.lexsort((-val, key))
        key, val = key[o], val[o]
        first = np.ones(len(key), dtype=bool)
        first[1:] = key[1:] != key[:-1]
        key, val = key[first], val[first]
        # top_m samples per concept: sort by concept then value descending, rank in group
        concept = key >> 40
        o = np.lexsort((-val, concept))
        key, val, concept = key[o], val[o], concept[o]
        start = np.ones(len(key), dtype=bool)
        start[1:] = concept[1:] != concept[:-1]
        idx = np.arange(len(key))
        rank = idx - np.maximum.accumulate(np.where(start, idx, 0))
        sel = rank < self.top_m
        self._top_key = torch.from_numpy(np.ascontiguousarray(key[sel]))
        self._top_val = torch.from_numpy(np.ascontiguousarray(val[sel]))

    def merge(self, other: ConceptStatsAccumulator) -> None:
        """Add another accumulator's sums (e.g. from another rank)."""
        if other.c != self.c:
            raise ValueError(f"cannot merge accumulators with c={other.c} and c={self.c}")
        self.sums += other.sums
        self.nnz += other.nnz
        self.rows += other.rows
        if self.top_m and other._top_key.numel():
            sid = other._top_key & ((1 << 40) - 1)
            self._update_top(other._top_val[:, None], (other._top_key >> 40)[:, None], sid)

    def result(self, convention: str = "text") -> ConceptStats:
        """Means over the rows seen so far. Warns (NaN scores) when a modality has no rows."""
        c = self.c
        sums = self.sums.view(N_LABELS, c)
        nnz = self.nnz.view(N_LABELS, c)
        n_all = int(self.rows.sum())
        if n_all == 0:
            raise ValueError(
                "no code rows were accumulated; the activation store or pairs are empty"
            )
        energy = sums.sum(0) / n_all
        total = float(energy.sum())
        share = energy / total if total > 0 else torch.zeros_like(energy)
        frequency = nnz.sum(0) / n_all

        def side(labels: tuple[int, ...], name: str) -> torch.Tensor:
            n = int(sum(int(self.rows[i]) for i in labels))
            if n == 0:
                warnings.warn(
                    f"no {name} rows in the codes (labels {labels}); {name} energies and "
                    "modality scores are NaN and tags 'unknown'",
                    RuntimeWarning,
                    stacklevel=3,
                )
                logger.warning("no %s rows: modality scores are NaN", name)
                return torch.full((c,), float("nan"), dtype=torch.float64)
            return sums[list(labels)].sum(0) / n

        et = side(self.text_labels, "text")
        ei = side(self.image_labels, "image")
        if torch.isnan(et).any() or torch.isnan(ei).any():
            score = torch.full((c,), float("nan"), dtype=torch.float64)
        else:
            score = modality_score(et, ei, convention)
        names = Modality.names()
        top: dict[int, list[tuple[int, float]]] = {}
        if self.top_m and self._top_key.numel():
            concept = (self._top_key >> 40).tolist()
            sid = (self._top_key & ((1 << 40) - 1)).tolist()
            for ci, si, v in zip(concept, sid, self._top_val.tolist()):
                top.setdefault(ci, []).append((si, v))
            for ci in top:
                top[ci].sort(key=lambda t: -t[1])
                top[ci] = top[ci][: self.top_m]
        return ConceptStats(
            energy=energy,
            energy_share=share,
            frequency=frequency,
            energy_text=et,
            energy_image=ei,
            modality_score=score,
            n_rows={names[i]: int(self.rows[i]) for i in range(N_LABELS)},
            modality_convention=convention,
            top_inputs=top,
        )


def concept_stats(
    values: torch.Tensor,
    indices: torch.Tensor,
    modality: torch.Tensor | None,
    c: int,
    convention: str = "text",
    **kwargs,
) -> ConceptStats:
    """One-shot :class:`ConceptStatsAccumulator` over in-memory codes."""
    acc = ConceptStatsAccumulator(c, **kwargs)
    acc.update(values, indices, modality)
    return acc.result(convention)
