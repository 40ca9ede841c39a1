"""Names and paths of the run-folder layout (the one place they are spelled)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ..errors import SaeprobeError

FORMAT = "saeprobe.run"
VERSION = 1
INDEX = "run.json"
MODEL_FILE = "model.json"
ITEMS_FILE = "items.parquet"
EMBEDDINGS_FILE = "embeddings.safetensors"
RESULTS_FILE = "results.json"
MODEL_KINDS = ("mllm", "dual")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")


class RunError(SaeprobeError):
    """A folder is not a run folder, or lacks what a view needs (the message says what)."""


def check_name(name: str, what: str) -> str:
    """Model / task / item-source names become folder names: letters, digits, ``._-``."""
    if not isinstance(name, str) or not _NAME_RE.match(name) or name in (".", ".."):
        raise RunError(
            f"{what} name {name!r} is not usable as a folder name; use letters, digits, '.', "
            "'_' or '-' (at most 80 characters)"
        )
    return name


def model_dir(root: Path, model: str) -> Path:
    return root / "models" / check_name(model, "model")


def task_dir(root: Path, model: str, task: str) -> Path:
    return model_dir(root, model) / "tasks" / check_name(task, "task")


def items_dir(root: Path, source: str) -> Path:
    return root / "items" / check_name(source, "item source")


def is_run_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a ``run.json`` of this format."""
    index = Path(path) / INDEX
    try:
        return json.loads(index.read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False
