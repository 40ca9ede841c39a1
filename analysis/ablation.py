"""Ablating concepts from embeddings, and the Recall@k sweep over the number ablated.

Operators for a concept set ``S`` (then each row is L2-normalised again):

* ``"subtract"``: ``x - sum_{i in S} z_i d_i`` (keeps the SAE reconstruction error);
* ``"zero"``: decode from the codes with ``z_S = 0``: ``sum_{i not in S} z_i d_i (+ b_dec)``
  (drops the error);
* ``"project"``: remove the component of ``x`` in ``span{d_i : i in S}`` (orthogonal
  projection, whatever the codes).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from saeprobe.ranking import recall_at_k, topk_search

from .codes import Codes, check_codes, decode

logger = logging.getLogger(__name__)

METHODS = ("subtract", "zero", "project")


def ablate(
    x: torch.Tensor,
    codes: Codes | tuple[torch.Tensor, torch.Tensor] | None,
    dictionary: torch.Tensor,
    concepts: Sequence[int] | torch.Tensor,
    method: str = "subtract",
    normalize: bool = True,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Remove ``concepts`` from embeddings ``x [N, d]`` (codes ``[N, k]`` of ``x``) -> ``[N, d]``."""
    if method not in METHODS:
        raise ValueError(f"unknown ablation method {method!r}; use one of {', '.join(METHODS)}")
    D = dictionary.float()
    c, d = D.shape
    if x.ndim != 2 or x.shape[1] != d:
        raise ValueError(
            f"embeddings must be [N, {d}] (the dictionary width), got {tuple(x.shape)}"
        )
    S = torch.as_tensor(concepts, dtype=torch.long).reshape(-1)
    if S.numel() and (int(S.min()) < 0 or int(S.max()) >= c):
        raise ValueError(f"concept ids must lie in [0, {c})")
    x = x.float()
    if method == "project":
        if S.numel():
            Q, _ = torch.linalg.qr(D[S].T.double())  # [d, |S|]
            x = (x.double() - (x.double() @ Q) @ Q.T).float()
        out = x
    else:
        if codes is None:
            raise ValueError(f"ablation method {method!r} needs the SAE codes of the embeddings")
        v, i = check_codes(codes[0], codes[1], c)
        if v.shape[0] != x.shape[0]:
            raise ValueError(f"{v.shape[0]} code rows for {x.shape[0]} embeddings")
        # the codes restricted to S as a dense [N, |S|] matrix, then one GEMM with D[S]:
        # O(N |S| d), never O(N k d) (nor a gathered [entries, d] tensor)
        S = torch.unique(S)
        lut = torch.full((c,), -1, dtype=torch.long)
        lut[S] = torch.arange(S.numel())
        pos = lut[i]
        r, j = torch.nonzero(pos >= 0, as_tuple=True)
        zs = torch.zeros(x.shape[0], S.numel(), dtype=torch.float32)
        zs.index_put_((r, pos[r, j]), v[r, j].float(), accumulate=True)
        part = zs @ D[S]
        if method == "subtract":
            out = x - part
        else:
            out = decode(v.float(), i, D, bias) - part
    if normalize:
        out = out / out.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return out


@dataclass
class AblationSweep:
    """Recall@k after ablating the first ``n`` concepts of a ranking, for each ``n``.

    ``recall[k][s]`` is Recall@k with ``n_ablated[s]`` concepts removed (``concepts[:n]``).
    JSON-friendly via :meth:`to_dict`.
    """

    n_ablated: list[int]
    recall: dict[int, list[float]]
    concepts: list[int]
    method: str
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "x": self.n_ablated,
            "xlabel": "number of ablated concepts",
            "recall": {str(k): v for k, v in self.recall.items()},
            "concepts": self.concepts,
            "method": self.method,
        }


def default_steps(n_max: int) -> list[int]:
    """0, 1, 2, 4, ... up to ``n_max`` (included)."""
    steps, n = [0], 1
    while n < n_max:
        steps.append(n)
        n *= 2
    if n_max > 0:
        steps.append(n_max)
    return steps


def ablation_sweep(
    x_q: torch.Tensor,
    x_c: torch.Tensor,
    codes_q: Codes | tuple[torch.Tensor, torch.Tensor] | None,
    codes_c: Codes | tuple[torch.Tensor, torch.Tensor] | None,
    dictionary: torch.Tensor,
    ranking: Sequence[int] | torch.Tensor,
    relevant: Sequence[set[int]] | None = None,
    steps: Sequence[int] | None = None,
    ks: Sequence[int] = (1, 5, 10),
    method: str = "subtract",
    sides: str = "both",
    bias: torch.Tensor | None = None,
    query_rows: torch.Tensor | None = None,
) -> AblationSweep:
    """Ablate ``ranking[:n]`` for each ``n`` in ``steps`` and evaluate retrieval.

    Queries ``x_q [Q, d]`` rank candidates ``x_c [N, d]`` by cosine (rows are L2-normalised);
    ``relevant`` defaults to matched rows (``{q}`` for query ``q``). ``sides``: ``"both"``,
    ``"query"`` or ``"candidate"``. ``query_rows`` evaluates only these queries (all
    candidates are still searched; ``relevant`` stays indexed by the full query set).
    Recall@k comes from :func:`saeprobe.ranking.recall_at_k`.
    """
    if sides not in ("both", "query", "candidate"):
        raise ValueError(f"sides must be 'both', 'query' or 'candidate', got {sides!r}")
    if relevant is None:
        if x_q.shape[0] != x_c.shape[0]:
            raise ValueError(
                "without `relevant`, queries and candidates must be matched row by row"
            )
        relevant = [{q} for q in range(x_q.shape[0])]
    if query_rows is not None:
        query_rows = torch.as_tensor(query_rows, dtype=torch.long).reshape(-1)
        x_q = x_q[query_rows]
        if codes_q is not None:
            codes_q = (codes_q[0][query_rows], codes_q[1][query_rows])
        relevant = [relevant[int(q)] for q in query_rows]
    ranking = torch.as_tensor(ranking, dtype=torch.long).reshape(-1)
    steps = list(steps) if steps is not None else default_steps(len(ranking))
    if any(s > len(ranking) or s < 0 for s in steps):
        raise ValueError(f"steps must lie in [0, {len(ranking)}] (the length of the ranking)")
    ks = [k for k in ks if k <= x_c.shape[0]] or [1]
    kmax = max(ks)
    recall: dict[int, list[float]] = {k: [] for k in ks}
    for n in steps:
        S = ranking[:n]
        q = (
            ablate(x_q, codes_q, dictionary, S, method, bias=bias)
            if sides != "candidate"
            else _unit(x_q)
        )
        c = (
            ablate(x_c, codes_c, dictionary, S, method, bias=bias)
            if sides != "query"
            else _unit(x_c)
        )
        top = topk_search(q, c, kmax)
        r = recall_at_k(top.indices, relevant, ks)
        for k in ks:
            recall[k].append(float(r[k]))
        logger.info("ablated %d concepts: %s", n, {k: round(v[-1], 4) for k, v in recall.items()})
    extra = {"n_queries": int(x_q.shape[0]), "n_candidates": int(x_c.shape[0]), "sides": sides}
    return AblationSweep(list(steps), recall, ranking.tolist(), method, extra)


def _unit(x: torch.Tensor) -> torch.Tensor:
    x = x.float()
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
