"""``saeprobe`` command line: one module per sub-command.

Each module in :data:`COMMANDS` exposes ``add_parser(subparsers)`` (registering
its sub-command with ``set_defaults(func=run)``) and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from saeprobe.errors import SaeprobeError

COMMANDS = [
    "capture",
    "store",
    "train",
    "eval_sae",
    "convert",
    "card",
    "saes",
    "export",
    "analyze",
    "retrieve",
    "sweep",
    "explore",
    "study",
    "demo",
]

logger = logging.getLogger("saeprobe")


class CLIError(SaeprobeError):
    """A user-facing error of the command line: printed as one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    """Argument errors as one line (no usage block), exit status 2."""

    def error(self, message: str):  # type: ignore[override]
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    from saeprobe import __version__

    parser = Parser(prog="saeprobe", description="Sparse-autoencoder probes for multimodal LLMs.")
    parser.add_argument("--version", action="version", version=f"saeprobe {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:  # a sub-command module that fails to import is an error, not a gap
        importlib.import_module(f"saeprobe.cli.{name}").add_parser(sub)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions reported as one line (anything else is a bug: a traceback)."""
    from saeprobe.errors import SaeprobeError

    errors: list[type[BaseException]] = [
        SaeprobeError,
        CLIError,
        ValueError,
        OSError,
        RuntimeError,
        MemoryError,
    ]
    try:
        from safetensors import SafetensorError

        errors.append(SafetensorError)
    except ImportError:  # pragma: no cover - safetensors is a dependency
        pass
    return tuple(errors)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, MemoryError):
        text = f"out of memory ({text}); lower --batch-size or use a machine with more memory"
    return text


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
    except KeyboardInterrupt:
        print(
            f"saeprobe {args.command}: interrupted; rerun the same command to resume",
            file=sys.stderr,
        )
        return 130
    except _user_errors() as exc:
        if args.verbose:
            raise
        print(f"saeprobe {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
