"""What every scoring path of the explorer shares: the embeddings, their SAE codes, the
dictionary, the SAE reconstructions, and the ablated embeddings of a setting."""

from __future__ import annotations

from typing import Any

import torch

from analysis import ablate, decode

from .config import EvalConfig
from .data import ExplorerData

__all__ = ["Vectors", "sae_tensors", "unit_rows"]


def sae_tensors(sae: Any, d: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The SAE's dictionary ``[c, d]`` and decoder bias ``[d]`` (or None), float32 on CPU;
    checks the width against the embeddings."""
    D = getattr(sae, "dictionary", None)
    if not isinstance(D, torch.Tensor) or D.ndim != 2:
        raise ValueError("the SAE has no `dictionary` [c, d]; load it with saeprobe.sae.load_sae")
    if D.shape[1] != d:
        raise ValueError(
            f"the embeddings have d={d} but the SAE expects d_in={D.shape[1]}; use the SAE "
            "trained on this model / hook point"
        )
    b = getattr(sae, "b_dec", None)
    b = b.detach().float().cpu() if isinstance(b, torch.Tensor) else None
    return D.detach().float().cpu().contiguous(), b


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows divided by their L2 norm (zero rows stay zero)."""
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


class Vectors:
    """Embeddings, sparse codes and dictionary of one explorer session.

    Parameters
    ----------
    data : ExplorerData
    codes_q, codes_c : Codes
        SAE codes of the queries ``[Q, k]`` and candidates ``[N, k]``.
    dictionary : Tensor [c, d]
    bias : Tensor [d] | None
        Decoder bias (added by the ``zero`` operator's reconstruction).
    """

    def __init__(
        self,
        data: ExplorerData,
        codes_q: Any,
        codes_c: Any,
        dictionary: torch.Tensor,
        bias: torch.Tensor | None,
    ) -> None:
        self.data = data
        self.codes_q, self.codes_c = codes_q, codes_c
        self.dictionary, self.bias = dictionary, bias
        self.c = int(dictionary.shape[0])
        self._base: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._norm2: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def base(self, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw vectors an operator acts on: ``x`` (embeddings) or ``rec`` (SAE
        reconstructions, what ``zero`` starts from): ``(queries [Q, d], candidates [N, d])``."""
        if kind not in self._base:
            if kind == "x":
                v = (self.data.queries, self.data.candidates)
            else:
                v = tuple(
                    decode(codes.values, codes.indices, self.dictionary, self.bias)
                    for codes in (self.codes_q, self.codes_c)
                )
            self._base[kind] = v
        return self._base[kind]

    def norms2(self, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Squared row norms (float64) of :meth:`base`."""
        if kind not in self._norm2:
            xq, xc = self.base(kind)
            self._norm2[kind] = ((xq.double() ** 2).sum(1), (xc.double() ** 2).sum(1))
        return self._norm2[kind]

    def restricted(self, codes: Any, S: torch.Tensor) -> torch.Tensor:
        """Dense codes on the concepts ``S`` only: ``[rows, |S|]`` float32."""
        lookup = torch.full((self.c,), -1, dtype=torch.long)
        lookup[S] = torch.arange(S.numel())
        pos = lookup[codes.indices]
        ok = pos >= 0
        A = torch.zeros(codes.values.shape[0], S.numel() + 1)
        A.scatter_add_(
            1, torch.where(ok, pos, S.numel()), torch.where(ok, codes.values.float(), 0.0)
        )
        return A[:, :-1]

    def ablated(self, cfg: EvalConfig) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit-norm ablated ``(queries [Q, d], candidates [N, d])`` of a setting (no
        whitening), with :func:`analysis.ablate`."""

        S = list(cfg.ablate)
        xq, xc = self.data.queries, self.data.candidates
        q = (
            ablate(xq, self.codes_q, self.dictionary, S, cfg.op, bias=self.bias)
            if cfg.sides != "candidate"
            else unit_rows(xq)
        )
        c = (
            ablate(xc, self.codes_c, self.dictionary, S, cfg.op, bias=self.bias)
            if cfg.sides != "query"
            else unit_rows(xc)
        )
        return q, c
