"""Downstream check of an SAE: splice its reconstruction into the model.

At the hooked point (``final_norm`` or ``resid_post.L``) a forward hook replaces the
hidden states of the spliced tokens with ``sae(h)`` (or with zeros for the
zero-ablation baseline), the full model (with its LM head) runs on held-out items and
the next-token cross-entropy over attended text positions is compared with the clean
run:

``loss_recovered = (CE_zero - CE_sae) / (CE_zero - CE_clean)`` (1 = as good as clean,
0 = as bad as zeroing the hidden state), and ``KL(clean || spliced)`` per position.

Both :func:`evaluate_splice` and :func:`evaluate_reconstruction` (stored activations, no
model) also report the field's metrics under SAEBench's names
(:mod:`saeprobe.sae.metrics`: ``explained_variance``, ``l0``, ``frac_alive``, ``ce_loss_score``,
``kl_div_score``, ...) and the feature density histogram.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from saeprobe import Item, Modality
from saeprobe.capture import resolve_points
from saeprobe.hooks import ResidualHooks
from saeprobe.sae.metrics import (
    SAEMetrics,
    ce_loss_score,
    feature_density_histogram,
    kl_div_score,
    saebench_nested,
)
from saeprobe.store import ActivationStore

logger = logging.getLogger(__name__)

__all__ = ["ReconstructionResult", "SpliceResult", "evaluate_reconstruction", "evaluate_splice"]


class _Metrics:
    """``to_dict`` and the SAEBench grouping of a result's flat ``metrics``."""

    metrics: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    def saebench(self) -> dict[str, dict[str, Any]]:
        """The metrics grouped into SAEBench's ``core`` categories."""
        return saebench_nested(self.metrics)


@dataclass
class SpliceResult(_Metrics):
    """Splice evaluation of one SAE at one hook point.

    Attributes
    ----------
    hook_point : str
    n_items, n_tokens : int
        Items run and label positions scored.
    ce_clean, ce_sae, ce_zero : float
        Mean next-token cross-entropy (nats) of the clean model, with the SAE
        reconstruction spliced in, and with the spliced tokens zeroed.
    kl_sae, kl_zero : float
        Mean ``KL(clean || spliced)`` per scored position.
    loss_recovered : float
        ``(ce_zero - ce_sae) / (ce_zero - ce_clean)``.
    fvu : float
        Reconstruction FVU (per-dimension means) on the spliced tokens.
    metrics : dict
        Flat SAEBench-named metrics: the CE / KL ones (``ce_loss_score`` = ``loss_recovered``,
        ``ce_loss_with_sae``, ``kl_div_score``, ...) and the reconstruction, sparsity and
        density ones of the spliced tokens (``explained_variance``, ``l0``, ``frac_alive``, ...).
    density_histogram : dict
        :func:`saeprobe.sae.metrics.feature_density_histogram` of the spliced tokens' codes.
    """

    hook_point: str
    n_items: int
    n_tokens: int
    ce_clean: float
    ce_sae: float
    ce_zero: float
    kl_sae: float
    kl_zero: float
    loss_recovered: float
    fvu: float
    metrics: dict[str, Any] = field(default_factory=dict)
    density_histogram: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        m = self.metrics
        extra = (
            f"  explained variance {m['explained_variance']:.4f}  L0 {m['l0']:.1f}  dead "
            f"{m['dead_fraction']:.3f}"
            if "l0" in m
            else ""
        )
        return (
            f"{self.hook_point}: loss recovered {self.loss_recovered:.4f}  CE clean "
            f"{self.ce_clean:.4f} / SAE {self.ce_sae:.4f} / zero {self.ce_zero:.4f}  KL SAE "
            f"{self.kl_sae:.4f} / zero {self.kl_zero:.4f}  FVU {self.fvu:.4f}{extra}  "
            f"({self.n_tokens} tokens, {self.n_items} items)"
        )


@dataclass
class ReconstructionResult(_Metrics):
    """Reconstruction, sparsity and density metrics of an SAE on stored activations.

    Attributes
    ----------
    n_tokens : int
    metrics : dict
        Flat SAEBench-named metrics (``explained_variance``, ``fvu``, ``mse``, ``cossim``,
        ``l0``, ``l1``, ``frac_alive``, ``dead_fraction``, ``dense_fraction``, ...).
    density_histogram : dict
        :func:`saeprobe.sae.metrics.feature_density_histogram`.
    """

    n_tokens: int
    metrics: dict[str, Any]
    density_histogram: dict[str, Any]

    def summary(self) -> str:
        m = self.metrics
        return (
            f"explained variance {m['explained_variance']:.4f}  FVU {m['fvu']:.4f}  L0 "
            f"{m['l0']:.2f}  dead {m['dead_fraction']:.3f}  dense {m['dense_fraction']:.3f}  "
            f"({self.n_tokens} tokens)"
        )


