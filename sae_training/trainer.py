"""The SAE training loop: single process or DDP, checkpointed, resumable.

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
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from saeprobe.atomic import atomic_write_text

from .checkpoint import (
    clean_temp_files,
    get_rng_state,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from .config import TrainConfig
from .metrics import DeadLatentTracker, MetricsLogger, ReconstructionStats, fired_mask
from .recipes import apply_recipe, resolve_decay_steps, resolve_k_aux
from .sources import ActivationSource, as_source

logger = logging.getLogger(__name__)

__all__ = ["BadDataError", "LRSchedule", "TrainResult", "Trainer", "train"]


def prefetch(iterable: Any, depth: int, pin: bool = False):
    """Iterate ``iterable`` in a background thread, ``depth`` items ahead (same order).

    Exceptions of the producer are re-raised in the consumer; ``pin`` pins tensors for
    asynchronous host-to-device copies."""
    import queue
    import threading

    if depth <= 0:
        yield from iterable
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def produce() -> None:
        try:
            for item in iterable:
                if pin and torch.is_tensor(item) and item.device.type == "cpu":
                    item = item.pin_memory()
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(end)
        except BaseException as exc:  # handed to the consumer
            q.put(exc)

    thread = threading.Thread(target=produce, daemon=True, name="sae-prefetch")
    thread.start()
    try:
        while True:
            item = q.get()
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


class BadDataError(RuntimeError):
    """Too many batches with NaN / Inf activations."""


@dataclass
class LRSchedule:
    """Linear warm-up over ``warmup`` steps, constant, then ``decay`` to 0 over the last
    ``decay_steps`` of ``total`` steps (no decay when ``total`` is unknown)."""

    base_lr: float
    warmup: int = 0
    decay_steps: int = 0
    total: int | None = None
    shape: str = "linear"

    def __call__(self, step: int) -> float:
        lr = self.base_lr
        if self.warmup > 0 and step < self.warmup:
            lr *= (step + 1) / self.warmup
        if self.total and self.decay_steps > 0:
            start = self.total - self.decay_steps
            if step >= start:
                frac = max(0.0, (self.total - step) / self.decay_steps)
                lr *= frac if self.shape == "linear" else 0.5 * (1 - math.cos(math.pi * frac))
        return lr

    def state_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns.

    Attributes
    ----------
    sae : nn.Module
        The trained SAE (on the training device).
    metrics : dict
        Final reconstruction metrics over the last logging window (mse, fvu, r2, l0,
        dead, tokens_per_s, ...).
    step, tokens : int
        Optimizer steps taken and tokens consumed (all ranks).
    bad_batches : int
        Batches skipped for NaN / Inf.
    out_dir : Path | None
    history : list[dict]
        Every logged record.
    """

    sae: Any
    metrics: dict[str, Any]
    step: int
    tokens: int
    bad_batches: int = 0
    out_dir: Path | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def _resolve_device(name: str) -> torch.device:
    if name in ("auto", None, "cuda") and torch.cuda.is_available():
        from saeprobe.distributed import dist_info

        info = dist_info()
        return torch.device(f"cuda:{info.local_rank}" if info.world_size > 1 else "cuda")
    if name in ("auto", None):
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    return dev


def _dist() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _make_sae(sae_cfg: Any) -> Any:
    from saeprobe.sae import create_sae

    return create_sae(sae_cfg)


