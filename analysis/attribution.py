"""Similarity attribution: exact per-concept decomposition of cosine similarity and the
aggregate retrieval attribution ``A = E_gamma[z_q * (M z_c) + z_c * (M z_q)]``, ``M = D D^T``.

Write ``x = xhat + r`` with ``xhat = sum_i z_i d_i`` (no decoder bias) and ``r = x - xhat``
(reconstruction error, including any decoder bias). Then exactly

``x_q . x_c = sum_i t_i + <xhat_q, r_c> + <r_q, xhat_c> + <r_q, r_c>``

with the concept term ``t_i = (z_q,i <d_i, xhat_c> + z_c,i <d_i, xhat_q>) / 2`` (so
``sum_i t_i = xhat_q . xhat_c``; ``A_i`` counts both sides, ``A_i = 2 E[t_i]``). Dividing by
``|x_q| |x_c|`` gives the cosine decomposition. ``(M z_c)_i = <d_i, xhat_c>`` is computed by
gathering the k active rows of D, never forming ``D D^T``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch

from .codes import Codes, check_codes, concept_dots, decode, paired_decode_dots

logger = logging.getLogger(__name__)


@dataclass
class SimilarityDecomposition:
    """Cosine of each pair split into concept, cross and error terms (float64).

    ``cosine = concept_q.sum(1) + concept_c.sum(1) + cross + error`` exactly (up to rounding).

    Attributes
    ----------
    cosine : Tensor [P]
        Cosine of the original embeddings.
    concept_q, concept_c : Tensor [P, k]
        Half-terms of the concepts active in the query / candidate, at ``indices_q`` /
        ``indices_c``; a concept's term is the sum of its entries on both sides.
    indices_q, indices_c : Tensor [P, k]
    cross : Tensor [P]
        ``(<xhat_q, r_c> + <r_q, xhat_c>) / (|x_q| |x_c|)``.
    error : Tensor [P]
        ``<r_q, r_c> / (|x_q| |x_c|)``.
    """

    cosine: torch.Tensor
    concept_q: torch.Tensor
    concept_c: torch.Tensor
    indices_q: torch.Tensor
    indices_c: torch.Tensor
    cross: torch.Tensor
    error: torch.Tensor

    def per_concept(self, c: int) -> torch.Tensor:
        """Dense per-concept terms ``[P, c]`` (small P only)."""
        out = torch.zeros(self.cosine.shape[0], c, dtype=torch.float64)
        out.scatter_add_(1, self.indices_q, self.concept_q)
        out.scatter_add_(1, self.indices_c, self.concept_c)
        return out

    def total(self) -> torch.Tensor:
        """Sum of all parts ``[P]`` (equals ``cosine``)."""
        return self.concept_q.sum(1) + self.concept_c.sum(1) + self.cross + self.error


def similarity_decomposition(
    x_q: torch.Tensor,
    x_c: torch.Tensor,
    codes_q: Codes | tuple[torch.Tensor, torch.Tensor],
    codes_c: Codes | tuple[torch.Tensor, torch.Tensor],
    dictionary: torch.Tensor,
) -> SimilarityDecomposition:
    """Decompose ``cos(x_q[p], x_c[p])`` for each row pair ``p``, in float64.

    Parameters
    ----------
    x_q, x_c : Tensor [P, d]
        Original embeddings (any scale).
    codes_q, codes_c : (values [P, k], indices [P, k])
        Their SAE codes.
    dictionary : Tensor [c, d]
    """
    D = dictionary.double()
    c, d = D.shape
    q = check_codes(codes_q[0], codes_q[1], c)
    k = check_codes(codes_c[0], codes_c[1], c)
    if x_q.shape != x_c.shape or x_q.ndim != 2 or x_q.shape[1] != d:
        raise ValueError(
            f"x_q and x_c must both be [P, {d}] (the dictionary width), got "
            f"{tuple(x_q.shape)} and {tuple(x_c.shape)}"
        )
    xq, xc = x_q.double(), x_c.double()
    vq, vc = q.values.double(), k.values.double()
    hq, hc = decode(vq, q.indices, D), decode(vc, k.indices, D)
    rq, rc = xq - hq, xc - hc
    norm = xq.norm(dim=1) * xc.norm(dim=1)
    if (norm == 0).any():
        raise ValueError("an embedding has zero norm; its cosine similarity is undefined")
    tq = 0.5 * vq * concept_dots(q.indices, D, hc) / norm[:, None]
    tc = 0.5 * vc * concept_dots(k.indices, D, hq) / norm[:, None]
    cross = ((hq * rc).sum(1) + (rq * hc).sum(1)) / norm
    error = (rq * rc).sum(1) / norm
    cosine = (xq * xc).sum(1) / norm
    return SimilarityDecomposition(cosine, tq, tc, q.indices, k.indices, cross, error)


class Attribution(NamedTuple):
    """Aggregate retrieval attribution.

    Attributes
    ----------
    attribution : Tensor [c]
        ``A_i = E_pairs[z_q,i <d_i, xhat_c> + z_c,i <d_i, xhat_q>]`` (divided per pair by
        ``|x_q| |x_c|`` when normalised), float64.
    mean_similarity : float
        ``E[x_q . x_c]`` (or mean cosine when normalised) of the original embeddings if given,
        else of the reconstructions.
    mean_reconstructed : float
        ``E[xhat_q . xhat_c]`` (normalised likewise) = ``sum(attribution) / 2``.
    n_pairs : int
    """

    attribution: torch.Tensor
    mean_similarity: float
    mean_reconstructed: float
    n_pairs: int


def pairs_from_relevant(relevant: Sequence[set[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Query-positive pairs ``(query rows, candidate rows)`` from per-query relevant sets."""
    qi = [q for q, rel in enumerate(relevant) for _ in rel]
    ci = [c for rel in relevant for c in sorted(rel)]
    return torch.tensor(qi, dtype=torch.long), torch.tensor(ci, dtype=torch.long)


