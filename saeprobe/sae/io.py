"""Loading SAE checkpoints: the sae-lens disk layout, the paper authors' torch files,
``hf://`` refs (writing: :mod:`.saving`).

Layout written by :func:`~saeprobe.sae.saving.save_sae` (readable by ``sae_lens.SAE.load_from_disk``)::

    dir/cfg.json                  sae-lens config (architecture, d_in, d_sae, k, ...) plus
                                  "saeprobe": our SAEConfig (arch, biases, metadata)
    dir/sae_weights.safetensors   W_enc [d, c], W_dec [c, d], b_enc [c], b_dec [d]
                                  (+ threshold [c] for jumprelu / batchtopk)

BatchTopK is exported as sae-lens ``jumprelu`` with its scalar threshold broadcast to ``[c]``.
Without a decoder bias ``b_dec`` is saved as zeros (sae-lens always has one).
"""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from .base import SAE, copy_checked
from .config import SAEConfig, canonical_dtype
from .factory import create_sae
from .pretrained import fetch_pretrained, get_pretrained, is_pretrained_name
from .registry import SAE_REGISTRY
from .saving import CFG_FILENAME, WEIGHTS_FILENAME, save_sae

TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".tar")
PAPER_DEFAULT_K = 50

logger = logging.getLogger(__name__)

__all__ = ["check_d_in", "load_sae", "sae_from_overcomplete_state", "save_sae"]


# ---------------------------------------------------------------------------- loading
def load_sae(
    path: str | Path,
    *,
    k: int | None = None,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
    cache_dir: str | Path | None = None,
    revision: str | None = None,
) -> SAE:
    """Load an SAE from a directory, a file or a Hugging Face reference.

    Parameters
    ----------
    path : str | Path
        * a directory in the sae-lens layout (``cfg.json`` + ``sae_weights.safetensors``),
          written by :func:`save_sae` or by sae-lens (``topk``, ``jumprelu``, ``standard``);
        * a torch file of the paper authors (``{"model_state", "optimizer_state", "logs"}`` of
          overcomplete's ``TopKSAE``) or a bare state dict of it, loaded with
          ``weights_only=True``; or a directory holding exactly one such file;
        * ``hf://owner/repo[/file-or-folder]``, fetched through ``huggingface_hub`` (its cache,
          ``HF_HUB_OFFLINE`` honoured) and then loaded as above;
        * a registered name ``<release>/<sae>`` (``paper/qwen2-vl-7b-instruct``; ``saeprobe saes
          list``), fetched the same way, checked against the registry's ``d_in`` / ``d_sae``
          and given its metadata (base model, hook point, license, citation).
    k : int | None
        Top-K for the paper checkpoints (default 50); overrides ``k`` of other layouts.
    device, dtype
        Where / in which dtype to put the parameters (default: the checkpoint's dtype).
    cache_dir, revision
        Passed to ``huggingface_hub`` for ``hf://`` references and registered names.
    """
    if is_pretrained_name(path) and not Path(path).exists():
        return _load_pretrained(str(path), k, device, dtype, cache_dir, revision)
    if isinstance(path, str) and path.startswith("hf://"):
        path = fetch_hf(path, cache_dir=cache_dir, revision=revision)
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"no SAE checkpoint at {path}: pass a directory or a file")
    if path.is_file() and path.name in (CFG_FILENAME, WEIGHTS_FILENAME):
        path = path.parent
    if path.is_dir():
        if (path / CFG_FILENAME).is_file() and (path / WEIGHTS_FILENAME).is_file():
            sae = _load_sae_lens_dir(path, k)
        else:
            candidates = sorted(p for p in path.iterdir() if p.suffix in TORCH_SUFFIXES)
            if len(candidates) != 1:
                found = ", ".join(sorted(p.name for p in path.iterdir())) or "nothing"
                raise ValueError(
                    f"{path} is not an SAE checkpoint: expected {CFG_FILENAME} + {WEIGHTS_FILENAME} "
                    f"(sae-lens layout) or one torch file ({'/'.join(TORCH_SUFFIXES)}); found: {found}"
                )
            sae = _load_torch_file(candidates[0], k)
    elif path.suffix == ".safetensors":
        raise ValueError(
            f"{path}: a bare .safetensors file has no config; pass its folder, which needs "
            f"{CFG_FILENAME} next to {WEIGHTS_FILENAME}"
        )
    else:
        sae = _load_torch_file(path, k)
    if dtype is not None:
        sae.cfg.dtype = canonical_dtype(dtype)
        sae = sae.to(dtype=sae.cfg.torch_dtype)
    return sae.to(device)


