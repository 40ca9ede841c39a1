"""``saeprobe explore``: a local web page to toggle SAE features and watch retrieval change."""

from __future__ import annotations

import argparse
import logging
import webbrowser

logger = logging.getLogger(__name__)


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "explore",
        help="local web explorer: ablate SAE features, toggle ReAlign, see Recall@k change",
        description=(
            "Serve a local page (no network access) listing the SAE's features by retrieval "
            "attribution, with checkboxes to ablate them, a whitening toggle, live Recall@1/5/10 "
            "and MRR before vs after, a per-query view and Recall@k vs the number of ablated "
            "features. Data format: docs/explorer.md."
        ),
    )
    p.add_argument(
        "--sae", required=True, help="SAE folder or file (anything saeprobe.load_sae reads)"
    )
    p.add_argument(
        "--data",
        required=True,
        help="embeddings .safetensors: queries [Q, d] + candidates [N, d] (+ qrels [R, 2] or "
        "relevant [Q]), or matched pairs image_emb/text_emb",
    )
    p.add_argument(
        "--features", help="features.parquet (or .csv) from saeprobe analyze: names/tags"
    )
    p.add_argument(
        "--qrels", help='JSON relevance {"query row": [candidate rows]} (overrides the file)'
    )
    p.add_argument(
        "--direction",
        choices=("t2i", "i2t"),
        default="t2i",
        help="for pairs files: text queries -> images (t2i) or the reverse",
    )
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: local only)")
    p.add_argument("--port", type=int, default=8765, help="port (0: any free port)")
    p.add_argument("--device", default="cpu", help="device for the SAE encoder")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser tab")
    p.set_defaults(func=run)
    return p


def build_session(args: argparse.Namespace):
    """Load the SAE, data and features named by ``args`` into an ExplorerSession."""
    from saeprobe.explorer import ExplorerSession, load_data
    from saeprobe.sae import load_sae

    sae = load_sae(args.sae, device=args.device)
    data = load_data(args.data, qrels=args.qrels, direction=args.direction)
    return ExplorerSession(sae, data, features=args.features)


def run(args: argparse.Namespace) -> int:
    from saeprobe.explorer import make_server

    if args.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("binding to %s exposes the explorer beyond this machine", args.host)
    session = build_session(args)
    server = make_server(session, args.host, args.port)
    url = f"http://{args.host}:{server.server_port}/"
    base = session.baseline
    print(
        f"saeprobe explore: {session.data.n_queries} queries x {session.data.n_candidates} candidates, "
        f"baseline R@1 {base.get('R@1', float('nan')):.3f}"
    )
    print(f"serving on {url}  (Ctrl-C to stop)", flush=True)
    if not args.no_browser:
        try:
            webbrowser.open(url)
        except Exception as exc:  # noqa: BLE001 - a missing browser is not fatal
            logger.warning("could not open a browser (%s); open %s yourself", exc, url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped")
    finally:
        server.server_close()
    return 0
