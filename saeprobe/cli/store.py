"""``saeprobe store``: inspect and verify activation stores.

``saeprobe store verify STORE`` checks every shard (size, content hash, readability,
shapes) and says which shards to re-create; exit status 1 when any is damaged.
``saeprobe store info STORE`` prints the manifest summary.
"""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("store", help="verify or describe an activation store")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    v = actions.add_parser("verify", help="check every shard against the manifest's hashes")
    v.add_argument("store", help="store folder (a hook point's folder)")
    i = actions.add_parser("info", help="tokens, samples, modalities, shards, capture settings")
    i.add_argument("store", help="store folder (a hook point's folder)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from saeprobe.store import ActivationStore, verify_store

    if args.action == "verify":
        report = verify_store(args.store)
        print(report.summary())
        return 0 if report.ok else 1
    st = ActivationStore(args.store, allow_incomplete=True, verify=False)
    counts = ", ".join(f"{k}={v:,}" for k, v in st.modality_counts.items())
    print(
        f"{st.path}: d={st.d} {st.dtype_name}, {st.n_tokens:,} tokens, {st.n_samples:,} samples, {len(st.shards)} shards"
    )
    print(f"modality: {counts}")
    for k in ("model", "hook_point", "data", "pools", "skip_system"):
        if k in st.metadata:
            print(f"{k}: {st.metadata[k]}")
    return 0
