"""The fast path: ablation as a low-rank update of a cached Gram matrix (no whitening).

The raw Gram matrix ``G = X_q X_c^T`` is computed once; removing a concept set ``S`` is a
rank-``2|S|`` update of it, so a request costs ``O(Q N |S|)`` plus a top-k, whatever ``d``:

* ``subtract`` / ``zero`` (``X' = X - A D_S``, with ``X`` the embeddings or the SAE
  reconstructions and ``A`` the codes restricted to ``S``)::

      <x'_q, x'_c> = G - A_q (X_c D_S^T)^T - (X_q D_S^T - A_q D_S D_S^T) A_c^T

* ``project`` (``X' = X - X B B^T``, ``B`` an orthonormal basis of ``span D_S``)::

      <x'_q, x'_c> = G - (X_q B) (X_c B)^T

and the squared row norms update likewise; the cosine is the ratio.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch

from .config import EvalConfig
from .vectors import Vectors

__all__ = ["FastTerms", "GramScorer"]


class FastTerms(NamedTuple):
    """Scores of a setting are ``(gram - U V^T) / (sqrt(n2_q) sqrt(n2_c)^T)``.

    Attributes
    ----------
    gram : Tensor [Q, N] float32
    U : Tensor [Q, r] | None
    V : Tensor [N, r] | None
    n2_q : Tensor [Q] float64
    n2_c : Tensor [N] float64
    """

    gram: torch.Tensor
    U: torch.Tensor | None
    V: torch.Tensor | None
    n2_q: torch.Tensor
    n2_c: torch.Tensor


class GramScorer:
    """Scores of unwhitened settings from cached Gram matrices.

    Blocks hold about :attr:`block_scores` scores (4 MB): the passes over a block (update,
    scale, top-k, ranks) then stay in cache.

    Parameters
    ----------
    vectors : Vectors
    max_scores : int
        Largest ``Q * N`` cached as a Gram matrix (float32); beyond it :meth:`fits` is False.
    max_grams : int
        Gram matrices kept (``subtract`` / ``project`` use one, ``zero`` one or two more).
    """

    block_scores = 1 << 20

    def __init__(self, vectors: Vectors, max_scores: int, max_grams: int = 2) -> None:
        self.v = vectors
        self.max_scores = int(max_scores)
        self.max_grams = max(1, int(max_grams))
        self._grams: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()

    def fits(self, cfg: EvalConfig) -> bool:
        """Whether the setting takes this path (no whitening, Gram small enough)."""
        d = self.v.data
        return cfg.whiten == "none" and d.n_queries * d.n_candidates <= self.max_scores

    def gram(self, kq: str, kc: str) -> torch.Tensor:
        """Raw ``[Q, N]`` inner products of the query base ``kq`` with the candidate base ``kc``."""
        key = (kq, kc)
        if key in self._grams:
            self._grams.move_to_end(key)
            return self._grams[key]
        while len(self._grams) >= self.max_grams:
            self._grams.popitem(last=False)
        g = self.v.base(kq)[0] @ self.v.base(kc)[1].T
        self._grams[key] = g
        return g

    def terms(self, cfg: EvalConfig) -> FastTerms:
        """The Gram matrix, the low-rank update and the updated squared norms of ``cfg``."""
        v = self.v
        do_q, do_c = cfg.sides != "candidate", cfg.sides != "query"
        # "zero" acts on the SAE reconstructions; a side left alone keeps its embeddings
        kq = "rec" if cfg.op == "zero" and do_q else "x"
        kc = "rec" if cfg.op == "zero" and do_c else "x"
        xq, xc = v.base(kq)[0], v.base(kc)[1]
        gram = self.gram(kq, kc)
        n2_q, n2_c = v.norms2(kq)[0], v.norms2(kc)[1]
        S = torch.tensor(cfg.ablate, dtype=torch.long)
        if S.numel() == 0:
            return FastTerms(gram, None, None, n2_q, n2_c)
        DS = v.dictionary[S]
        if cfg.op == "project":
            B, _ = torch.linalg.qr(DS.T.double())  # [d, r]
            Pq, Pc = xq @ B.float(), xc @ B.float()
            if do_q:
                n2_q = n2_q - (Pq.double() ** 2).sum(1)
            if do_c:
                n2_c = n2_c - (Pc.double() ** 2).sum(1)
            # <x - x B B^T, y> = <x - x B B^T, y - y B B^T>: the same update for any sides
            return FastTerms(gram, Pq, Pc, n2_q, n2_c)
        Gq, Gc = (xq @ DS.T).double(), (xc @ DS.T).double()
        M = DS.double() @ DS.T.double()
        Aq = v.restricted(v.codes_q, S).double() if do_q else torch.zeros_like(Gq)
        Ac = v.restricted(v.codes_c, S).double() if do_c else torch.zeros_like(Gc)
        AqM = Aq @ M
        n2_q = n2_q - 2 * (Aq * Gq).sum(1) + (AqM * Aq).sum(1)
        n2_c = n2_c - 2 * (Ac * Gc).sum(1) + ((Ac @ M) * Ac).sum(1)
        U = torch.cat([Aq, Gq - AqM], 1).float()
        V = torch.cat([Gc, Ac], 1).float()
        return FastTerms(gram, U, V, n2_q, n2_c)

    def blocks(
        self, cfg: EvalConfig, blocks: Sequence, exact: bool = True
    ) -> Iterator[tuple[object, torch.Tensor]]:
        """Yield ``(rows, scores [b, N])`` per block of query rows; a block is valid until the
        next one is asked for (one buffer is reused).

        ``exact=False`` leaves out the per-query scale ``1 / |q'|`` (ranks within a row do
        not change), saving a pass over the block.
        """
        t = self.terms(cfg)
        inv_c = (1.0 / t.n2_c.clamp_min(0).sqrt().clamp_min(1e-12)).float()
        inv_q = (1.0 / t.n2_q.clamp_min(0).sqrt().clamp_min(1e-12)).float()
        buf = None
        for r in blocks:
            g = t.gram[r]
            if buf is None or buf.shape[0] < g.shape[0]:
                buf = torch.empty_like(g)
            out = buf[: g.shape[0]]
            if t.U is None:
                torch.mul(g, inv_c, out=out)
            else:
                torch.addmm(g, t.U[r], t.V.T, alpha=-1.0, out=out).mul_(inv_c)
            yield r, out.mul_(inv_q[r, None]) if exact else out
