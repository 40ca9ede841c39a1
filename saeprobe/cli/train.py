"""``saeprobe train``: train an SAE on an activation store.

Every field of :class:`sae_training.TrainConfig` is a flag (its docstring is the help);
``--config FILE.json`` loads a config, flags override it, and the run writes the config it
used to ``OUT/train_config.json``.

Examples
--------
    saeprobe train --activations runs/qwen2vl_store --arch topk --k 50 --width 32768 \\
        --recipe paper --out runs/qwen2vl_sae
    torchrun --nproc-per-node 4 -m saeprobe train --activations STORE --out DIR --resume
"""

from __future__ import annotations

import argparse
import json
import sys

from .flags import add_command, add_config_flags, config_from_args
from .runflags import add_run_flags, record_part, run_default, run_out

# flags that are not config fields, or config fields with another flag name
_RENAME = {"total_tokens": "tokens"}
_SKIP = ("out_dir", "d_in")


HELP = "train a sparse autoencoder on stored activations"
DESCRIPTION = (
    "Train an SAE on an activation store; checkpointed and resumable, DDP "
    "under torchrun. Every TrainConfig field is a flag; --config FILE.json loads one."
)


def add_parser(subparsers) -> argparse.ArgumentParser:
    from sae_training import RECIPES, TrainConfig
    from sae_training.config import AUTOCAST
    from saeprobe.sae import available_archs

    p = add_command(subparsers, "train", HELP, description=DESCRIPTION)
    p.add_argument(
        "--activations",
        help="activation store folder (saeprobe capture; default with --run: "
        "the run model's store)",
    )
    p.add_argument(
        "--out",
        help="output folder (SAE, checkpoints/, metrics.jsonl; default with --run: "
        "RUN/models/MODEL/sae)",
    )
    add_run_flags(p, "write the SAE into")
    p.add_argument("--config", help="TrainConfig JSON (e.g. sae_training/configs/qwen2-vl-7b.json)")
    p.add_argument(
        "--eval-activations", help="held-out store evaluated every --eval-interval steps"
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--resume", action="store_true", help="continue the run in --out (same config and data)"
    )
    mode.add_argument(
        "--force",
        action="store_true",
        help="replace a previous run in --out (its files are removed)",
    )
    p.add_argument("--keep-system", action="store_true", help="train on SYSTEM tokens too")
    dests = add_config_flags(
        p,
        TrainConfig,
        skip=_SKIP,
        rename=_RENAME,
        choices={"arch": available_archs, "recipe": lambda: list(RECIPES), "autocast": AUTOCAST},
        group="training config (TrainConfig fields)",
    )
    p.set_defaults(func=run, config_dests=dests)
    return p


def resolve_paths(args: argparse.Namespace) -> None:
    """``--activations`` / ``--out`` from ``--run`` when not given (one-line error if neither)."""
    from saeprobe.cli import CLIError

    if args.run:
        args.activations = args.activations or run_default(args, "store")
        args.out = args.out or run_out(args, "sae")
    for flag in ("activations", "out"):
        if not getattr(args, flag):
            raise CLIError(f"pass --{flag} (or --run RUN to use a run folder's model)")


def build_config(args: argparse.Namespace):
    """TrainConfig from ``--config`` (if any) overridden by explicit flags."""
    from sae_training.config import TrainConfig

    base = TrainConfig.from_json(args.config).to_dict() if args.config else {}
    if hasattr(args, "tokens") and not hasattr(args, "epochs"):
        base["epochs"] = None
    elif hasattr(args, "epochs") and not hasattr(args, "tokens"):
        base["total_tokens"] = None
    if args.keep_system:
        base["drop_system"] = False
    base["out_dir"] = args.out
    return config_from_args(TrainConfig, args, args.config_dests, base)


def run(args: argparse.Namespace) -> int:
    from sae_training.trainer import train
    from saeprobe.distributed import init_distributed

    resolve_paths(args)
    cfg = build_config(args)
    info = init_distributed()
    result = train(
        cfg, args.activations, eval_data=args.eval_activations, resume=args.resume, force=args.force
    )
    if info.rank == 0 and args.run:
        record_part(args, "sae", result.out_dir)
    if info.rank == 0:
        m = result.metrics
        fmt = lambda k: f"{m[k]:.4f}" if isinstance(m.get(k), float) else "n/a"  # noqa: E731
        print(
            f"trained {cfg.arch} SAE ({cfg.width} latents, k={cfg.k}) for {result.step} steps / "
            f"{result.tokens:,} tokens in {result.seconds:.1f} s "
            f"({m.get('tokens_per_s_run', float('nan')):,.0f} tokens/s)"
        )
        print(
            f"  fvu {fmt('fvu')}  r2(paper) {fmt('r2')}  mse {fmt('mse')}  l0 {fmt('l0')}  "
            f"dead {fmt('dead')}  skipped batches {result.bad_batches}"
        )
        print(
            f"  saved to {result.out_dir} (cfg.json, sae_weights.safetensors, README.md, "
            "metrics.jsonl, train_config.json)"
        )
        if args.verbose:
            print(json.dumps(m, indent=2, default=str), file=sys.stderr)
    return 0
