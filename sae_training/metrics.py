"""Training metrics: reconstruction statistics, dead latents, JSONL / wandb logging.

Definitions (accumulated in float64 over a logging window, all ranks together)
-------------------------------------------------------------------------------
``mse``  mean over tokens and dimensions of ``(x - x_hat)^2``.
``fvu``  ``sum ||x - x_hat||^2 / sum ||x - mean(x)||^2`` with a per-dimension mean
         (the usual fraction of variance unexplained); ``1 - fvu`` is the usual R2.
``r2``   the paper's R2: ``1 - sum ||x - x_hat||^2 / sum ||x - m||^2`` with ``m`` one
         scalar mean over all entries of ``x`` (its reference code).
``l0``   mean number of non-zero codes per token.
``dead`` share of latents that have not fired in the last ``dead_window_tokens`` tokens.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from saeprobe.atomic import atomic_write_text

logger = logging.getLogger(__name__)

__all__ = ["DeadLatentTracker", "MetricsLogger", "ReconstructionStats", "fired_mask"]


def fired_mask(values: torch.Tensor, indices: torch.Tensor | None, width: int) -> torch.Tensor:
    """Bool ``[width]``: latents with a non-zero code anywhere in the batch.

    ``values``/``indices`` are ``[B, k]`` sparse codes, or ``values`` is dense ``[B, width]``
    when ``indices`` is ``None``.
    """
    if indices is None:
        return (values != 0).any(0)
    # scatter-max keeps it free of host syncs (no boolean-mask indexing)
    hit = torch.zeros(width, dtype=torch.int32, device=values.device)
    hit.scatter_reduce_(
        0, indices.reshape(-1).long(), (values != 0).reshape(-1).to(torch.int32), reduce="amax"
    )
    return hit > 0


class ReconstructionStats:
    """Sufficient statistics for MSE / FVU / R2 / L0 over many batches (float64)."""

    def __init__(self, d: int, device: torch.device | str = "cpu"):
        self.d = d
        self.device = torch.device(device)
        self.reset()

    def reset(self) -> None:
        z = lambda *s: torch.zeros(*s, dtype=torch.float64, device=self.device)  # noqa: E731
        self.n = z(())
        self.sse = z(())
        self.sum_x = z(self.d)
        self.sum_x2 = z(self.d)
        self.l0 = z(())
        self.loss = z(())
        self.terms: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def update(
        self,
        x: torch.Tensor,
        x_hat: torch.Tensor,
        l0_per_token_sum: torch.Tensor | float = 0.0,
        loss: torch.Tensor | None = None,
        terms: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """Add a batch: ``x``, ``x_hat [B, d]``, the batch's summed L0, its loss and terms
        (batch means; weighted by ``B`` here)."""
        b = x.shape[0]
        xf = x.float()
        self.n += b
        f64 = torch.float64
        self.sse += (xf - x_hat.float()).pow(2).sum(dtype=f64)
        self.sum_x += xf.sum(0, dtype=f64)
        self.sum_x2 += xf.pow(2).sum(0, dtype=f64)
        self.l0 += torch.as_tensor(l0_per_token_sum, device=self.device).double()
        if loss is not None:
            self.loss += loss.detach().double() * b
        for name, value in (terms or {}).items():
            if torch.is_tensor(value):
                v = value.detach().double() * b
                self.terms[name] = self.terms[name] + v if name in self.terms else v

    def _flat(self) -> torch.Tensor:
        names = sorted(self.terms)
        return torch.cat(
            [
                torch.stack([self.n, self.sse, self.l0, self.loss]),
                self.sum_x,
                self.sum_x2,
                torch.stack([self.terms[n] for n in names]) if names else self.n.new_zeros(0),
            ]
        )

    def all_reduce(self) -> None:
        """Sum the statistics over all ranks (no-op without a process group)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        flat = self._flat()
        if flat.device.type == "cpu" and dist.get_backend() == "nccl":  # pragma: no cover
            flat = flat.cuda()
        dist.all_reduce(flat)
        flat = flat.to(self.device)
        d, names = self.d, sorted(self.terms)
        self.n, self.sse, self.l0, self.loss = flat[0], flat[1], flat[2], flat[3]
        self.sum_x, self.sum_x2 = flat[4 : 4 + d], flat[4 + d : 4 + 2 * d]
        self.terms = {n: flat[4 + 2 * d + i] for i, n in enumerate(names)}

    def compute(self) -> dict[str, float]:
        n = float(self.n)
        if n == 0:
            return {}
        sse = float(self.sse)
        var_dim = float((self.sum_x2 - self.sum_x.pow(2) / n).sum())
        tot = float(self.sum_x.sum())
        var_scalar = float(self.sum_x2.sum()) - tot * tot / (n * self.d)
        out = {
            "mse": sse / (n * self.d),
            "fvu": sse / var_dim if var_dim > 0 else float("nan"),
            "r2": 1.0 - sse / var_scalar if var_scalar > 0 else float("nan"),
            "l0": float(self.l0) / n,
            "loss": float(self.loss) / n,
            "n_tokens": int(n),
        }
        for name, value in self.terms.items():
            out[f"loss_{name}"] = float(value) / n
        return out


