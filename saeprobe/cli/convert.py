"""``saeprobe convert IN OUT``: turn an SAE checkpoint (paper torch file, sae-lens folder,
``hf://`` reference or a registered name such as ``paper/qwen2-vl-7b-instruct``, see
``saeprobe saes list``) into saeprobe's sae-lens layout (``cfg.json`` +
``sae_weights.safetensors``) with its hub-ready model card ``README.md``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .flags import add_command

HELP = (
    "convert an SAE checkpoint (paper .pt, sae-lens folder, hf://, registered name) to "
    "saeprobe's layout"
)


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = add_command(subparsers, "convert", HELP, __doc__)
    p.add_argument(
        "input",
        metavar="IN",
        help="checkpoint file, folder, hf://owner/repo/path or a registered name "
        "(paper/qwen2-vl-7b-instruct)",
    )
    p.add_argument("output", metavar="OUT", help="output folder")
    p.add_argument("--k", type=int, default=None, help="Top-K of the SAE (paper files: 50)")
    p.add_argument("--model-name", default=None, help="metadata: model the SAE was trained on")
    p.add_argument("--hook-point", default=None, help="metadata: hook point, e.g. final_norm")
    p.add_argument("--revision", default=None, help="hub revision for hf:// and registered names")
    p.add_argument("--cache-dir", default=None, help="Hugging Face cache folder (default: HF's)")
    p.add_argument("--force", action="store_true", help="overwrite an existing SAE in OUT")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from saeprobe.sae import load_sae
    from saeprobe.sae.files import CFG_FILENAME, WEIGHTS_FILENAME

    out = Path(args.output)
    if not args.force and ((out / CFG_FILENAME).exists() or (out / WEIGHTS_FILENAME).exists()):
        raise FileExistsError(f"{out} already holds an SAE; pass --force to overwrite it")
    sae = load_sae(args.input, k=args.k, revision=args.revision, cache_dir=args.cache_dir)
    if args.model_name:
        sae.cfg.metadata["model_name"] = args.model_name
    if args.hook_point:
        sae.cfg.metadata["hook_point"] = args.hook_point
    sae.save(out)
    print(
        json.dumps(
            {
                "output": str(out),
                "arch": sae.cfg.arch,
                "d_in": sae.cfg.d_in,
                "d_sae": sae.cfg.d_sae,
                "k": sae.cfg.k,
                "model_name": sae.cfg.metadata.get("model_name"),
                "hook_point": sae.cfg.metadata.get("hook_point"),
            }
        )
    )
    return 0
