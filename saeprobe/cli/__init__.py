"""``saeprobe`` command line: one module per sub-command.

Each module in :data:`COMMANDS` exposes ``add_parser(subparsers)`` (registering
its sub-command with ``set_defaults(func=run)``) and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMANDS = [
    "capture",
    "train",
    "eval_sae",
    "convert",
    "analyze",
    "retrieve",
    "sweep",
    "explore",
    "demo",
]

logger = logging.getLogger("saeprobe")


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    from saeprobe import __version__

    parser = argparse.ArgumentParser(
        prog="saeprobe", description="Sparse-autoencoder probes for multimodal LLMs."
    )
    parser.add_argument("--version", action="version", version=f"saeprobe {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"saeprobe.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"saeprobe.cli.{name}":
                continue
            raise
        mod.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING if args.quiet else (logging.DEBUG if args.verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except CLIError as exc:
        print(f"saeprobe {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, FileExistsError, OSError, RuntimeError) as exc:
        if args.verbose:
            raise
        print(f"saeprobe {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
