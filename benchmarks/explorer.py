"""Explorer recompute time: one request (new ablation, or a new ReAlign alpha) against the
naive dense recompute measured in the same run.

A request starts from cached embeddings and sparse codes (no model forward, no SAE encode):

* **ablate**: tick the top 5 distractors (``subtract``, no whitening): the session updates
  its cached Gram matrix by a rank-``2|S|`` product (fast path);
* **ablate + ReAlign**: the same with ReAlign on: the ablated sides are refitted (mean,
  covariance eigendecomposition) and scored in their eigenbases;
* **alpha**: move the ReAlign slider with the ablation unchanged: one ``[Q, d] x [d, N]``
  product plus the top-k (the product alone is printed as the floor of a whitened request).

The naive recompute does what a script would: :func:`analysis.ablate` on both sides,
:func:`saeprobe.whitening.realign` when whitening, the dense ``[Q, N]`` cosine matrix, its
top-10 and the rank of each relevant candidate. Both give the same metrics (checked).

    python benchmarks/explorer.py                       # demo scale and 5k x 25k
    python benchmarks/explorer.py --scales 500x1000 --threads 1

Not a test: it prints times, it asserts nothing about them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis import ablate  # noqa: E402
from saeprobe.explorer import ExplorerData, ExplorerSession  # noqa: E402
from saeprobe.ranking import ranking_metrics  # noqa: E402
from saeprobe.sae import SAEConfig, TopKSAE  # noqa: E402
from saeprobe.whitening import realign  # noqa: E402


def make_session(Q: int, N: int, d: int, c: int, k: int, seed: int = 0) -> ExplorerSession:
    """Anisotropic candidates, noisy queries (query i relevant to candidate i), a random
    Top-K SAE; the session's start-up (SAE encode, attribution, Gram matrix) is not timed."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.linspace(3.0, 0.3, d)
    common = torch.randn(1, d, generator=g)
    cand = torch.randn(N, d, generator=g) * scales + common
    queries = cand[:Q] + 0.8 * torch.randn(Q, d, generator=g) * scales
    torch.manual_seed(seed)
    sae = TopKSAE(SAEConfig(arch="topk", d_in=d, d_sae=c, k=k))
    data = ExplorerData(queries, cand, [{i} for i in range(Q)])
    return ExplorerSession(sae, data)


def naive(s: ExplorerSession, S: list[int], whiten: bool, alpha: float) -> dict:
    """The dense recompute: ablate, (ReAlign), full score matrix, top-10, ranks."""
    d = s.data
    q = ablate(d.queries, s.codes_q, s.dictionary, S, "subtract", bias=s.bias)
    c = ablate(d.candidates, s.codes_c, s.dictionary, S, "subtract", bias=s.bias)
    if whiten:
        q, c = realign(q, alpha=alpha), realign(c, alpha=alpha)
    scores = q @ c.T
    top = torch.topk(scores, 10, dim=1).indices
    rel = torch.arange(d.n_queries)
    best = scores[rel, rel]
    ranks = (scores > best[:, None]).sum(1) + 1
    m = ranking_metrics(top, d.relevant, (1, 5, 10))
    m["median_rank"] = float(ranks.double().median())
    return m


def timed(fn) -> tuple[object, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def one_round(s: ExplorerSession, case: str, r: int) -> tuple[float, float]:
    """``(our seconds, naive seconds)`` of one request of ``case`` (a new ablation each round,
    so nothing comes from the result cache; the alpha case keeps the round's ablation)."""
    S = s.top_distractors(5 + r)
    whiten = case != "ablate"
    alpha = 0.2 + 0.1 * r if case == "alpha" else 0.1
    if case == "alpha":
        s.evaluate(S, "subtract", "realign", 0.11)  # fits this ablation
    res, t_ours = timed(lambda: s.evaluate(S, "subtract", "realign" if whiten else "none", alpha))
    ref, t_naive = timed(lambda: naive(s, S, whiten, alpha))
    for key in ("R@1", "R@10", "MRR"):
        if abs(res.metrics[key] - ref[key]) > 1e-9:
            print(f"  warning: {key} differs: {res.metrics[key]} vs naive {ref[key]}")
    return t_ours, t_naive


CASES = {
    "ablate": "ablate top-5 (fast path)",
    "refit": "ablate top-5 + ReAlign (refit)",
    "alpha": "move the alpha slider",
}


def bench_scale(Q: int, N: int, args) -> list[tuple[str, float, float]]:
    t0 = time.perf_counter()
    s = make_session(Q, N, args.d, args.c, args.k)
    print(
        f"\n{Q:,} queries x {N:,} candidates, d={args.d}, c={args.c}, k={args.k} "
        f"(session start-up {time.perf_counter() - t0:.1f} s, not timed below)"
    )
    y, c = torch.randn(Q, args.d), torch.randn(N, args.d)
    floor = min(
        timed(lambda: [y[i : i + 1024] @ c.T for i in range(0, Q, 1024)])[1] for _ in range(2)
    )
    print(
        f"  floor of a whitened request: one [Q, d] x [d, N] float32 product, {floor * 1e3:.1f} ms"
    )
    print(f"  {'request':32s} {'saeprobe median / best':>24s} {'naive median / best':>22s}  ratio")
    rows = []
    for case, name in CASES.items():
        times = [one_round(s, case, r) for r in range(args.repeats)]
        ours, theirs = [t for t, _ in times], [t for _, t in times]
        a, b = statistics.median(ours), statistics.median(theirs)
        rows.append((name, a, b))
        print(
            f"  {name:32s} {a * 1e3:9.1f} / {min(ours) * 1e3:7.1f} ms "
            f"{b * 1e3:9.1f} / {min(theirs) * 1e3:7.1f} ms  {b / a:5.1f}x"
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--scales", default="500x1000,5000x25000", help="QxN,QxN,...")
    ap.add_argument("--d", type=int, default=576)
    ap.add_argument("--c", type=int, default=4096)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for scale in args.scales.split(","):
        Q, N = (int(x) for x in scale.lower().split("x"))
        bench_scale(Q, N, args)


if __name__ == "__main__":
    main()
