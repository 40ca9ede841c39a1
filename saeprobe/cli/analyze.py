"""``saeprobe analyze``: concept analysis of an SAE on an activation store (and matched pairs)
-> ``report.html`` (self-contained), ``features.parquet`` / ``features.csv``, ``summary.json``."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from .flags import add_command, add_config_flags, config_from_args
from .runflags import add_run_flags, record_part, run_default, run_out

logger = logging.getLogger(__name__)


HELP = "concept statistics, tags, bridge, attribution, distractors -> HTML report"
DESCRIPTION = (
    "Analyse the concepts of an SAE: statistics from an activation store, bridge scores, "
    "retrieval attribution and an ablation sweep from matched image-text pairs. Writes "
    "OUT/report.html (works offline), OUT/features.parquet, OUT/features.csv and "
    "OUT/summary.json. See docs/analysis.md."
)


def add_parser(subparsers) -> argparse.ArgumentParser:
    from analysis import AnalysisConfig

    p = add_command(subparsers, "analyze", HELP, description=DESCRIPTION)
    p.add_argument(
        "--sae",
        help="SAE folder or file (anything saeprobe.load_sae reads; default with --run: the run "
        "model's SAE)",
    )
    p.add_argument(
        "--activations",
        help="activation store folder (per-token codes for the statistics; default with --run: "
        "the run model's store)",
    )
    p.add_argument(
        "--pairs",
        help="matched pairs: a .safetensors with image_emb [P, d] and text_emb [P, d], or a capture "
        "folder holding pooled.safetensors (matched through the images+captions --data source); "
        "see docs/analysis.md",
    )
    p.add_argument(
        "--pool-key",
        default=None,
        help="pooled embedding of a capture folder, '<hook point>.<pool>' (default: the *.mean one)",
    )
    p.add_argument(
        "--data",
        help="data source of the store's items (for feature-card texts and thumbnails): anything "
        "saeprobe.data.open_source reads, or a .jsonl with id/text/image(path) per line",
    )
    p.add_argument(
        "--out",
        help="output folder (published when complete; default with --run: "
        "RUN/models/MODEL/analysis)",
    )
    add_run_flags(p, "write the analysis into")
    p.add_argument("--force", action="store_true", help="replace an existing --out folder")
    p.add_argument(
        "--include-system", action="store_true", help="keep SYSTEM tokens in the statistics"
    )
    p.add_argument("--textual-threshold", type=float, default=0.9, help="score > this: textual")
    p.add_argument("--visual-threshold", type=float, default=0.1, help="score < this: visual")
    p.add_argument(
        "--bridge-mass",
        type=float,
        default=0.5,
        help="bridge concepts: top concepts carrying this share of the bridge score",
    )
    p.add_argument(
        "--layer-sweep", help='JSON {"x": [...], "recall": {k: [...]}} of Recall@k vs layer'
    )
    p.add_argument("--alpha-sweep", help="JSON of Recall@k vs whitening alpha (same format)")
    p.add_argument("--title", default="saeprobe concept analysis")
    p.add_argument("--no-progress", action="store_true")
    dests = add_config_flags(
        p,
        AnalysisConfig,
        skip=("tags", "exclude_system"),
        choices={
            "modality_level": ("input", "token"),
            "convention": ("text", "image"),
            "ablation_method": ("subtract", "zero", "project"),
            "query_side": ("text", "image"),
        },
        group="analysis config (AnalysisConfig fields)",
    )
    p.set_defaults(func=run, config_dests=dests)
    return p


def _jsonl_items(path: Path):
    from saeprobe._types import Item

    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def lookup(index: int):
        if not 0 <= index < len(rows):
            return None
        r = rows[index]
        img = None
        if r.get("image"):
            from PIL import Image

            ip = Path(r["image"])
            ip = ip if ip.is_absolute() else path.parent / ip
            img = Image.open(ip).convert("RGB")
        return Item(str(r.get("id", index)), r.get("text"), img)

    return lookup


def _items(spec: str | None, source=None):
    if not spec:
        return None
    path = Path(spec)
    if path.suffix == ".jsonl":
        if not path.exists():
            raise FileNotFoundError(f"--data {spec} does not exist")
        return _jsonl_items(path)
    if source is None:
        from saeprobe.data import open_source

        source = open_source(spec)
    return source  # resolved by sample id through source.item(index)


def resolve_inputs(args: argparse.Namespace) -> None:
    """``--sae`` / ``--activations`` / ``--out`` from ``--run`` where not given; one-line
    errors for what is still missing."""
    from saeprobe.cli import CLIError

    if args.run:
        args.sae = args.sae or run_default(args, "sae")
        if not args.activations:
            from saeprobe.run import RunError

            try:
                args.activations = run_default(args, "store")
            except RunError:
                if not args.pairs:
                    raise
        args.out = args.out or run_out(args, "analysis")
    for flag in ("sae", "out"):
        if not getattr(args, flag):
            raise CLIError(f"pass --{flag} (or --run RUN to use a run folder's model)")
    if not args.activations and not args.pairs:
        raise CLIError("nothing to analyse: pass --activations STORE and/or --pairs PAIRS")


def checked_sweeps(args: argparse.Namespace) -> dict[str, str]:
    """The ``--layer-sweep`` / ``--alpha-sweep`` files, read once to check them."""
    from analysis.figures import load_sweep
    from saeprobe.cli import CLIError

    sweeps = {}
    for name in ("layer_sweep", "alpha_sweep"):
        spec = getattr(args, name)
        if spec:
            try:
                load_sweep(spec)
            except (ValueError, json.JSONDecodeError, FileNotFoundError) as exc:
                raise CLIError(f"--{name.replace('_', '-')}: {exc}") from exc
            sweeps[name] = spec
    return sweeps


def read_pairs(args: argparse.Namespace):
    """``(pairs, data source)`` of ``--pairs``: a pairs file, or a capture folder matched
    through the ``--data`` source."""
    from analysis import load_pairs
    from saeprobe.cli import CLIError

    if not args.pairs:
        return None, None
    pp = Path(args.pairs)
    if not (pp.is_dir() and (pp / "pooled.safetensors").exists()):
        return load_pairs(pp), None
    if not args.data or Path(args.data).suffix == ".jsonl":
        raise CLIError(
            "--pairs is a capture folder: pass --data with the images+captions source "
            "of the capture so images and captions can be matched"
        )
    from analysis.pairs import pairs_from_capture
    from saeprobe.data import open_source

    source = open_source(args.data)
    return pairs_from_capture(pp, source, args.pool_key), source


def _print_summary(files, cfg) -> None:
    result = files.result
    share = result.tag_share
    print(
        f"{result.c} concepts; energy share: textual {100 * share['textual']:.1f}%, visual "
        f"{100 * share['visual']:.1f}%, bimodal {100 * share['bimodal']:.1f}% "
        f"(modality score: 1 = {'textual' if cfg.convention == 'text' else 'visual'})"
    )
    if result.sweep is not None:
        for k, v in result.sweep.recall.items():
            print(
                f"Recall@{k} ablating 0..{result.sweep.n_ablated[-1]} distractors: "
                + " ".join(f"{x:.3f}" for x in v)
            )
    print(f"report: {files.html}")
    print(f"features: {files.table} {files.csv}")


def run(args: argparse.Namespace) -> int:
    from analysis import AnalysisConfig, TagConfig, analyze_store

    resolve_inputs(args)
    sweeps = checked_sweeps(args)
    tags = TagConfig(args.textual_threshold, args.visual_threshold, args.bridge_mass)
    base = {"exclude_system": not args.include_system, "tags": tags}
    cfg = config_from_args(AnalysisConfig, args, args.config_dests, base)
    pairs, source = read_pairs(args)
    files = analyze_store(
        args.sae,
        args.activations,
        args.out,
        pairs=pairs,
        items=_items(args.data, source),
        cfg=cfg,
        layer_sweep=sweeps.get("layer_sweep"),
        alpha_sweep=sweeps.get("alpha_sweep"),
        title=args.title,
        progress=not args.no_progress,
        meta={"pairs": str(args.pairs)} if args.pairs else None,
        force=args.force,
    )
    if args.run:
        record_part(args, "analysis", args.out)
    _print_summary(files, cfg)
    return 0
