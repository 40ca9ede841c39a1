"""``saeprobe export neuronpedia RUN_DIR --out DIR``: a run folder's SAE features in the layout
``sae-dashboard``'s Neuronpedia exporter writes (``batch-<n>.json`` feature files with each
feature's top items as tokens + per-token values, ``skipped_indexes.json``,
``run_settings.json``), plus saeprobe's image extension (``saeprobe_images.jsonl``: image-token
activations per exported item, ``thumbs/``). See docs/sharing.md.

Reads ``RUN/models/<m>/sae``, ``RUN/models/<m>/store`` and ``RUN/items/<source>`` (the
model's ``items``); token text comes from the model's tokenizer when its folder is local
(``--tokenizer`` to point elsewhere), else ``<id>`` / ``<image>``.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
from pathlib import Path

from .flags import add_command

HELP = "export SAE features: export neuronpedia RUN_DIR --out DIR"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = add_command(subparsers, "export", HELP, __doc__)
    sub = p.add_subparsers(dest="export_format", metavar="FORMAT")
    np_ = sub.add_parser("neuronpedia", help="Neuronpedia / SAEDashboard JSON (+ images)")
    np_.add_argument("run_dir", metavar="RUN_DIR", help="run folder (run.json)")
    np_.add_argument("--out", required=True, help="output folder")
    np_.add_argument("--model", action="append", help="model of the run (default: every one)")
    np_.add_argument("--n-top", type=int, default=20, help="top items per feature (default 20)")
    np_.add_argument("--features", help="latents to export, e.g. 0-99,512 (default: all alive)")
    np_.add_argument("--context", type=int, help="tokens kept each side of the maximum")
    np_.add_argument("--features-per-batch", type=int, default=128)
    np_.add_argument("--model-id", help="Neuronpedia model id (default: the run's model name)")
    np_.add_argument("--set-name", default="saeprobe", help="Neuronpedia SAE set name")
    np_.add_argument("--layer", type=int, help="layer index (default: from the hook point)")
    np_.add_argument("--tokenizer", help="tokenizer folder (default: the model's, when local)")
    np_.add_argument("--batch-size", type=int, default=4096, help="tokens encoded at once")
    p.set_defaults(func=run)
    return p


def parse_features(spec: str | None, d_sae: int) -> list[int] | None:
    """``"0-3,9"`` -> ``[0, 1, 2, 3, 9]`` (checked against ``d_sae``); None stays None."""
    from saeprobe.cli import CLIError

    if spec is None:
        return None
    out: set[int] = set()
    for part in filter(None, (s.strip() for s in spec.split(","))):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise CLIError(f"--features: cannot read {part!r}; use e.g. 0-99,512")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        out.update(range(lo, hi + 1))
    if not out or max(out) >= d_sae:
        raise CLIError(f"--features {spec!r} must name latents in 0..{d_sae - 1}")
    return sorted(out)


def _token_text(tokenizer_path: str | None):
    from saeprobe import Modality

    tok = None
    if tokenizer_path and Path(tokenizer_path).is_dir():
        try:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(tokenizer_path, local_files_only=True)
        except (OSError, ValueError):
            tok = None

    @functools.lru_cache(maxsize=65536)
    def text(token_id: int, modality: int) -> str:
        if modality == int(Modality.IMAGE):
            return "<image>"
        return tok.decode([token_id]) if tok is not None else f"<{token_id}>"

    return text


def _layer(hook: str, meta: dict, given: int | None) -> int:
    if given is not None:
        return given
    m = re.fullmatch(r"(?:resid_post|resid_pre)\.(-?\d+)|(-?\d+)", hook or "")
    if m:
        return int(m.group(1) or m.group(2))
    return int(meta.get("n_layers") or 0)


def _export_model(args: argparse.Namespace, run, name: str) -> Path:
    from saeprobe import Modality
    from saeprobe.sae import load_sae
    from saeprobe.sae.neuronpedia import ExportSettings, export_neuronpedia
    from saeprobe.store import ActivationStore

    meta = run.model(name)
    sae = load_sae(run.sae_path(name))
    store = ActivationStore(run.store_path(name))
    source = meta.get("items")
    table = run.items(source) if source and source in run.item_sources else None
    system = int(Modality.SYSTEM)

    def batches():
        return store.batches(args.batch_size, shuffle=False, fields=("acts", "sample_id"),
                             exclude=["system"])  # fmt: skip

    def read_samples(ids):
        b = store.read_samples(ids)
        keep = b.modality != system
        return type(b)(*(t[keep] for t in b))

    def describe(sid):
        if table is None or not 0 <= sid < len(table):
            return None
        row = table.get(table.ids[sid])
        return {"id": row["id"], "kind": row["kind"], "source": source, "thumb": row["thumb"]}

    hook = meta.get("hook_point") or sae.cfg.metadata.get("hook_point") or "final_norm"
    settings = ExportSettings(
        model_id=args.model_id or name, sae_set=args.set_name, hook_name=hook,
        layer=_layer(hook, meta, args.layer), dataset=source or "", n_top=args.n_top,
        features=parse_features(args.features, sae.cfg.d_sae), context=args.context,
        features_per_batch=args.features_per_batch, batch_size=args.batch_size,
        extra={"run": str(run.root), "model": name, "items": source},
    )  # fmt: skip
    return export_neuronpedia(sae, args.out, settings, batches=batches,
                              read_samples=read_samples,
                              token_text=_token_text(args.tokenizer or meta.get("path")),
                              describe=describe)  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from saeprobe.cli import CLIError
    from saeprobe.run import RunFolder

    if getattr(args, "export_format", None) != "neuronpedia":
        raise CLIError("name the format: `saeprobe export neuronpedia RUN_DIR --out DIR`")
    run_ = RunFolder(args.run_dir)
    names = args.model or run_.models
    if not names:
        raise CLIError(f"run {run_.root} has no models; add one with --run RUN --name MODEL")
    for name in names:
        folder = _export_model(args, run_, name)
        print(json.dumps({"model": name, "export": str(folder)}))
    return 0
