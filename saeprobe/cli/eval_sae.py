"""``saeprobe eval-sae``: splice an SAE into its model and report CE, KL and loss recovered.

Example
-------
    saeprobe eval-sae --sae runs/qwen2vl_sae --model Qwen/Qwen2-VL-7B-Instruct \\
        --data coco_val.parquet --hook final_norm --limit 200
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "eval-sae",
        help="downstream check: next-token CE / KL with the SAE spliced into the model",
        description="Replace the hooked hidden states with the SAE reconstruction (and, as a "
        "baseline, with zeros) on held-out inputs; report next-token cross-entropy, KL to the "
        "clean run and loss recovered = (CE_zero - CE_sae) / (CE_zero - CE_clean).",
    )
    p.add_argument("--sae", required=True, help="SAE folder (saeprobe train --out) or file")
    p.add_argument("--model", required=True, help="hub id or local folder (with its LM head)")
    p.add_argument(
        "--data",
        required=True,
        help="a .txt file (one text per line) or any data "
        "source `saeprobe capture` reads (COCO parquet, image folder, M-BEIR)",
    )
    p.add_argument("--mode", help="data mode, e.g. captions, images, images+captions")
    p.add_argument("--hook", default="final_norm", help="final_norm or resid_post.L")
    p.add_argument("--limit", type=int, default=64, help="items to evaluate (default 64)")
    p.add_argument("--start", type=int, default=0, help="skip the first N items (held-out split)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--model-dtype", help="model dtype (default: float32 on CPU, bfloat16 on CUDA)")
    p.add_argument("--keep-system", action="store_true", help="splice SYSTEM tokens too")
    p.add_argument("--out", help="write the result as JSON here")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)
    return p


def _items(args):
    import itertools

    from saeprobe._types import Item

    path = Path(args.data)
    if path.suffix == ".txt":
        if not path.is_file():
            raise FileNotFoundError(f"data file {path} not found")
        lines = [s.strip() for s in path.read_text().splitlines() if s.strip()]
        items = (Item(f"line{i}", text=s) for i, s in enumerate(lines))
    else:
        from saeprobe.data import open_source

        items = iter(open_source(args.data, **({"mode": args.mode} if args.mode else {})))
    return itertools.islice(items, args.start, None)


def run(args: argparse.Namespace) -> int:
    import torch

    from sae_training.evaluate import evaluate_splice
    from saeprobe.models import load_model, resolve_dtype
    from saeprobe.sae import load_sae

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = resolve_dtype(args.model_dtype) or (
        torch.bfloat16 if device.startswith("cuda") else torch.float32
    )
    sae = load_sae(args.sae, device=device)
    adapter = load_model(args.model, dtype=dtype, device=device)
    res = evaluate_splice(
        adapter,
        sae,
        _items(args),
        args.hook,
        batch_size=args.batch_size,
        limit=args.limit,
        skip_system=not args.keep_system,
        progress=not args.no_progress,
    )
    print(res.summary())
    if args.out:
        from saeprobe.atomic import atomic_write_text

        atomic_write_text(Path(args.out), json.dumps(res.to_dict(), indent=2))
        print(f"wrote {args.out}")
    return 0
