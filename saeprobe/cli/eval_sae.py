"""``saeprobe eval-sae``: the field's SAE metrics, named as SAEBench and sae-lens name them.

With ``--model`` / ``--data`` the SAE is spliced into its model: next-token CE and KL with the
SAE reconstruction and with zero-ablation (``ce_loss_score`` = CE loss recovered,
``kl_div_score``), plus reconstruction, sparsity and feature-density metrics of the spliced
tokens. With ``--activations`` the same reconstruction / sparsity / density metrics come from
an activation store, no model needed. ``--card`` keeps the result in the SAE folder
(``eval.json``) and rewrites its model card with it.

Example
-------
    saeprobe eval-sae --sae runs/qwen2vl_sae --model Qwen/Qwen2-VL-7B-Instruct \\
        --data coco_val.parquet --hook final_norm --limit 200 --card
    saeprobe eval-sae --sae runs/qwen2vl_sae --activations runs/heldout_store --card
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .flags import add_command

HELP = (
    "SAE metrics: CE loss recovered / KL with the SAE spliced in, explained variance, "
    "L0, dead / dense latents, feature density"
)


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = add_command(subparsers, "eval-sae", HELP, __doc__.split("Example")[0].strip())
    p.add_argument("--sae", required=True, help="SAE folder (saeprobe train --out) or file")
    p.add_argument("--model", help="hub id or local folder (with its LM head): splice the SAE in")
    p.add_argument(
        "--data",
        help="with --model: a .txt file (one text per line) or any data "
        "source `saeprobe capture` reads (COCO parquet, image folder, M-BEIR)",
    )
    p.add_argument(
        "--activations", help="activation store: reconstruction / sparsity / density metrics"
    )
    p.add_argument("--max-tokens", type=int, help="with --activations: the first N tokens only")
    p.add_argument("--mode", help="data mode, e.g. captions, images, images+captions")
    p.add_argument("--hook", default="final_norm", help="final_norm or resid_post.L")
    p.add_argument("--limit", type=int, default=64, help="items to evaluate (default 64)")
    p.add_argument("--start", type=int, default=0, help="skip the first N items (held-out split)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--model-dtype", help="model dtype (default: float32 on CPU, bfloat16 on CUDA)")
    p.add_argument("--keep-system", action="store_true", help="evaluate SYSTEM tokens too")
    p.add_argument("--out", help="write the result as JSON here")
    p.add_argument(
        "--card",
        action="store_true",
        help="store the result as eval.json in the SAE folder and rewrite its README.md card",
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)
    return p


def _items(args):
    import itertools

    from saeprobe import Item

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


def _check_args(args: argparse.Namespace) -> None:
    from saeprobe.cli import CLIError

    if args.model is None and args.activations is None:
        raise CLIError("nothing to evaluate: pass --model and --data (splice) or --activations")
    if (args.model is None) != (args.data is None):
        raise CLIError("--model and --data go together: the model runs on the data items")
    if args.card and not Path(args.sae).is_dir():
        raise CLIError(f"--card needs an SAE folder, {args.sae} is not one; drop --card")


def _splice(args: argparse.Namespace, sae, device: str) -> dict:
    import torch

    from sae_training.evaluate import evaluate_splice
    from saeprobe.models import load_model, resolve_dtype

    dtype = resolve_dtype(args.model_dtype) or (
        torch.bfloat16 if device.startswith("cuda") else torch.float32
    )
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
    out = res.to_dict()
    out.update(saebench=res.saebench(), model=args.model, data=args.data, start=args.start)
    return out


def _reconstruction(args: argparse.Namespace, sae, device: str) -> dict:
    from sae_training.evaluate import evaluate_reconstruction

    res = evaluate_reconstruction(
        sae,
        args.activations,
        max_tokens=args.max_tokens,
        drop_system=not args.keep_system,
        device=device,
        progress=not args.no_progress,
    )
    print(res.summary())
    out = res.to_dict()
    out.update(saebench=res.saebench(), activations=str(args.activations))
    return out


def run(args: argparse.Namespace) -> int:
    import torch

    from saeprobe.atomic import atomic_write_json
    from saeprobe.sae import load_sae

    _check_args(args)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    sae = load_sae(args.sae, device=device)
    parts = {}
    if args.activations is not None:
        parts["reconstruction"] = _reconstruction(args, sae, device)
    if args.model is not None:
        parts["splice"] = _splice(args, sae, device)
    if args.out:  # the splice result at the top level (as before), the store one beside it
        result = {"sae": str(args.sae), **parts.get("splice", {})}
        if "reconstruction" in parts:
            result["reconstruction"] = parts["reconstruction"]
        atomic_write_json(Path(args.out), result, what="eval-sae result")
        print(f"wrote {args.out}")
    if args.card:
        from saeprobe.sae.card import write_card, write_eval

        for kind, part in parts.items():
            write_eval(args.sae, kind, part)
        print(f"updated {write_card(args.sae)}")
    return 0