def _load_pretrained(
    name: str,
    k: int | None,
    device: str | torch.device,
    dtype: str | torch.dtype | None,
    cache_dir: str | Path | None,
    revision: str | None,
) -> SAE:
    entry = get_pretrained(name)
    local = fetch_pretrained(name, cache_dir=cache_dir, revision=revision)
    sae = load_sae(local, k=k if k is not None else entry.k, device=device, dtype=dtype)
    for what, want, got in (
        ("d_in", entry.d_in, sae.cfg.d_in),
        ("d_sae", entry.d_sae, sae.cfg.d_sae),
    ):
        if want is not None and int(want) != int(got):
            logger.warning(
                "%s: the checkpoint %s has %s=%d but the registry says %d; the hub file is not "
                "the published one (pass revision= / --revision to pin it)",
                name, local, what, got, want,
            )  # fmt: skip
    sae.cfg.metadata.update(entry.metadata())
    return sae


def fetch_hf(ref: str, *, cache_dir: str | Path | None = None, revision: str | None = None) -> Path:
    """Resolve ``hf://owner/repo[/sub/path]`` to a local path through the HF cache."""
    from huggingface_hub import hf_hub_download, snapshot_download

    parts = ref.removeprefix("hf://").strip("/").split("/")
    if len(parts) < 2 or not all(parts[:2]):
        raise ValueError(
            f"bad Hugging Face reference {ref!r}: use hf://owner/repo[/file-or-folder]"
        )
    repo_id, sub = "/".join(parts[:2]), "/".join(parts[2:])
    cache = str(cache_dir) if cache_dir is not None else None
    if sub and Path(sub).suffix in (*TORCH_SUFFIXES, ".safetensors", ".json"):
        local = Path(
            hf_hub_download(repo_id, sub, cache_dir=cache, revision=revision, repo_type="model")
        )
        if local.name in (CFG_FILENAME, WEIGHTS_FILENAME):
            for name in (CFG_FILENAME, WEIGHTS_FILENAME):
                sib = str(Path(sub).parent / name) if Path(sub).parent != Path(".") else name
                hf_hub_download(repo_id, sib, cache_dir=cache, revision=revision)
            return local.parent
        return local
    patterns = [f"{sub}/*"] if sub else None
    root = Path(
        snapshot_download(repo_id, cache_dir=cache, revision=revision, allow_patterns=patterns)
    )
    return root / sub if sub else root


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt", device="cpu") as f:
        return {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118


def _check_keys(sd: dict[str, torch.Tensor], names: tuple[str, ...], path: Path) -> None:
    missing = [n for n in names if n not in sd]
    if missing:
        raise ValueError(
            f"{path / WEIGHTS_FILENAME}: missing {', '.join(missing)}; found keys {sorted(sd)}"
        )


def _load_sae_lens_dir(path: Path, k: int | None) -> SAE:
    raw = json.loads((path / CFG_FILENAME).read_text())
    sd = _read_safetensors(path / WEIGHTS_FILENAME)
    _check_keys(sd, ("W_enc", "W_dec"), path)
    if "saeprobe" in raw:
        cfg = SAEConfig.from_dict(raw["saeprobe"])
        if k is not None:
            cfg.k = int(k)
    else:
        cfg = _cfg_from_sae_lens(raw, sd, k, path)
    if "b_enc" not in SAE_REGISTRY[cfg.arch].sae_lens_omit:
        _check_keys(sd, ("b_enc",), path)
    sae = create_sae(cfg)
    _fill_from_sae_lens(sae, sd, raw, path)
    return sae


def _cfg_from_sae_lens(
    raw: dict[str, Any], sd: dict[str, torch.Tensor], k: int | None, path: Path
) -> SAEConfig:
    arch = raw.get("architecture", "standard")
    if arch not in SAE_REGISTRY:
        raise ValueError(
            f"{path}: sae-lens architecture {arch!r} is not supported; saeprobe loads "
            f"{', '.join(SAE_REGISTRY)}"
        )
    norm = raw.get("normalize_activations", "none")
    if norm not in ("none", None):
        raise ValueError(
            f"{path}: normalize_activations={norm!r} is not supported; fold it into the weights "
            "with sae-lens first (fold_activation_norm_scaling_factor) and save again"
        )
    if raw.get("reshape_activations", "none") not in ("none", None):
        raise ValueError(f"{path}: reshape_activations={raw['reshape_activations']!r} unsupported")
    has_bias = "b_dec" in sd
    pre_bias = bool(raw.get("apply_b_dec_to_input", True)) and has_bias
    meta = dict(raw.get("metadata") or {})
    dtype = canonical_dtype(raw.get("dtype", "float32"))
    d_in, d_sae = int(raw["d_in"]), int(raw["d_sae"])
    if tuple(sd["W_enc"].shape) != (d_in, d_sae):
        raise ValueError(
            f"{path}: W_enc has shape {tuple(sd['W_enc'].shape)}, cfg.json says d_in={d_in}, d_sae={d_sae}"
        )
    kk = (
        k
        if k is not None
        else raw.get("k", PAPER_DEFAULT_K if SAE_REGISTRY[arch].k_required else None)
    )
    return SAEConfig(
        arch=arch,
        d_in=d_in,
        d_sae=d_sae,
        k=kk,
        dtype=dtype,
        use_decoder_bias=has_bias,
        use_pre_encoder_bias=pre_bias,
        metadata=meta,
    )


@torch.no_grad()
def _fill_from_sae_lens(
    sae: SAE, sd: dict[str, torch.Tensor], raw: dict[str, Any], path: Path
) -> None:
    W_enc = sd["W_enc"].t()
    W_dec = sd["W_dec"]
    b_enc = sd.get("b_enc")  # None where the architecture has none (gated: b_gate)
    if raw.get("architecture") == "topk" and raw.get("rescale_acts_by_decoder_norm", False):
        norm = W_dec.norm(dim=1).clamp_min(1e-8)  # fold, as sae-lens does when saving
        W_enc = W_enc * norm[:, None]
        b_enc = b_enc * norm
        W_dec = W_dec / norm[:, None]
    for name, value in (("W_enc", W_enc), ("W_dec", W_dec), ("b_enc", b_enc)):
        if value is not None:
            copy_checked(getattr(sae, name), value, name, path)
    if sae.b_dec is not None:
        copy_checked(sae.b_dec, sd["b_dec"], "b_dec", path)
    elif "b_dec" in sd and bool(sd["b_dec"].abs().max() > 0):
        raise ValueError(f"{path}: nonzero b_dec but the config has use_decoder_bias=False")
    sae.load_sae_lens_extra_state(sd, path)


# ---------------------------------------------------------------------------- paper format
def _numpy_data_globals() -> list:
    """numpy scalar / array reconstructors (plain data, e.g. losses in the "logs" entry)."""
    import numpy as np

    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray  # type: ignore[no-redef]
    names = ("float64", "float32", "float16", "int64", "int32", "int16", "int8", "uint8", "bool")
    return [
        multiarray.scalar,
        multiarray._reconstruct,
        np.ndarray,
        np.dtype,
        *{type(np.dtype(n)) for n in names},
    ]


def _torch_load(path: Path) -> Any:
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            if "numpy" not in str(exc):
                raise
            # still weights_only: only numpy's plain-data reconstructors are added
            with torch.serialization.safe_globals(_numpy_data_globals()):
                return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"{path}: refused to load, the file holds Python objects that torch.load(weights_only=True) "
            f"does not allow ({str(exc).splitlines()[0][:200]}); re-save it as a plain state dict"
        ) from None
    except RuntimeError as exc:
        raise ValueError(f"{path}: not a readable torch checkpoint ({exc})") from None