def retrieval_attribution(
    codes_q: Codes | tuple[torch.Tensor, torch.Tensor],
    codes_c: Codes | tuple[torch.Tensor, torch.Tensor],
    dictionary: torch.Tensor,
    pairs: tuple[torch.Tensor, torch.Tensor] | None = None,
    x_q: torch.Tensor | None = None,
    x_c: torch.Tensor | None = None,
    normalize: bool = True,
    chunk_size: int = 16384,
) -> Attribution:
    """Aggregate attribution over matched pairs (row p with row p) or over ``pairs``
    ``(query rows [P], candidate rows [P])`` of a retrieval task.

    ``normalize=True`` divides each pair's terms by ``|x_q| |x_c|`` (original embeddings when
    given, else reconstructions), i.e. attributes the cosine. Cost ``O(P k d)``.
    """
    D = dictionary.float()
    c = D.shape[0]
    q = check_codes(codes_q[0], codes_q[1], c)
    k = check_codes(codes_c[0], codes_c[1], c)
    if pairs is None:
        if q.values.shape[0] != k.values.shape[0]:
            raise ValueError(
                f"matched pairs need as many query rows ({q.values.shape[0]}) as candidate rows "
                f"({k.values.shape[0]}); pass pairs=(query_rows, candidate_rows) otherwise"
            )
        qi = ci = torch.arange(q.values.shape[0])
    else:
        qi, ci = (torch.as_tensor(p).long() for p in pairs)
        if qi.shape != ci.shape:
            raise ValueError("pairs must be two index tensors of the same length")
    P = int(qi.shape[0])
    if P == 0:
        raise ValueError("no pairs to attribute")
    for x, codes, name in ((x_q, q, "x_q"), (x_c, k, "x_c")):
        if x is not None and (x.shape[0] != codes.values.shape[0] or x.shape[1] != D.shape[1]):
            raise ValueError(
                f"{name} must be [{codes.values.shape[0]}, {D.shape[1]}], got {tuple(x.shape)}"
            )
    A = torch.zeros(c, dtype=torch.float64)
    sim = rec = 0.0
    for s in range(0, P, chunk_size):
        a, b = qi[s : s + chunk_size], ci[s : s + chunk_size]
        vq, iq = q.values[a].float(), q.indices[a]
        vc, ic = k.values[b].float(), k.indices[b]
        hq, hc, dq, dc = paired_decode_dots(vq, iq, vc, ic, D)
        if normalize:
            nq = (x_q[a].float() if x_q is not None else hq).norm(dim=1)
            nc = (x_c[b].float() if x_c is not None else hc).norm(dim=1)
            w = 1.0 / (nq * nc).clamp_min(1e-12)
        else:
            w = torch.ones(a.shape[0])
        # A_i += w_p z_{q,i} <d_i, hc_p> (and the candidate side alike)
        A.index_add_(0, iq.reshape(-1).long(), (vq * dq * w[:, None]).reshape(-1).double())
        A.index_add_(0, ic.reshape(-1).long(), (vc * dc * w[:, None]).reshape(-1).double())
        rec += float(((hq * hc).sum(1) * w).double().sum())
        if x_q is not None and x_c is not None:
            sim += float(((x_q[a].float() * x_c[b].float()).sum(1) * w).double().sum())
        else:
            sim += float(((hq * hc).sum(1) * w).double().sum())
    return Attribution(A / P, sim / P, rec / P, P)


def retrieval_attribution_dense(
    zq_dense: torch.Tensor, zc_dense: torch.Tensor, dictionary: torch.Tensor
) -> torch.Tensor:
    """Reference (unnormalised, matched rows): ``E[z_q * (M z_c) + z_c * (M z_q)]`` with a
    dense ``M = D D^T`` -> ``[c]`` (small c only)."""
    D = dictionary.double()
    M = D @ D.T
    zq, zc = zq_dense.double(), zc_dense.double()
    return (zq * (zc @ M.T) + zc * (zq @ M.T)).mean(0)


def top_distractors(attribution: torch.Tensor, n: int) -> torch.Tensor:
    """The ``n`` concepts with the highest attribution (the paper's distractors), best first."""
    a = torch.nan_to_num(attribution.double(), nan=float("-inf"))
    n = min(int(n), a.shape[0])
    return torch.argsort(a, descending=True, stable=True)[:n]
