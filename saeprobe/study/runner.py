"""``run_study``: the paper's study on any models and data, into one run folder."""

from __future__ import annotations

import gc
import logging
import math
import time
from pathlib import Path
from typing import Any

from analysis import top_distractors
from saeprobe.atomic import atomic_write_json
from saeprobe.data import open_source
from saeprobe.data.mbeir import open_mbeir
from saeprobe.models import load_model
from saeprobe.run import RunWriter

from .config import StudyConfig
from .embed import embed_tasks
from .report import write_report
from .results import FORMAT, VERSION, check_results, findings, headline
from .stages import ModelStages

logger = logging.getLogger(__name__)

__all__ = ["StudyResult", "run_study"]


class StudyResult:
    """What :func:`run_study` wrote: ``results`` (the ``results.json`` dict) and the paths."""

    def __init__(self, root: Path, results: dict[str, Any]):
        self.root, self.results = root, results
        self.json = root / "results.json"
        self.report = root / "report.html"

    def headline(self) -> str:
        return headline(self.results)


def _tasks(cfg: StudyConfig) -> dict[str, Any]:
    tasks = {}
    for folder in cfg.mbeir:
        task = open_mbeir(folder, limit_queries=cfg.limit_queries)
        tasks[Path(folder).name] = task
    return tasks


def _sweep_task(cfg: StudyConfig, tasks: dict[str, Any]) -> str | None:
    if cfg.sweep_task:
        if cfg.sweep_task not in tasks:
            raise ValueError(f"--sweep-task {cfg.sweep_task!r} is not one of {sorted(tasks)}")
        return cfg.sweep_task
    t2i = [n for n, t in tasks.items() if t.task == 1]
    return t2i[0] if t2i else next(iter(tasks), None)


def _finite_or_none(x: Any) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _analysis_summary(result: Any, n: int) -> dict[str, Any]:
    """The parts of an :class:`analysis.AnalysisResult` results.json keeps."""
    ranking = (
        top_distractors(result.attribution.attribution, n).tolist() if result.attribution else []
    )
    share = result.stats.modality_score
    return {
        "c": result.c,
        "energy_share": {k: float(v) for k, v in result.tag_share.items()},
        "n_ablated": n,
        "top_distractors": [
            {
                "id": int(i),
                "tag": result.tags[i],
                "attribution": float(result.attribution.attribution[i]),
                "modality_score": _finite_or_none(share[i]),  # None: never fired on --data
                "energy_share": float(result.stats.energy_share[i]),
            }
            for i in ranking
        ],
        "ablation_sweep": result.sweep.to_dict() if result.sweep is not None else None,
        "mean_pair_similarity": _finite_or_none(result.attribution.mean_similarity)
        if result.attribution
        else None,
    }


def _sae_summary(folder: Path) -> dict[str, Any]:
    import json

    m = json.loads((folder / "training.json").read_text())
    metrics = m["metrics"]
    cfg = m["config"]
    return {
        "width": cfg["width"],
        "k": cfg["k"],
        "tokens": m["tokens"],
        "steps": m["steps"],
        "fvu": float(metrics.get("fvu", float("nan"))),
        "l0": float(metrics.get("l0", float("nan"))),
        "dead": float(metrics.get("dead", float("nan"))),
    }


class _Once(logging.Filter):
    """Pass each distinct message once (sweeps refit whiteners many times)."""

    def __init__(self):
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if msg in self.seen:
            return False
        self.seen.add(msg)
        return True


def run_study(
    cfg: StudyConfig,
    out: str | Path,
    *,
    title: str = "saeprobe study",
    note: str = "",
    stages: dict[str, float] | None = None,
) -> StudyResult:
    """Capture, train an SAE, analyse and retrieve for every model of ``cfg`` into the run
    folder ``out``; writes ``results.json`` and ``report.html`` and returns them.

    ``stages``: seconds of work done before (e.g. the demo's data and model set-up), recorded
    with the study's own stage times.
    """
    cfg.validate()
    once = _Once()
    whitening_log = logging.getLogger("saeprobe.whitening.methods")
    whitening_log.addFilter(once)
    try:
        return _run(cfg, Path(out), title, note, dict(stages or {}))
    finally:
        whitening_log.removeFilter(once)


def _run(cfg: StudyConfig, out: Path, title: str, note: str, times: dict) -> StudyResult:
    t_all = time.perf_counter()
    run = RunWriter(out, title=title)
    t0 = time.perf_counter()
    source = open_source(cfg.data, **({"limit": cfg.limit} if cfg.limit else {}))
    tasks = _tasks(cfg)
    run.add_items("analysis", list(source))
    for name, task in tasks.items():
        run.add_items(f"{name}-query", list(task.queries))
        run.add_items(f"{name}-corpus", list(task.corpus))
    times["data"] = round(time.perf_counter() - t0, 2)
    sweep_task = _sweep_task(cfg, tasks)
    models, sweeps = {}, {}
    for spec in cfg.model_specs():
        t0 = time.perf_counter()
        adapter = load_model(spec.path, dtype=cfg.model_dtype, device=cfg.device)
        dual = bool(getattr(adapter, "is_dual_encoder", False))
        run.add_adapter(
            spec.name,
            adapter,
            path=spec.path,
            hook_point="native" if dual else "final_norm",
            pool="native" if dual else "mean",
            items="analysis",
        )
        stages = ModelStages(spec, adapter, cfg, run, times)
        times[f"{spec.name}.load"] = round(time.perf_counter() - t0, 2)
        store = stages.capture(source)
        sae = stages.train_sae(store)
        result = stages.analyze(sae, store, source)
        t0 = time.perf_counter()
        sides = {
            (n, s): list(getattr(t, "queries" if s == "query" else "corpus"))
            for n, t in tasks.items()
            for s in ("query", "corpus")
        }
        emb = embed_tasks(adapter, sides, all_layers=not stages.dual, batch_size=cfg.batch_size)
        times[f"{spec.name}.embed"] = round(time.perf_counter() - t0, 2)
        retrieval = stages.retrieve(sae, result, emb, tasks)
        if sweep_task:
            sweeps[spec.name] = stages.sweeps(emb, sweep_task, tasks[sweep_task])
        models[spec.name] = {
            "path": spec.path,
            "kind": stages.kind,
            "d": int(adapter.d_model),
            "sae": _sae_summary(out / "models" / spec.name / "sae"),
            "analysis": _analysis_summary(result, cfg.n_distractors),
            "retrieval": retrieval,
        }
        del adapter, stages, emb
        gc.collect()
    times["total"] = round(time.perf_counter() - t_all, 2)
    results = {
        "format": FORMAT,
        "version": VERSION,
        "title": title,
        "note": note,
        "config": cfg.to_dict(),
        "tasks": {
            n: {"type": t.task, "n_queries": len(t.queries), "n_corpus": len(t.corpus)}
            for n, t in tasks.items()
        },
        "models": models,
        "sweeps": sweeps,
        "findings": findings(models),
        "stages": times,
    }
    check_results(results)
    atomic_write_json(out / "results.json", results, what="study results")
    write_report(results, out / "report.html")
    for stage, seconds in times.items():
        run.set_stage(stage, seconds)
    return StudyResult(out, results)
