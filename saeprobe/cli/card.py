"""``saeprobe card SAE_DIR``: (re)write the hub-ready model card ``README.md`` of a saved SAE.

Facts come from the checkpoint (``cfg.json``), the trainer's ``training.json`` /
``metrics.jsonl`` and ``eval.json`` (``saeprobe eval-sae --card``) in the same folder; the
folder can then be published as it is: ``huggingface-cli upload OWNER/REPO SAE_DIR``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .flags import add_command

HELP = "(re)write the hub-ready README.md model card of a saved SAE"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = add_command(subparsers, "card", HELP, __doc__)
    p.add_argument(
        "sae_dir", metavar="SAE_DIR", help="SAE folder (cfg.json + sae_weights.safetensors)"
    )
    p.add_argument("--print", dest="show", action="store_true", help="also print the card")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from saeprobe.cli import CLIError
    from saeprobe.sae.card import write_card
    from saeprobe.sae.files import CFG_FILENAME

    folder = Path(args.sae_dir)
    if not (folder / CFG_FILENAME).is_file():
        raise CLIError(
            f"{folder} is not an SAE folder (no {CFG_FILENAME}); pass the folder of "
            "`saeprobe train --out` or `saeprobe convert`"
        )
    path = write_card(folder)
    if args.show:
        print(path.read_text(encoding="utf-8"))
    print(f"wrote {path}")
    return 0
