"""SAE training: configs, recipes, data sources, the trainer, checkpoints, metrics and the
downstream splice evaluation (``saeprobe train`` / ``saeprobe eval-sae``).

Heavy pieces (transformers, the trainer loop) are imported lazily.
"""

from __future__ import annotations

from saeprobe.lazy import lazy_getattr

from .config import TrainConfig
from .recipes import RECIPES, apply_recipe

_LAZY = {
    "Trainer": "sae_training.trainer",
    "TrainResult": "sae_training.result",
    "BadDataError": "sae_training.trainer",
    "LRSchedule": "sae_training.trainer",
    "build_sae": "sae_training.init",
    "train": "sae_training.trainer",
    "ActivationSource": "sae_training.sources",
    "StoreSource": "sae_training.sources",
    "TensorSource": "sae_training.sources",
    "IterableSource": "sae_training.sources",
    "CaptureSource": "sae_training.sources",
    "as_source": "sae_training.sources",
    "ReconstructionStats": "sae_training.metrics",
    "DeadLatentTracker": "sae_training.metrics",
    "latest_checkpoint": "sae_training.checkpoint",
    "load_checkpoint": "sae_training.checkpoint",
    "SpliceResult": "sae_training.evaluate",
    "evaluate_splice": "sae_training.evaluate",
}

__all__ = ["RECIPES", "TrainConfig", "apply_recipe", *_LAZY]

__getattr__ = lazy_getattr(__name__, _LAZY)
