"""File names of a saved SAE folder (the sae-lens layout plus saeprobe's card and logs)."""

from __future__ import annotations

__all__ = [
    "CARD_FILENAME",
    "CFG_FILENAME",
    "EVAL_FILENAME",
    "METRICS_FILENAME",
    "TRAINING_FILENAME",
    "WEIGHTS_FILENAME",
]

CFG_FILENAME = "cfg.json"  # sae-lens config (+ "saeprobe": our SAEConfig)
WEIGHTS_FILENAME = "sae_weights.safetensors"  # sae-lens weights
CARD_FILENAME = "README.md"  # hub model card
EVAL_FILENAME = "eval.json"  # held-out metrics of `saeprobe eval-sae --card`
TRAINING_FILENAME = "training.json"  # the trainer's final summary
METRICS_FILENAME = "metrics.jsonl"  # the trainer's log records
