"""The field's SAE metrics, named as SAEBench's ``core`` eval and sae-lens' ``run_evals`` name them.

Reconstruction (over tokens ``x [N, d]`` and reconstructions ``x_hat [N, d]``):

* ``explained_variance`` = ``1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2`` (per-dimension
  mean; sae-lens' streaming ``ExplainedVarianceCalculator``), ``fvu`` = ``1 - explained_variance``;
* ``mse`` = mean over tokens of ``||x - x_hat||^2`` (summed over dimensions, the SAEBench
  convention; the trainer's ``mse`` is the per-element mean, ``mse / d``);
* ``cossim`` = mean cosine of ``x`` and ``x_hat``; ``l2_norm_in`` / ``l2_norm_out`` / ``l2_ratio``
  (mean ``||x_hat|| / ||x||``) and ``relative_reconstruction_bias`` = ``E||x_hat||^2 / E<x, x_hat>``.

Sparsity: ``l0`` (mean number of non-zero codes per token), ``l1`` (mean ``sum |z|`` per token).

Feature density (share of tokens on which each latent fires): ``frac_alive`` (share of latents
that fired at least once), ``dead_fraction`` = ``1 - frac_alive``, ``freq_over_1_percent`` /
``freq_over_10_percent`` (share of latents firing on more than 1% / 10% of tokens; the latter
are the "dense" latents, ``dense_fraction``), ``normalized_freq_over_1_percent`` /
``normalized_freq_over_10_percent`` (their share of all firings), and a histogram of
``log10(density)``.

Downstream (the SAE spliced into the model): ``ce_loss_score`` =
``(ce_loss_with_ablation - ce_loss_with_sae) / (ce_loss_with_ablation - ce_loss_without_sae)``
(CE loss recovered) and ``kl_div_score`` = ``(kl_div_with_ablation - kl_div_with_sae) /
kl_div_with_ablation``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = [
    "SAEBENCH_CATEGORIES",
    "SAEMetrics",
    "ce_loss_score",
    "density_summary",
    "explained_variance",
    "feature_density",
    "feature_density_histogram",
    "fvu",
    "kl_div_score",
    "kl_divergence",
    "l0",
    "saebench_nested",
]

#: SAEBench ``core`` metric categories -> metric names (``saebench_nested`` groups by these)
SAEBENCH_CATEGORIES: dict[str, tuple[str, ...]] = {
    "model_behavior_preservation": ("kl_div_score", "kl_div_with_ablation", "kl_div_with_sae"),
    "model_performance_preservation": (
        "ce_loss_score",
        "ce_loss_with_ablation",
        "ce_loss_with_sae",
        "ce_loss_without_sae",
    ),
    "reconstruction_quality": ("explained_variance", "fvu", "mse", "cossim"),
    "shrinkage": ("l2_norm_in", "l2_norm_out", "l2_ratio", "relative_reconstruction_bias"),
    "sparsity": ("l0", "l1"),
    "misc_metrics": (
        "frac_alive",
        "dead_fraction",
        "dense_fraction",
        "freq_over_1_percent",
        "freq_over_10_percent",
        "normalized_freq_over_1_percent",
        "normalized_freq_over_10_percent",
    ),
    "token_stats": ("n_tokens",),
}


def _f64(t: Tensor) -> Tensor:
    return t.detach().to(torch.float64)


def fvu(x: Tensor, x_hat: Tensor) -> float:
    """Fraction of variance unexplained ``sum ||x - x_hat||^2 / sum ||x - mean(x)||^2`` of
    ``x, x_hat [N, d]`` (per-dimension mean)."""
    x, x_hat = _f64(x), _f64(x_hat)
    var = float((x - x.mean(0)).pow(2).sum())
    return float((x - x_hat).pow(2).sum()) / var if var > 0 else float("nan")


def explained_variance(x: Tensor, x_hat: Tensor) -> float:
    """``1 - fvu(x, x_hat)`` (sae-lens / SAEBench ``explained_variance``)."""
    return 1.0 - fvu(x, x_hat)


def l0(codes: Tensor) -> float:
    """Mean number of non-zero entries per row of codes ``[N, c]`` (or sparse values ``[N, k]``)."""
    return float((codes != 0).sum()) / max(codes.shape[0], 1)


def feature_density(values: Tensor, indices: Tensor | None, d_sae: int) -> Tensor:
    """Share of the ``N`` rows on which each latent is non-zero, float64 ``[d_sae]``.

    ``values``/``indices`` are sparse codes ``[N, k]`` (padding entries have value 0), or
    ``values`` is dense ``[N, d_sae]`` when ``indices`` is None.
    """
    return _fired_counts(values, indices, d_sae) / max(values.shape[0], 1)


def _fired_counts(values: Tensor, indices: Tensor | None, d_sae: int) -> Tensor:
    if indices is None:
        return (values != 0).sum(0).to(torch.float64).cpu()
    counts = torch.zeros(d_sae, dtype=torch.float64, device=values.device)
    counts.index_add_(0, indices.reshape(-1).long(), (values != 0).reshape(-1).to(torch.float64))
    return counts.cpu()


def density_summary(density: Tensor) -> dict[str, float]:
    """SAEBench's density metrics of per-latent densities ``[c]`` (see the module docstring)."""
    dens = _f64(density)
    total = float(dens.sum())
    out = {
        "frac_alive": float((dens > 0).double().mean()),
        "freq_over_1_percent": float((dens > 0.01).double().mean()),
        "freq_over_10_percent": float((dens > 0.1).double().mean()),
        "normalized_freq_over_1_percent": float(dens[dens > 0.01].sum()) / total if total else 0.0,
        "normalized_freq_over_10_percent": float(dens[dens > 0.1].sum()) / total if total else 0.0,
    }
    out["dead_fraction"] = 1.0 - out["frac_alive"]
    out["dense_fraction"] = out["freq_over_10_percent"]
    return out


