"""The collectives of data-parallel SAE training (no-ops in a single process).

Gradients are averaged with weights ``n_rank / n_global`` so a DDP step equals one process
taking the whole global batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

__all__ = [
    "all_reduce",
    "broadcast_",
    "gather_rows",
    "next_global_batch",
    "reduce_grads",
    "world",
]


def world() -> tuple[int, int]:
    """``(rank, world size)`` of the initialised process group (``(0, 1)`` without one)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over ranks, in place."""
    import torch.distributed as dist

    dist.all_reduce(t)
    return t


def broadcast_(tensors: Iterable[torch.Tensor], src: int = 0) -> None:
    """Overwrite ``tensors`` on every rank with those of rank ``src``."""
    import torch.distributed as dist

    with torch.no_grad():
        for t in tensors:
            dist.broadcast(t.data, src=src)


def gather_rows(x: torch.Tensor, world_size: int) -> torch.Tensor:
    """All ranks' rows of ``x [n_r, d]`` concatenated in rank order (sizes may differ)."""
    import torch.distributed as dist

    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(world_size)]
    dist.all_gather(sizes, n)
    m = int(max(int(s) for s in sizes))
    pad = torch.zeros(m, x.shape[1], dtype=x.dtype, device=x.device)
    pad[: x.shape[0]] = x
    parts = [torch.zeros_like(pad) for _ in range(world_size)]
    dist.all_gather(parts, pad)
    return torch.cat([p[: int(s)] for p, s in zip(parts, sizes, strict=True)])


def reduce_grads(params: Sequence[torch.nn.Parameter], weight: float) -> None:
    """Replace each ``p.grad`` by the sum over ranks of ``weight * p.grad`` (one flat
    all-reduce; a missing grad counts as zeros)."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads]) * weight
    all_reduce(flat)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


def next_global_batch(
    it, d_in: int, device: torch.device, world_size: int
) -> tuple[torch.Tensor | None, int, bool]:
    """This rank's next batch (on ``device``, float32), the global token count and whether any
    rank saw NaN / Inf; ``(None, 0, False)`` once any rank has run out of data."""
    x = next(it, None)
    if x is not None:
        if x.ndim != 2 or x.shape[1] != d_in:
            raise ValueError(
                f"dimension mismatch: a batch has shape {tuple(x.shape)} but the SAE expects "
                f"[B, {d_in}]; check the data source and d_in"
            )
        x = x.to(device, non_blocking=True).float()
    n = 0 if x is None else x.shape[0]
    bad = x is not None and n > 0 and not bool(torch.isfinite(x).all())
    if world_size > 1:
        dev = device if device.type == "cuda" else "cpu"
        flags = torch.tensor([int(x is not None), n, int(bad)], dtype=torch.long, device=dev)
        all_reduce(flags)
        if int(flags[0]) < world_size:
            return None, 0, False
        return x, int(flags[1]), bool(flags[2])
    if x is None:
        return None, 0, False
    return x, n, bad
