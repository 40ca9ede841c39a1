"""Demo domain and models: rendered shape scenes, a CLIP and a LLaVA trained on them.

* :mod:`saeprobe.demo.scenes`: the scene generator (captions, jitter, edits, hard
  negatives, splits); :mod:`saeprobe.demo.scenes_data`: COCO-Caption parquet and M-BEIR
  task folders of it.
* :mod:`saeprobe.demo.models`: :func:`clip_folder` and :func:`llava_folder` assemble
  loadable Hugging Face folders from the committed weights (and SmolLM2's GGUF) into a
  cache; :mod:`saeprobe.demo.train_clip` / :mod:`saeprobe.demo.train_llava` retrain them;
  :mod:`saeprobe.demo.evaluate` measures them (``python -m saeprobe.demo.measure``).
* :mod:`saeprobe.demo.run`: :func:`run_demo`, ``saeprobe demo``: the study
  (:mod:`saeprobe.study`) on both models and the scenes tasks.

Submodules are imported lazily (``import saeprobe.demo`` loads neither torch nor PIL).
"""

from __future__ import annotations

from ..lazy import lazy_getattr

_LAZY = {
    "clip_folder": ".models",
    "llava_folder": ".models",
    "DemoModelError": ".models",
    "DemoCacheError": ".models",
    "DemoWeightsError": ".models",
    "SmolLM2UnavailableError": ".models",
    "make_splits": ".scenes",
    "write_dataset": ".scenes_data",
    "run_demo": ".run",
    "DEMO_PLANS": ".run",
}

__all__ = sorted(_LAZY)

__getattr__ = lazy_getattr(__name__, _LAZY)