def feature_density_histogram(
    density: Tensor, n_bins: int = 40, log10_min: float = -8.0
) -> dict[str, Any]:
    """Histogram of ``log10(density)`` of the latents that fired (the sae-lens / Neuronpedia
    feature density plot), on ``n_bins`` equal bins over ``[log10_min, 0]``.

    Returns
    -------
    dict
        ``bin_edges`` (``n_bins + 1`` floats), ``counts`` (``n_bins`` ints; densities below
        ``10 ** log10_min`` go into the first bin) and ``n_dead`` (latents that never fired).
    """
    dens = _f64(density).flatten()
    alive = dens[dens > 0]
    logd = alive.log10().clamp(log10_min, 0.0)
    edges = torch.linspace(log10_min, 0.0, n_bins + 1, dtype=torch.float64)
    counts = torch.histc(logd, bins=n_bins, min=log10_min, max=0.0) if alive.numel() else None
    return {
        "bin_edges": [round(float(e), 6) for e in edges],
        "counts": [int(c) for c in counts] if counts is not None else [0] * n_bins,
        "n_dead": int((dens <= 0).sum()),
    }


def ce_loss_score(ce_without_sae: float, ce_with_sae: float, ce_with_ablation: float) -> float:
    """CE loss recovered: ``(ablation - sae) / (ablation - without)`` (1 = as good as the clean
    model, 0 = as bad as zero-ablating the hooked activations; NaN when undefined)."""
    denom = ce_with_ablation - ce_without_sae
    return (ce_with_ablation - ce_with_sae) / denom if abs(denom) > 1e-12 else float("nan")


def kl_div_score(kl_with_sae: float, kl_with_ablation: float) -> float:
    """``(kl_with_ablation - kl_with_sae) / kl_with_ablation`` (1 = the SAE changes nothing)."""
    return (
        (kl_with_ablation - kl_with_sae) / kl_with_ablation
        if abs(kl_with_ablation) > 1e-12
        else float("nan")
    )


