"""Zero-shot retrieval evaluation on M-BEIR task folders, with whitening.

Pipeline: embed the queries and the candidates of a task through a model adapter
(:mod:`.embedding`, each side cached to safetensors as soon as it is done, :mod:`.cache`),
then for each whitening method whiten (:func:`saeprobe.whitening.whiten_pair`), search
exhaustively (:func:`saeprobe.ranking.topk_search`) and score Recall@k (the paper's
definition), MRR and nDCG@10 (:mod:`.evaluate`); sweeps over alpha and layers
(:mod:`.sweeps`); tables and JSON (:mod:`.report`). Imports ``capture``, ``whitening``,
``ranking``, ``distributed`` and the primitives.

Embeddings: MLLMs use the paper's mean pooling of the ``final_norm`` hook point (HF
``hidden_states[-1]``; any pooling / hook point can be chosen); dual encoders (CLIP, SigLIP)
their own projected embedding (pool ``native``); an image+text item on a dual encoder is
``normalize(normalize(e_image) + normalize(e_text))`` (UniIR's score-level fusion by sum).
Every embedding is L2-normalised before whitening / scoring; method ``none`` (``base``) is
the raw normalised embedding.
"""

from __future__ import annotations

from .cache import EmbeddingCache, model_fingerprint, side_fingerprint
from .config import DEFAULT_CACHE, NATIVE, RetrievalConfig, method_label
from .embedding import embed_items, task_embeddings, validate_embeddings
from .evaluate import RetrievalResult, evaluate, score_methods
from .report import format_table, write_json
from .sweeps import alpha_sweep, layer_sweep, sweep_figure

__all__ = [
    "DEFAULT_CACHE",
    "NATIVE",
    "EmbeddingCache",
    "RetrievalConfig",
    "RetrievalResult",
    "alpha_sweep",
    "embed_items",
    "evaluate",
    "format_table",
    "layer_sweep",
    "method_label",
    "model_fingerprint",
    "score_methods",
    "side_fingerprint",
    "sweep_figure",
    "task_embeddings",
    "validate_embeddings",
    "write_json",
]
