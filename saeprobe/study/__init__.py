"""The paper's study on any models and data: per model, capture the analysis data, train a
Top-K SAE, analyse the concepts (energy / modality shares, bridge, attribution, distractors,
ablation), retrieve on M-BEIR tasks (base vs ReAlign vs top distractors ablated) and sweep
alpha and layers; one run folder (docs/run-folder.md) with ``results.json`` (docs/study.md)
and ``report.html``. An application: may use everything below it, sae_training and analysis.
"""

from __future__ import annotations

from .config import ModelSpec, StudyConfig
from .results import check_results, findings, headline
from .runner import StudyResult, run_study

__all__ = [
    "ModelSpec",
    "StudyConfig",
    "StudyResult",
    "check_results",
    "findings",
    "headline",
    "run_study",
]
