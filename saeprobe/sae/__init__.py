"""Sparse autoencoders: architectures (registry), sparse kernels and checkpoint io.

One file per architecture, registered with :func:`register_sae`; ``saving`` writes and
``io`` reads the sae-lens layout. Imports only saeprobe's primitives (``atomic``, ``dtypes``).

``sae.encode(x) -> [N, c]``, ``sae.encode_sparse(x) -> SparseCodes(values, indices)``,
``sae.decode(z)``, ``sae.decode_sparse(values, indices)``, ``sae(x) -> x_hat``,
``sae.dictionary -> [c, d]``, ``sae.cfg`` (:class:`SAEConfig`), ``sae.save(dir)``,
``load_sae(path | "hf://owner/repo/..." | "paper/qwen2-vl-7b-instruct")``,
``sae.training_forward(x, ...)``; ``pretrained_saes()`` (the registry of published SAEs),
``write_card(dir)`` (the hub model card), :mod:`.metrics` (SAEBench-named metrics),
:mod:`.neuronpedia` (the Neuronpedia / SAEDashboard export).
"""

from __future__ import annotations

from . import kernels, metrics
from .base import SAE, SparseCodes, TrainForward, geometric_median
from .batchtopk import BatchTopKSAE
from .card import write_card
from .config import SAEConfig
from .factory import create_sae
from .gated import GatedSAE
from .io import check_d_in, load_sae, sae_from_overcomplete_state
from .jumprelu import JumpReLUSAE
from .matryoshka import MatryoshkaBatchTopKSAE
from .pretrained import PretrainedSAE, get_pretrained, pretrained_saes
from .registry import SAE_REGISTRY, available_archs, register_sae
from .saving import save_sae
from .standard import StandardSAE
from .topk import TopKSAE

#: the built-in architectures (the live list: :func:`available_archs`)
ARCHS = tuple(SAE_REGISTRY)

__all__ = [
    "ARCHS",
    "SAE",
    "SAE_REGISTRY",
    "BatchTopKSAE",
    "GatedSAE",
    "JumpReLUSAE",
    "MatryoshkaBatchTopKSAE",
    "PretrainedSAE",
    "SAEConfig",
    "SparseCodes",
    "StandardSAE",
    "TopKSAE",
    "TrainForward",
    "available_archs",
    "check_d_in",
    "create_sae",
    "geometric_median",
    "get_pretrained",
    "kernels",
    "load_sae",
    "metrics",
    "pretrained_saes",
    "register_sae",
    "sae_from_overcomplete_state",
    "save_sae",
    "write_card",
]
