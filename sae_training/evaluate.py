"""Downstream check of an SAE: splice its reconstruction into the model.

At the hooked point (``final_norm`` or ``resid_post.L``) a forward hook replaces the
hidden states of the spliced tokens with ``sae(h)`` (or with zeros for the
zero-ablation baseline), the full model (with its LM head) runs on held-out items and
the next-token cross-entropy over attended text positions is compared with the clean
run:

``loss_recovered = (CE_zero - CE_sae) / (CE_zero - CE_clean)`` (1 = as good as clean,
0 = as bad as zeroing the hidden state), and ``KL(clean || spliced)`` per position.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from saeprobe import Item, Modality

logger = logging.getLogger(__name__)

__all__ = ["SpliceResult", "evaluate_splice"]


@dataclass
class SpliceResult:
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"{self.hook_point}: loss recovered {self.loss_recovered:.4f}  CE clean "
            f"{self.ce_clean:.4f} / SAE {self.ce_sae:.4f} / zero {self.ce_zero:.4f}  KL SAE "
            f"{self.kl_sae:.4f} / zero {self.kl_zero:.4f}  FVU {self.fvu:.4f}  "
            f"({self.n_tokens} tokens, {self.n_items} items)"
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

    from saeprobe.capture import resolve_points
    from saeprobe.hooks import ResidualHooks

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
    sse = 0.0
    sum_x = sum_x2 = None
    n_x = 0
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
        ids = batch.input_ids
        target_ok = mask[:, 1:] & torch.isin(batch.modality[:, 1:].long(), labels_set)
        sel = mask[:, :-1] & target_ok
        targets = ids[:, 1:][sel]
        logp = {k: F.log_softmax(v[:, :-1][sel].float(), dim=-1) for k, v in logits.items()}
        for k in ("clean", "sae", "zero"):
            sums[f"ce_{k}"] += float(F.nll_loss(logp[k], targets, reduction="sum"))
        p_clean = logp["clean"].exp()
        for k in ("sae", "zero"):
            sums[f"kl_{k}"] += float((p_clean * (logp["clean"] - logp[k])).sum())
        n_tok += int(sel.sum())
        n_items += len(chunk)
        if "x" in state:
            x, x_hat = state["x"].double(), state["x_hat"].double()
            sse += float((x - x_hat).pow(2).sum())
            sum_x = x.sum(0) if sum_x is None else sum_x + x.sum(0)
            sum_x2 = x.pow(2).sum(0) if sum_x2 is None else sum_x2 + x.pow(2).sum(0)
            n_x += x.shape[0]
    if n_tok == 0:
        raise ValueError(
            "no scored tokens: the items have no attended text/template positions to predict "
            "(pass text items or widen label_modalities)"
        )
    means = {k: v / n_tok for k, v in sums.items()}
    denom = means["ce_zero"] - means["ce_clean"]
    recovered = (means["ce_zero"] - means["ce_sae"]) / denom if abs(denom) > 1e-12 else float("nan")
    var = float((sum_x2 - sum_x.pow(2) / n_x).sum()) if n_x else float("nan")
    fvu = sse / var if n_x and var > 0 else float("nan")
    return SpliceResult(
        point.name,
        n_items,
        n_tok,
        means["ce_clean"],
        means["ce_sae"],
        means["ce_zero"],
        means["kl_sae"],
        means["kl_zero"],
        recovered,
        fvu,
    )
