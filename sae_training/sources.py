"""Data sources for SAE training: a store, any tensor iterator, or a model on the fly.

Every source yields, for one epoch, *this rank's shard* of each global batch of
``batch_size`` tokens, so that ``world_size`` ranks together see the same data as
one process (see :class:`sae_training.trainer.Trainer`). Sources are deterministic
given ``(seed, epoch)``, which makes resume exact: ``start`` skips the first
global batches of the epoch.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from saeprobe.capture import iter_captures, resolve_points
from saeprobe.store import ActivationStore

logger = logging.getLogger(__name__)

__all__ = [
    "ActivationSource",
    "CaptureSource",
    "IterableSource",
    "StoreSource",
    "TensorSource",
    "as_source",
    "shard_rows",
]


def shard_rows(x: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Rank ``rank``'s contiguous share of the rows of a global batch ``x [B, ...]``."""
    if world_size == 1:
        return x
    return torch.tensor_split(x, world_size)[rank]


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed((int(seed) * 1_000_003 + int(epoch) * 7919 + 12345) % (2**63 - 1))
    return g


class ActivationSource:
    """Base class / protocol of training data.

    Attributes
    ----------
    d : int | None
        Activation width (``None`` if unknown until the first batch).
    resumable : bool
        ``batches(..., start=s)`` reproduces the stream from global batch ``s``.
    """

    d: int | None = None
    resumable: bool = True

    def n_tokens(self) -> int | None:
        """Tokens per epoch (all ranks together), ``None`` if unknown."""
        return None

    def probe_d(self) -> int | None:
        """The activation width, looking at the first batch if needed."""
        return self.d

    def n_batches(self, batch_size: int) -> int | None:
        n = self.n_tokens()
        return None if n is None else -(-n // batch_size)

    def batches(
        self, epoch: int, batch_size: int, *, rank: int = 0, world_size: int = 1, start: int = 0
    ) -> Iterator[torch.Tensor]:
        """This rank's ``[~batch_size / world_size, d]`` share of each global batch."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Metadata saved with the SAE (kind, path, fingerprint, model, hook point)."""
        return {"kind": type(self).__name__}


class TensorSource(ActivationSource):
    """An in-memory ``[N, d]`` tensor, reshuffled each epoch with a seeded generator."""

    def __init__(self, x: torch.Tensor, *, shuffle: bool = True, seed: int = 0):
        if x.ndim != 2:
            raise ValueError(f"TensorSource needs a [N, d] tensor, got shape {tuple(x.shape)}")
        self.x = x
        self.d = int(x.shape[1])
        self.shuffle = shuffle
        self.seed = seed

    def n_tokens(self) -> int:
        return int(self.x.shape[0])

    def batches(self, epoch, batch_size, *, rank=0, world_size=1, start=0):
        n = self.x.shape[0]
        order = (
            torch.randperm(n, generator=_epoch_generator(self.seed, epoch))
            if self.shuffle
            else torch.arange(n)
        )
        for lo in range(start * batch_size, n, batch_size):
            idx = shard_rows(order[lo : lo + batch_size], rank, world_size)
            yield self.x[idx]

    def describe(self):
        return {"kind": "tensor", "n_tokens": self.n_tokens(), "d": self.d}


class IterableSource(ActivationSource):
    """Any iterable of global ``[B, d]`` batches, or a callable ``epoch -> iterable``.

    A plain iterator can be consumed once: later epochs are empty (the run ends).
    Resuming skips (and so re-reads) the first ``start`` batches, which is exact only
    when the callable returns the same stream for the same epoch. ``batch_size`` is
    ignored: batches are used as they come.
    """

    def __init__(
        self,
        data: Iterable[torch.Tensor] | Callable[[int], Iterable[torch.Tensor]],
        *,
        d: int | None = None,
        n_tokens: int | None = None,
    ):
        self.data = data
        self.d = d
        self._n_tokens = n_tokens
        self._used = False
        self.resumable = callable(data) or isinstance(data, Sequence)

    def n_tokens(self):
        return self._n_tokens

    def probe_d(self):
        if self.d is None:
            if isinstance(self.data, Sequence):
                first = self.data[0] if len(self.data) else None
            else:  # keep the peeked batch for the first epoch
                it = self._stream(0)
                if it is None:
                    return None
                first = next(it, None)
                self._peeked = (first, it)
            if first is not None and torch.is_tensor(first) and first.ndim == 2:
                self.d = int(first.shape[1])
        return self.d

    def _stream(self, epoch):
        if callable(self.data):
            return iter(self.data(epoch))
        if isinstance(self.data, Sequence) or not self._used:
            self._used = not isinstance(self.data, Sequence)
            return iter(self.data)
        return None

    def batches(self, epoch, batch_size, *, rank=0, world_size=1, start=0):
        peeked, self._peeked = getattr(self, "_peeked", None), None
        if peeked is not None and epoch == 0:
            first, rest = peeked
            stream = itertools.chain([] if first is None else [first], rest)
        else:
            stream = self._stream(epoch)
            if stream is None:
                return
        for x in itertools.islice(stream, start, None):
            if not torch.is_tensor(x) or x.ndim != 2:
                raise ValueError(
                    f"an IterableSource must yield [B, d] tensors, got "
                    f"{type(x).__name__} {tuple(getattr(x, 'shape', ()))}"
                )
            yield shard_rows(x, rank, world_size)

    def describe(self):
        return {"kind": "iterable", "d": self.d}


class StoreSource(ActivationSource):
    """An :class:`saeprobe.store.ActivationStore`, shuffled per epoch.

    Parameters
    ----------
    store : str | Path | ActivationStore
    drop_system : bool
        Remove SYSTEM tokens (the paper masks the system prompt out of SAE training).
    """

    def __init__(
        self, store: Any, *, drop_system: bool = True, shuffle: bool = True, seed: int = 0
    ):
        if isinstance(store, (str, Path)):
            path = Path(store)
            if not path.exists():
                raise FileNotFoundError(
                    f"activation store {path} not found; create it with `saeprobe capture --out {path}`"
                )
            store = ActivationStore(path)
        self.store = store
        self.d = int(store.d)
        self.drop_system = drop_system
        self.shuffle = shuffle
        self.seed = seed

    def _exclude(self) -> list[str] | None:
        return ["system"] if self.drop_system else None

    def n_tokens(self):
        return int(self.store.count_tokens(exclude=self._exclude()))

    def batches(self, epoch, batch_size, *, rank=0, world_size=1, start=0):
        # The store splits each epoch's shuffled token stream into one contiguous range per
        # rank; a rank's local batch is its share of the global batch.
        local = max(1, batch_size // world_size)
        for b in self.store.batches(
            local,
            shuffle=self.shuffle,
            seed=self.seed,
            epoch=epoch,
            rank=rank,
            world_size=world_size,
            fields=("acts",),
            exclude=self._exclude(),
            start_batch=start,
        ):
            yield b.acts

    def describe(self):
        info: dict[str, Any] = {"kind": "store", "d": self.d, "n_tokens": self.n_tokens()}
        path = getattr(self.store, "path", None)
        if path is not None:
            info["path"] = str(path)
        meta = getattr(self.store, "metadata", None)
        if isinstance(meta, dict):
            for key in ("model", "hook_point", "layer"):
                if key in meta:
                    info[key] = meta[key]
        info["dtype"] = getattr(self.store, "dtype_name", None)
        info["fingerprint"] = getattr(self.store, "fingerprint", None) or None
        info["drop_system"] = self.drop_system
        return info


class CaptureSource(ActivationSource):
    """Activations captured from a model on the fly into an in-memory shuffle buffer.

    Each rank captures its share of ``items`` (``items[rank::world_size]``) and yields
    local batches of ``batch_size // world_size`` tokens drawn from a buffer of about
    ``buffer_tokens`` tokens (refilled when half empty), so nothing touches the disk.

    Parameters
    ----------
    adapter : ModelAdapter
    items : sequence of Item
        Re-iterated each epoch.
    hook_point : str
        E.g. ``"final_norm"`` (the paper's) or ``"resid_post.L"``.
    capture_batch_size : int
        Items per model forward pass.
    """

    def __init__(
        self,
        adapter: Any,
        items: Sequence[Any],
        hook_point: str = "final_norm",
        *,
        capture_batch_size: int = 8,
        buffer_tokens: int = 262_144,
        drop_system: bool = True,
        seed: int = 0,
        dtype: torch.dtype | None = torch.float32,
    ):
        self.adapter = adapter
        self.items = items
        self.hook_point = resolve_points(adapter, hook_point)[0].name
        self.capture_batch_size = capture_batch_size
        self.buffer_tokens = buffer_tokens
        self.drop_system = drop_system
        self.seed = seed
        self.dtype = dtype
        self.d = int(adapter.d_model)

    def batches(self, epoch, batch_size, *, rank=0, world_size=1, start=0):
        local = max(1, batch_size // world_size)
        g = _epoch_generator(self.seed + rank, epoch)
        items = self.items[rank::world_size] if world_size > 1 else self.items
        indices = range(rank, len(self.items), world_size) if world_size > 1 else None
        buf: list[torch.Tensor] = []
        n_buf = 0

        def drain(final: bool) -> Iterator[torch.Tensor]:
            nonlocal buf, n_buf
            allx = torch.cat(buf) if len(buf) > 1 else buf[0]
            allx = allx[torch.randperm(allx.shape[0], generator=g)]
            keep = 0 if final else max(0, min(self.buffer_tokens // 2, allx.shape[0] - local))
            n_out = (allx.shape[0] - keep) // local * local if not final else allx.shape[0]
            for lo in range(0, n_out, local):
                yield allx[lo : lo + local]
            rest = allx[n_out:]
            buf, n_buf = ([rest] if rest.shape[0] else []), int(rest.shape[0])

        def stream() -> Iterator[torch.Tensor]:
            nonlocal buf, n_buf
            for cb in iter_captures(
                self.adapter,
                items,
                [self.hook_point],
                batch_size=self.capture_batch_size,
                pools=(),
                skip_system=self.drop_system,
                dtype=self.dtype,
                indices=indices,
            ):
                acts = cb.acts[self.hook_point]
                if acts.shape[0]:
                    buf.append(acts)
                    n_buf += acts.shape[0]
                if n_buf >= self.buffer_tokens:
                    yield from drain(final=False)
            if n_buf:
                yield from drain(final=True)

        if start:
            logger.warning(
                "resuming an on-the-fly capture: re-running the model over %d skipped batches",
                start,
            )
        yield from itertools.islice(stream(), start, None)

    def describe(self):
        return {
            "kind": "capture",
            "model": getattr(self.adapter, "name_or_path", None),
            "hook_point": self.hook_point,
            "n_items": len(self.items),
            "d": self.d,
        }


def as_source(data: Any, *, cfg: Any = None) -> ActivationSource:
    """Wrap ``data`` (a source, a store path/object, a ``[N, d]`` tensor, an iterable or a
    callable ``epoch -> iterable`` of ``[B, d]`` tensors) as an :class:`ActivationSource`."""
    seed = getattr(cfg, "seed", 0)
    shuffle = getattr(cfg, "shuffle", True)
    if isinstance(data, ActivationSource):
        return data
    if isinstance(data, (str, Path)) or hasattr(data, "manifest"):
        drop = getattr(cfg, "drop_system", True)
        return StoreSource(data, drop_system=drop, shuffle=shuffle, seed=seed)
    if torch.is_tensor(data):
        return TensorSource(data, shuffle=shuffle, seed=seed)
    if callable(data) or isinstance(data, Iterable):
        return IterableSource(data)
    raise TypeError(
        f"cannot train on a {type(data).__name__}; pass a store path, a [N, d] tensor, an "
        "iterable of [B, d] tensors or an ActivationSource"
    )
