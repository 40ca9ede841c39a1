"""Hub-ready model cards (``README.md``) for saved SAEs.

:func:`write_card` writes ``README.md`` next to ``cfg.json`` + ``sae_weights.safetensors`` so the
folder can be published as it is (``huggingface-cli upload OWNER/REPO SAE_DIR``). The YAML
header carries ``library_name: saeprobe``, ``tags``, ``base_model`` (when the model is a hub
id), the hook point, width, k, training tokens and the measured metrics under SAEBench's
names (``sae_metrics``: ``fvu``, ``explained_variance``, ``l0``, ``dead_fraction``, ... when
known). Facts are read from, in order of preference:

* ``eval.json`` (held-out metrics written by ``saeprobe eval-sae --card``, used only while
  the weights are the evaluated ones);
* ``training.json`` (the trainer's final summary, used when its step count is the
  checkpoint's; its ``eval_*`` metrics are held-out);
* ``cfg.json`` metadata ``training`` (steps, tokens, final metrics; present at save time);
* the last record of ``metrics.jsonl``.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_json, atomic_write_text
from .files import (
    CARD_FILENAME,
    CFG_FILENAME,
    EVAL_FILENAME,
    METRICS_FILENAME,
    TRAINING_FILENAME,
    WEIGHTS_FILENAME,
)

logger = logging.getLogger(__name__)

__all__ = [
    "CARD_FILENAME",
    "EVAL_FILENAME",
    "card_info",
    "card_metadata",
    "read_card_metadata",
    "render_card",
    "to_yaml",
    "write_card",
    "write_eval",
]

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
#: metrics shown in the card, in this order (SAEBench / sae-lens names)
CARD_METRICS = (
    "fvu",
    "explained_variance",
    "l0",
    "dead_fraction",
    "dense_fraction",
    "frac_alive",
    "mse",
    "cossim",
    "l1",
    "ce_loss_score",
    "ce_loss_with_sae",
    "ce_loss_without_sae",
    "ce_loss_with_ablation",
    "kl_div_score",
    "kl_div_with_sae",
    "kl_div_with_ablation",
    "r2_scalar_mean",
)
_DEFINITIONS = {
    "fvu": "fraction of variance unexplained: sum (x - x_hat)^2 / sum (x - mean x)^2",
    "explained_variance": "1 - fvu",
    "l0": "mean number of active latents per token",
    "dead_fraction": "share of latents that never fired",
    "dense_fraction": "share of latents firing on more than 10% of tokens",
    "frac_alive": "share of latents that fired at least once",
    "mse": "mean over tokens of the summed (x - x_hat)^2",
    "cossim": "mean cosine of x and x_hat",
    "l1": "mean sum |z| per token",
    "ce_loss_score": "CE loss recovered with the SAE spliced in (1 = clean, 0 = zero-ablation)",
    "kl_div_score": "1 - KL(clean || SAE) / KL(clean || zero-ablation)",
    "r2_scalar_mean": "the paper's R2 (one scalar mean of x)",
}


# ----------------------------------------------------------------------------- YAML
def _scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(float(v))
    return json.dumps(str(v), ensure_ascii=False)  # a JSON string is a YAML double-quoted scalar


def _usable(v: Any) -> bool:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return False
    return not (isinstance(v, (dict, list, tuple)) and not v)


def to_yaml(obj: dict[str, Any], indent: int = 0) -> str:
    """A small YAML emitter for card headers: nested dicts, lists of scalars, str / int /
    float / bool; ``None``, NaN and empty containers are left out."""
    pad = " " * indent
    lines: list[str] = []
    for key, v in obj.items():
        if not _usable(v):
            continue
        if isinstance(v, dict):
            body = to_yaml(v, indent + 2)
            if body:
                lines.append(f"{pad}{key}:\n{body}")
        elif isinstance(v, (list, tuple)):
            items = [x for x in v if _usable(x)]
            lines.append(f"{pad}{key}:\n" + "\n".join(f"{pad}- {_scalar(x)}" for x in items))
        else:
            lines.append(f"{pad}{key}: {_scalar(v)}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- facts
def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, ValueError) as exc:
        logger.warning("card: ignoring unreadable %s (%s)", path, exc)
        return None


def _last_record(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    last = None
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and "fvu" in rec:
            last = rec
    return last


def _training_metrics(raw: dict[str, Any]) -> dict[str, float]:
    """Trainer metric names -> card names (held-out ``eval_*`` win over training windows)."""
    m = {k: v for k, v in raw.items() if isinstance(v, (int, float))}
    pick = lambda name: m.get(f"eval_{name}", m.get(name))  # noqa: E731
    out = {"fvu": pick("fvu"), "l0": pick("l0"), "dead_fraction": m.get("dead")}
    if out["fvu"] is not None:
        out["explained_variance"] = 1.0 - float(out["fvu"])
    if pick("r2") is not None:
        out["r2_scalar_mean"] = pick("r2")
    return {k: float(v) for k, v in out.items() if v is not None}


def card_info(folder: str | Path, cfg: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything a card says about the SAE in ``folder`` (``cfg``: its sae-lens ``cfg.json``
    dict, read from the folder when None): config, metadata, training, metrics and source."""
    folder = Path(folder)
    cfg = cfg if cfg is not None else _read_json(folder / CFG_FILENAME)
    if cfg is None:
        raise FileNotFoundError(
            f"{folder} has no {CFG_FILENAME}: pass an SAE folder written by saeprobe or sae-lens"
        )
    meta = dict(cfg.get("metadata") or {})
    ours = dict(cfg.get("saeprobe") or {})
    training = dict(meta.get("training") or {})
    summary = _read_json(folder / TRAINING_FILENAME)
    # a training.json of another run (other step count than this checkpoint's) is stale
    if summary and (not training or summary.get("steps") == training.get("steps")):
        training.update({k: summary[k] for k in ("steps", "tokens", "seconds") if k in summary})
        training["metrics"] = summary.get("metrics") or training.get("metrics") or {}
        training["config"] = summary.get("config") or {}
    metrics, source = {}, None
    if not training.get("metrics"):
        last = _last_record(folder / METRICS_FILENAME)
        if last:
            training["metrics"] = last
            training.setdefault("tokens", last.get("tokens"))
            training.setdefault("steps", last.get("step"))
    if training.get("metrics"):
        metrics, source = _training_metrics(training["metrics"]), "training"
        if any(str(k).startswith("eval_") for k in training["metrics"]):
            source = "held-out evaluation during training"
    evaluation = _read_json(folder / EVAL_FILENAME)
    weights = weights_digest(folder) if evaluation else None
    for kind in ("reconstruction", "splice"):
        part = (evaluation or {}).get(kind) or {}
        if part.get("weights_digest") != weights:
            logger.info("card: ignoring the %s evaluation of other weights in %s", kind, folder)
            continue
        got = {k: v for k, v in (part.get("metrics") or {}).items() if isinstance(v, (int, float))}
        if got:
            metrics.update(got)
            source = "held-out evaluation (saeprobe eval-sae)"
    return {
        "cfg": cfg,
        "arch": ours.get("arch") or cfg.get("architecture"),
        "sae_lens_architecture": cfg.get("architecture"),
        "d_in": cfg.get("d_in"),
        "width": cfg.get("d_sae"),
        "k": ours.get("k", cfg.get("k")),
        "matryoshka_widths": ours.get("matryoshka_widths"),
        "hook_point": meta.get("hook_point") or meta.get("hook_name"),
        "model": meta.get("base_model") or meta.get("model_name"),
        "meta": meta,
        "training": training,
        "metrics": {k: metrics[k] for k in CARD_METRICS if k in metrics and _usable(metrics[k])},
        "metrics_source": source,
        "evaluation": evaluation,
    }


