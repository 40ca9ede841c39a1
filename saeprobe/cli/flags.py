"""Command-line flags generated from config dataclasses (one source of truth per setting).

Each dataclass field becomes ``--field-name``; its help is the field's docstring (the
string literal right under it, as in EleutherAI sparsify's configs) plus its default. Flags
default to "not given", so a value from ``--config FILE.json`` is only overridden by flags
the user typed. Types: int, float, str, bool (``--x`` / ``--no-x``), fixed-length tuples
(several values), ``tuple[X, ...]`` and ``list[X]`` (comma-separated), ``dict`` (JSON), and
``X | None``.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import textwrap
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["add_command", "add_config_flags", "config_from_args", "field_docs"]


def add_command(
    subparsers: Any, name: str, help: str, doc: str | None = None, **kw: Any
) -> argparse.ArgumentParser:
    """Register sub-command ``name``; ``doc`` (the module docstring, shown as written) is its
    ``--help`` description unless ``description=`` is given (wrapped as usual)."""
    if doc is not None and "description" not in kw:
        kw.update(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    return subparsers.add_parser(name, help=help, **kw)


def field_docs(cls: type) -> dict[str, str]:
    """``{field: docstring}`` of a dataclass, from the literals that follow its fields."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):  # pragma: no cover - no source available
            continue
        body = ast.parse(source).body[0].body
        for node, nxt in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _unwrap(tp: Any) -> tuple[Any, bool]:
    """``(inner type, optional)`` of ``X | None``."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else str), True
    return tp, False


def _parser_for(tp: Any) -> tuple[Callable[[str], Any], dict[str, Any]]:
    """``(value parser, extra add_argument kwargs)`` for a field type."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is bool:
        return bool, {"action": argparse.BooleanOptionalAction}
    if origin is tuple and Ellipsis in args:  # tuple[X, ...]: comma-separated
        return (lambda s, f=args[0]: tuple(f(x) for x in s.split(",") if x.strip())), {}
    if origin is tuple:
        return args[0], {"nargs": len(args)}
    if origin is list:
        inner = args[0] if args else str
        return (lambda s, f=inner: [f(x) for x in s.split(",") if x.strip()]), {}
    if origin is dict or tp is dict:
        return _json_value, {}
    if tp in (int, float, str):
        return tp, {}
    return str, {}


def _json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc.msg}): {text!r}") from None


def _none_or(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        return None if text.strip().lower() in ("none", "null") else parse(text)

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def add_config_flags(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    skip: Iterable[str] = (),
    rename: Mapping[str, str] | None = None,
    choices: Mapping[str, Callable[[], Iterable[str]] | Iterable[str]] | None = None,
    group: str | None = None,
) -> dict[str, str]:
    """Add a flag per field of the dataclass ``cls``; returns ``{dest: field}``.

    Parameters
    ----------
    skip : field names without a flag
    rename : ``{field: flag name without dashes}`` (e.g. ``total_tokens`` -> ``tokens``)
    choices : ``{field: values}`` or a callable giving them (read when the parser is built,
        e.g. a registry: new registrations show up as choices)
    group : title of an argument group to put the flags in
    """
    rename, choices, skip = dict(rename or {}), dict(choices or {}), set(skip)
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    target = parser.add_argument_group(group) if group else parser
    dests: dict[str, str] = {}
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        tp, optional = _unwrap(hints[f.name])
        parse, extra = _parser_for(tp)
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        help_text = docs.get(f.name, "")
        help_text += f" (default: {default})" if default not in (None, "", [], {}) else ""
        help_text = help_text.strip().replace("%", "%%")  # argparse formats help with %
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "help": help_text}
        if "action" not in extra:
            kwargs["type"] = _none_or(parse) if optional else parse
        kwargs.update(extra)
        if f.name in choices:
            values = choices[f.name]
            kwargs["choices"] = list(values() if callable(values) else values)
        flag = rename.get(f.name, f.name).replace("_", "-")
        dest = flag.replace("-", "_")
        target.add_argument(f"--{flag}", dest=dest, **kwargs)
        dests[dest] = f.name
    return dests


def config_from_args(
    cls: type, args: argparse.Namespace, dests: Mapping[str, str], base: dict | None = None
) -> Any:
    """An instance of ``cls`` from ``base`` (e.g. a ``--config`` file's dict) overridden by
    the flags given on the command line."""
    values = dict(base or {})
    for dest, name in dests.items():
        if hasattr(args, dest):
            values[name] = getattr(args, dest)
    from_dict = getattr(cls, "from_dict", None)
    return from_dict(values) if callable(from_dict) else cls(**values)
