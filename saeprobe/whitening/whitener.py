"""The fit-and-apply :class:`Whitener` and its :class:`WhitenerConfig`."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_save_safetensors, atomic_write_json
from ..jsonconfig import JSONConfig
from .covariance import CovarianceAccumulator, in_memory_stats, nonfinite_message
from .methods import FitStats, canonical_method, get_method

logger = logging.getLogger(__name__)

__all__ = ["Whitener", "WhitenerConfig"]

FORMAT = "saeprobe.whitener/1"


@dataclass
class WhitenerConfig(JSONConfig):
    unknown_keys = "ignore"  # whitener files of other versions
    """Settings of a :class:`Whitener` (round-trips to JSON).

    Attributes
    ----------
    method : str
        A registered method (:func:`~saeprobe.whitening.available_methods`).
    alpha : float
        Shrinkage intensity of ``realign`` (the paper's beta).
    eps : float
        Added to the eigenvalues before ``1/sqrt``.
    n_components : int | None
        ``pca``: dimensions kept (None = all); ``abtt``: principal directions removed
        (None = ``max(1, D // 100)``).
    center : bool | None
        Subtract the mean (None: the method's default; False for ``distractor``, ``none``).
    normalize : bool
        L2-normalise output rows (the paper does; cosine retrieval).
    chunk_size : int
        Rows per block for statistics and apply (bounds temporary memory).
    """

    method: str = "realign"
    alpha: float = 0.1
    eps: float = 1e-5
    n_components: int | None = None
    center: bool | None = None
    normalize: bool = True
    chunk_size: int = 16384

    def __post_init__(self) -> None:
        self.method = canonical_method(self.method)
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.eps < 0:
            raise ValueError(f"eps must be >= 0, got {self.eps}")
        if self.n_components is not None and self.n_components < 0:
            raise ValueError(f"n_components must be >= 0, got {self.n_components}")
        if self.chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")

    @property
    def centers(self) -> bool:
        return self.center if self.center is not None else get_method(self.method).centers


@dataclass
class _State:
    weight: torch.Tensor  # [D, D'] float32
    bias: torch.Tensor  # [D'] float32
    mean: torch.Tensor  # [D] float32
    eigenvalues: torch.Tensor | None = None  # [D] float32, descending
    info: dict = field(default_factory=dict)

    def to(self, device) -> _State:
        ev = self.eigenvalues.to(device) if self.eigenvalues is not None else None
        return _State(
            self.weight.to(device), self.bias.to(device), self.mean.to(device), ev, self.info
        )


def _check_2d(X: torch.Tensor, what: str) -> torch.Tensor:
    if not torch.is_tensor(X):
        raise TypeError(f"{what} must be a torch.Tensor [N, D], got {type(X).__name__}")
    if X.ndim != 2:
        raise ValueError(f"{what} must be 2-D [N, D], got shape {tuple(X.shape)}")
    if not X.is_floating_point():
        raise ValueError(f"{what} must be floating point, got {X.dtype}")
    return X


class Whitener:
    """Fit-and-apply whitening estimator (ReAlign by default).

    Parameters
    ----------
    method : str | WhitenerConfig
        A registered method name (or a whole config).
    alpha, eps, n_components, center, normalize, chunk_size
        See :class:`WhitenerConfig`.
    directions : Tensor [m, D] | None
        For ``method="distractor"``: the directions whose span is removed.
    device : str | torch.device | None
        Where to compute statistics and apply (None: the input's device).

    Examples
    --------
    >>> w = Whitener("realign", alpha=0.1).fit(candidates)
    >>> e = w.transform(candidates)      # [N, D], unit rows
    """

    def __init__(
        self,
        method: str | WhitenerConfig = "realign",
        *,
        alpha: float = 0.1,
        eps: float = 1e-5,
        n_components: int | None = None,
        center: bool | None = None,
        normalize: bool = True,
        chunk_size: int = 16384,
        directions: torch.Tensor | None = None,
        device: str | torch.device | None = None,
    ):
        if isinstance(method, WhitenerConfig):
            self.config = method
        else:
            self.config = WhitenerConfig(
                method, alpha, eps, n_components, center, normalize, chunk_size
            )
        self.impl = get_method(self.config.method)
        self.directions = directions
        self.device = torch.device(device) if device is not None else None
        self._state: _State | None = None
        self._acc: CovarianceAccumulator | None = None
        if self.config.method == "distractor" and directions is None:
            raise ValueError(
                "method='distractor' needs directions=[m, D] (e.g. SAE decoder rows of the "
                "distractor concepts)"
            )

    # ----- properties
    @property
    def method(self) -> str:
        return self.config.method

    @property
    def fitted(self) -> bool:
        return self._state is not None

    def _st(self) -> _State:
        if self._state is None:
            raise RuntimeError("Whitener is not fitted: call fit(X) (or partial_fit + finalize)")
        return self._state

    @property
    def weight(self) -> torch.Tensor:
        """[D, D'] float32"""
        return self._st().weight

    @property
    def bias(self) -> torch.Tensor:
        """[D'] float32 (``-mean @ weight``)"""
        return self._st().bias

    @property
    def mean_(self) -> torch.Tensor:
        return self._st().mean

    @property
    def eigenvalues_(self) -> torch.Tensor | None:
        return self._st().eigenvalues

    @property
    def info(self) -> dict:
        """Fit diagnostics: n_samples, dim, alpha used, rank warning, ..."""
        return self._st().info

    # ----- fitting
    def fit(self, X: torch.Tensor | Iterable[torch.Tensor]) -> Whitener:
        """Fit on ``X [N, D]`` (a tensor: in-memory fast path) or an iterable of
        ``[n_i, D]`` chunks (one streaming pass)."""
        if torch.is_tensor(X):
            return self._fit_tensor(X)
        self._acc = None
        for chunk in X:
            self.partial_fit(chunk)
        return self.finalize()

    def partial_fit(self, chunk: torch.Tensor) -> Whitener:
        """Streaming: add one chunk ``[n, D]`` of the fitting set (then :meth:`finalize`)."""
        chunk = _check_2d(chunk, "whitening input")
        if self._acc is None:
            self._acc = CovarianceAccumulator(
                chunk.shape[1], device=self.device, fourth_moments=self.impl.fourth_moments
            )
        self._acc.update(chunk)
        return self

    def finalize(self) -> Whitener:
        """Finish a streaming fit."""
        if self._acc is None:
            raise ValueError("finalize() without any partial_fit() chunk: no data to fit")
        acc, self._acc = self._acc, None
        acc.need(1)
        r2 = acc.sum_sq_dev_sq() if self.impl.fourth_moments else None
        self._build(FitStats(acc.mean, acc.scatter(), acc.n, self.config, r2, self.directions))
        return self

    def _fit_tensor(self, X: torch.Tensor) -> Whitener:
        X = _check_2d(X, "whitening input")
        n, d = X.shape
        if n == 0:
            raise ValueError("cannot fit whitening on an empty set of embeddings")
        dev = self.device or X.device
        cfg = self.config
        precise = not (dev.type == "cuda" and X.dtype in (torch.float16, torch.bfloat16))
        if not self.impl.needs_covariance and not cfg.centers:
            mean = torch.zeros(d, dtype=torch.float64, device=dev)
            self._build(FitStats(mean, None, n, cfg, None, self.directions, precise))
            return self
        r2 = None
        if self.impl.fourth_moments:
            acc = CovarianceAccumulator(d, device=dev, fourth_moments=True)
            for s in range(0, n, cfg.chunk_size):
                acc.update(X[s : s + cfg.chunk_size])
            mean, scatter, r2 = acc.mean, acc.scatter(), acc.sum_sq_dev_sq()
        else:
            mean, scatter = in_memory_stats(X, dev, cfg.chunk_size)
        self._build(FitStats(mean, scatter, n, cfg, r2, self.directions, precise))

        return self

    def _build(self, stats: FitStats) -> None:
        cfg = self.config
        d = stats.dim
        dev = stats.mean.device
        info: dict[str, Any] = {"n_samples": int(stats.n), "dim": int(d), "method": self.method}
        weight64 = self.impl.weight(stats, info)
        eigvals = info.pop("_eigenvalues", None)
        mean64 = stats.mean if cfg.centers else torch.zeros(d, dtype=torch.float64, device=dev)
        weight = weight64.float().contiguous()
        bias = -(mean64 @ weight64).float()
        self._state = _State(
            weight=weight,
            bias=bias,
            mean=mean64.float(),
            eigenvalues=eigvals.float() if eigvals is not None else None,
            info=info,
        )

    # ----- applying
    def transform(
        self,
        X: torch.Tensor,
        *,
        out_dtype: torch.dtype | None = None,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Apply ``normalize(X @ W + b)`` in chunks.

        Parameters
        ----------
        X : [N, D]
        out_dtype : dtype | None
            Output dtype (default: float32 for float32 inputs, the input dtype for fp16/bf16).
        out : Tensor [N, D'] | None
            Preallocated output.

        Returns
        -------
        Tensor [N, D'] on the compute device.
        """
        st = self._st()
        X = _check_2d(X, "whitening input")
        d = st.weight.shape[0]
        if X.shape[1] != d:
            raise ValueError(
                f"embedding dim {X.shape[1]} does not match the whitener's dim {d}: fit and "
                "apply on embeddings from the same model / layer"
            )
        dev = self.device or X.device
        n = X.shape[0]
        out_dtype = out_dtype or (
            X.dtype if X.dtype in (torch.float16, torch.bfloat16) else torch.float32
        )
        if out is None:
            out = torch.empty(n, st.weight.shape[1], dtype=out_dtype, device=dev)
        # fp16 on CUDA: tensor-core product with W rounded to fp16 (relative 5e-4) and float32
        # accumulation; bf16 would round W to 8 bits, so bf16 inputs are multiplied in float32
        half_cuda = dev.type == "cuda" and X.dtype == torch.float16
        w, b = st.weight.to(dev), st.bias.to(dev)
        w_half = w.to(X.dtype) if half_cuda else None
        chunk = self.config.chunk_size
        n_zero = 0
        zero_tol = max(1e-5 * float(torch.linalg.vector_norm(b)), 1e-30)
        direct = (
            not half_cuda
            and out.dtype == torch.float32
            and out.device == dev
            and out.is_contiguous()
        )
        for s in range(0, n, chunk):
            x = X[s : s + chunk].to(dev, non_blocking=True)
            rows = out[s : s + x.shape[0]] if direct else None
            y = _affine(x, w, b, w_half, rows)
            if self.config.normalize:
                n_zero += _normalize_rows_(y, zero_tol, x)
            elif not torch.isfinite(y).all():
                raise ValueError(nonfinite_message(x.float(), offset=s))
            if not direct:
                out[s : s + y.shape[0]].copy_(y)
        if n_zero:
            logger.warning(
                "%d rows are zero after whitening (zero inputs, or inputs equal to the mean); "
                "left as zero vectors (score 0 against every candidate)",
                n_zero,
            )
        return out

    def fit_transform(self, X: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.fit(X).transform(X, **kwargs)

    def to(self, device) -> Whitener:
        self._state = self._st().to(device)
        return self

    # ----- io
    def save(self, path: str | os.PathLike) -> Path:
        """Write ``<path>/whitener.safetensors`` + ``<path>/whitener.json`` (atomic)."""
        st = self._st()
        path = Path(path)
        tensors = {"weight": st.weight, "bias": st.bias, "mean": st.mean}
        if st.eigenvalues is not None:
            tensors["eigenvalues"] = st.eigenvalues
        if self.directions is not None:
            tensors["directions"] = self.directions.float()
        tensors = {k: v.detach().cpu() for k, v in tensors.items()}
        atomic_save_safetensors(path / "whitener.safetensors", tensors, what="whitener")
        meta = {"config": self.config.to_dict(), "info": st.info, "format": FORMAT}
        atomic_write_json(path / "whitener.json", meta, what="whitener")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, device=None) -> Whitener:
        """Load a whitener written by :meth:`save`."""
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / "whitener.json").exists():
            raise FileNotFoundError(
                f"no whitener.json in {path}; pass the folder written by Whitener.save()"
            )
        meta = json.loads((path / "whitener.json").read_text())
        tensors = load_file(str(path / "whitener.safetensors"), device=str(device or "cpu"))
        w = cls(WhitenerConfig.from_dict(meta["config"]), directions=tensors.get("directions"))
        w.device = torch.device(device) if device is not None else None
        w._state = _State(
            tensors["weight"],
            tensors["bias"],
            tensors["mean"],
            tensors.get("eigenvalues"),
            meta.get("info", {}),
        )
        return w

    def __repr__(self) -> str:
        state = "fitted" if self.fitted else "unfitted"
        return f"Whitener(method={self.method!r}, alpha={self.config.alpha}, {state})"


def _affine(
    x: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor,
    w_half: torch.Tensor | None,
    rows: torch.Tensor | None,
) -> torch.Tensor:
    """``x @ w + b`` in float32 (into ``rows`` when given); fp16 tensor cores on CUDA."""
    if w_half is not None:
        try:
            return torch.mm(x, w_half, out_dtype=torch.float32).add_(b)
        except (RuntimeError, TypeError):
            pass
    xf = x if x.dtype == torch.float32 else x.float()
    return torch.addmm(b, xf, w) if rows is None else torch.addmm(b, xf, w, out=rows)


def _normalize_rows_(y: torch.Tensor, zero_tol: float, x: torch.Tensor) -> int:
    """Divide rows by their norms in place; rows at the mean (rounding noise around zero)
    stay zero. Returns how many rows were zero; raises on NaN / inf."""
    norms = torch.linalg.vector_norm(y, dim=1, keepdim=True)
    if not torch.isfinite(norms).all():  # NaN/inf anywhere in a row shows here
        raise ValueError(nonfinite_message(x.float()))
    zero = norms <= zero_tol
    n_zero = int(zero.sum())
    if n_zero:
        y.masked_fill_(zero, 0.0)
        norms.masked_fill_(zero, 1.0)
    y.div_(norms)
    return n_zero
