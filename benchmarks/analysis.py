"""Throughput of the concept-analysis steps against a straightforward dense torch version.

Steps: statistics (streaming accumulator over token codes), bridge (scores + top pairs),
attribution (over matched pairs), ablation sweep (ablate + exhaustive search + Recall@k).
The dense versions build ``[N, c]`` code matrices and ``M = D D^T`` (skipped when
``c x c`` would not fit ``--dense-max-gb``). Default run: small sizes, < 2 min on 2 CPU cores;
the paper scale is ``--c 32768 --d 4096 --k 50 --tokens 1000000 --pairs 100000``.

    python benchmarks/analysis.py [--c 4096 --d 256 --k 32 --tokens 100000 --pairs 5000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis import (  # noqa: E402
    ConceptStatsAccumulator,
    ablate,
    ablation_sweep,
    bridge_scores,
    retrieval_attribution,
    top_distractors,
)
from analysis.codes import to_dense  # noqa: E402
from saeprobe.ranking import recall_at_k, topk_search  # noqa: E402


def random_codes(n: int, c: int, k: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    # zipf-like concept popularity, k distinct-ish indices per row
    w = 1.0 / torch.arange(1, c + 1, dtype=torch.float32) ** 0.8
    idx = torch.multinomial(w, n * k, replacement=True, generator=g).view(n, k)
    return torch.rand(n, k, generator=g), idx


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--c", type=int, default=4096)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=8192, help="tokens per accumulator update")
    ap.add_argument("--pairs", type=int, default=5_000)
    ap.add_argument("--n-ablate", type=int, default=16)
    ap.add_argument(
        "--sweep-queries", type=int, default=1000, help="queries evaluated in the sweep (0: all)"
    )
    ap.add_argument("--dense-max-gb", type=float, default=2.0)
    ap.add_argument("--no-dense", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    c, d, k = a.c, a.d, a.k
    D = torch.randn(c, d, generator=g)
    D = D / D.norm(dim=1, keepdim=True)
    dense_ok = not a.no_dense and (c * c * 8) / 2**30 <= a.dense_max_gb
    dense_codes_ok = not a.no_dense and (a.batch * c * 8) / 2**30 <= a.dense_max_gb
    print(
        f"c={c} d={d} k={k} tokens={a.tokens:,} pairs={a.pairs:,} threads={torch.get_num_threads()}"
    )
    rows = []
    print(
        f"{'step':34s} {'sparse s':>9s} {'dense s':>9s} {'ratio':>7s}  throughput (sparse)",
        flush=True,
    )

    class Rows(list):
        def append(self, row):
            super().append(row)
            name, ts, td, n, unit = row
            dd = f"{td:9.3f}" if td is not None else f"{'skipped':>9s}"
            ratio = f"{td / ts:6.1f}x" if td is not None else f"{'-':>7s}"
            print(f"{name:34s} {ts:9.3f} {dd} {ratio}  {n / ts:,.0f} {unit}/s", flush=True)

    rows = Rows()

    # warm-up: the autograd engine's first call (used by the sparse dot kernel) costs ~0.5 s once
    from analysis.codes import paired_decode_dots

    wv, wi = random_codes(8, c, k, g)
    paired_decode_dots(wv, wi, wv, wi, D)

    # ---- statistics
    batches = []
    for s in range(0, a.tokens, a.batch):
        n = min(a.batch, a.tokens - s)
        v, i = random_codes(n, c, k, g)
        batches.append((v, i, torch.randint(0, 4, (n,), generator=g)))

    def sparse_stats():
        acc = ConceptStatsAccumulator(c)
        for v, i, m in batches:
            acc.update(v, i, m)
        return acc.result()

    def dense_stats():
        sums = torch.zeros(4, c, dtype=torch.float64)
        nnz = torch.zeros(4, c, dtype=torch.float64)
        for v, i, m in batches:
            z = to_dense(v, i, c).double()
            onehot = torch.nn.functional.one_hot(m.long(), 4).double()
            sums += onehot.T @ z
            nnz += onehot.T @ (z != 0).double()
        return sums.sum(0) / a.tokens

    st, ts = timed(sparse_stats)
    td = None
    if dense_codes_ok:
        ref, td = timed(dense_stats)
        assert torch.allclose(st.energy, ref, atol=1e-6)
    rows.append(("stats", ts, td, a.tokens, "tokens"))

    # ---- bridge
    img = random_codes(a.pairs, c, k, g)
    txt = random_codes(a.pairs, c, k, g)
    br, ts = timed(lambda: bridge_scores(img, txt, D, n_candidates=min(c, 1024)))
    td = None
    if dense_ok:

        def dense_bridge():
            M = D.double() @ D.double().T
            out = torch.zeros(c, c, dtype=torch.float64)
            for s in range(0, a.pairs, 4096):
                zi = to_dense(img[0][s : s + 4096], img[1][s : s + 4096], c).double()
                zt = to_dense(txt[0][s : s + 4096], txt[1][s : s + 4096], c).double()
                out += zi.T @ zt
            B = out / a.pairs * M
            return B.sum(1) + B.sum(0)

        ref, td = timed(dense_bridge)
        assert torch.allclose(br.score, ref, atol=1e-4)
    rows.append(("bridge", ts, td, a.pairs, "pairs"))

    # ---- attribution
    at, ts = timed(lambda: retrieval_attribution(txt, img, D, normalize=False))
    td = None
    if dense_ok:

        def dense_attr():
            M = D @ D.T
            out = torch.zeros(c, dtype=torch.float64)
            for s in range(0, a.pairs, 4096):
                zq = to_dense(txt[0][s : s + 4096], txt[1][s : s + 4096], c)
                zc = to_dense(img[0][s : s + 4096], img[1][s : s + 4096], c)
                out += (zq * (zc @ M) + zc * (zq @ M)).double().sum(0)
            return out / a.pairs

        ref, td = timed(dense_attr)
        assert torch.allclose(at.attribution, ref, atol=1e-3)
    rows.append(("attribution", ts, td, a.pairs, "pairs"))

    # ---- ablation: the operator alone, then the sweep with exhaustive search + Recall@k
    from analysis.codes import decode

    xq = decode(*txt, D) + 0.05 * torch.randn(a.pairs, d, generator=g)
    xc = decode(*img, D) + 0.05 * torch.randn(a.pairs, d, generator=g)
    rank = top_distractors(at.attribution, a.n_ablate)
    steps = sorted({0, 1, 2, 4, 8, a.n_ablate})
    nq = min(a.pairs, a.sweep_queries) if a.sweep_queries else a.pairs
    qrows = torch.linspace(0, a.pairs - 1, nq).round().long().unique()
    rel = [{q} for q in range(a.pairs)]

    def dense_op(x, codes, S):
        out = x.clone()
        mask = torch.zeros(c)
        mask[S] = 1
        for s in range(0, x.shape[0], 4096):
            z = to_dense(codes[0][s : s + 4096], codes[1][s : s + 4096], c)
            out[s : s + 4096] -= (z * mask) @ D
        return out / out.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def ops(op):
        for n in steps:
            op(xq, txt, rank[:n])
            op(xc, img, rank[:n])

    _, ts = timed(lambda: ops(lambda x, codes, S: ablate(x, codes, D, S, "subtract")))
    td = timed(lambda: ops(dense_op))[1] if dense_codes_ok else None
    rows.append((f"ablation op ({len(steps)} steps x 2)", ts, td, 2 * len(steps) * a.pairs, "rows"))

    def dense_sweep():
        out = []
        for n in steps:
            q = dense_op(xq[qrows], (txt[0][qrows], txt[1][qrows]), rank[:n])
            cand = dense_op(xc, img, rank[:n])
            r = recall_at_k(topk_search(q, cand, 10).indices, [rel[int(i)] for i in qrows], (1,))
            out.append(r[1])
        return out

    sw, ts = timed(
        lambda: ablation_sweep(
            xq, xc, txt, img, D, rank, steps=steps, ks=(1, 5, 10), query_rows=qrows
        )
    )
    td = None
    if dense_codes_ok:
        r_d, td = timed(dense_sweep)
        assert max(abs(x - y) for x, y in zip(sw.recall[1], r_d)) < 0.01
    rows.append((f"sweep+search ({len(steps)} st, {nq} q)", ts, td, len(steps) * nq, "queries"))


if __name__ == "__main__":
    main()
