"""Tiny random checkpoints of every supported family, built offline.

Each family has a module ``saeprobe.testing.tiny.<module>`` exposing
``build(out_dir: Path) -> Path``: it creates a tiny random model from a config,
an offline tokenizer / processor, saves both with ``save_pretrained`` into
``out_dir`` and returns it. Loading goes through the same code users run
(:func:`saeprobe.load_model`).
"""

from __future__ import annotations

import importlib
from pathlib import Path

#: family name -> module under saeprobe.testing.tiny
TINY_FAMILIES: dict[str, str] = {
    "qwen2_vl": "qwen2_vl",
    "qwen2_5_vl": "qwen2_5_vl",
    "qwen3_vl": "qwen3_vl",
    "llava": "llava",
    "llava_next": "llava_next",
    "paligemma": "paligemma",
    "paligemma2": "paligemma2",
    "chameleon": "chameleon",
    "idefics3": "idefics3",
    "smolvlm": "smolvlm",
    "gemma3": "gemma3",
    "clip": "clip",
    "siglip": "siglip",
    "llama": "llama",
}


def available_families() -> list[str]:
    """Families whose tiny builder module exists."""
    out = []
    for fam, mod in TINY_FAMILIES.items():
        try:
            importlib.import_module(f"saeprobe.testing.tiny.{mod}")
        except ModuleNotFoundError as exc:
            if exc.name == f"saeprobe.testing.tiny.{mod}":
                continue
            raise
        out.append(fam)
    return out


def build_tiny_model(family: str, out_dir: str | Path) -> Path:
    """Build and save a tiny random checkpoint of ``family`` into ``out_dir``."""
    if family not in TINY_FAMILIES:
        raise ValueError(f"unknown tiny family {family!r}; choose one of {sorted(TINY_FAMILIES)}")
    mod = importlib.import_module(f"saeprobe.testing.tiny.{TINY_FAMILIES[family]}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return Path(mod.build(out))