def weights_digest(folder: str | Path) -> str | None:
    """xxh3-128 digest of ``folder``'s weights file (ties ``eval.json`` to the weights)."""
    import xxhash

    path = Path(folder) / WEIGHTS_FILENAME
    if not path.is_file():
        return None
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return f"xxh3_128:{h.hexdigest()}"


def _hub_id(model: Any) -> str | None:
    if not isinstance(model, str) or not _HUB_ID.match(model) or Path(model).exists():
        return None
    return model


def card_metadata(info: dict[str, Any]) -> dict[str, Any]:
    """The YAML header of the card (a plain dict)."""
    meta, training = info["meta"], info["training"]
    arch = info["arch"] or "sae"
    tags = ["saeprobe", "sparse-autoencoder", "sae", "interpretability", "sae_lens", f"{arch}-sae"]
    tags += [t for t in meta.get("tags", []) if isinstance(t, str)]
    return {
        "library_name": "saeprobe",
        "license": meta.get("license"),
        "tags": list(dict.fromkeys(tags)),
        "base_model": _hub_id(info["model"]),
        "datasets": [d for d in [meta.get("dataset")] if _hub_id(d)],
        "architecture": arch,
        "sae_lens_architecture": info["sae_lens_architecture"],
        "hook_point": info["hook_point"],
        "d_in": info["d_in"],
        "width": info["width"],
        "k": info["k"],
        "matryoshka_widths": info["matryoshka_widths"],
        "training_tokens": training.get("tokens"),
        "training_steps": training.get("steps"),
        "sae_metrics": info["metrics"],
        "sae_metrics_source": info["metrics_source"],
    }


