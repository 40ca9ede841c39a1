"""``saeprobe study``: the paper's study on your models and data.

Per model (MLLMs and dual encoders): capture the analysis data, train a Top-K SAE, analyse
its concepts, retrieve on M-BEIR task folders (base vs ReAlign vs top distractors ablated),
sweep alpha and layers; one run folder with ``results.json`` and ``report.html`` that
``saeprobe explore RUN`` opens. Every field of :class:`saeprobe.study.StudyConfig` is a flag.

Example
-------
    saeprobe study --models qwen=Qwen/Qwen2-VL-2B-Instruct,clip=openai/clip-vit-base-patch32 \\
        --data coco_val/ --mbeir mbeir/mbeir_mscoco_task0,mbeir/mbeir_mscoco_task3 --out runs/study
"""

from __future__ import annotations

import argparse

from .flags import add_command, add_config_flags, config_from_args

HELP = "the paper's study (capture, SAE, concepts, retrieval, sweeps) on your models and data"
DESCRIPTION = __doc__.split("\n\n")[1]


def add_parser(sub: argparse._SubParsersAction) -> None:
    from saeprobe.study import StudyConfig

    p = add_command(sub, "study", HELP, description=DESCRIPTION)
    p.add_argument("--out", required=True, help="run folder (created; a finished stage is kept)")
    p.add_argument("--config", help="StudyConfig JSON; flags override it")
    p.add_argument("--title", default="saeprobe study", help="title of the report")
    dests = add_config_flags(p, StudyConfig, group="study config (StudyConfig fields)")
    p.set_defaults(func=run, config_dests=dests)


def build_config(args: argparse.Namespace):
    import json
    from pathlib import Path

    from saeprobe.study import StudyConfig

    base = json.loads(Path(args.config).read_text()) if args.config else {}
    return config_from_args(StudyConfig, args, args.config_dests, base).validate()


def run(args: argparse.Namespace) -> int:
    from saeprobe.study import run_study

    cfg = build_config(args)
    res = run_study(cfg, args.out, title=args.title)
    print(res.headline())
    print(f"\nresults: {res.json}\nreport:  {res.report}\nexplore: saeprobe explore {res.root}")
    return 0
