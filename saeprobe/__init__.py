"""saeprobe: sparse-autoencoder probes for multimodal LLMs.

Capture residual-stream activations of Hugging Face MLLMs with per-token
modality labels, train sparse autoencoders on them, analyse the learned
concepts (modality, bridge, retrieval attribution, distractors), whiten
embeddings (ReAlign) and evaluate retrieval.

Heavy dependencies (transformers, transformer_lens, sae_lens) are imported
lazily so that ``import saeprobe`` stays fast.
"""

from __future__ import annotations

import logging

from ._types import Item, Modality
from .lazy import lazy_getattr

__version__ = "0.2.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

_LAZY = {
    "load_model": "saeprobe.models",
    "ModelAdapter": "saeprobe.models",
    "EncodedBatch": "saeprobe.models",
    "capture": "saeprobe.capture",
    "CaptureResult": "saeprobe.capture",
    "HookPoint": "saeprobe.hooks",
    "ActivationStore": "saeprobe.store",
    "ActivationStoreWriter": "saeprobe.store",
    "load_sae": "saeprobe.sae",
    "Whitener": "saeprobe.whitening",
    "realign": "saeprobe.whitening",
}

__all__ = ["Item", "Modality", "__version__", *_LAZY]

__getattr__ = lazy_getattr(__name__, _LAZY)
