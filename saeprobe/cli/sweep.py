"""``saeprobe sweep alpha|layers``: ReAlign alpha sensitivity and per-layer retrieval."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .flags import add_command

logger = logging.getLogger(__name__)


HELP = "retrieval sweeps on an M-BEIR task: ReAlign alpha, or every layer"
DESCRIPTION = (
    "alpha: ReAlign recall for each shrinkage alpha (one embedding pass). "
    "layers: recall of mean-pooled embeddings of every layer's residual stream "
    "(resid_post.L, one forward pass captures all) plus final_norm, base and ReAlign. "
    "Writes the sweep JSON (format in docs/retrieval.md) and an offline plotly HTML."
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    from saeprobe.cli.retrieve import add_common

    p = add_command(sub, "sweep", HELP, description=DESCRIPTION)
    p.add_argument("kind", choices=["alpha", "layers"], help="what to sweep")
    add_common(p)
    p.add_argument(
        "--alphas",
        default="0,0.01,0.05,0.1,0.2,0.3,0.5,0.7,1.0",
        help="alpha values for 'sweep alpha', comma-separated",
    )
    p.add_argument(
        "--layers",
        default=None,
        help="layer indices for 'sweep layers', comma-separated (default: all)",
    )
    p.add_argument(
        "--whiten",
        default="realign",
        help="methods for 'sweep layers' (besides the base embedding)",
    )
    p.add_argument("--layer", default="final_norm", help="hook point for 'sweep alpha'")
    p.add_argument(
        "--out", required=True, help="sweep JSON path (the figure goes next to it, .html)"
    )
    p.add_argument("--figure", default=None, help="figure path (default: OUT with .html)")
    p.set_defaults(func=run)


def _floats(text: str) -> list[float]:
    from saeprobe.cli import CLIError

    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise CLIError(f"--alphas must be comma-separated numbers, got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    from saeprobe.cli import CLIError
    from saeprobe.cli.retrieve import check_out, make_config, setup
    from saeprobe.retrieval import write_json
    from saeprobe.sweeps import alpha_sweep, layer_sweep, sweep_figure
    from saeprobe.whitening import canonical_method

    check_out(args.out, args.force)
    if args.kind == "alpha":
        alphas = _floats(args.alphas)
        config = make_config(args, ["realign"])
        adapter, task, cache, rank = setup(args)
        res = alpha_sweep(adapter, task, alphas, config, cache=cache)
    else:
        methods = ["none"] + [
            canonical_method(m)
            for m in args.whiten.split(",")
            if m.strip() and canonical_method(m) != "none"
        ]
        layers = None
        if args.layers:
            try:
                layers = [int(x) for x in args.layers.split(",") if x.strip()]
            except ValueError:
                raise CLIError(
                    f"--layers must be comma-separated integers, got {args.layers!r}"
                ) from None
        config = make_config(args, methods)
        adapter, task, cache, rank = setup(args)
        res = layer_sweep(adapter, task, config, layers=layers, cache=cache)
    if res is None:
        return 0
    out = write_json(res, args.out)
    fig = sweep_figure(res, args.figure or Path(args.out).with_suffix(".html"))
    print(f"{args.kind} sweep on {task}")
    head = f"{res['x_name']:>12} " + " ".join(f"{'R@' + k:>8}" for k in res["recall"])
    print(head)
    for i, label in enumerate(res["x_labels"]):
        print(f"{label:>12} " + " ".join(f"{100 * v[i]:>8.2f}" for v in res["recall"].values()))
    print(f"sweep: {out}\nfigure: {fig}")
    return 0
