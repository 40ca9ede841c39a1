"""``saeprobe explore``: a local web page to browse concepts, ablate them and watch retrieval.

``saeprobe explore RUN_DIR`` opens a run folder (docs/run-folder.md): its models and tasks
are menus on the page. ``saeprobe explore --sae SAE --data EMB.safetensors`` opens one
retrieval data file (docs/explorer.md).
"""

from __future__ import annotations

import argparse
import logging
import webbrowser

from .flags import add_command

logger = logging.getLogger(__name__)


HELP = "local web explorer: concepts, cards, ablation, ReAlign, Recall@k before / after"
DESCRIPTION = (
    "Serve a local page (no network access) over a run folder (saeprobe explore RUN_DIR) "
    "or one SAE + embeddings file (--sae --data): a feature table and an energy-vs-"
    "modality scatter linked to feature cards with top-activating items, checkboxes to "
    "ablate features, a ReAlign alpha slider, live Recall@1/5/10 and MRR before vs after "
    "and a per-query view. Formats: docs/run-folder.md, docs/explorer.md."
)


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = add_command(subparsers, "explore", HELP, description=DESCRIPTION)
    p.add_argument("run_dir", nargs="?", help="a run folder (has run.json), e.g. out/demo")
    p.add_argument("--model", help="run folder: the model to open first (default: the first)")
    p.add_argument("--task", help="run folder: the task to open first (default: the first)")
    p.add_argument("--sae", help="SAE folder or file (anything saeprobe.load_sae reads)")
    p.add_argument(
        "--data",
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


def build_app(args: argparse.Namespace):
    """The app the server serves: a :class:`RunExplorer` for ``RUN_DIR`` (prepared for its
    first view), else a :class:`SingleSession` of ``--sae`` / ``--data``."""
    from saeprobe.cli import CLIError
    from saeprobe.explorer import RunExplorer, SingleSession

    if args.run_dir:
        if args.sae or args.data:
            raise CLIError("give either RUN_DIR or --sae/--data, not both")
        app = RunExplorer(args.run_dir, device=args.device)
        app.prepare(args.model, args.task)
        return app
    if not (args.sae and args.data):
        raise CLIError(
            "saeprobe explore needs a run folder (saeprobe explore RUN_DIR) or --sae SAE --data "
            "EMB.safetensors"
        )
    return SingleSession(build_session(args))


def run(args: argparse.Namespace) -> int:
    from saeprobe.explorer import make_server
    from saeprobe.explorer.server import server_url

    app = build_app(args)
    server = make_server(app, args.host, args.port)
    url = server_url(server)
    model, task = app.resolve(args.model, args.task)
    if task is not None:
        s = app.session(model, task)
        r1 = s.baseline.get("R@1", float("nan"))
        print(
            f"saeprobe explore: {model} / {task}: {s.data.n_queries} queries x "
            f"{s.data.n_candidates} candidates, baseline R@1 {r1:.3f}"
        )
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {args.host} exposes the explorer beyond this machine")
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