# ----------------------------------------------------------------------------- markdown
def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


def _table(rows: list[tuple[str, Any]], head: tuple[str, str] = ("", "")) -> list[str]:
    out = [f"| {head[0]} | {head[1]} |", "|---|---|"]
    out += [f"| {k} | {_fmt(v)} |" for k, v in rows if _usable(v)]
    return out


def _title(info: dict[str, Any]) -> str:
    arch = {"topk": "Top-K", "batchtopk": "BatchTopK", "jumprelu": "JumpReLU", "gated": "Gated",
            "standard": "ReLU", "matryoshka_batchtopk": "Matryoshka BatchTopK"}.get(
        info["arch"], str(info["arch"]))  # fmt: skip
    where = f" on {info['model']}" if info["model"] else ""
    hook = f" ({info['hook_point']})" if info["hook_point"] else ""
    k = f", k={info['k']}" if info["k"] else ""
    return f"{arch} SAE{where}{hook}: {_fmt(info['width'])} latents{k}"


def _usage(info: dict[str, Any]) -> list[str]:
    return [
        "## Usage",
        "",
        "```python",
        "from saeprobe.sae import load_sae",
        "",
        'sae = load_sae("hf://OWNER/REPO")  # or a local folder',
        "codes = sae.encode_sparse(x)  # x: [N, d_in] activations at the hook point",
        "x_hat = sae(x)",
        "```",
        "",
        "The files are the sae-lens layout (`cfg.json` + `sae_weights.safetensors`), so",
        f"sae-lens loads them too (as its `{info['sae_lens_architecture']}` architecture):",
        "",
        "```python",
        "from huggingface_hub import snapshot_download",
        "from sae_lens import SAE",
        "",
        'sae = SAE.load_from_disk(snapshot_download("OWNER/REPO"))',
        "```",
    ]


