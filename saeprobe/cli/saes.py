"""``saeprobe saes``: the registry of published SAEs (``saeprobe/sae/pretrained_saes.json``).

``saeprobe saes list`` prints the table; ``saeprobe saes show NAME`` one entry and its release
(as JSON). Load one with ``saeprobe.sae.load_sae("paper/qwen2-vl-7b-instruct")`` or convert it
with ``saeprobe convert paper/qwen2-vl-7b-instruct OUT``; files come through the Hugging Face
cache (``HF_HUB_OFFLINE=1`` reads only what is cached).
"""

from __future__ import annotations

import argparse
import json

from .flags import add_command

COLUMNS = (
    ("name", "name"),
    ("base model", "base_model"),
    ("d", "d_in"),
    ("c", "d_sae"),
    ("k", "k"),
    ("hook", "hook_point"),
    ("prompts", "prompts"),
    ("file", "filename"),
)


HELP = "published SAEs: saes list, saes show NAME"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = add_command(subparsers, "saes", HELP, __doc__)
    sub = p.add_subparsers(dest="saes_command", metavar="ACTION")
    ls = sub.add_parser("list", help="print the table of registered SAEs")
    ls.add_argument("--json", action="store_true", help="one JSON object per line instead")
    show = sub.add_parser("show", help="print one entry (and its release) as JSON")
    show.add_argument("name", metavar="NAME", help="e.g. paper/qwen2-vl-7b-instruct")
    p.set_defaults(func=run)
    return p


def table(rows: list[dict]) -> str:
    """A plain-text table of registry rows (``?`` where a value is not published)."""
    cells = [[h for h, _ in COLUMNS]]
    cells += [["?" if r.get(k) is None else str(r[k]) for _, k in COLUMNS] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from saeprobe.cli import CLIError
    from saeprobe.sae.pretrained import get_pretrained, pretrained_saes, release_info

    action = getattr(args, "saes_command", None)
    if action in (None, "list"):
        rows = [e.to_dict() for e in pretrained_saes().values()]
        if getattr(args, "json", False):
            for r in rows:
                print(json.dumps(r))
        else:
            print(table(rows))
            print(
                f"\n{len(rows)} SAEs; load one with load_sae(NAME) or `saeprobe convert NAME OUT`"
            )
        return 0
    if action == "show":
        try:
            entry = get_pretrained(args.name)
        except ValueError as exc:
            raise CLIError(str(exc)) from None
        release = release_info(entry.name.split("/", 1)[0])
        print(json.dumps({**entry.to_dict(), "release": release}, indent=2))
        return 0
    raise CLIError(
        f"unknown action {action!r}; use `saeprobe saes list` or `saeprobe saes show NAME`"
    )