def _strip(key: str) -> str:
    for pre in ("module.", "_orig_mod.", "sae."):
        while key.startswith(pre):
            key = key[len(pre) :]
    return key


def _load_torch_file(path: Path, k: int | None) -> SAE:
    obj = _torch_load(path)
    if isinstance(obj, dict) and isinstance(obj.get("model_state"), dict):
        state = obj["model_state"]
    elif isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state = obj
    else:
        keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(
            f"{path}: not a paper SAE checkpoint: expected a dict with 'model_state' (overcomplete "
            f"TopKSAE state dict) or a bare state dict; found {keys}"
        )
    return sae_from_overcomplete_state(state, k=k, source=str(path))


@torch.no_grad()
def sae_from_overcomplete_state(
    state: dict[str, torch.Tensor], *, k: int | None = None, source: str = "state dict"
) -> SAE:
    """Build a :class:`TopKSAE` from an overcomplete ``TopKSAE`` state dict (linear encoder).

    The dictionary is fused as overcomplete does: ``_weights / (||row|| + 1e-8) * exp(multiplier)``.
    ``k`` defaults to 50 (the paper's).
    """
    state = {_strip(key): v for key, v in state.items()}
    dict_key = next(
        (key for key in ("dictionary._weights", "dictionary.weight") if key in state), None
    )
    enc_w_key = next(
        (
            key
            for key in ("encoder.final_block.0.weight", "encoder.weight", "encoder.linear.weight")
            if key in state
        ),
        None,
    )
    if dict_key is None or enc_w_key is None:
        raise ValueError(
            f"{source}: not an overcomplete TopKSAE state: need an encoder Linear weight "
            "(encoder.final_block.0.weight) and dictionary._weights; found keys "
            f"{sorted(state)[:20]}"
        )
    W_enc = state[enc_w_key]
    D = state[dict_key]
    if W_enc.ndim != 2 or D.ndim != 2 or W_enc.shape != D.shape:
        raise ValueError(
            f"{source}: encoder weight {tuple(W_enc.shape)} and dictionary {tuple(D.shape)} must "
            "both be [c, d] with the same shape"
        )
    b_key = enc_w_key[: -len("weight")] + "bias"
    c, d = D.shape
    b_enc = state.get(b_key, torch.zeros(c, dtype=W_enc.dtype))
    mult = state.get("dictionary.multiplier", torch.zeros(()))
    D = D.float() if D.dtype in (torch.float16, torch.bfloat16) else D
    W_dec = D / (D.norm(p=2, dim=1, keepdim=True) + 1e-8) * torch.exp(mult.to(D.dtype))
    dtype = "float64" if W_enc.dtype == torch.float64 else "float32"
    cfg = SAEConfig(
        arch="topk",
        d_in=d,
        d_sae=c,
        k=int(k) if k is not None else PAPER_DEFAULT_K,
        dtype=dtype,
        metadata={"source": source, "format": "overcomplete.TopKSAE"},
    )
    sae = create_sae(cfg)
    sae.W_enc.copy_(W_enc)
    sae.b_enc.copy_(b_enc)
    sae.W_dec.copy_(W_dec)
    logger.info("loaded paper Top-K SAE from %s (d=%d, c=%d, k=%d)", source, d, c, cfg.k)
    return sae


def check_d_in(sae: SAE, d: int, what: str = "activations") -> None:
    """Raise a clear error when ``d`` differs from the SAE's input width."""
    if int(d) != sae.cfg.d_in:
        raise ValueError(
            f"{what} have d={d} features but the SAE expects d_in={sae.cfg.d_in}: use an SAE "
            "trained on the same model and hook point"
        )
