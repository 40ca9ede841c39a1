"""The study's stages for one model: capture, SAE, concept analysis, retrieval, sweeps.

Each stage writes its part of the run folder and is skipped when that part is already
there from the same settings, so an interrupted or repeated study resumes.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from analysis import AnalysisConfig, Pairs, ablate, analyze_store, encode_all, pairs_from_capture
from sae_training import StoreSource, TrainConfig, train
from saeprobe import Modality
from saeprobe.capture import capture
from saeprobe.retrieval import RetrievalConfig, embed_items, score_methods
from saeprobe.run import RunWriter
from saeprobe.sae import load_sae
from saeprobe.store import (
    ActivationStore,
    ActivationStoreWriter,
    StoreError,
    merge_pooled,
)

from .config import ModelSpec, StudyConfig
from .embed import EmbeddedTasks

logger = logging.getLogger(__name__)

__all__ = ["ModelStages"]

KS = (1, 5, 10)


class ModelStages:
    """Run the study's stages for one loaded model (adapter) into ``run``.

    Parameters
    ----------
    spec : ModelSpec
    adapter : ModelAdapter
    cfg : StudyConfig
    run : RunWriter
    times : dict
        Stage wall times are added here (``"<model>.<stage>"``).
    """

    def __init__(
        self, spec: ModelSpec, adapter: Any, cfg: StudyConfig, run: RunWriter, times: dict
    ):
        self.spec, self.adapter, self.cfg, self.run, self.times = spec, adapter, cfg, run, times
        self.dual = bool(getattr(adapter, "is_dual_encoder", False))
        self.kind = "dual" if self.dual else "mllm"
        self.dir = run.model_dir(spec.name)

    def _timed(self, stage: str, t0: float) -> None:
        self.times[f"{self.spec.name}.{stage}"] = round(time.perf_counter() - t0, 2)

    # ------------------------------------------------------------------ capture
    def capture(self, source: Any) -> Path:
        """Per-token ``final_norm`` activations (MLLMs; pooled means kept per item) or one
        row per item of the projected embedding (dual encoders) of the analysis data."""
        t0 = time.perf_counter()
        out = self.dir / "store"
        if self.dual:
            self._embedding_store(source, out)
        else:
            capture(
                self.adapter,
                source,
                "final_norm",
                out=str(out),
                batch_size=self.cfg.batch_size,
                pools=("mean",),
                dtype=torch.float32,
                progress=self.cfg.progress,
                data_spec=str(self.cfg.data),
                model_name=self.spec.path,
            )
        self._timed("capture", t0)
        return out

    def _embedding_store(self, source: Any, out: Path) -> None:
        """A store of the dual encoder's projected embeddings, one row per item (kept when a
        finished one is there)."""
        if (out / "pooled.safetensors").exists():
            try:
                ActivationStore(out)
                return
            except StoreError:  # unfinished: write it again
                shutil.rmtree(out)
        items = list(source)
        emb = embed_items(
            self.adapter, items, len(items), pool="native", batch_size=self.cfg.batch_size
        )
        emb = emb["native"].float()
        mod = [int(Modality.IMAGE if it.image is not None else Modality.TEXT) for it in items]
        n = len(items)
        with ActivationStoreWriter(
            out,
            d=emb.shape[1],
            dtype="fp32",
            metadata={"model": self.spec.path, "hook_point": "native", "data": str(self.cfg.data)},
            fingerprint=f"native-{n}",
            resume=False,
        ) as w:
            w.add(
                emb,
                torch.arange(n),
                torch.zeros(n, dtype=torch.int32),
                torch.zeros(n, dtype=torch.long),
                torch.tensor(mod, dtype=torch.int8),
                pooled={"native": emb},
                item_ids=[it.id for it in items],
            )
        merge_pooled(out, {"native": out})

    # ------------------------------------------------------------------ SAE
    def train_sae(self, store: Path) -> Any:
        """A Top-K SAE on the captured activations (kept when already trained the same way)."""
        t0 = time.perf_counter()
        out = self.dir / "sae"
        src = StoreSource(str(store), drop_system=True, seed=self.cfg.seed)
        d = src.d
        n_tok = src.n_tokens()
        width = self.cfg.width_factor * d
        k = min(self.cfg.k, width)
        batch = min(self.cfg.sae_batch_size, max(64, n_tok // 8))
        tcfg = TrainConfig(
            arch="topk",
            width=width,
            k=k,
            recipe="default",
            batch_size=batch,
            epochs=self.cfg.epochs,
            lr=2e-3,
            warmup_steps=10,
            seed=self.cfg.seed,
            autocast="none",
            device=self.cfg.device,
            progress=self.cfg.progress,
            log_interval=50,
            ckpt_interval=0,
            out_dir=str(out),
        )
        summary = out / "training.json"
        if summary.is_file() and _same_training(summary, tcfg):
            logger.info("%s: SAE already trained (%s)", self.spec.name, out)
        else:
            train(tcfg, src, force=True, metadata={"model_name": self.spec.path})
        self._timed("sae", t0)
        return load_sae(out)

    # ------------------------------------------------------------------ analysis
    def pairs(self, store: Path, source: Any) -> Pairs:
        """Matched image / caption embeddings of the analysis data (pooled mean or native)."""
        return pairs_from_capture(
            store, source, "native.native" if self.dual else "final_norm.mean"
        )

    def analyze(self, sae: Any, store: Path, source: Any) -> Any:
        """Energy / modality shares, bridge, attribution, distractors, ablation sweep, report."""
        t0 = time.perf_counter()
        acfg = AnalysisConfig(
            n_distractors=max(self.cfg.n_distractors, 1),
            ks=KS,
            device=self.cfg.device,
            modality_level="input",
        )
        files = analyze_store(
            sae,
            str(store),
            str(self.dir / "analysis"),
            pairs=self.pairs(store, source),
            items=source,
            cfg=acfg,
            title=f"{self.spec.name}: concept analysis",
            progress=False,
            force=True,
        )
        self._timed("analysis", t0)
        return files.result

    # ------------------------------------------------------------------ retrieval
    def retrieve(self, sae: Any, result: Any, emb: EmbeddedTasks, tasks: dict) -> dict[str, dict]:
        """Per task: base, ReAlign and top distractors ablated (scores and run-folder embeddings)."""
        t0 = time.perf_counter()
        rcfg = RetrievalConfig(
            methods=["none", "realign"], alpha=self.cfg.alpha, ks=list(KS), device=self.cfg.device
        )
        distractors = [int(i) for i in result.distractors[: self.cfg.n_distractors]]
        D = sae.dictionary.detach().float().cpu()
        out: dict[str, dict] = {}
        for name, task in tasks.items():
            q = F.normalize(emb.get(name, "query"), dim=1)
            c = F.normalize(emb.get(name, "corpus"), dim=1)
            relevant = task.relevant_rows()
            scores = score_methods(q, c, relevant, rcfg)
            if distractors:
                qa = ablate(q, encode_all(sae, q), D, distractors)
                ca = ablate(c, encode_all(sae, c), D, distractors)
                scores["ablated"] = score_methods(qa, ca, relevant, rcfg, methods=["none"])["base"]
            for m in scores.values():
                m.pop("seconds", None)
            out[name] = {
                "task": task.task,
                "n_queries": len(q),
                "n_corpus": len(c),
                "scores": scores,
            }
            self.run.add_task(
                self.spec.name,
                name,
                queries=q,
                candidates=c,
                relevant=relevant,
                query_ids=task.queries.ids,
                candidate_ids=task.corpus.ids,
                query_items=f"{name}-query",
                candidate_items=f"{name}-corpus",
                query_modality=_side_modality(task.queries.kind),
                candidate_modality=_side_modality(task.corpus.kind),
                task_type=task.task,
                results=out[name],
            )
        self._timed("retrieval", t0)
        return out

    def sweeps(self, emb: EmbeddedTasks, task_name: str, task: Any) -> dict[str, Any]:
        """Recall vs ReAlign alpha, and (MLLMs) recall vs layer, on one task."""
        t0 = time.perf_counter()
        rcfg = RetrievalConfig(methods=["none", "realign"], ks=list(KS), device=self.cfg.device)
        relevant = task.relevant_rows()
        q = F.normalize(emb.get(task_name, "query"), dim=1)
        c = F.normalize(emb.get(task_name, "corpus"), dim=1)
        alpha = {"x": list(self.cfg.alphas), "recall": {str(k): [] for k in KS}}
        for a in self.cfg.alphas:
            m = score_methods(q, c, relevant, rcfg, methods=["realign"], alpha=a)["realign"]
            for k in KS:
                alpha["recall"][str(k)].append(m[f"R@{k}"])
        base = score_methods(q, c, relevant, rcfg, methods=["none"])["base"]
        alpha["baseline"] = {f"R@{k}": base[f"R@{k}"] for k in KS}
        out: dict[str, Any] = {"task": task_name, "alpha": alpha}
        if not self.dual:
            layers = {
                "x": [],
                "base": {str(k): [] for k in KS},
                "realign": {str(k): [] for k in KS},
            }
            for layer in emb.layers:
                ql = F.normalize(emb.get(task_name, "query", layer), dim=1)
                cl = F.normalize(emb.get(task_name, "corpus", layer), dim=1)
                s = score_methods(ql, cl, relevant, rcfg, alpha=self.cfg.alpha)
                layers["x"].append(layer)
                for k in KS:
                    layers["base"][str(k)].append(s["base"][f"R@{k}"])
                    layers["realign"][str(k)].append(s["realign"][f"R@{k}"])
            out["layers"] = layers
        self._timed("sweeps", t0)
        return out


def _side_modality(kind: str) -> str | None:
    return {"text": "text", "image": "image"}.get(kind)


def _same_training(summary: Path, cfg: TrainConfig) -> bool:
    """Whether ``training.json`` records a run with the same training config."""
    try:
        old = json.loads(summary.read_text())["config"]
    except (OSError, ValueError, KeyError):
        return False
    new = cfg.to_dict()
    keys = ("arch", "width", "k", "batch_size", "epochs", "lr", "seed", "recipe")
    return all(old.get(k) == new.get(k) for k in keys)