def _batched(items: Iterable[Item], size: int, limit: int | None) -> Iterable[list[Item]]:
    batch: list[Item] = []
    for n, item in enumerate(items):
        if limit is not None and n >= limit:
            break
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _run_lm(model: torch.nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
    try:
        out = model(**inputs, use_cache=False)
    except TypeError:  # a model without use_cache
        out = model(**inputs)
    logits = getattr(out, "logits", None)
    if logits is None:
        raise ValueError(
            f"{type(model).__name__} returned no logits: eval-sae needs the model with its LM "
            "head (a ...ForConditionalGeneration / ...ForCausalLM checkpoint)"
        )
    return logits


def _splice_fn(sae: Any, splice: torch.Tensor, state: dict[str, Any]):
    """Hook edit: replace the hidden states of the ``splice`` tokens ``[B, T]`` with the SAE
    reconstruction (``sae=None``: with zeros); keeps ``x`` / ``x_hat`` in ``state``."""

    def edit(h: torch.Tensor) -> torch.Tensor:
        m = splice
        if h.shape[:2] != splice.shape:  # a module that sees another layout: splice everything
            m = torch.ones(h.shape[:2], dtype=torch.bool, device=h.device)
        out = h.clone()
        if sae is None:
            out[m] = 0
            return out
        x = h[m].float()
        x_hat = sae(x)
        state["x"], state["x_hat"] = x, x_hat
        state["codes"] = sae.encode_sparse(x)
        out[m] = x_hat.to(h.dtype)
        return out

    return edit


@torch.inference_mode()
def evaluate_splice(
    adapter: Any,
    sae: Any,
    items: Iterable[Item],
    hook_point: str = "final_norm",
    *,
    batch_size: int = 4,
    limit: int | None = None,
    label_modalities: Sequence[int] = (Modality.TEXT, Modality.TEMPLATE),
    skip_system: bool = True,
    progress: bool = False,
) -> SpliceResult:
    """Next-token CE / KL of ``adapter.model`` with ``sae`` spliced in at ``hook_point``.

    Parameters
    ----------
    adapter : ModelAdapter
        A loaded MLLM whose ``adapter.model`` has an LM head.
    sae : SAE
        Its ``cfg.d_in`` must equal the hooked width.
    items : iterable of Item
        Held-out inputs (not used to train the SAE).
    hook_point : str
        ``final_norm`` (the paper's SAE input) or ``resid_post.L``.
    label_modalities : sequence of Modality
        Target tokens scored (attended positions only); default: the item's text and the
        prompt template (not image placeholders, not the system prompt).
    skip_system : bool
        Leave SYSTEM tokens un-spliced (SAEs are trained without them).

    Returns
    -------
    SpliceResult
    """
    from tqdm.auto import tqdm

    point = resolve_points(adapter, hook_point)[0]
    d_model = adapter.d_model
    if int(sae.cfg.d_in) != int(d_model):
        raise ValueError(
            f"the SAE has d_in={sae.cfg.d_in} but {hook_point} of this model has width {d_model}: "
            "use the SAE trained on this model"
        )
    model = adapter.model
    device = adapter.device
    sae = sae.to(device).eval()
    labels_set = torch.tensor(sorted({int(m) for m in label_modalities}), device=device)
    sums = dict.fromkeys(("ce_clean", "ce_sae", "ce_zero", "kl_sae", "kl_zero"), 0.0)
    n_tok = 0
    n_items = 0
    recon = SAEMetrics(int(sae.cfg.d_sae))
    total = None if limit is None else math.ceil(limit / batch_size)
    for chunk in tqdm(
        _batched(items, batch_size, limit),
        total=total,
        disable=not progress,
        desc=f"eval-sae {point.name}",
        unit="batch",
    ):
        batch = adapter.encode(chunk).to(device)
        mask = batch.attention_mask.bool()
        splice = mask & (batch.modality != int(Modality.SYSTEM)) if skip_system else mask
        state: dict[str, Any] = {}

        logits = {"clean": _run_lm(model, batch.inputs)}
        for name in ("sae", "zero"):
            fn = _splice_fn(sae if name == "sae" else None, splice, state)
            with ResidualHooks(
                adapter, [point], stop_early=False, edit={point.name: fn}, record=False
            ):
                logits[name] = _run_lm(model, batch.inputs)
        n_tok += _score(batch, mask, logits, labels_set, sums)
        n_items += len(chunk)
        if "x" in state:
            recon.update(state["x"], state["x_hat"], *state["codes"])
    if n_tok == 0:
        raise ValueError(
            "no scored tokens: the items have no attended text/template positions to predict "
            "(pass text items or widen label_modalities)"
        )
    return _splice_result(
        point.name, n_items, n_tok, {k: v / n_tok for k, v in sums.items()}, recon
    )


def _score(
    batch: Any,
    mask: torch.Tensor,
    logits: dict[str, torch.Tensor],
    labels_set: torch.Tensor,
    sums: dict[str, float],
) -> int:
    """Add the batch's summed next-token CE (clean / sae / zero) and ``KL(clean || .)`` over
    the scored positions to ``sums``; returns the number of scored positions."""
    target_ok = mask[:, 1:] & torch.isin(batch.modality[:, 1:].long(), labels_set)
    sel = mask[:, :-1] & target_ok
    targets = batch.input_ids[:, 1:][sel]
    logp = {k: F.log_softmax(v[:, :-1][sel].float(), dim=-1) for k, v in logits.items()}
    for k in ("clean", "sae", "zero"):
        sums[f"ce_{k}"] += float(F.nll_loss(logp[k], targets, reduction="sum"))
    p_clean = logp["clean"].exp()
    for k in ("sae", "zero"):
        sums[f"kl_{k}"] += float((p_clean * (logp["clean"] - logp[k])).sum())
    return int(sel.sum())


def _splice_result(
    hook: str, n_items: int, n_tok: int, means: dict[str, float], recon: SAEMetrics
) -> SpliceResult:
    recovered = ce_loss_score(means["ce_clean"], means["ce_sae"], means["ce_zero"])
    metrics = dict(recon.compute())
    metrics.update(
        {
            "ce_loss_score": recovered,
            "ce_loss_with_ablation": means["ce_zero"],
            "ce_loss_with_sae": means["ce_sae"],
            "ce_loss_without_sae": means["ce_clean"],
            "kl_div_score": kl_div_score(means["kl_sae"], means["kl_zero"]),
            "kl_div_with_ablation": means["kl_zero"],
            "kl_div_with_sae": means["kl_sae"],
            "n_scored_positions": n_tok,
        }
    )
    return SpliceResult(
        hook,
        n_items,
        n_tok,
        means["ce_clean"],
        means["ce_sae"],
        means["ce_zero"],
        means["kl_sae"],
        means["kl_zero"],
        recovered,
        metrics.get("fvu", float("nan")),
        metrics,
        feature_density_histogram(recon.density()) if recon.n else {},
    )


@torch.no_grad()
def evaluate_reconstruction(
    sae: Any,
    data: Any,
    *,
    batch_size: int = 4096,
    max_tokens: int | None = None,
    drop_system: bool = True,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> ReconstructionResult:
    """SAEBench-named reconstruction, sparsity and density metrics on stored activations.

    Parameters
    ----------
    sae : SAE
    data : str | Path | ActivationStore | Tensor [N, d] | iterable of Tensor [B, d]
        An activation store (read in stored order; SYSTEM tokens dropped when
        ``drop_system``), an in-memory tensor or batches.
    max_tokens : int, optional
        Stop after this many tokens (the first ones of the store).

    Returns
    -------
    ReconstructionResult
    """
    from tqdm.auto import tqdm

    device = torch.device(device) if device is not None else next(sae.parameters()).device
    sae = sae.to(device).eval()
    metrics = SAEMetrics(int(sae.cfg.d_sae))
    for x in tqdm(_token_batches(data, batch_size, drop_system), disable=not progress,
                  desc="eval-sae reconstruction", unit="batch"):  # fmt: skip
        if max_tokens is not None:
            x = x[: max(0, max_tokens - metrics.n)]
        if x.shape[0] == 0:
            break
        if x.shape[-1] != sae.cfg.d_in:
            raise ValueError(
                f"the activations have d={x.shape[-1]} but the SAE expects d_in={sae.cfg.d_in}: "
                "use the SAE trained on this model and hook point"
            )
        x = x.to(device).float()
        metrics.update(x, sae(x), *sae.encode_sparse(x))
    if metrics.n == 0:
        raise ValueError("no activations to evaluate: the store or tensor is empty")
    return ReconstructionResult(
        metrics.n, metrics.compute(), feature_density_histogram(metrics.density())
    )


def _token_batches(data: Any, batch_size: int, drop_system: bool) -> Iterable[torch.Tensor]:
    import os

    if isinstance(data, torch.Tensor):
        yield from data.reshape(-1, data.shape[-1]).split(batch_size)
        return
    if isinstance(data, (str, os.PathLike)) or hasattr(data, "batches"):
        store = data if hasattr(data, "batches") else ActivationStore(data)
        exclude = ["system"] if drop_system else None
        for b in store.batches(batch_size, shuffle=False, fields=("acts",), exclude=exclude):
            yield b.acts
        return
    yield from data
