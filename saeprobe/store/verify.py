"""``verify_store``: check every shard of a store against its manifest."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .format import CorruptShardError, StoreError
from .manifest import load_manifest
from .reader import ActivationStore
from .shards import shard_damage

__all__ = ["StoreReport", "verify_store"]


@dataclass
class StoreReport:
    """Outcome of :func:`verify_store`.

    Attributes
    ----------
    path : Path
    n_shards, n_tokens : int
    finished : bool
    checksummed : bool
        Whether the manifest carries content hashes (store format v2).
    damaged : list[tuple[str, str]]
        ``(shard file, what is wrong)`` for each bad shard.
    """

    path: Path
    n_shards: int
    n_tokens: int
    finished: bool
    checksummed: bool
    damaged: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.damaged

    def summary(self) -> str:
        """Human-readable lines: the verdict, each bad shard, and the repair."""
        state = "finished" if self.finished else "unfinished (resume the capture)"
        head = f"{self.path}: {self.n_shards} shards, {self.n_tokens:,} tokens, {state}"
        if not self.checksummed:
            head += "; no content checksums (store format v1): sizes and readability checked"
        if self.ok:
            return head + "; all shards intact"
        lines = [head, f"{len(self.damaged)} damaged shard(s):"]
        lines += [f"  {name}: {why}" for name, why in self.damaged]
        lines.append(
            "repair: delete the damaged shard files and rerun the same capture command; it "
            "re-creates exactly these shards"
        )
        return "\n".join(lines)


def verify_store(path: str | os.PathLike) -> StoreReport:
    """Check each listed shard: present, of the listed size, matching its content hash,
    readable, with the listed shapes.

    Raises :class:`StoreError` when ``path`` is not a store.
    """
    path = Path(path)
    m = load_manifest(path, allow_incomplete=True)
    store = ActivationStore(path, allow_incomplete=True, verify=False)
    report = StoreReport(
        path=path,
        n_shards=len(store.shards),
        n_tokens=store.n_tokens,
        finished=bool(m.get("finished")),
        checksummed=all("checksum" in s for s in store.shards),
    )
    for i, info in enumerate(store.shards):
        why = shard_damage(path, info)
        if why is None:
            try:
                store.read_shard(i)
            except (CorruptShardError, StoreError) as exc:
                why = str(exc).split(";")[0]
        if why is not None:
            report.damaged.append((info["file"], why))
    return report
