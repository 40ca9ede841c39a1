"""Training checkpoints: full state, written atomically, loaded with ``weights_only=True``.

A checkpoint is one file ``<out_dir>/checkpoints/step_<NNNNNNNNN>.pt`` (``torch.save``
of plain containers and tensors) holding the SAE weights, the optimizer and LR
schedule state, the step / token counters, the data position (epoch and batch
index), the dead-latent counters and the RNG states (python, numpy, torch CPU and
CUDA). It is written to a temp file in the same folder, fsynced, then renamed, so a
run killed at any moment leaves either the previous or the new checkpoint.
"""

from __future__ import annotations

import logging
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saeprobe.atomic import atomic_torch_save, remove_temp_files
from saeprobe.errors import SaeprobeError

logger = logging.getLogger(__name__)

__all__ = [
    "CheckpointError",
    "checkpoint_dir",
    "clean_temp_files",
    "get_rng_state",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_latest_checkpoint",
    "save_checkpoint",
    "set_rng_state",
]

_NAME = re.compile(r"^step_(\d+)\.pt$")


class CheckpointError(SaeprobeError):
    """A checkpoint file is unreadable (truncated, altered) or not a training checkpoint."""


def checkpoint_dir(out_dir: str | os.PathLike) -> Path:
    return Path(out_dir) / "checkpoints"


def list_checkpoints(out_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, path)`` of complete checkpoints, oldest first (temp files are ignored)."""
    folder = checkpoint_dir(out_dir)
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _NAME.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    found = list_checkpoints(out_dir)
    return found[-1][1] if found else None


def get_rng_state() -> dict[str, Any]:
    """RNG states of python, numpy and torch (CPU and every CUDA device) as plain data."""
    py = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            logger.warning(
                "checkpoint has RNG states of %d CUDA devices, this machine has %d",
                len(cuda),
                torch.cuda.device_count(),
            )


def _to_cpu(obj: Any) -> Any:
    if torch.is_tensor(obj):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def save_checkpoint(out_dir: str | os.PathLike, state: dict[str, Any], *, keep: int = 2) -> Path:
    """Write ``state`` (must contain ``step``) atomically; keep the ``keep`` newest files."""
    folder = checkpoint_dir(out_dir)
    path = folder / f"step_{int(state['step']):09d}.pt"
    atomic_torch_save(path, _to_cpu(state), what="checkpoint")
    if keep > 0:
        for _, old in list_checkpoints(out_dir)[:-keep]:
            old.unlink(missing_ok=True)
    logger.debug("saved checkpoint %s", path)
    return path


def clean_temp_files(out_dir: str | os.PathLike) -> int:
    """Remove temp files left by a run killed while writing a checkpoint."""
    return remove_temp_files(checkpoint_dir(out_dir))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint file (``weights_only=True``); a one-line error names a bad file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises RuntimeError / EOFError / pickle errors
        raise CheckpointError(
            f"checkpoint {path} is unreadable ({' '.join(str(exc).split())[:200]}); it was "
            "truncated or altered"
        ) from exc
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"checkpoint {path} is not a saeprobe training checkpoint")
    return state


def load_latest_checkpoint(
    out_dir: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[Path, dict] | None:
    """The newest readable checkpoint ``(path, state)`` of ``out_dir`` (None when there is
    none); an unreadable newest one is skipped with a warning naming it."""
    found = list_checkpoints(out_dir)
    errors = []
    for _, path in reversed(found):
        try:
            state = load_checkpoint(path, map_location)
        except CheckpointError as exc:
            logger.warning("%s; falling back to the previous checkpoint", exc)
            errors.append(path.name)
            continue
        return path, state
    if errors:
        raise CheckpointError(
            f"no readable checkpoint in {checkpoint_dir(out_dir)} (unreadable: "
            f"{', '.join(errors)}); restart with --force"
        )
    return None
