"""Named registry of published SAEs (``pretrained_saes.json`` in this package, in the spirit of
sae-lens' ``pretrained_saes.yaml``).

A name is ``<release>/<sae>``, e.g. ``paper/qwen2-vl-7b-instruct``; :func:`fetch_pretrained`
resolves it through the Hugging Face cache (``huggingface_hub.hf_hub_download``, so
``HF_HOME`` / ``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE`` apply) and ``load_sae(name)`` loads it.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import SaeprobeError

logger = logging.getLogger(__name__)

__all__ = [
    "PretrainedNotCached",
    "PretrainedSAE",
    "UnknownPretrainedSAE",
    "fetch_pretrained",
    "get_pretrained",
    "is_pretrained_name",
    "pretrained_saes",
]

REGISTRY_FILE = "pretrained_saes.json"
FORMAT = "saeprobe.pretrained_saes"


class UnknownPretrainedSAE(SaeprobeError, ValueError):
    """A ``<release>/<name>`` that the registry does not list (the message lists the names)."""


class PretrainedNotCached(SaeprobeError, FileNotFoundError):
    """A registered SAE is not in the Hugging Face cache and the hub cannot be reached."""


@dataclass(frozen=True)
class PretrainedSAE:
    """One published SAE.

    Attributes
    ----------
    name : str
        ``<release>/<sae>``.
    repo_id, filename, revision : str
        Where it lives on the Hugging Face hub.
    arch, format : str
        saeprobe architecture and the file format (``overcomplete.TopKSAE``: the paper's).
    d_in, d_sae : int | None
        Input width and latents (None: not published, read from the checkpoint).
    k : int
    hook_point : str | None
        saeprobe hook point the SAE reads (``final_norm`` = HF ``hidden_states[-1]``).
    base_model, family : str
        Hub id of the model and its saeprobe adapter family.
    prompts : str
        ``paper`` (the paper's one-word summary prompts, ``saeprobe.models.prompts``) or ``none``.
    """

    name: str
    repo_id: str
    filename: str
    revision: str
    arch: str
    format: str
    d_in: int | None
    d_sae: int | None
    k: int
    hook_point: str | None
    base_model: str
    family: str | None = None
    prompts: str = "none"
    license: str | None = None
    dataset: str | None = None
    citation: str | None = None
    notes: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def metadata(self) -> dict[str, Any]:
        """``SAEConfig.metadata`` of the loaded SAE (card facts included)."""
        meta = {
            "model_name": self.base_model,
            "hook_point": self.hook_point,
            "pretrained": self.name,
            "source": f"hf://{self.repo_id}/{self.filename}",
            "format": self.format,
            "license": self.license,
            "dataset": self.dataset,
            "paper": self.citation,
            "prompts": self.prompts,
        }
        return {k: v for k, v in meta.items() if v is not None}


@functools.lru_cache(maxsize=1)
def _registry() -> dict[str, Any]:
    raw = json.loads(resources.files(__package__).joinpath(REGISTRY_FILE).read_text("utf-8"))
    if raw.get("format") != FORMAT or raw.get("version") != 1:
        raise SaeprobeError(f"{REGISTRY_FILE}: not a version-1 {FORMAT} file; reinstall saeprobe")
    return raw


def pretrained_saes() -> dict[str, PretrainedSAE]:
    """Every registered SAE by name, in file order."""
    out: dict[str, PretrainedSAE] = {}
    for release, rel in _registry()["releases"].items():
        for sae, e in rel["saes"].items():
            name = f"{release}/{sae}"
            out[name] = PretrainedSAE(
                name=name,
                repo_id=e.get("repo_id", rel["repo_id"]),
                filename=e["file"],
                revision=e.get("revision", rel.get("revision", "main")),
                arch=e.get("arch", rel.get("arch", "topk")),
                format=e.get("format", rel.get("format", "sae_lens")),
                d_in=e.get("d_in"),
                d_sae=e.get("d_sae"),
                k=int(e["k"]),
                hook_point=e.get("hook_point"),
                base_model=e["base_model"],
                family=e.get("family"),
                prompts=e.get("prompts", "none"),
                license=e.get("license", rel.get("license")),
                dataset=e.get("dataset", rel.get("dataset")),
                citation=e.get("citation", rel.get("citation")),
                notes=e.get("notes"),
            )
    return out


def release_info(release: str) -> dict[str, Any]:
    """The release-level facts (title, code, training, prompts, sources) of ``release``."""
    rel = _registry()["releases"].get(release)
    if rel is None:
        raise UnknownPretrainedSAE(
            f"unknown SAE release {release!r}; known: {', '.join(_registry()['releases'])}"
        )
    return {k: v for k, v in rel.items() if k != "saes"}


def is_pretrained_name(ref: Any) -> bool:
    """Whether ``ref`` is spelled like a registry name (``<known release>/<sae>``)."""
    if not isinstance(ref, str) or ref.count("/") != 1:
        return False
    return ref.split("/", 1)[0] in _registry()["releases"]


def get_pretrained(name: str) -> PretrainedSAE:
    """The registry entry ``name``; an unknown name is an error listing the known ones."""
    table = pretrained_saes()
    if name not in table:
        raise UnknownPretrainedSAE(
            f"unknown pretrained SAE {name!r}; known: {', '.join(table)} "
            "(`saeprobe saes list`), or pass a checkpoint path"
        )
    return table[name]


def fetch_pretrained(
    name: str, *, cache_dir: str | Path | None = None, revision: str | None = None
) -> Path:
    """Local path of the checkpoint file of ``name``, through the Hugging Face cache.

    Offline (``HF_HUB_OFFLINE=1``) it must already be in the cache; a missing file raises
    ``huggingface_hub``'s ``LocalEntryNotFoundError`` naming what was looked for.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    entry = get_pretrained(name)
    try:
        path = hf_hub_download(
            entry.repo_id,
            entry.filename,
            revision=revision or entry.revision,
            cache_dir=str(cache_dir) if cache_dir is not None else None,
            repo_type="model",
        )
    except LocalEntryNotFoundError:
        raise PretrainedNotCached(
            f"{name}: {entry.repo_id}/{entry.filename} is not in the Hugging Face cache and the "
            f"hub cannot be reached (HF_HUB_OFFLINE?); fetch it once with `huggingface-cli "
            f"download {entry.repo_id} {entry.filename}` or go online"
        ) from None
    logger.info("%s -> %s", name, path)
    return Path(path)
