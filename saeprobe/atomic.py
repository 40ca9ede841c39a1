"""Atomic file writes: a temp file in the target's folder, fsync, rename, fsync the folder.

Every writer in saeprobe goes through :func:`atomic_write` (or its typed helpers), so a run
killed at any moment leaves either the old file or the new one, never a half-written one,
and a full disk gives one :class:`~saeprobe.errors.DiskFullError` naming the file, the space
it needed and the space left. Temp files are named ``.<name>.tmp<pid>-<token>`` and are
created with the process umask (the same mode as any other output).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .errors import DiskFullError, SaeprobeError

__all__ = [
    "TEMP_MARK",
    "atomic_dir",
    "atomic_save_safetensors",
    "atomic_torch_save",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_parquet",
    "atomic_write_text",
    "fsync_dir",
    "is_temp_file",
    "remove_temp_files",
]

#: marks temp files of :func:`atomic_write` (``.<name>.tmp<pid>-<token>``)
TEMP_MARK = ".tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a folder so a rename inside it is durable (a no-op where unsupported)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_temp_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a leftover temp file of :func:`atomic_write`."""
    name = Path(path).name
    return name.startswith(".") and TEMP_MARK in name


def remove_temp_files(folder: str | os.PathLike) -> int:
    """Delete leftover temp files in ``folder`` (after a killed run); returns how many."""
    folder = Path(folder)
    n = 0
    if folder.is_dir():
        for p in folder.iterdir():
            if p.is_file() and is_temp_file(p):
                p.unlink(missing_ok=True)
                n += 1
    return n


def _free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def disk_full_message(path: Path, needed: int | None, what: str) -> str:
    """One line: which file, how much it needed, how much is free, what to do."""
    free = _free_bytes(path.parent)
    need = f" (needs about {_mib(needed)}" if needed else " ("
    have = f"{', ' if needed else ''}{_mib(free)} free)" if free is not None else ")"
    return (
        f"no space left on device writing {what} {path}{need}{have}; free space or write "
        "elsewhere and rerun (completed outputs are intact)"
    )


def atomic_write(
    path: str | os.PathLike,
    write: Callable[[Path], Any],
    *,
    what: str = "file",
    size_hint: int | None = None,
) -> Path:
    """Run ``write(tmp)`` to create a temp file, then fsync and rename it to ``path``.

    Parameters
    ----------
    path : destination (its folder is created)
    write : callable
        Writes the whole content to the temp path it is given.
    what : str
        Named in error messages ("shard", "manifest", "checkpoint", ...).
    size_hint : int, optional
        Bytes the file needs, for the full-disk message.

    Raises
    ------
    DiskFullError
        The disk filled up (the temp file is removed, ``path`` is untouched).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # some writers (safetensors) create files 0600
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if _is_disk_full(exc):
            raise DiskFullError(disk_full_message(path, size_hint, what)) from exc
        raise
    fsync_dir(path.parent)
    return path


def _is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    # safetensors / pyarrow wrap the OS error in their own types
    text = str(exc).lower()
    return "no space left" in text or "disk quota" in text


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, what: str = "file") -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data), what=what, size_hint=len(data))


def atomic_write_text(path: str | os.PathLike, text: str, *, what: str = "file") -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"), what=what)


def atomic_write_json(
    path: str | os.PathLike,
    obj: Any,
    *,
    indent: int | None = 2,
    sort_keys: bool = False,
    what: str = "file",
) -> Path:
    """Write ``obj`` as JSON (NaN allowed as in Python's json, ``default=str``) atomically."""
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, default=str) + "\n"
    return atomic_write_text(path, text, what=what)


def atomic_write_parquet(
    path: str | os.PathLike, table: Any, *, what: str = "file", **options: Any
) -> Path:
    """Write a ``pyarrow.Table`` as parquet atomically (``options``: ``pq.write_table``'s,
    e.g. ``row_group_size``)."""
    import pyarrow.parquet as pq

    return atomic_write(path, lambda tmp: pq.write_table(table, tmp, **options), what=what)


def atomic_save_safetensors(
    path: str | os.PathLike,
    tensors: dict,
    metadata: dict[str, str] | None = None,
    *,
    what: str = "file",
) -> Path:
    """Write a safetensors file (tensors made contiguous) atomically."""
    from safetensors.torch import save_file

    tensors = {k: v.contiguous() for k, v in tensors.items()}
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    return atomic_write(
        path,
        lambda tmp: save_file(tensors, str(tmp), metadata=metadata),
        what=what,
        size_hint=size,
    )


def atomic_torch_save(path: str | os.PathLike, obj: Any, *, what: str = "checkpoint") -> Path:
    """``torch.save`` of plain containers and tensors, atomically (read back with
    ``torch.load(..., weights_only=True)``)."""
    import torch

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            torch.save(obj, f)

    return atomic_write(path, write, what=what)


@contextlib.contextmanager
def atomic_dir(
    path: str | os.PathLike, *, force: bool = False, what: str = "output folder"
) -> Iterator[Path]:
    """Build a folder in a staging directory next to ``path``; publish it on success.

    An existing ``path`` is refused unless ``force`` (then it is replaced, only once the
    new one is complete). On any error the staging folder is removed and ``path`` is
    untouched, so a full disk never leaves a half-written folder.

    Yields
    ------
    Path
        The staging folder to write into.
    """
    path = Path(path)
    if path.exists() and not force and (not path.is_dir() or any(path.iterdir())):
        raise SaeprobeError(
            f"{what} {path} already exists; pass --force to replace it or choose another --out"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{path.name}{TEMP_MARK}", dir=path.parent))
    stage.chmod(0o777 & ~_umask())  # mkdtemp makes 0700; outputs get the usual mode
    try:
        yield stage
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}{TEMP_MARK}old-{secrets.token_hex(4)}")
            os.replace(path, old)
        os.replace(stage, path)
        fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as exc:
        shutil.rmtree(stage, ignore_errors=True)
        if _is_disk_full(exc) and not isinstance(exc, DiskFullError):
            raise DiskFullError(disk_full_message(path, None, what)) from exc
        raise
