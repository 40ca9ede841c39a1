"""Deprecated path: capture into stores now lives in :mod:`saeprobe.capture.to_store` and
pooled embeddings in :mod:`saeprobe.store.pooled`; these names are re-exported."""

from __future__ import annotations

from .capture.to_store import capture_to_store, store_dirs
from .store.pooled import POOLED_FILE, load_pooled, merge_pooled

__all__ = ["POOLED_FILE", "capture_to_store", "load_pooled", "merge_pooled", "store_dirs"]
