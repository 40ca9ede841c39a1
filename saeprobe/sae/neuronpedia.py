"""Neuronpedia / SAEDashboard export: the files ``sae-dashboard``'s Neuronpedia runner writes.

Layout (``OUT/<model_id>_<sae_set>_<hook>_<d_sae>/``, as ``NeuronpediaRunner`` names it)::

    run_settings.json        the export settings (sae-dashboard: the runner config)
    skipped_indexes.json     {"model_id", "layer", "sae_set", "log_sparsity", "skipped_indexes"}:
                             latents that never fired (Neuronpedia creates them as dead)
    batch-<n>.json           NeuronpediaDashboardBatch: {"model_id", "layer", "sae_set",
                             "sae_id_suffix", "features": [NeuronpediaDashboardFeature, ...]}
    saeprobe_images.jsonl    extension: one line per exported activation whose item has an
                             image: item id, thumbnail, image-token positions and values
    thumbs/<item>.png        extension: the items' thumbnails
    saeprobe_export.json     what was exported (format ``saeprobe.neuronpedia``, version 1)

Each feature has the dashboard's fields (``feature_index``, ``frac_nonzero``, the activation
histogram ``freq_hist_data_bar_values`` / ``_heights``, ``neuron_alignment_*`` from the decoder
row, ``activations``: the top ``n_top`` items by the feature's maximum, each
``{"bin_min": -1, "bin_max": max, "bin_contains": -1, "tokens", "values",
"qualifying_token_index"}`` with one value per token, rounded to 3 decimals as sae-dashboard
does). Logit tables (``pos_str`` / ``neg_str``) need the unembedding and stay empty.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..atomic import atomic_write_bytes, atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)

__all__ = ["ExportSettings", "FeatureStats", "export_neuronpedia", "feature_stats", "output_dir"]

EXPORT_FORMAT = "saeprobe.neuronpedia"
IMAGE_MODALITY = 2  # saeprobe._types.Modality.IMAGE
_EMPTY_LISTS = (
    "correlated_neurons_indices", "correlated_neurons_l1", "correlated_neurons_pearson",
    "correlated_features_indices", "correlated_features_l1", "correlated_features_pearson",
    "neg_str", "neg_values", "pos_str", "pos_values", "logits_hist_data_bar_heights",
    "logits_hist_data_bar_values", "decoder_weights_dist", "vector",
)  # fmt: skip


@dataclass
class ExportSettings:
    """What to export and how Neuronpedia should name it.

    Attributes
    ----------
    model_id, sae_set, hook_name : str
        Neuronpedia model id, SAE set name and the hook point.
    layer : int
        Layer index (``resid_post.L`` -> L; ``final_norm`` -> the number of layers, or 0).
    dataset : str
        Data description shown by Neuronpedia.
    n_top : int
        Top activations (items) per feature.
    features : list[int] | None
        Latents to export (None: every latent that fired).
    features_per_batch : int
        Features per ``batch-<n>.json`` file (sae-dashboard's ``n_features_at_a_time``).
    context : int | None
        Tokens kept on each side of the maximum (None: the whole item).
    n_hist_bins : int
    batch_size : int
        Tokens encoded at once.
    """

    model_id: str
    sae_set: str = "saeprobe"
    hook_name: str = "final_norm"
    layer: int = 0
    dataset: str = ""
    n_top: int = 20
    features: list[int] | None = None
    features_per_batch: int = 128
    context: int | None = None
    n_hist_bins: int = 20
    batch_size: int = 4096
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class FeatureStats:
    """Per-latent statistics of one pass over the tokens.

    Attributes
    ----------
    n_tokens, n_samples : int
    fired : Tensor [c]  (tokens on which each latent fired)
    max_value : Tensor [c]
    top : dict[int, list[tuple[int, float]]]
        Per latent, up to ``n_top`` ``(sample_id, max value in that sample)``, best first.
    """

    n_tokens: int
    n_samples: int
    fired: Tensor
    max_value: Tensor
    top: dict[int, list[tuple[int, float]]]


def output_dir(out: str | Path, settings: ExportSettings, d_sae: int) -> Path:
    """``out/<model_id>_<sae_set>_<hook>_<d_sae>`` (sae-dashboard's naming, made path-safe)."""
    name = f"{settings.model_id}_{settings.sae_set}_{settings.hook_name}_{d_sae}"
    return Path(out) / re.sub(r"[^A-Za-z0-9._-]+", "-", name)


def _codes(sae: Any, acts: Tensor) -> tuple[Tensor, Tensor]:
    with torch.no_grad():
        p = next(sae.parameters())
        v, i = sae.encode_sparse(acts.to(device=p.device, dtype=torch.float32))
    return v.float().cpu(), i.cpu()


def _merge_top(state: Tensor, new: Tensor, n_top: int) -> Tensor:
    """Rows ``(latent, sample, value)`` -> per latent the ``n_top`` best samples (max value)."""
    rows = torch.cat([state, new]) if state.numel() else new
    rows = rows[torch.argsort(-rows[:, 2], stable=True)]  # value, best first
    rows = rows[torch.argsort(rows[:, 1], stable=True)]
    rows = rows[torch.argsort(rows[:, 0], stable=True)]  # by latent, sample; best value first
    first = torch.ones(rows.shape[0], dtype=torch.bool)
    first[1:] = (rows[1:, :2] != rows[:-1, :2]).any(1)
    rows = rows[first]  # one row per (latent, sample): its maximum
    rows = rows[torch.argsort(-rows[:, 2], stable=True)]
    rows = rows[torch.argsort(rows[:, 0], stable=True)]
    lat = rows[:, 0].long()
    counts = torch.bincount(lat)
    rank = torch.arange(lat.numel()) - (counts.cumsum(0) - counts)[lat]
    return rows[rank < n_top]


def feature_stats(
    sae: Any, batches: Iterable[Any], n_top: int, features: list[int] | None = None
) -> FeatureStats:
    """One pass over token batches (``.acts [B, d]``, ``.sample_id [B]``): firing counts,
    maxima and each latent's top ``n_top`` samples (float64 values, float32 codes)."""
    c = int(sae.cfg.d_sae)
    wanted = torch.zeros(c, dtype=torch.bool)
    wanted[features if features is not None else slice(None)] = True
    fired = torch.zeros(c, dtype=torch.float64)
    vmax = torch.zeros(c, dtype=torch.float64)
    state = torch.zeros(0, 3, dtype=torch.float64)
    n_tok, samples = 0, set()
    for b in batches:
        v, i = _codes(sae, b.acts)
        sid = b.sample_id.long().cpu()[:, None].expand_as(i)
        on = (v != 0) & wanted[i]
        lat, val, s = i[on], v[on].double(), sid[on]
        fired += torch.bincount(lat, minlength=c).double()
        vmax.scatter_reduce_(0, lat, val, reduce="amax")
        if lat.numel():
            state = _merge_top(state, torch.stack([lat.double(), s.double(), val], 1), n_top)
        n_tok += b.acts.shape[0]
        samples.update(b.sample_id.unique().tolist())
    top: dict[int, list[tuple[int, float]]] = {}
    for lat_, s_, v_ in state.tolist():
        top.setdefault(int(lat_), []).append((int(s_), float(v_)))
    return FeatureStats(n_tok, len(samples), fired, vmax, top)


def _histograms(sae: Any, batches: Iterable[Any], vmax: Tensor, n_bins: int) -> Tensor:
    """Per latent, counts ``[c, n_bins]`` of its non-zero values on ``n_bins`` bins of ``[0, max]``."""
    c = vmax.numel()
    hist = torch.zeros(c * n_bins, dtype=torch.float64)
    for b in batches:
        v, i = _codes(sae, b.acts)
        on = (v != 0) & (vmax[i] > 0)
        lat, val = i[on], v[on].double()
        bins = (val / vmax[lat] * n_bins).long().clamp(0, n_bins - 1)
        hist += torch.bincount(lat * n_bins + bins, minlength=c * n_bins).double()
    return hist.reshape(c, n_bins)


def _round(values: Iterable[float]) -> list[float]:
    return [round(float(x), 3) for x in values]


def _feature_head(sae: Any, f: int, stats: FeatureStats, hist: Tensor, s: ExportSettings) -> dict:
    w = sae.W_dec[f].detach().float().cpu()
    top = w.abs().topk(min(3, w.numel())).indices
    l1 = float(w.abs().sum()) or 1.0
    vmax = float(stats.max_value[f])
    width = vmax / s.n_hist_bins if vmax > 0 else 0.0
    out = {
        "feature_index": int(f),
        "neuron_alignment_indices": [int(j) for j in top],
        "neuron_alignment_values": _round(w[top]),
        "neuron_alignment_l1": _round(w[top] / l1),
        "frac_nonzero": float(stats.fired[f]) / max(stats.n_tokens, 1),
        "freq_hist_data_bar_values": _round((torch.arange(s.n_hist_bins) + 0.5) * width),
        "freq_hist_data_bar_heights": _round(hist[f]),
        "n_prompts_total": stats.n_samples,
        "n_tokens_in_prompt": 0,
        "dataset": s.dataset,
        "activations": [],
    }
    out.update({k: [] for k in _EMPTY_LISTS})
    return out


def _sample_rows(batch: Any) -> dict[int, Tensor]:
    """``sample_id -> row indices`` of a token batch, each sorted by position."""
    sid, pos = batch.sample_id.long().cpu(), batch.position.long().cpu()
    order = torch.argsort(pos, stable=True)
    order = order[torch.argsort(sid[order], stable=True)]
    out: dict[int, Tensor] = {}
    for s in sid[order].unique().tolist():
        out[int(s)] = order[sid[order] == s]
    return out


def _activation(rows: Tensor, values: Tensor, texts: list[str], context: int | None) -> dict:
    vals = values[rows]
    best = int(torch.argmax(vals))
    lo, hi = 0, rows.numel()
    if context is not None:
        lo, hi = max(0, best - context), min(rows.numel(), best + context + 1)
    return {
        "bin_min": -1,
        "bin_max": round(float(vals[best]), 3),
        "bin_contains": -1,
        "tokens": [texts[int(r)] for r in rows[lo:hi]],
        "values": _round(vals[lo:hi]),
        "qualifying_token_index": best - lo,
        "_window": (lo, hi),
    }


def _image_line(f: int, a_idx: int, act: dict, mods: Tensor, info: dict | None) -> dict | None:
    lo, hi = act.pop("_window")
    img = [j for j, m in enumerate(mods[lo:hi].tolist()) if m == IMAGE_MODALITY]
    if not img and not (info and info.get("thumb")):
        return None
    return {
        "feature_index": f,
        "activation_index": a_idx,
        "item_id": (info or {}).get("id"),
        "item_source": (info or {}).get("source"),
        "kind": (info or {}).get("kind"),
        "thumb": (info or {}).get("thumb_file"),
        "image_token_indices": img,
        "image_token_values": [act["values"][j] for j in img],
        "max_image_value": max((act["values"][j] for j in img), default=0.0),
    }


def _chunk_features(
    sae: Any,
    chunk: list[int],
    stats: FeatureStats,
    hist: Tensor,
    s: ExportSettings,
    read_samples: Callable[[list[int]], Any],
    token_text: Callable[[int, int], str],
    describe: Callable[[int], dict | None],
) -> tuple[list[dict], list[dict]]:
    wanted = sorted({sid for f in chunk for sid, _ in stats.top.get(f, [])})
    feats = [_feature_head(sae, f, stats, hist, s) for f in chunk]
    lines: list[dict] = []
    if not wanted:
        return feats, lines
    b = read_samples(wanted)
    v, i = _codes(sae, b.acts)
    slot = torch.full((int(sae.cfg.d_sae),), -1, dtype=torch.long)
    slot[torch.tensor(chunk)] = torch.arange(len(chunk))
    dense = torch.zeros(b.acts.shape[0], len(chunk) + 1)
    dense.scatter_add_(1, torch.where(slot[i] >= 0, slot[i], len(chunk)), v)
    texts = [
        token_text(int(t), int(m))
        for t, m in zip(b.token_id.tolist(), b.modality.tolist(), strict=True)
    ]
    rows_of, mods = _sample_rows(b), b.modality.cpu()
    for col, (f, feat) in enumerate(zip(chunk, feats, strict=True)):
        for sid, _ in stats.top.get(f, []):
            rows = rows_of[sid]
            act = _activation(rows, dense[:, col], texts, s.context)
            line = _image_line(f, len(feat["activations"]), act, mods[rows], describe(sid))
            feat["activations"].append(act)
            if line:
                lines.append(line)
        feat["n_tokens_in_prompt"] = max((len(a["tokens"]) for a in feat["activations"]), default=0)
    return feats, lines


def _describer(
    describe: Callable[[int], dict | None], folder: Path
) -> Callable[[int], dict | None]:
    """Wrap ``describe(sample_id)`` so each thumbnail is copied once to ``folder/thumbs/``."""
    cache: dict[int, dict | None] = {}

    def get(sid: int) -> dict | None:
        if sid not in cache:
            info = describe(sid)
            if info and info.get("thumb") and Path(info["thumb"]).is_file():
                name = re.sub(r"[^A-Za-z0-9._-]+", "-", str(info.get("id", sid))) + ".png"
                atomic_write_bytes(folder / "thumbs" / name, Path(info["thumb"]).read_bytes(),
                                   what="thumbnail")  # fmt: skip
                info = {**info, "thumb_file": f"thumbs/{name}"}
            cache[sid] = info
        return cache[sid]

    return get


def export_neuronpedia(
    sae: Any,
    out: str | Path,
    settings: ExportSettings,
    *,
    batches: Callable[[], Iterable[Any]],
    read_samples: Callable[[list[int]], Any],
    token_text: Callable[[int, int], str],
    describe: Callable[[int], dict | None] = lambda sid: None,
) -> Path:
    """Write the Neuronpedia / SAEDashboard layout of ``sae`` on some tokens (module docstring).

    Parameters
    ----------
    sae : SAE
    out : str | Path
        Parent folder; the export goes to :func:`output_dir`.
    settings : ExportSettings
    batches : callable
        ``batches()`` -> a fresh iterable of token batches with ``.acts [B, d]`` and
        ``.sample_id [B]`` (called twice: statistics, then histograms).
    read_samples : callable
        ``read_samples(sample_ids)`` -> one batch with ``.acts``, ``.sample_id``, ``.position``,
        ``.token_id``, ``.modality`` of all tokens of those samples.
    token_text : callable
        ``token_text(token_id, modality)`` -> the token as shown.
    describe : callable
        ``describe(sample_id)`` -> ``{"id", "kind", "source", "thumb": Path | None}`` or None.

    Returns
    -------
    Path
        The export folder.
    """
    c = int(sae.cfg.d_sae)
    stats = feature_stats(sae, batches(), settings.n_top, settings.features)
    hist = _histograms(sae, batches(), stats.max_value, settings.n_hist_bins)
    chosen = settings.features if settings.features is not None else range(c)
    alive = [int(f) for f in chosen if stats.fired[int(f)] > 0]
    folder = output_dir(out, settings, c)
    head = {"model_id": settings.model_id, "layer": settings.layer, "sae_set": settings.sae_set}
    atomic_write_json(folder / "run_settings.json", {**asdict(settings), "d_sae": c},
                      what="export settings")  # fmt: skip
    skipped = sorted(set(range(c)) - set(alive))
    atomic_write_json(folder / "skipped_indexes.json",
                      {**head, "layer": str(settings.layer), "log_sparsity": 0,
                       "skipped_indexes": skipped}, indent=None, what="skipped features")  # fmt: skip
    get = _describer(describe, folder)
    lines: list[dict] = []
    step = max(1, int(settings.features_per_batch))
    files = []
    for n, start in enumerate(range(0, len(alive), step)):
        feats, more = _chunk_features(sae, alive[start : start + step], stats, hist, settings,
                                      read_samples, token_text, get)  # fmt: skip
        batch = {**head, "sae_id_suffix": None, "features": feats}
        files.append(atomic_write_json(folder / f"batch-{n}.json", batch, indent=None,
                                       what="Neuronpedia batch").name)  # fmt: skip
        lines += more
    text = "".join(json.dumps(line) + "\n" for line in lines)
    atomic_write_text(folder / "saeprobe_images.jsonl", text, what="image activations")
    manifest = {
        "format": EXPORT_FORMAT, "version": 1, **head, "hook_name": settings.hook_name,
        "d_sae": c, "n_features": len(alive), "n_skipped": len(skipped),
        "n_tokens": stats.n_tokens, "n_prompts": stats.n_samples, "batches": files,
        "image_activations": len(lines), "arch": sae.cfg.arch, "k": sae.cfg.k,
        **settings.extra,
    }  # fmt: skip
    atomic_write_json(folder / "saeprobe_export.json", manifest, what="export manifest")
    logger.info("exported %d features (%d skipped) to %s", len(alive), len(skipped), folder)
    return folder
