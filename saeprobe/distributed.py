"""Rank / world-size helpers for torchrun, accelerate and SLURM launches.

Everything here works without ``torch.distributed`` being initialised: a single
process is rank 0 of a world of size 1, and :func:`barrier` is then a no-op.
"""

from __future__ import annotations

import logging
import os
from typing import NamedTuple

logger = logging.getLogger(__name__)


class DistInfo(NamedTuple):
    """Where this process sits in a distributed launch."""

    rank: int
    world_size: int
    local_rank: int


def _env_int(names: tuple[str, ...], default: int) -> int:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError as exc:
                raise ValueError(
                    f"environment variable {name}={value!r} is not an integer; fix or unset it"
                ) from exc
    return default


def dist_info() -> DistInfo:
    """Rank, world size and local rank of this process.

    Uses the initialised ``torch.distributed`` process group when there is one,
    else the launcher's environment: ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``
    (torchrun, accelerate, deepspeed), then ``SLURM_PROCID`` / ``SLURM_NTASKS`` /
    ``SLURM_LOCALID``; without any of them, ``(0, 1, 0)``.
    """
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            local = _env_int(("LOCAL_RANK", "SLURM_LOCALID"), 0)
            return DistInfo(dist.get_rank(), dist.get_world_size(), local)
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    if "RANK" in os.environ or "WORLD_SIZE" in os.environ:
        rank = _env_int(("RANK",), 0)
        world = _env_int(("WORLD_SIZE",), 1)
        local = _env_int(("LOCAL_RANK",), rank)
    else:
        rank = _env_int(("SLURM_PROCID",), 0)
        world = _env_int(("SLURM_NTASKS",), 1)
        local = _env_int(("SLURM_LOCALID",), rank)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(
            f"inconsistent launch environment: rank {rank} with world size {world}; "
            "check RANK / WORLD_SIZE (or SLURM_PROCID / SLURM_NTASKS)"
        )
    return DistInfo(rank, world, local)


def is_main() -> bool:
    """True on global rank 0 (and in a single process)."""
    return dist_info().rank == 0


def is_initialized() -> bool:
    """True when a ``torch.distributed`` process group is initialised."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    """Wait for all ranks; a no-op unless ``torch.distributed`` is initialised."""
    if is_initialized():
        import torch.distributed as dist

        dist.barrier()


def init_distributed(backend: str | None = None) -> DistInfo:
    """Initialise ``torch.distributed`` from the launcher's environment.

    Only when ``WORLD_SIZE > 1`` (otherwise nothing happens) and only once.
    ``backend=None`` picks ``nccl`` when CUDA is available (and sets the CUDA
    device to ``LOCAL_RANK``) and ``gloo`` otherwise. ``MASTER_ADDR`` /
    ``MASTER_PORT`` default to ``127.0.0.1:29500`` when unset (single node).

    Returns
    -------
    DistInfo
    """
    info = dist_info()
    if info.world_size <= 1 or is_initialized():
        return info
    import torch
    import torch.distributed as dist

    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(info.local_rank)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")
    dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size)
    logger.info(
        "initialised torch.distributed (%s): rank %d of %d", backend, info.rank, info.world_size
    )
    return info


def shard_indices(n: int, rank: int, world_size: int, mode: str = "contiguous") -> range:
    """Indices of ``range(n)`` that belong to ``rank``.

    Parameters
    ----------
    n : int
        Number of elements.
    rank, world_size : int
        This rank and the number of ranks.
    mode : {"contiguous", "round_robin"}
        ``contiguous``: balanced consecutive blocks (the first ``n % world_size``
        ranks get one extra element); ``round_robin``: ``rank, rank + world_size, ...``.

    Returns
    -------
    range
        Disjoint across ranks; their union is ``range(n)``.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is out of range for world size {world_size}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if mode == "round_robin":
        return range(rank, n, world_size)
    if mode != "contiguous":
        raise ValueError(f"unknown shard mode {mode!r}; use 'contiguous' or 'round_robin'")
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))
