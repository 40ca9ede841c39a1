"""``CaptureConfig``: the settings of ``saeprobe capture`` (round-trips to JSON; every field
is a flag whose help is the docstring under it)."""

from __future__ import annotations

from dataclasses import dataclass

from .. import dtypes
from ..hooks import parse_hook_points
from ..jsonconfig import JSONConfig
from ..pooling import check_pools

__all__ = ["CaptureConfig"]


@dataclass
class CaptureConfig(JSONConfig):
    """What to capture, from which model and data, into which store.

    :meth:`validate` checks everything that can be checked before a model is loaded or a
    file is written, and raises one ``ValueError`` line naming the field and the fix.
    """

    model: str = ""
    """Hub id or local folder of a supported model."""
    data: str = ""
    """COCO-Caption parquet (file / folder), an image folder with captions.csv / .jsonl, or an M-BEIR task folder."""
    out: str = ""
    """Store folder (created; resumed when it holds the same capture; a partial capture is kept)."""
    layers: str = "final_norm"
    """Hook points, comma-separated: final_norm (HF hidden_states[-1], the paper's), an integer L or resid_post.L (raw residual after layer L; -1 = last), resid_pre.0."""
    pool: str = "mean"
    """Poolings stored per item, comma-separated: mean (the paper's), mean_data, last, mean_text, mean_image, mean_template, native (dual encoders)."""
    limit: int | None = None
    """Only the first N items (N >= 1)."""
    batch_size: int = 8
    """Items per forward pass."""
    dtype: str = "fp16"
    """Storage dtype of the activations: fp16, bf16 or fp32."""
    model_dtype: str = "auto"
    """Model dtype: auto (bf16 where the device runs it natively, else fp32), fp32, bf16 or fp16."""
    device: str | None = None
    """cpu, cuda, cuda:1 (default: cuda when available)."""
    mode: str | None = None
    """Data mode, e.g. images+captions (default), images, captions, pairs."""
    tower: str | None = None
    """Dual encoders: capture only the text or the vision tower."""
    skip_system: bool = False
    """Drop leading system-prompt tokens (the paper's SAE training data)."""
    shard_tokens: int | None = None
    """Tokens per shard (default: about 256 MiB of activations)."""
    resume: bool = True
    """Continue an existing store with the same settings (--no-resume refuses it)."""
    progress: bool = True
    """Show a progress bar."""

    def validate(self) -> CaptureConfig:
        """Raise ``ValueError`` (one line) for a bad field; returns ``self``."""
        for name in ("model", "data", "out"):
            if not getattr(self, name):
                raise ValueError(f"--{name} is required")
        if self.limit is not None and self.limit < 1:
            raise ValueError(
                f"--limit must be a positive number of items, got {self.limit} (leave it out "
                "for all items)"
            )
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.shard_tokens is not None and self.shard_tokens < 1:
            raise ValueError(f"--shard-tokens must be >= 1, got {self.shard_tokens}")
        try:
            check_pools(self.pools)
        except ValueError as exc:
            raise ValueError(f"--pool: {exc}") from None
        dtypes.short_name(self.dtype, allowed=("fp16", "bf16", "fp32"))
        if self.model_dtype != "auto":
            dtypes.to_torch(self.model_dtype)
        if self.tower not in (None, "text", "vision"):
            raise ValueError(f"--tower must be text or vision, got {self.tower!r}")
        parse_hook_points(self.layers, n_layers=10**6)  # names only; ranges once the config is read
        return self

    @property
    def pools(self) -> list[str]:
        return [p.strip() for p in self.pool.split(",") if p.strip()]
