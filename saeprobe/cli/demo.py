"""``saeprobe demo``: the whole pipeline on a tiny offline model and real photos.

Builds a tiny random Qwen2-VL checkpoint and a small captioned image folder
(scikit-image sample photos), then runs capture -> train -> analyze -> retrieve
through the same functions the sub-commands use, and prints what each step made.
Everything runs on CPU in about a minute; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

logger = logging.getLogger(__name__)

PHOTOS = {
    "astronaut": [
        "A woman in a space suit holding a helmet.",
        "An astronaut posing next to a flag.",
    ],
    "chelsea": ["A ginger cat looking to the side.", "A cat with orange fur on the floor."],
    "coffee": ["A cup of coffee on a saucer.", "A coffee cup with a spoon, seen from above."],
    "rocket": ["A rocket on the launch pad.", "A space shuttle ready for launch."],
    "hubble_deep_field": ["Distant galaxies in deep space.", "A telescope image full of galaxies."],
    "coins": ["Old coins lying on a table.", "A grey picture of many small coins."],
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="run capture -> train -> analyze -> retrieve on a tiny offline model"
    )
    p.add_argument("--out", default="out/demo", help="where the demo writes (default: out/demo)")
    p.add_argument("--family", default="qwen2_vl", help="tiny model family (see saeprobe.testing)")
    p.add_argument("--steps", type=int, default=200, help="SAE training steps")
    p.set_defaults(func=run)


def make_folder(folder: Path) -> Path:
    """A captioned image folder from scikit-image's sample photos."""
    import csv

    from PIL import Image
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, captions in PHOTOS.items():
        arr = getattr(data, name)()
        img = Image.fromarray(arr).convert("RGB").resize((64, 64))
        img.save(folder / f"{name}.png")
        rows += [(f"{name}.png", c) for c in captions]
    with open(folder / "captions.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption"])
        w.writerows(rows)
    return folder


def run(args: argparse.Namespace) -> int:
    from saeprobe.capture import capture
    from saeprobe.data import open_source
    from saeprobe.models import load_model
    from saeprobe.testing import build_tiny_model

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model_dir = build_tiny_model(args.family, out / "model")
    folder = make_folder(out / "photos")
    print(
        f"[1/5] tiny {args.family} checkpoint: {model_dir}; {len(PHOTOS)} photos with captions: {folder}"
    )

    adapter = load_model(str(model_dir), dtype="float32")
    source = open_source(str(folder))
    store = out / "store"
    result = capture(
        adapter,
        source,
        "final_norm",
        out=str(store),
        batch_size=4,
        dtype="float32",
        progress=False,
        data_spec=str(folder),
        model_name=str(model_dir),
    )
    print(f"[2/5] capture (final_norm = HF hidden_states[-1]): {result.summary()}")
    print(f"      store: {store}")
    stages = _later_stages()
    for label, fn in stages:
        fn(args, out, adapter, store, folder, label)
    print(f"demo finished in {time.perf_counter() - t0:.1f} s; outputs under {out}")
    return 0


def _later_stages():
    """Train / analyze / retrieve stages (each prints one summary line)."""
    return [("[3/5]", _train), ("[4/5]", _analyze), ("[5/5]", _retrieve)]


def _train(args, out, adapter, store, folder, label):
    from sae_training import StoreSource, TrainConfig, train

    source = StoreSource(str(store))
    cfg = TrainConfig(
        arch="topk",
        d_in=adapter.d_model,
        width=8 * adapter.d_model,
        k=8,
        recipe="default",
        batch_size=64,
        total_tokens=64 * args.steps,
        lr=4e-3,
        out_dir=str(out / "sae"),
        log_interval=max(1, args.steps // 4),
        ckpt_interval=args.steps,
        progress=False,
        device="cpu",
    )
    res = train(cfg, source)
    m = res.metrics
    print(
        f"{label} Top-K SAE (c={cfg.width}, k={cfg.k}) trained for {res.step} steps on "
        f"{res.tokens:,} tokens: FVU {m.get('fvu', float('nan')):.3f}, "
        f"L0 {m.get('l0', float('nan')):.1f}, dead {m.get('dead', float('nan')):.1%}; "
        f"saved in {out / 'sae'}"
    )


def _analyze(args, out, adapter, store, folder, label):
    from analysis import analyze_store
    from analysis.pairs import pairs_from_capture
    from saeprobe.data import open_source

    source = open_source(str(folder))
    pairs = pairs_from_capture(store, source)
    files = analyze_store(
        sae=str(out / "sae"),
        activations=str(store),
        out=str(out / "report"),
        pairs=pairs,
        items=source,
        title=f"saeprobe demo: tiny {args.family}",
    )
    share = files.result.tag_share
    print(
        f"{label} analysis of {files.result.c} concepts over {pairs.n} image-caption pairs: "
        f"energy share textual {100 * share['textual']:.1f}%, visual {100 * share['visual']:.1f}%"
        f", bimodal {100 * share['bimodal']:.1f}%"
    )
    print(f"      report: {files.html}  features: {files.table}")


def _retrieve(args, out, adapter, store, folder, label):
    from PIL import Image

    from saeprobe._types import Item
    from saeprobe.data.mbeir import open_mbeir, write_task_folder
    from saeprobe.retrieval import RetrievalConfig, evaluate, format_table, write_json

    queries, corpus, qrels = [], [], {}
    for name, captions in PHOTOS.items():
        corpus.append(Item(name, None, Image.open(folder / f"{name}.png").convert("RGB")))
        for j, caption in enumerate(captions):
            qid = f"{name}#{j}"
            queries.append(Item(qid, caption, None))
            qrels[qid] = {name}
    task_dir = write_task_folder(out / "mbeir_demo_task0", queries, corpus, qrels)
    task = open_mbeir(task_dir)
    cfg = RetrievalConfig(methods=["none", "realign", "zca"], batch_size=4, device="cpu")
    res = evaluate(adapter, task, cfg, cache=out / "retrieval_cache")
    path = write_json(res.to_dict(), out / "retrieval.json")
    print(
        f"{label} retrieval on an M-BEIR-format folder (task type {res.task}, text -> image: "
        f"{res.n_queries} captions over {res.n_corpus} photos; random weights, so near chance):"
    )
    for line in format_table(res.results).splitlines():
        print(f"      {line}")
    print(f"      results: {path}")
