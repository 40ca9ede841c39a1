"""Sharded safetensors activation stores: format, writer, reader, verification, pooled rows.

``ActivationStoreWriter`` writes one rank's shards atomically and resumes (and repairs
damaged shards) from them; ``ActivationStore`` streams shuffled batches in bounded memory,
checking each shard's content hash; ``verify_store`` checks a whole store. Imports only
saeprobe's primitives (``_types``, ``atomic``, ``dtypes``, ``distributed``, ``errors``).
See ``docs/store.md``.
"""

from __future__ import annotations

from .format import (
    FIELDS,
    FORMAT,
    LABEL_DTYPES,
    VERSION,
    ActivationBatch,
    CorruptShardError,
    IncompleteStoreError,
    StoreError,
    StoreMismatchError,
    canonical_spec,
    data_fingerprint,
    dtype_name,
    fingerprint_fields,
    fingerprint_of,
)
from .manifest import load_manifest, merge_manifests
from .pooled import POOLED_FILE, load_pooled, merge_pooled
from .reader import ActivationStore
from .verify import StoreReport, verify_store
from .writer import ActivationStoreWriter

__all__ = [
    "FIELDS",
    "FORMAT",
    "LABEL_DTYPES",
    "POOLED_FILE",
    "VERSION",
    "ActivationBatch",
    "ActivationStore",
    "ActivationStoreWriter",
    "CorruptShardError",
    "IncompleteStoreError",
    "StoreError",
    "StoreMismatchError",
    "StoreReport",
    "canonical_spec",
    "data_fingerprint",
    "dtype_name",
    "fingerprint_fields",
    "fingerprint_of",
    "load_manifest",
    "load_pooled",
    "merge_manifests",
    "merge_pooled",
    "verify_store",
]