class DeadLatentTracker:
    """Tokens since each latent last fired; dead = not fired within ``window`` tokens.

    The counter state is part of checkpoints (``state_dict``) so that resumed runs see
    the same dead mask (and so the same AuxK loss).
    """

    def __init__(self, width: int, window: int, device: torch.device | str = "cpu"):
        self.width = width
        self.window = int(window)
        self.since = torch.zeros(width, dtype=torch.long, device=device)

    def update(self, fired: torch.Tensor, n_tokens: int) -> None:
        self.since += int(n_tokens)
        self.since.masked_fill_(fired, 0)

    @property
    def dead_mask(self) -> torch.Tensor:
        return self.since >= self.window

    def dead_fraction(self) -> float:
        return float(self.dead_mask.float().mean())

    def state_dict(self) -> dict[str, Any]:
        return {"since": self.since.cpu().clone(), "window": self.window}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        since = state["since"]
        if since.shape != self.since.shape:
            raise ValueError(
                f"checkpoint has dead-latent counters for {since.shape[0]} latents, the SAE has "
                f"{self.width}; resume with the same --width"
            )
        self.since.copy_(since.to(self.since.device))


class MetricsLogger:
    """Appends one JSON object per record to ``metrics.jsonl`` (rank 0 only) and, when a
    wandb project is configured and wandb is installed, logs the same numbers there."""

    def __init__(
        self,
        out_dir: str | os.PathLike | None,
        *,
        enabled: bool = True,
        wandb_project: str | None = None,
        wandb_run_name: str | None = None,
        config: dict[str, Any] | None = None,
    ):
        self.enabled = enabled
        self.path = Path(out_dir) / "metrics.jsonl" if (out_dir and enabled) else None
        self.records: list[dict[str, Any]] = []
        self._wandb = None
        if enabled and wandb_project:
            try:
                import wandb
            except ImportError:
                logger.warning("wandb is not installed; logging to metrics.jsonl only")
            else:
                try:
                    self._wandb = wandb.init(
                        project=wandb_project,
                        name=wandb_run_name,
                        config=config or {},
                        resume="allow",
                    )
                except Exception as exc:  # offline, not logged in, ...: keep training
                    logger.warning("wandb.init failed (%s); logging to metrics.jsonl only", exc)

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.records.append(record)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(json.dumps(record, default=float) + "\n")
        if self._wandb is not None:
            self._wandb.log(
                {k: v for k, v in record.items() if isinstance(v, (int, float))},
                step=record.get("step"),
            )

    def truncate_after(self, step: int) -> None:
        """Drop logged records past ``step`` (a resumed run redoes those steps)."""
        if not self.enabled or self.path is None or not self.path.exists():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill
                continue
            if int(rec.get("step", 0)) <= step:
                keep.append(line)
        atomic_write_text(self.path, "".join(k + "\n" for k in keep))

    def close(self) -> None:
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