def _training_lines(info: dict[str, Any]) -> list[str]:
    t, meta = info["training"], info["meta"]
    cfg = t.get("config") or {}
    rows = [
        ("recipe", t.get("recipe") or cfg.get("recipe")),
        ("tokens", t.get("tokens")),
        ("steps", t.get("steps")),
        ("batch size", cfg.get("batch_size")),
        ("learning rate", cfg.get("lr")),
        ("epochs", cfg.get("epochs")),
        ("seconds", round(float(t["seconds"]), 1) if _usable(t.get("seconds")) else None),
        ("store fingerprint", t.get("store_fingerprint")),
        ("dataset", meta.get("dataset")),
        ("converted from", meta.get("source")),
        ("source format", meta.get("format")),
    ]
    if not any(_usable(v) for _, v in rows):
        return []
    return ["## Training", "", *_table(rows, ("setting", "value")), ""]


def render_card(info: dict[str, Any]) -> str:
    """``README.md`` text (YAML header + markdown) of :func:`card_info` facts."""
    rows = [
        ("architecture", f"`{info['arch']}` (sae-lens `{info['sae_lens_architecture']}`)"),
        ("base model", info["model"]),
        ("hook point", f"`{info['hook_point']}`" if info["hook_point"] else None),
        ("input width d_in", info["d_in"]),
        ("latents (width)", info["width"]),
        ("k", info["k"]),
        ("matryoshka widths", ", ".join(map(str, info["matryoshka_widths"] or [])) or None),
    ]
    lines = ["---", to_yaml(card_metadata(info)), "---", "", f"# {_title(info)}", ""]
    lines += [
        "A sparse autoencoder saved by saeprobe (sparse-autoencoder probes for multimodal LLMs).",
        "",
        *_table(rows, ("setting", "value")),
        "",
    ]
    if info["metrics"]:
        lines += [f"## Metrics ({info['metrics_source']})", "", "| metric | value | definition |",
                  "|---|---|---|"]  # fmt: skip
        lines += [
            f"| `{k}` | {_fmt(v)} | {_DEFINITIONS.get(k, '')} |" for k, v in info["metrics"].items()
        ]
        lines.append("")
    lines += _training_lines(info)
    lines += _usage(info)
    paper = info["meta"].get("paper")
    if isinstance(paper, str) and paper:
        lines += ["", "## Citation", "", paper]
    return "\n".join(lines).rstrip() + "\n"


def write_card(folder: str | Path, cfg: dict[str, Any] | None = None) -> Path:
    """(Re)write ``folder/README.md`` from the checkpoint (``cfg``: its ``cfg.json`` dict, read
    when None) and the training / eval files next to it."""
    folder = Path(folder)
    path = atomic_write_text(folder / CARD_FILENAME, render_card(card_info(folder, cfg)),
                             what="model card")  # fmt: skip
    logger.info("wrote the model card %s", path)
    return path


def write_eval(folder: str | Path, kind: str, result: dict[str, Any]) -> Path:
    """Merge one evaluation (``kind``: ``reconstruction`` or ``splice``; ``result``: its
    ``to_dict()`` plus anything worth keeping) into ``folder/eval.json``, tied to the current
    weights by their digest (a card ignores the evaluations of other weights)."""
    if kind not in ("reconstruction", "splice"):
        raise ValueError(f"evaluation kind must be 'reconstruction' or 'splice', got {kind!r}")
    folder = Path(folder)
    data = _read_json(folder / EVAL_FILENAME) or {}
    data[kind] = {**result, "weights_digest": weights_digest(folder)}
    return atomic_write_json(folder / EVAL_FILENAME, data, what="SAE evaluation")


def read_card_metadata(path: str | Path) -> dict[str, Any]:
    """The YAML header of a card (``README.md`` or its folder) as a dict (needs PyYAML)."""
    import yaml

    path = Path(path)
    text = (path / CARD_FILENAME if path.is_dir() else path).read_text(encoding="utf-8")
    if not text.startswith("---\n"):
        raise ValueError(f"{path} has no YAML header; rewrite it with `saeprobe card SAE_DIR`")
    return yaml.safe_load(text.split("---\n", 2)[1]) or {}
