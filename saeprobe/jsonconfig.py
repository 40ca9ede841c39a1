"""JSON round-trip for the dataclass configs (one implementation for all of them).

A config is a ``@dataclass`` that also subclasses :class:`JSONConfig`; it gets ``to_dict``,
``from_dict``, ``to_json`` and ``from_json``. Tuples become JSON lists and come back as tuples;
a field whose type is another ``JSONConfig`` is read back from its dict. Unknown keys are
refused with the list of valid ones (``unknown_keys = "warn"`` / ``"ignore"`` for formats
shared with other tools, such as an SAE's ``cfg.json``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import typing
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from .atomic import atomic_write_text

__all__ = ["JSONConfig"]

logger = logging.getLogger(__name__)

C = TypeVar("C", bound="JSONConfig")


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


class JSONConfig:
    """Mixin: ``to_dict`` / ``from_dict`` / ``to_json`` / ``from_json`` for a dataclass."""

    #: what ``from_dict`` does with keys that are not fields: error, warn or ignore
    unknown_keys: ClassVar[str] = "error"

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON-ready values (nested configs as dicts, tuples as lists)."""
        return _jsonable(dataclasses.asdict(self))  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        """The config of ``data`` (as written by :meth:`to_dict`)."""
        if not isinstance(data, dict):
            raise ValueError(f"a {cls.__name__} is a JSON object, got {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(fields))
        if unknown and cls.unknown_keys == "error":
            raise ValueError(f"unknown {cls.__name__} keys {unknown}; valid keys: {sorted(fields)}")
        if unknown and cls.unknown_keys == "warn":
            logger.warning("%s: ignoring unknown fields %s", cls.__name__, ", ".join(unknown))
        try:
            hints = typing.get_type_hints(cls)
        except (NameError, TypeError):  # an annotation only importable when type checking
            hints = {}
        kwargs = {}
        for name, value in data.items():
            if name not in fields:
                continue
            kind = hints.get(name)
            if isinstance(value, dict) and isinstance(kind, type) and issubclass(kind, JSONConfig):
                value = kind.from_dict(value)
            elif isinstance(value, list) and typing.get_origin(kind) is tuple:
                value = tuple(value)
            kwargs[name] = value
        return cls(**kwargs)

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """The JSON text (indented, sorted keys); also written atomically to ``path``."""
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path is not None:
            atomic_write_text(Path(path), text, what=f"{type(self).__name__} file")
        return text

    @classmethod
    def from_json(cls: type[C], path_or_text: str | os.PathLike) -> C:
        """A config from JSON text or from a ``.json`` file (one-line errors for bad files)."""
        s = str(path_or_text)
        if s.lstrip().startswith("{"):
            return cls.from_dict(json.loads(s))
        p = Path(s)
        if not p.is_file():
            raise FileNotFoundError(f"config file {p} not found")
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"config file {p} is not valid JSON: {exc}") from None
        return cls.from_dict(data)