def build_sae(cfg: TrainConfig, d_in: int) -> Any:
    """A fresh SAE for ``cfg``, seeded with ``cfg.seed``.

    ``topk`` / ``batchtopk`` get ``k = cfg.k``; ``jumprelu`` / ``standard`` get no cap on
    their sparse codes (pass ``sae_kwargs={"k": ...}`` for one). The encoder is the decoder
    transpose when ``cfg.init_encoder_from_decoder`` (default recipe), else an independent
    ``nn.Linear``-style init (the paper's code).
    """
    from saeprobe.sae import SAE_REGISTRY, SAEConfig

    kwargs: dict[str, Any] = {
        "arch": cfg.arch,
        "d_in": d_in,
        "d_sae": cfg.width,
        "k": cfg.k if SAE_REGISTRY[cfg.arch].k_required else None,
        "use_decoder_bias": bool(cfg.decoder_bias),
        "use_pre_encoder_bias": bool(cfg.decoder_bias),
        "l1_coeff": float(cfg.l1_coeff or 0.0),
    }
    kwargs.update(cfg.sae_kwargs)
    torch.manual_seed(cfg.seed)
    sae = _make_sae(SAEConfig(**kwargs))
    with torch.no_grad():
        if cfg.init_encoder_from_decoder:
            # dense-code archs start sparse: a full-size tied encoder makes half the
            # latents fire at init (reconstructions ~ sqrt(c) too large)
            scale = 1.0 if SAE_REGISTRY[cfg.arch].k_required else 0.1
            sae.W_enc.copy_(sae.W_dec * scale)
        else:
            torch.nn.init.kaiming_uniform_(sae.W_enc, a=math.sqrt(5))
    return sae


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
        Continue from the newest checkpoint in ``cfg.out_dir`` (fresh start if none).
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
    ):
        cfg = apply_recipe(cfg)
        self.source: ActivationSource = as_source(data, cfg=cfg)
        self.eval_source = as_source(eval_data, cfg=cfg) if eval_data is not None else None
        d = self.source.d
        if d is None and cfg.d_in is None and sae is None:
            d = self.source.probe_d()
        if sae is not None:
            sae_d = int(sae.cfg.d_in)
            if cfg.d_in is not None and cfg.d_in != sae_d:
                raise ValueError(f"config d_in={cfg.d_in} but the given SAE has d_in={sae_d}")
            cfg = dataclasses.replace(
                cfg,
                d_in=sae_d,
                width=int(sae.cfg.d_sae),
                k=sae.cfg.k if sae.cfg.k is not None else cfg.k,
            )
        if d is not None and cfg.d_in is not None and d != cfg.d_in:
            raise ValueError(
                f"dimension mismatch: the data has d={d} but the config says d_in={cfg.d_in}; "
                "fix --config / d_in or point to the right activations"
            )
        if cfg.d_in is None:
            cfg = dataclasses.replace(cfg, d_in=d)
        if cfg.d_in is None:
            raise ValueError("cannot tell the activation width: set d_in in the config")
        cfg.validate()
        if resume and not cfg.out_dir:
            raise ValueError("resume needs an out_dir holding checkpoints (--out DIR)")
        self.cfg = cfg
        self.metadata = dict(metadata or {})
        self.rank, self.world = _dist()
        self.main = self.rank == 0
        self.device = _resolve_device(cfg.device)
        self.out_dir = Path(cfg.out_dir) if cfg.out_dir else None
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
        n_batches = self.source.n_batches(cfg.batch_size)
        if cfg.total_tokens is not None:
            self.total_steps: int | None = -(-cfg.total_tokens // cfg.batch_size)
        elif n_batches is not None:
            self.total_steps = cfg.epochs * n_batches
        else:
            self.total_steps = None
        self.schedule = LRSchedule(
            cfg.lr,
            cfg.warmup_steps or 0,
            resolve_decay_steps(cfg, self.total_steps),
            self.total_steps,
            cfg.decay,
        )
        self.dead = DeadLatentTracker(cfg.width, cfg.dead_window_tokens, self.device)
        self.stats = ReconstructionStats(cfg.d_in, self.device)
        self.step = 0
        self.tokens = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.bad_total = 0
        self.bad_consecutive = 0
        self.batches_seen = 0
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
            self._broadcast_params()

    # ----- state ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "format": "saeprobe-train-ckpt/1",
            "step": self.step,
            "tokens": self.tokens,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "initialized": self.initialized,
            "bad": [self.bad_total, self.bad_consecutive, self.batches_seen],
            "sae": self.sae.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "dead": self.dead.state_dict(),
            "rng": get_rng_state(),
            "config": self.cfg.to_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state["config"]
        for key in ("arch", "d_in", "width", "k"):
            if saved.get(key) != getattr(self.cfg, key):
                raise ValueError(
                    f"cannot resume: the checkpoint was trained with {key}={saved.get(key)!r}, "
                    f"this run has {key}={getattr(self.cfg, key)!r}; use the same settings or a "
                    "new --out folder"
                )
        self.sae.load_state_dict(state["sae"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.dead.load_state_dict(state["dead"])
        self.step, self.tokens = int(state["step"]), int(state["tokens"])
        self.epoch, self.batch_in_epoch = int(state["epoch"]), int(state["batch_in_epoch"])
        self.initialized = bool(state["initialized"])
        self.bad_total, self.bad_consecutive, self.batches_seen = (int(v) for v in state["bad"])
        set_rng_state(state["rng"])

    def save_checkpoint(self) -> Path | None:
        if not (self.main and self.out_dir is not None):
            return None
        return save_checkpoint(self.out_dir, self.state_dict(), keep=self.cfg.keep_checkpoints)

    def _resume(self) -> None:
        path = latest_checkpoint(self.out_dir)
        if path is None:
            logger.info("no checkpoint in %s: starting from scratch", self.out_dir)
            if self.world > 1:
                self._broadcast_params()
            return
        self.load_state_dict(load_checkpoint(path, map_location="cpu"))
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

    # ----- distributed helpers --------------------------------------------------------
    def _broadcast_params(self) -> None:
        import torch.distributed as dist

        with torch.no_grad():
            for t in list(self.sae.parameters()) + list(self.sae.buffers()):
                dist.broadcast(t.data, src=0)

    def _all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        dist.all_reduce(t)
        return t

    def _gather_rows(self, x: torch.Tensor) -> torch.Tensor:
        """All ranks' rows of ``x`` concatenated in rank order (for data init)."""
        import torch.distributed as dist

        n = torch.tensor([x.shape[0]], device=x.device)
        sizes = [torch.zeros_like(n) for _ in range(self.world)]
        dist.all_gather(sizes, n)
        m = int(max(int(s) for s in sizes))
        pad = torch.zeros(m, x.shape[1], dtype=x.dtype, device=x.device)
        pad[: x.shape[0]] = x
        parts = [torch.zeros_like(pad) for _ in range(self.world)]
        dist.all_gather(parts, pad)
        return torch.cat([p[: int(s)] for p, s in zip(parts, sizes, strict=True)])

    def _reduce_grads(self, weight: float) -> None:
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        flat = torch.cat([g.reshape(-1) for g in grads]) * weight
        self._all_reduce(flat)
        offset = 0
        for p in self.params:
            n = p.numel()
            p.grad = flat[offset : offset + n].view_as(p).clone()
            offset += n

    # ----- one step -------------------------------------------------------------------
    def _autocast(self):
        mode = self.cfg.autocast
        if mode == "auto":
            mode = "bf16" if self.device.type == "cuda" else "none"
        if mode == "none":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

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
            self._reduce_grads(x.shape[0] / n_global)
        self._optimizer_step()
        with torch.no_grad():
            values, indices = out.values, out.indices
            fired = fired_mask(values, indices, cfg.width)
            if self.world > 1:
                fired = self._all_reduce(fired.to(torch.int32)) > 0
            self.dead.update(fired, n_global)
            l0 = (values != 0).sum()
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
        self._reduce_grads(0.0)
        self._optimizer_step()
        fired = (
            self._all_reduce(torch.zeros(self.cfg.width, dtype=torch.int32, device=self.device)) > 0
        )
        self.dead.update(fired, n_global)
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
        rec["bad_batches"] = self.bad_total
        if extra:
            rec.update(extra)
        self.stats.reset()
        self._steps_since_log = 0
        self.log.log(rec)
        return rec

    # ----- the loop -------------------------------------------------------------------
    def _next_global(self, it) -> tuple[torch.Tensor | None, int, bool]:
        """Next local batch, the global token count and whether any rank saw NaN/Inf.

        Returns ``(None, 0, False)`` when any rank has run out of data (epoch end)."""
        x = next(it, None)
        if x is not None:
            if x.ndim != 2 or x.shape[1] != self.cfg.d_in:
                raise ValueError(
                    f"dimension mismatch: a batch has shape {tuple(x.shape)} but the SAE expects "
                    f"[B, {self.cfg.d_in}]; check the data source and d_in"
                )
            x = x.to(self.device, non_blocking=True).float()
        n = 0 if x is None else x.shape[0]
        bad = x is not None and n > 0 and not bool(torch.isfinite(x).all())
        if self.world > 1:
            flags = torch.tensor(
                [int(x is not None), n, int(bad)],
                dtype=torch.long,
                device=self.device if self.device.type == "cuda" else "cpu",
            )
            self._all_reduce(flags)
            if int(flags[0]) < self.world:
                return None, 0, False
            return x, int(flags[1]), bool(flags[2])
        if x is None:
            return None, 0, False
        return x, n, bad

    def _handle_bad(self) -> None:
        self.bad_total += 1
        self.bad_consecutive += 1
        logger.warning(
            "skipping batch %d of epoch %d: NaN/Inf in the activations (%d bad so far)",
            self.batch_in_epoch - 1,
            self.epoch,
            self.bad_total,
        )
        cfg = self.cfg
        if self.bad_consecutive > cfg.max_bad_batches:
            raise BadDataError(
                f"{self.bad_consecutive} consecutive batches had NaN/Inf activations (limit "
                f"{cfg.max_bad_batches}); check the capture dtype (fp16 overflow?) or the store"
            )
        frac = self.bad_total / max(self.batches_seen, 1)
        if self.bad_total > cfg.max_bad_batches and frac > cfg.max_bad_fraction:
            raise BadDataError(
                f"{self.bad_total} of {self.batches_seen} batches ({frac:.1%}) had NaN/Inf "
                f"activations (limit {cfg.max_bad_fraction:.1%}); check the capture or the store"
            )

    def _done(self) -> bool:
        if self.cfg.total_tokens is not None:
            return self.tokens >= self.cfg.total_tokens
        return self.epoch >= self.cfg.epochs

    def fit(self) -> TrainResult:
        """Run until ``total_tokens`` or ``epochs``; returns a :class:`TrainResult`."""
        from tqdm.auto import tqdm

        cfg = self.cfg
        t_start = time.perf_counter()
        t_log, tokens_log = t_start, self.tokens
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
                it = iter(
                    prefetch(
                        self.source.batches(
                            self.epoch,
                            cfg.batch_size,
                            rank=self.rank,
                            world_size=self.world,
                            start=self.batch_in_epoch,
                        ),
                        self.prefetch_batches,
                        pin=self.device.type == "cuda",
                    )
                )
                stepped = False
                while not self._done():
                    x, n_global, bad = self._next_global(it)
                    if x is None:
                        break
                    self.batch_in_epoch += 1
                    self.batches_seen += 1
                    if n_global == 0:
                        continue
                    if bad:
                        self._handle_bad()
                        continue
                    self.bad_consecutive = 0
                    if not self.initialized:
                        if cfg.init_from_data:
                            sample = self._gather_rows(x) if self.world > 1 else x
                            self.sae.init_from_data_(sample)
                        self.initialized = True
                    self._train_step(x, n_global)
                    stepped = True
                    pbar.update(1)
                    if self.step % cfg.log_interval == 0:
                        last = self._log_record(t_log, tokens_log)
                        t_log, tokens_log = time.perf_counter(), self.tokens
                        pbar.set_postfix(
                            fvu=f"{last.get('fvu', float('nan')):.4f}",
                            l0=f"{last.get('l0', 0):.1f}",
                            dead=f"{last['dead']:.3f}",
                        )
                    if cfg.eval_interval and self.step % cfg.eval_interval == 0:
                        ev = self.evaluate()
                        if ev:
                            self.log.log(
                                {"step": self.step, **{f"eval_{k}": v for k, v in ev.items()}}
                            )
                    if cfg.ckpt_interval and self.step % cfg.ckpt_interval == 0:
                        self.save_checkpoint()
                it.close()  # stops a prefetch thread
                if self._done():
                    break
                if not stepped and self.batch_in_epoch == 0:
                    logger.warning("epoch %d yielded no data; stopping", self.epoch)
                    break
                self.epoch += 1
                self.batch_in_epoch = 0
        finally:
            pbar.close()
        if self._steps_since_log > 0:
            last = self._log_record(t_log, tokens_log)
        seconds = time.perf_counter() - t_start
        final = dict(last)
        final["tokens_per_s_run"] = (self.tokens / seconds) if seconds > 0 else float("nan")
        ev = self.evaluate()
        if ev:
            final.update({f"eval_{k}": v for k, v in ev.items()})
            self.log.log({"step": self.step, **{f"eval_{k}": v for k, v in ev.items()}})
        if cfg.ckpt_interval and self.step and (self.step % cfg.ckpt_interval):
            self.save_checkpoint()
        if self.main and self.out_dir is not None:
            self._save_final(final, seconds)
        history = list(self.log.records)
        self.log.close()
        return TrainResult(
            self.sae, final, self.step, self.tokens, self.bad_total, self.out_dir, history, seconds
        )

    def _save_final(self, metrics: dict[str, Any], seconds: float) -> None:
        info = self.source.describe()
        meta = dict(self.metadata)
        meta.setdefault("model_name", info.get("model"))
        meta.setdefault("hook_point", info.get("hook_point"))
        meta["training"] = {
            "recipe": self.cfg.recipe,
            "source": info,
            "store_fingerprint": info.get("fingerprint"),
            "steps": self.step,
            "tokens": self.tokens,
            "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
        }
        sae_cfg = getattr(self.sae, "cfg", None)
        if sae_cfg is not None and isinstance(getattr(sae_cfg, "metadata", None), dict):
            sae_cfg.metadata.update({k: v for k, v in meta.items() if v is not None})
        self.sae.save(self.out_dir)
        import json

        summary = {
            "config": self.cfg.to_dict(),
            "metadata": meta,
            "metrics": metrics,
            "steps": self.step,
            "tokens": self.tokens,
            "seconds": seconds,
            "bad_batches": self.bad_total,
            "resumed_from": str(self.resumed_from) if self.resumed_from else None,
        }
        atomic_write_text(
            self.out_dir / "training.json", json.dumps(summary, indent=2, default=str)
        )


def train(
    cfg: TrainConfig,
    data: Any,
    *,
    sae: Any = None,
    eval_data: Any = None,
    metadata: dict[str, Any] | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train an SAE: ``Trainer(cfg, data, ...).fit()``."""
    return Trainer(cfg, data, sae=sae, eval_data=eval_data, metadata=metadata, resume=resume).fit()