def kl_divergence(logits_p: Tensor, logits_q: Tensor) -> Tensor:
    """``KL(softmax(p) || softmax(q))`` per position of logits ``[..., V]`` -> ``[...]`` (float32+)."""
    lp = torch.log_softmax(logits_p.float(), dim=-1)
    lq = torch.log_softmax(logits_q.float(), dim=-1)
    return (lp.exp() * (lp - lq)).sum(-1)


def saebench_nested(flat: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Group flat SAEBench-named metrics into SAEBench's categories (empty ones dropped)."""
    out: dict[str, dict[str, Any]] = {}
    for cat, names in SAEBENCH_CATEGORIES.items():
        group = {n: flat[n] for n in names if n in flat and flat[n] is not None}
        if group:
            out[cat] = group
    return out


class SAEMetrics:
    """Streaming reconstruction, sparsity and density metrics (float64 sums, any batch sizes).

    Parameters
    ----------
    d_sae : int
        Number of latents (for the density counts).
    """

    def __init__(self, d_sae: int):
        self.d_sae = int(d_sae)
        self.n = 0
        self.sums: dict[str, float] = dict.fromkeys(
            ("sse", "sq_norm", "cos", "norm_in", "norm_out", "ratio", "x_dot", "xh_sq", "l0", "l1"),
            0.0,
        )
        self.sum_x: Tensor | None = None
        self.fired = torch.zeros(self.d_sae, dtype=torch.float64)

    @torch.no_grad()
    def update(self, x: Tensor, x_hat: Tensor, values: Tensor, indices: Tensor | None) -> None:
        """Add tokens ``x, x_hat [N, d]`` with their codes (sparse ``values/indices [N, k]``, or
        dense ``values [N, c]`` and ``indices=None``)."""
        x, x_hat = _f64(x).reshape(-1, x.shape[-1]), _f64(x_hat).reshape(-1, x.shape[-1])
        v = _f64(values).reshape(x.shape[0], -1)
        n_in, n_out = x.norm(dim=1), x_hat.norm(dim=1)
        s = self.sums
        s["sse"] += float((x - x_hat).pow(2).sum())
        s["sq_norm"] += float(x.pow(2).sum())
        s["cos"] += float(((x * x_hat).sum(1) / (n_in * n_out).clamp_min(1e-30)).sum())
        s["norm_in"] += float(n_in.sum())
        s["norm_out"] += float(n_out.sum())
        s["ratio"] += float((n_out / torch.where(n_in < 1e-4, 1.0, n_in)).sum())
        s["x_dot"] += float((x * x_hat).sum())
        s["xh_sq"] += float(x_hat.pow(2).sum())
        s["l0"] += float((v != 0).sum())
        s["l1"] += float(v.abs().sum())
        sx = x.sum(0).cpu()
        self.sum_x = sx if self.sum_x is None else self.sum_x + sx
        idx = None if indices is None else indices.reshape(x.shape[0], -1)
        self.fired += _fired_counts(values.reshape(x.shape[0], -1), idx, self.d_sae)
        self.n += x.shape[0]

    def density(self) -> Tensor:
        """Per-latent feature density ``[c]`` so far."""
        return self.fired / max(self.n, 1)

    def compute(self) -> dict[str, float]:
        """Flat SAEBench-named metrics (NaN where undefined; empty before any update)."""
        n, s = self.n, self.sums
        if n == 0:
            return {}
        var = s["sq_norm"] - float(self.sum_x.pow(2).sum()) / n
        fvu_ = s["sse"] / var if var > 0 else float("nan")
        out = {
            "explained_variance": 1.0 - fvu_,
            "fvu": fvu_,
            "mse": s["sse"] / n,
            "cossim": s["cos"] / n,
            "l2_norm_in": s["norm_in"] / n,
            "l2_norm_out": s["norm_out"] / n,
            "l2_ratio": s["ratio"] / n,
            "relative_reconstruction_bias": (
                s["xh_sq"] / s["x_dot"] if abs(s["x_dot"]) > 0 else float("nan")
            ),
            "l0": s["l0"] / n,
            "l1": s["l1"] / n,
            "n_tokens": n,
        }
        out.update(density_summary(self.density()))
        return out
