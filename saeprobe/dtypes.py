"""The one dtype table of saeprobe, and the policy that picks a compute dtype per device.

Names: ``fp32`` / ``float32`` / ``float``, ``fp16`` / ``float16`` / ``half``, ``bf16`` /
``bfloat16``, ``fp64`` / ``float64`` / ``double``; :func:`short_name` gives ``"fp32"``,
:func:`long_name` gives ``"float32"`` (the sae-lens spelling) and :func:`to_torch` the
``torch.dtype``.

Policy (:func:`resolve`): ``"auto"`` is bf16 only where the device runs it natively (CUDA
devices with bf16 support, CPUs with AVX-512-BF16 or AMX whose kernels torch is allowed to
use) and fp32 otherwise. An explicit ``bf16`` on a CPU without native bf16 is honoured with
a warning that states the cost measured on this machine (emulated bf16 matmuls are one to
two orders of magnitude slower than fp32 there).
"""

from __future__ import annotations

import functools
import logging
import os
import time
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

#: canonical short name -> torch dtype
DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "fp64": torch.float64,
}
_ALIASES = {
    "float32": "fp32",
    "float": "fp32",
    "float16": "fp16",
    "half": "fp16",
    "bfloat16": "bf16",
    "float64": "fp64",
    "double": "fp64",
}
_LONG = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "fp64": "float64"}
#: what :func:`resolve` accepts besides dtype names
POLICIES = ("auto",)

__all__ = [
    "DTYPES",
    "POLICIES",
    "cpu_has_native_bf16",
    "long_name",
    "native_bf16",
    "resolve",
    "short_name",
    "to_torch",
]


def short_name(dtype: str | torch.dtype, allowed: tuple[str, ...] | None = None) -> str:
    """Canonical short name (``"fp32"``, ``"bf16"``, ...) of a name or ``torch.dtype``.

    Parameters
    ----------
    allowed : tuple of short names, optional
        Restrict the accepted dtypes (e.g. a store keeps fp16 / bf16 / fp32 only).
    """
    if isinstance(dtype, torch.dtype):
        key = next((k for k, v in DTYPES.items() if v == dtype), str(dtype))
    else:
        key = str(dtype).strip().lower().removeprefix("torch.")
        key = _ALIASES.get(key, key)
    choices = allowed or tuple(DTYPES)
    if key not in choices:
        names = ", ".join(_LONG[c] for c in choices)
        raise ValueError(f"unsupported dtype {dtype!r}; use one of {names}")
    return key


def long_name(dtype: str | torch.dtype) -> str:
    """``"float32"``-style name (the spelling of sae-lens configs)."""
    return _LONG[short_name(dtype)]


def to_torch(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """The ``torch.dtype`` of a name (``None`` passes through)."""
    if dtype is None:
        return None
    return DTYPES[short_name(dtype)]


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        key = line.split(":", 1)[0].strip().lower()
        if key in ("flags", "features"):
            return set(line.split(":", 1)[1].split())
    return set()


#: environment override of the CPU bf16 detection: "1" (native) or "0" (not)
ENV_CPU_BF16 = "SAEPROBE_CPU_BF16"


def cpu_has_native_bf16() -> bool:
    """Whether torch's CPU kernels run bf16 natively here.

    True when the CPU reports AVX-512-BF16 or AMX-BF16 (x86) or BF16 (Arm) and neither
    ``ATEN_CPU_CAPABILITY`` nor oneDNN's ISA cap (``ONEDNN_MAX_CPU_ISA``) hold torch below
    AVX-512. ``SAEPROBE_CPU_BF16=0`` / ``=1`` overrides the detection (the test suite pins 0,
    so results do not depend on the machine).
    """
    forced = os.environ.get(ENV_CPU_BF16, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return _detect_cpu_bf16()


@functools.lru_cache(maxsize=1)
def _detect_cpu_bf16() -> bool:
    flags = _cpu_flags()
    if not flags & {"avx512_bf16", "amx_bf16", "bf16"}:
        return False
    cap = os.environ.get("ATEN_CPU_CAPABILITY", "").strip().lower()
    if cap and not cap.startswith("avx512"):
        return False
    isa = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").lower()
    return not (isa and not (isa.startswith("avx512") or isa.startswith("amx") or isa == "all"))


def native_bf16(device: torch.device | str | None = None) -> bool:
    """Whether ``device`` (default: CPU) runs bf16 natively."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if dev.type == "cpu":
        return cpu_has_native_bf16()
    return dev.type in ("mps", "xpu")


@functools.lru_cache(maxsize=1)
def _measured_bf16_cost() -> str:
    """A 256^3 matmul in bf16 and fp32 on this CPU, timed once (for the warning text)."""
    a = torch.randn(256, 256)
    times = {}
    for dt in (torch.float32, torch.bfloat16):
        x = a.to(dt)
        x @ x
        t0 = time.perf_counter()
        for _ in range(3):
            x @ x
        times[dt] = (time.perf_counter() - t0) / 3
    ratio = times[torch.bfloat16] / max(times[torch.float32], 1e-9)
    return (
        f"measured here: a 256x256 matmul takes {1e3 * times[torch.bfloat16]:.2f} ms in bf16 vs "
        f"{1e3 * times[torch.float32]:.2f} ms in fp32 ({ratio:.0f}x)"
    )


def resolve(
    dtype: str | torch.dtype | None, device: torch.device | str | None = None, what: str = "compute"
) -> torch.dtype:
    """The dtype to run in on ``device``: ``"auto"`` / ``None`` apply the policy.

    Parameters
    ----------
    dtype : "auto" | None | name | torch.dtype
    device : the device the work runs on (default CPU)
    what : str
        Named in the warning (``"model"``, ``"autocast"``, ...).
    """
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dtype is None or (isinstance(dtype, str) and dtype.strip().lower() == "auto"):
        return torch.bfloat16 if native_bf16(dev) else torch.float32
    out = to_torch(dtype)
    if out == torch.bfloat16 and dev.type == "cpu" and not cpu_has_native_bf16():
        logger.warning(
            "%s dtype bf16 on a CPU without native bf16 (no AVX-512-BF16 / AMX) is emulated and "
            "much slower than fp32 (%s); use fp32 or 'auto'",
            what,
            _measured_bf16_cost(),
        )
    return out
