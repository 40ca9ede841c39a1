"""``saeprobe train``: train an SAE on an activation store.

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


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train",
        help="train a sparse autoencoder on stored activations",
        description="Train an SAE (Top-K, BatchTopK, JumpReLU, Standard) on an activation store; "
        "checkpointed and resumable, DDP under torchrun.",
    )
    p.add_argument(
        "--activations", required=True, help="activation store folder (saeprobe capture)"
    )
    p.add_argument("--out", required=True, help="output folder (SAE, checkpoints, metrics.jsonl)")
    p.add_argument("--config", help="TrainConfig JSON (e.g. sae_training/configs/qwen2-vl-7b.json)")
    p.add_argument(
        "--recipe", choices=["paper", "default"], help="defaults to fill (default: default)"
    )
    p.add_argument("--arch", choices=["topk", "batchtopk", "jumprelu", "standard"])
    p.add_argument("--k", type=int, help="active latents per token (Top-K / BatchTopK)")
    p.add_argument("--width", type=int, help="number of latents")
    p.add_argument("--batch-size", type=int, help="tokens per global batch")
    p.add_argument("--lr", type=float)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--epochs", type=int, help="passes over the store")
    g.add_argument("--tokens", type=int, help="total training tokens (instead of --epochs)")
    p.add_argument("--l1-coeff", type=float)
    p.add_argument("--auxk-coeff", type=float)
    p.add_argument("--warmup-steps", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--autocast", choices=["auto", "bf16", "none"])
    p.add_argument("--no-fast", action="store_true", help="use the dense reference SAE kernels")
    p.add_argument("--keep-system", action="store_true", help="train on SYSTEM tokens too")
    p.add_argument("--log-interval", type=int)
    p.add_argument("--ckpt-interval", type=int)
    p.add_argument(
        "--eval-activations", help="held-out store evaluated every --eval-interval steps"
    )
    p.add_argument("--eval-interval", type=int)
    p.add_argument("--wandb-project", help="also log to this wandb project (if wandb is installed)")
    p.add_argument(
        "--resume", action="store_true", help="continue from the newest checkpoint in --out"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


_FLAG_TO_FIELD = {
    "recipe": "recipe",
    "arch": "arch",
    "k": "k",
    "width": "width",
    "batch_size": "batch_size",
    "lr": "lr",
    "epochs": "epochs",
    "tokens": "total_tokens",
    "l1_coeff": "l1_coeff",
    "auxk_coeff": "auxk_coeff",
    "warmup_steps": "warmup_steps",
    "seed": "seed",
    "device": "device",
    "autocast": "autocast",
    "log_interval": "log_interval",
    "ckpt_interval": "ckpt_interval",
    "eval_interval": "eval_interval",
    "wandb_project": "wandb_project",
}


def build_config(args: argparse.Namespace):
    """TrainConfig from ``--config`` (if any) overridden by explicit flags."""
    from sae_training.config import TrainConfig

    base = TrainConfig.from_json(args.config).to_dict() if args.config else {}
    for flag, name in _FLAG_TO_FIELD.items():
        value = getattr(args, flag, None)
        if value is not None:
            base[name] = value
    if args.tokens is not None:
        base["epochs"] = None
    elif args.epochs is not None:
        base["total_tokens"] = None
    if args.no_fast:
        base["fast"] = False
    if args.keep_system:
        base["drop_system"] = False
    if args.no_progress:
        base["progress"] = False
    base["out_dir"] = args.out
    return TrainConfig.from_dict(base)


def run(args: argparse.Namespace) -> int:
    from sae_training.trainer import train
    from saeprobe.distributed import init_distributed

    cfg = build_config(args)
    info = init_distributed()
    result = train(
        cfg,
        args.activations,
        eval_data=args.eval_activations,
        resume=args.resume,
    )
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
        print(f"  saved to {result.out_dir} (cfg.json, sae_weights.safetensors, metrics.jsonl)")
        if args.verbose:
            print(json.dumps(m, indent=2, default=str), file=sys.stderr)
    return 0
