"""Concept analysis of SAE codes (pure tensor code, no model dependency).

Statistics (energy, frequency, modality score), tags, bridge scores, similarity attribution,
distractors and ablation, feature cards, plotly figures and the HTML report. See
``docs/analysis.md``.
"""

from __future__ import annotations

from saeprobe.lazy import lazy_getattr

from .ablation import METHODS, AblationSweep, ablate, ablation_sweep, default_steps
from .attribution import (
    Attribution,
    SimilarityDecomposition,
    pairs_from_relevant,
    retrieval_attribution,
    retrieval_attribution_dense,
    similarity_decomposition,
    top_distractors,
)
from .bridge import BridgeResult, bridge_block, bridge_matrix_dense, bridge_partners, bridge_scores
from .cards import FeatureCard, TopInput, build_card, image_to_png_b64, render_card
from .codes import Codes, decode, encode_all, to_dense
from .pairs import Pairs, load_pairs, pairs_from_capture, save_pairs
from .pipeline import (
    FEATURE_COLUMNS,
    AnalysisConfig,
    AnalysisResult,
    analyze,
    retrieval_task,
    stats_from_codes,
    stats_from_store,
    write_features,
    write_summary,
)
from .stats import ConceptStats, ConceptStatsAccumulator, concept_stats, modality_score
from .tags import TAGS, TagConfig, bridge_concepts, modality_tags, tag_energy_share

__all__ = [
    "FEATURE_COLUMNS",
    "METHODS",
    "TAGS",
    "AblationSweep",
    "AnalysisConfig",
    "AnalysisResult",
    "Attribution",
    "BridgeResult",
    "Codes",
    "ConceptStats",
    "ConceptStatsAccumulator",
    "FeatureCard",
    "Pairs",
    "SimilarityDecomposition",
    "TagConfig",
    "TopInput",
    "ReportFiles",
    "ablate",
    "analyze_store",
    "build_cards",
    "render_report",
    "write_report",
    "ablation_sweep",
    "analyze",
    "bridge_block",
    "bridge_concepts",
    "bridge_matrix_dense",
    "bridge_partners",
    "bridge_scores",
    "build_card",
    "concept_stats",
    "decode",
    "default_steps",
    "encode_all",
    "image_to_png_b64",
    "load_pairs",
    "modality_score",
    "modality_tags",
    "pairs_from_capture",
    "pairs_from_relevant",
    "render_card",
    "retrieval_attribution",
    "retrieval_attribution_dense",
    "retrieval_task",
    "save_pairs",
    "similarity_decomposition",
    "stats_from_codes",
    "stats_from_store",
    "tag_energy_share",
    "to_dense",
    "top_distractors",
    "write_features",
    "write_summary",
]

# report symbols import plotly: loaded on first use so `import analysis` stays light
_LAZY = {
    "ReportFiles": ".api",
    "analyze_store": ".api",
    "build_cards": ".report",
    "render_report": ".report",
    "write_report": ".report",
}

__getattr__ = lazy_getattr(__name__, _LAZY)
