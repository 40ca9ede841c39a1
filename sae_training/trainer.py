"""The SAE training loop: single process or DDP, checkpointed, resumable (one class, its state,
step and loop: kept in one file, ~490 lines; collectives, bad batches, schedule, outputs and
initialisation live in their own modules).

One step::

    out = sae.training_forward(x, l1_coeff=..., auxk_coeff=..., k_aux=..., dead_mask=..., fast=...)
    out.loss.backward()
    (DDP: all-reduce the gradients, weighted by each rank's share of the global batch)
    sae.remove_parallel_grads_(); clip_grad_norm_; optimizer.step(); sae.normalize_dictionary_()

Under ``torchrun`` every rank reads its share of each global batch of ``batch_size``
tokens; gradients are averaged with weights ``n_rank / n_global``, so the update equals
the one of a single process on the whole global batch (exactly for losses that are means
over tokens: Top-K, JumpReLU, Standard; BatchTopK selects over each rank's share).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import torch

from saeprobe import dtypes

from . import collectives
from .bad_batches import BadBatchPolicy, BadDataError
from .checkpoint import (
    clean_temp_files,
    get_rng_state,
    load_latest_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from .config import TrainConfig
from .init import build_sae, resolve_device
from .metrics import DeadLatentTracker, MetricsLogger, ReconstructionStats, fired_mask
from .outputs import check_resume, prepare_out_dir, save_final
from .prefetch import prefetch
from .recipes import apply_recipe, resolve_decay_steps, resolve_k_aux
from .result import TrainResult
from .schedule import LRSchedule
from .sources import ActivationSource, as_source

logger = logging.getLogger(__name__)

__all__ = ["BadDataError", "LRSchedule", "TrainResult", "Trainer", "build_sae", "train"]


class Trainer:
    """Train one SAE on one activation source.

    Parameters
    ----------
    cfg : TrainConfig
        ``None`` fields are filled from ``cfg.recipe``; ``d_in`` from the data.
    data : ActivationSource | str | Path | Tensor | iterable
        See :func:`sae_training.sources.as_source`.
    sae : nn.Module | None
        Train this SAE instead of a fresh one (its ``cfg.d_in`` must match the data).
    eval_data : optional
        Held-out data evaluated every ``cfg.eval_interval`` steps and at the end.
    metadata : dict | None
        Extra metadata saved with the SAE (model name, hook point, ...).
    resume : bool
        Continue from the newest readable checkpoint in ``cfg.out_dir`` (fresh start if none);
        the training config and the data must be those of the checkpoint.
    force : bool
        Replace a previous run in ``cfg.out_dir`` (without it, a folder holding a trained SAE
        or checkpoints is refused).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        data: Any,
        *,
        sae: Any = None,
        eval_data: Any = None,
        metadata: dict[str, Any] | None = None,
        resume: bool = False,
        force: bool = False,
    ):
        cfg = apply_recipe(cfg)
        self.source: ActivationSource = as_source(data, cfg=cfg)
        self.eval_source = as_source(eval_data, cfg=cfg) if eval_data is not None else None
        self.cfg = cfg = self._settle_config(cfg, sae)
        if resume and not cfg.out_dir:
            raise ValueError("resume needs an out_dir holding checkpoints (--out DIR)")
        self.metadata = dict(metadata or {})
        self.rank, self.world = collectives.world()
        self.main = self.rank == 0
        self.device = resolve_device(cfg.device)
        self.compute_dtype = self._compute_dtype()
        self.out_dir = Path(cfg.out_dir) if cfg.out_dir else None
        if self.main and self.out_dir is not None:
            prepare_out_dir(self.out_dir, resume=resume, force=force)
        self.prefetch_batches = (
            cfg.prefetch_batches
            if cfg.prefetch_batches is not None
            else (2 if self.device.type == "cuda" else 0)
        )
        self.sae = (sae if sae is not None else build_sae(cfg, cfg.d_in)).to(self.device)
        self.params = [p for p in self.sae.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(
            self.params, lr=cfg.lr, betas=tuple(cfg.adam_betas), eps=cfg.adam_eps
        )
        self.k_aux = resolve_k_aux(cfg, cfg.d_in)
        self.total_steps = self._total_steps()
        self.schedule = LRSchedule(
            cfg.lr,
            cfg.warmup_steps or 0,
            resolve_decay_steps(cfg, self.total_steps),
            self.total_steps,
            cfg.decay,
        )
        self.dead = DeadLatentTracker(cfg.width, cfg.dead_window_tokens, self.device)
        self.stats = ReconstructionStats(cfg.d_in, self.device)
        self.bad = BadBatchPolicy(cfg.max_bad_batches, cfg.max_bad_fraction)
        self.step = self.tokens = self.epoch = self.batch_in_epoch = 0
        self.initialized = False
        self._steps_since_log = 0
        self.log = MetricsLogger(
            self.out_dir,
            enabled=self.main,
            wandb_project=cfg.wandb_project,
            wandb_run_name=cfg.wandb_run_name,
            config=cfg.to_dict(),
        )
        if self.main and self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            clean_temp_files(self.out_dir)
            cfg.to_json(self.out_dir / "train_config.json")
        self.resumed_from: Path | None = None
        if resume:
            self._resume()
        elif self.world > 1:
            collectives.broadcast_(list(self.sae.parameters()) + list(self.sae.buffers()))

    def _settle_config(self, cfg: TrainConfig, sae: Any) -> TrainConfig:
        """Fill ``d_in`` (and width / k from a given SAE), check them against the data."""
        d = self.source.d
        if d is None and cfg.d_in is None and sae is None:
            d = self.source.probe_d()
        if sae is not None:
            sae_d = int(sae.cfg.d_in)
            if cfg.d_in is not None and cfg.d_in != sae_d:
                raise ValueError(f"config d_in={cfg.d_in} but the given SAE has d_in={sae_d}")
            k = sae.cfg.k if sae.cfg.k is not None else cfg.k
            cfg = dataclasses.replace(cfg, d_in=sae_d, width=int(sae.cfg.d_sae), k=k)
        if d is not None and cfg.d_in is not None and d != cfg.d_in:
            raise ValueError(
                f"dimension mismatch: the data has d={d} but the config says d_in={cfg.d_in}; "
                "fix --config / d_in or point to the right activations"
            )
        if cfg.d_in is None:
            cfg = dataclasses.replace(cfg, d_in=d)
        if cfg.d_in is None:
            raise ValueError("cannot tell the activation width: set d_in in the config")
        if self.source.n_tokens() == 0:
            raise ValueError(
                f"the training data holds no tokens ({self.source.describe().get('path', 'data')}); "
                "capture some first (a store made with --limit 0 or an empty data folder?)"
            )
        cfg.validate()
        return cfg

    def _total_steps(self) -> int | None:
        cfg = self.cfg
        if cfg.total_tokens is not None:
            return -(-cfg.total_tokens // cfg.batch_size)
        n_batches = self.source.n_batches(cfg.batch_size)
        return cfg.epochs * n_batches if n_batches is not None else None

    def _compute_dtype(self) -> torch.dtype:
        """The autocast dtype: ``auto`` is bf16 only where the device runs it natively."""
        mode = self.cfg.autocast
        if mode == "none":
            return torch.float32
        return dtypes.resolve("auto" if mode == "auto" else "bf16", self.device, what="autocast")

    # ----- state ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "format": "saeprobe-train-ckpt/1",
            "step": self.step,
            "tokens": self.tokens,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "initialized": self.initialized,
            "bad": self.bad.state(),
            "sae": self.sae.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "dead": self.dead.state_dict(),
            "rng": get_rng_state(),
            "config": self.cfg.to_dict(),
            "data": self.source.describe(),
        }

    def load_state_dict(self, state: dict[str, Any], path: Path | None = None) -> None:
        """Restore a checkpoint after checking its config and data against this run."""
        check_resume(
            state,
            {"config": self.cfg.to_dict(), "data": self.source.describe()},
            path or Path("checkpoint"),
        )
        self.sae.load_state_dict(state["sae"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.dead.load_state_dict(state["dead"])
        self.step, self.tokens = int(state["step"]), int(state["tokens"])
        self.epoch, self.batch_in_epoch = int(state["epoch"]), int(state["batch_in_epoch"])
        self.initialized = bool(state["initialized"])
        self.bad.load(state["bad"])
        set_rng_state(state["rng"])

    def save_checkpoint(self) -> Path | None:
        if not (self.main and self.out_dir is not None):
            return None
        return save_checkpoint(self.out_dir, self.state_dict(), keep=self.cfg.keep_checkpoints)

    def _resume(self) -> None:
        found = load_latest_checkpoint(self.out_dir, map_location="cpu")
        if found is None:
            logger.info("no checkpoint in %s: starting from scratch", self.out_dir)
            if self.world > 1:
                collectives.broadcast_(list(self.sae.parameters()) + list(self.sae.buffers()))
            return
        path, state = found
        self.load_state_dict(state, path)
        self.resumed_from = path
        self.log.truncate_after(self.step)
        logger.info(
            "resumed from %s (step %d, %d tokens, epoch %d, batch %d)",
            path,
            self.step,
            self.tokens,
            self.epoch,
            self.batch_in_epoch,
        )

    # ----- one step -------------------------------------------------------------------
    def _autocast(self):
        if self.compute_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.compute_dtype)

    def _train_step(self, x: torch.Tensor, n_global: int) -> None:
        cfg = self.cfg
        self._steps_since_log += 1
        if x.shape[0] == 0:  # this rank's share of a tiny global batch is empty
            self._empty_step(n_global)
            return
        dead = self.dead.dead_mask if cfg.auxk_coeff else None
        with self._autocast():
            out = self.sae.training_forward(
                x,
                l1_coeff=float(cfg.l1_coeff),
                auxk_coeff=float(cfg.auxk_coeff),
                k_aux=self.k_aux,
                dead_mask=dead,
                fast=cfg.fast,
            )
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        if self.world > 1:
            collectives.reduce_grads(self.params, x.shape[0] / n_global)
        self._optimizer_step()
        with torch.no_grad():
            fired = fired_mask(out.values, out.indices, cfg.width)
            if self.world > 1:
                fired = collectives.all_reduce(fired.to(torch.int32)) > 0
            self.dead.update(fired, n_global)
            l0 = (out.values != 0).sum()
            self.stats.update(x, out.x_hat.detach(), l0, out.loss, out.terms)
        self.step += 1
        self.tokens += n_global

    def _optimizer_step(self) -> None:
        self.sae.remove_parallel_grads_()
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        lr = self.schedule(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.sae.normalize_dictionary_()

    def _empty_step(self, n_global: int) -> None:
        for p in self.params:
            p.grad = torch.zeros_like(p)
        collectives.reduce_grads(self.params, 0.0)
        self._optimizer_step()
        zero = torch.zeros(self.cfg.width, dtype=torch.int32, device=self.device)
        self.dead.update(collectives.all_reduce(zero) > 0, n_global)
        self.step += 1
        self.tokens += n_global

    # ----- evaluation -----------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, data: Any = None, max_batches: int | None = None) -> dict[str, float]:
        """Reconstruction metrics of the current SAE on held-out data (all ranks)."""
        source = as_source(data, cfg=self.cfg) if data is not None else self.eval_source
        if source is None:
            return {}
        stats = ReconstructionStats(self.cfg.d_in, self.device)
        it = source.batches(0, self.cfg.batch_size, rank=self.rank, world_size=self.world)
        for i, x in enumerate(it):
            if max_batches is not None and i >= max_batches:
                break
            x = x.to(self.device, non_blocking=True).float()
            if not bool(torch.isfinite(x).all()):
                continue
            with self._autocast():
                codes = self.sae.encode_sparse(x)
                x_hat = self.sae(x)
            stats.update(x, x_hat, (codes.values != 0).sum())
        stats.all_reduce()
        return {k: v for k, v in stats.compute().items() if k != "loss"}

    def _log_record(self, t0: float, tokens0: int, extra: dict | None = None) -> dict[str, Any]:
        self.stats.all_reduce()
        rec: dict[str, Any] = {"step": self.step, "tokens": self.tokens, "epoch": self.epoch}
        rec.update(self.stats.compute())
        rec["dead"] = self.dead.dead_fraction()
        rec["lr"] = self.optimizer.param_groups[0]["lr"]
        dt = time.perf_counter() - t0
        rec["tokens_per_s"] = (self.tokens - tokens0) / dt if dt > 0 else float("nan")
        rec["bad_batches"] = self.bad.total
        rec.update(extra or {})
        self.stats.reset()
        self._steps_since_log = 0
        self.log.log(rec)
        return rec

    # ----- the loop -------------------------------------------------------------------
    def _next_global(self, it) -> tuple[torch.Tensor | None, int, bool]:
        return collectives.next_global_batch(it, self.cfg.d_in, self.device, self.world)

    def _done(self) -> bool:
        if self.cfg.total_tokens is not None:
            return self.tokens >= self.cfg.total_tokens
        return self.epoch >= self.cfg.epochs

    def _epoch_batches(self):
        cfg = self.cfg
        batches = self.source.batches(
            self.epoch,
            cfg.batch_size,
            rank=self.rank,
            world_size=self.world,
            start=self.batch_in_epoch,
        )
        return iter(prefetch(batches, self.prefetch_batches, pin=self.device.type == "cuda"))

    def _run_epoch(self, pbar, clock: list) -> tuple[bool, dict[str, Any]]:
        """One (rest of an) epoch; returns ``(stepped, last log record)``."""
        cfg = self.cfg
        it = self._epoch_batches()
        stepped, last = False, {}
        while not self._done():
            x, n_global, bad = self._next_global(it)
            if x is None:
                break
            self.batch_in_epoch += 1
            self.bad.seen += 1
            if n_global == 0:
                continue
            if bad:
                self.bad.bad(f"batch {self.batch_in_epoch - 1} of epoch {self.epoch}")
                continue
            self.bad.good()
            if not self.initialized:
                if cfg.init_from_data:
                    sample = collectives.gather_rows(x, self.world) if self.world > 1 else x
                    self.sae.init_from_data_(sample)
                self.initialized = True
            self._train_step(x, n_global)
            stepped = True
            pbar.update(1)
            if self.step % cfg.log_interval == 0:
                last = self._log_record(*clock)
                clock[:] = [time.perf_counter(), self.tokens]
                pbar.set_postfix(
                    fvu=f"{last.get('fvu', float('nan')):.4f}",
                    l0=f"{last.get('l0', 0):.1f}",
                    dead=f"{last['dead']:.3f}",
                )
            self._periodic()
        it.close()  # stops a prefetch thread
        return stepped, last

    def _periodic(self) -> None:
        cfg = self.cfg
        if cfg.eval_interval and self.step % cfg.eval_interval == 0:
            ev = self.evaluate()
            if ev:
                self.log.log({"step": self.step, **{f"eval_{k}": v for k, v in ev.items()}})
        if cfg.ckpt_interval and self.step % cfg.ckpt_interval == 0:
            self.save_checkpoint()

    def fit(self) -> TrainResult:
        """Run until ``total_tokens`` or ``epochs``; returns a :class:`TrainResult`."""
        from tqdm.auto import tqdm

        cfg = self.cfg
        t_start = time.perf_counter()
        clock = [t_start, self.tokens]  # start of the current logging window
        pbar = tqdm(
            total=self.total_steps,
            initial=self.step,
            unit="step",
            dynamic_ncols=True,
            disable=not (self.main and cfg.progress),
            desc=f"train {cfg.arch}",
        )
        last: dict[str, Any] = {}
        self.sae.train()
        try:
            while not self._done():
                stepped, rec = self._run_epoch(pbar, clock)
                last = rec or last
                if self._done():
                    break
                if not stepped and self.batch_in_epoch == 0:
                    logger.warning("epoch %d yielded no data; stopping", self.epoch)
                    break
                self.epoch += 1
                self.batch_in_epoch = 0
        finally:
            pbar.close()
        return self._finish(last, t_start, clock)

    def _finish(self, last: dict[str, Any], t_start: float, clock: list) -> TrainResult:
        if self._steps_since_log > 0:
            last = self._log_record(*clock)
        seconds = time.perf_counter() - t_start
        final = dict(last)
        final["tokens_per_s_run"] = (self.tokens / seconds) if seconds > 0 else float("nan")
        ev = self.evaluate()
        if ev:
            final.update({f"eval_{k}": v for k, v in ev.items()})
            self.log.log({"step": self.step, **{f"eval_{k}": v for k, v in ev.items()}})
        if self.cfg.ckpt_interval and self.step and (self.step % self.cfg.ckpt_interval):
            self.save_checkpoint()
        if self.main and self.out_dir is not None:
            self._save_final(final, seconds)
        history = list(self.log.records)
        self.log.close()
        return TrainResult(
            self.sae, final, self.step, self.tokens, self.bad.total, self.out_dir, history, seconds
        )

    def _save_final(self, metrics: dict[str, Any], seconds: float) -> None:
        save_final(
            self.out_dir,
            self.sae,
            self.cfg,
            self.source.describe(),
            self.metadata,
            metrics,
            steps=self.step,
            tokens=self.tokens,
            seconds=seconds,
            bad_batches=self.bad.total,
            resumed_from=self.resumed_from,
        )


def train(cfg: TrainConfig, data: Any, **options: Any) -> TrainResult:
    """Train an SAE: ``Trainer(cfg, data, **options).fit()``.

    ``options`` are :class:`Trainer`'s keywords: ``sae``, ``eval_data``, ``metadata``,
    ``resume``, ``force``.
    """
    return Trainer(cfg, data, **options).fit()
