"""``--run RUN --name MODEL``: the flags that put a command's output in a run folder.

``capture`` registers the model and writes its store to ``RUN/models/MODEL/store``; ``train``
reads that store and writes the SAE to ``RUN/models/MODEL/sae``; ``analyze`` reads both and
writes ``RUN/models/MODEL/analysis``; ``retrieve`` adds the task's embeddings and scores under
``RUN/models/MODEL/tasks/TASK``. An explicit ``--out`` / input flag wins; an output written
elsewhere is recorded in ``model.json``'s ``parts`` so the readers still find it
(docs/run-folder.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_run_flags", "name_or_folder", "record_part", "run_default", "run_model_name"]


def add_run_flags(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--run", help=f"run folder to read from and {what} (docs/run-folder.md)")
    p.add_argument(
        "--name",
        help="model name in the run folder (default: train / analyze: the run's only model; "
        "capture / retrieve: the --model folder name)",
    )


def name_or_folder(args: argparse.Namespace, model: str) -> str:
    """``--name``, or the ``--model`` folder name (capture / retrieve register new models)."""
    return args.name or Path(str(model).rstrip("/")).name


def run_model_name(args: argparse.Namespace) -> str:
    """``--name``, or the run's only model (a one-line error when that is ambiguous)."""
    from saeprobe.cli import CLIError
    from saeprobe.run import RunFolder

    if args.name:
        return args.name
    models = RunFolder(args.run).models
    if len(models) != 1:
        have = ", ".join(models) or "none yet: run saeprobe capture --run RUN first"
        raise CLIError(f"--run {args.run}: pass --name MODEL (models: {have})")
    return models[0]


def run_default(args: argparse.Namespace, part: str) -> str:
    """An existing part (``store`` / ``sae``) of the run's model, as an input default."""
    from saeprobe.run import RunFolder

    name = run_model_name(args)
    folder = RunFolder(args.run)
    return str(folder.sae_path(name) if part == "sae" else folder.store_path(name))


def run_out(args: argparse.Namespace, part: str) -> str:
    """Where ``part`` goes in the run folder: ``RUN/models/MODEL/<part>``."""
    from saeprobe.run.layout import model_dir

    return str(model_dir(Path(args.run), run_model_name(args)) / part)


def record_part(args: argparse.Namespace, part: str, path: str | Path) -> None:
    """Note in ``model.json`` where ``part`` was written (nothing for its default place)."""
    from saeprobe.run import RunWriter

    RunWriter(args.run).set_part(run_model_name(args), part, path)
