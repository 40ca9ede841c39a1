"""The training output folder: never silently overwritten, never mixed between runs.

A folder holding a trained SAE or checkpoints is refused unless the run resumes it
(``resume``: the whole training config and the data must match, differences are named) or
replaces it (``force``: its checkpoints, metrics and SAE files are removed first).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from saeprobe.atomic import atomic_write_json
from saeprobe.errors import SaeprobeError

from .checkpoint import checkpoint_dir, list_checkpoints

logger = logging.getLogger(__name__)

__all__ = [
    "RESUMABLE_CHANGES",
    "OutputExistsError",
    "ResumeMismatchError",
    "check_resume",
    "prepare_out_dir",
    "save_final",
    "write_summary",
]

#: files a training run writes into its folder (besides ``checkpoints/``)
RUN_FILES = (
    "cfg.json",
    "sae_weights.safetensors",
    "README.md",
    "metrics.jsonl",
    "training.json",
    "train_config.json",
)
#: config fields a resumed run may change (bookkeeping, not the optimisation)
RESUMABLE_CHANGES = frozenset(
    {
        "out_dir",
        "progress",
        "log_interval",
        "ckpt_interval",
        "eval_interval",
        "keep_checkpoints",
        "wandb_project",
        "wandb_run_name",
        "prefetch_batches",
        "device",
        "max_bad_batches",
        "max_bad_fraction",
    }
)
#: data description fields that must match on resume
_DATA_KEYS = ("kind", "fingerprint", "n_tokens", "d", "dtype", "drop_system")


class OutputExistsError(SaeprobeError, FileExistsError):
    """The output folder holds another run's results."""


class ResumeMismatchError(SaeprobeError, ValueError):
    """``--resume`` with a config or data that differ from the checkpoint's."""


def prepare_out_dir(out_dir: Path, *, resume: bool, force: bool) -> None:
    """Refuse, or clear (``force``), a folder holding a trained SAE or checkpoints."""
    if resume and force:
        raise ValueError("--resume continues the run in the folder, --force replaces it: pick one")
    ckpts = list_checkpoints(out_dir)
    finished = (out_dir / "training.json").is_file() or (
        out_dir / "sae_weights.safetensors"
    ).is_file()
    if resume or not (ckpts or finished):
        return
    if not force:
        what = (
            "a trained SAE (training.json)"
            if finished
            else f"{len(ckpts)} checkpoints of an unfinished run"
        )
        raise OutputExistsError(
            f"{out_dir} already holds {what}; pass --resume to continue it or --force to "
            "replace it (or --out a new folder)"
        )
    logger.warning("--force: removing the previous run's files in %s", out_dir)
    shutil.rmtree(checkpoint_dir(out_dir), ignore_errors=True)
    for name in RUN_FILES:
        (out_dir / name).unlink(missing_ok=True)


def _path_of(info: dict) -> str | None:
    p = info.get("path")
    return str(Path(p).resolve()) if p else None


def check_resume(saved: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    """Raise :class:`ResumeMismatchError` naming every difference between the checkpoint's
    training config / data (``saved``) and this run's (``current``); both hold ``config``
    (after the recipe is applied) and ``data`` (the source's ``describe()``)."""
    diffs = []
    old_cfg, new_cfg = saved.get("config", {}), current["config"]
    for key in sorted(set(old_cfg) | set(new_cfg)):
        if key in RESUMABLE_CHANGES:
            continue
        a, b = old_cfg.get(key), new_cfg.get(key)
        if a != b:
            diffs.append(f"{key} {a!r} (checkpoint) vs {b!r} (now)")
    old_data, new_data = saved.get("data"), current["data"]
    if isinstance(old_data, dict):
        for key in _DATA_KEYS:
            a, b = old_data.get(key), new_data.get(key)
            if a is not None and b is not None and a != b:
                diffs.append(f"data {key} {a!r} (checkpoint) vs {b!r} (now)")
        if _path_of(old_data) != _path_of(new_data) and not (
            old_data.get("fingerprint")
            and old_data.get("fingerprint") == new_data.get("fingerprint")
        ):
            diffs.append(
                f"data path {_path_of(old_data)!r} (checkpoint) vs {_path_of(new_data)!r} (now)"
            )
    if diffs:
        raise ResumeMismatchError(
            f"cannot resume from {path}: {'; '.join(diffs)}; resume with the original settings, "
            "or start over with --force / a new --out"
        )


def save_final(
    out_dir: Path,
    sae: Any,
    cfg: Any,
    source_info: dict[str, Any],
    metadata: dict[str, Any],
    metrics: dict[str, Any],
    *,
    steps: int,
    tokens: int,
    seconds: float,
    bad_batches: int,
    resumed_from: Path | None,
) -> None:
    """Save the trained SAE (its metadata records the run: source, steps, tokens, metrics) and
    ``training.json``."""
    meta = dict(metadata)
    meta.setdefault("model_name", source_info.get("model"))
    meta.setdefault("hook_point", source_info.get("hook_point"))
    meta["training"] = {
        "recipe": cfg.recipe,
        "source": source_info,
        "store_fingerprint": source_info.get("fingerprint"),
        "steps": steps,
        "tokens": tokens,
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
    }
    sae_cfg = getattr(sae, "cfg", None)
    if sae_cfg is not None and isinstance(getattr(sae_cfg, "metadata", None), dict):
        sae_cfg.metadata.update({k: v for k, v in meta.items() if v is not None})
    sae.save(out_dir)
    write_summary(
        out_dir,
        {
            "config": cfg.to_dict(),
            "metadata": meta,
            "metrics": metrics,
            "steps": steps,
            "tokens": tokens,
            "seconds": seconds,
            "bad_batches": bad_batches,
            "resumed_from": str(resumed_from) if resumed_from else None,
        },
    )


def write_summary(out_dir: Path, summary: dict[str, Any]) -> None:
    """``training.json``: config, metadata, final metrics, steps, tokens, time."""
    atomic_write_json(out_dir / "training.json", summary, what="training summary")


def read_summary(out_dir: Path) -> dict[str, Any] | None:
    p = out_dir / "training.json"
    return json.loads(p.read_text()) if p.is_file() else None
