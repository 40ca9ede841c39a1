"""``StudyConfig``: what the study runs on and how (round-trips to JSON; each field is a
``saeprobe study`` flag whose help is the docstring under it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..jsonconfig import JSONConfig

__all__ = ["ModelSpec", "StudyConfig"]


@dataclass
class ModelSpec:
    """One model of the study.

    Attributes
    ----------
    name : str
        Name in the run folder (letters, digits, ``._-``).
    path : str
        Hub id or local folder.
    """

    name: str
    path: str

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        """``NAME=PATH`` or just ``PATH`` (the name is the folder's name)."""
        name, sep, path = text.partition("=")
        if not sep:
            path, name = text, Path(text.rstrip("/")).name
        if not name or not path:
            raise ValueError(f"--model takes NAME=PATH or PATH, got {text!r}")
        return cls(name, path)


@dataclass
class StudyConfig(JSONConfig):
    """The study of the paper on any models and data (``saeprobe study``; ``saeprobe demo``
    fills it with the scenes models and data)."""

    models: list[str] = field(default_factory=list)
    """Models, NAME=PATH or PATH, comma-separated (MLLMs and dual encoders such as CLIP)."""
    data: str = ""
    """Images and captions for the SAEs and the concept analysis: a COCO-Caption parquet or an image folder with captions."""
    mbeir: list[str] = field(default_factory=list)
    """M-BEIR task folders to retrieve on, comma-separated."""
    limit: int | None = None
    """Use only the first N images of --data (and their captions)."""
    limit_queries: int | None = None
    """Use only the first N queries of each task."""
    sweep_task: str | None = None
    """Task folder name for the alpha and layer sweeps (default: the first text -> image task)."""
    alphas: list[float] = field(default_factory=lambda: [0.0, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0])
    """ReAlign shrinkage values of the alpha sweep."""
    alpha: float = 0.1
    """ReAlign shrinkage of the retrieval table (the paper's 0.1)."""
    width_factor: int = 8
    """SAE width as a multiple of the model width."""
    k: int = 32
    """Active SAE latents per token (Top-K)."""
    epochs: int = 10
    """SAE training passes over the captured tokens."""
    sae_batch_size: int = 1024
    """SAE training batch (tokens)."""
    n_distractors: int = 8
    """Top-attribution concepts removed in the 'ablated' rows."""
    batch_size: int = 8
    """Items per model forward."""
    device: str = "cpu"
    """Device of the models and the SAEs."""
    model_dtype: str = "fp32"
    """Model dtype (fp32 keeps results the same on every CPU; auto picks bf16 where native)."""
    seed: int = 0
    """Seed of the SAE initialisation and data order."""
    progress: bool = True
    """Show progress bars."""

    def validate(self) -> StudyConfig:
        """One-line ``ValueError`` for a bad field (before any model loads)."""
        if not self.models:
            raise ValueError("no --model given: pass NAME=PATH (hub id or folder), comma-separated")
        specs = self.model_specs()
        names = [m.name for m in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must differ, got {names}; use NAME=PATH")
        if not self.data:
            raise ValueError(
                "--data is required: a COCO-Caption parquet or an image folder with captions"
            )
        for name in ("limit", "limit_queries"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
        for name in ("width_factor", "k", "epochs", "sae_batch_size", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}"
                )
        if self.n_distractors < 0:
            raise ValueError(f"--n-distractors must be >= 0, got {self.n_distractors}")
        for a in [*self.alphas, self.alpha]:
            if not 0.0 <= a <= 1.0:
                raise ValueError(f"ReAlign alpha must lie in [0, 1], got {a}")
        for folder in self.mbeir:
            if not Path(folder).is_dir():
                raise FileNotFoundError(f"M-BEIR task folder {folder} does not exist")
        return self

    def model_specs(self) -> list[ModelSpec]:
        return [ModelSpec.parse(m) for m in self.models]
