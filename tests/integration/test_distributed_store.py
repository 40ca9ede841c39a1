"""Distributed helpers and a real 2-process (gloo) capture-to-store-to-batches run."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
from pathlib import Path

import pytest

from saeprobe import distributed as dist_mod
from saeprobe.distributed import dist_info, shard_indices

_ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")


@pytest.fixture()
def clean_env(monkeypatch):
    for k in _ENV_KEYS:
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


def test_dist_info_from_env(clean_env):
    assert dist_info() == (0, 1, 0) and dist_mod.is_main()
    clean_env.setenv("SLURM_PROCID", "3")
    clean_env.setenv("SLURM_NTASKS", "4")
    clean_env.setenv("SLURM_LOCALID", "1")
    assert dist_info() == (3, 4, 1) and not dist_mod.is_main()
    clean_env.setenv("RANK", "1")  # torchrun variables win over SLURM
    clean_env.setenv("WORLD_SIZE", "2")
    clean_env.setenv("LOCAL_RANK", "0")
    assert dist_info() == (1, 2, 0)
    clean_env.setenv("RANK", "2")
    with pytest.raises(ValueError, match="rank 2 with world size 2"):
        dist_info()
    clean_env.setenv("RANK", "x")
    with pytest.raises(ValueError, match="RANK='x'"):
        dist_info()


def test_barrier_and_init_are_noops_in_one_process(clean_env):
    dist_mod.barrier()  # not initialised: returns at once
    assert dist_mod.init_distributed() == (0, 1, 0)
    assert not dist_mod.is_initialized()


@pytest.mark.parametrize("mode", ["contiguous", "round_robin"])
def test_shard_indices(mode):
    for n in (0, 1, 7, 10):
        for ws in (1, 2, 3, 4):
            parts = [list(shard_indices(n, r, ws, mode)) for r in range(ws)]
            flat = sorted(i for p in parts for i in p)
            assert flat == list(range(n))  # disjoint and complete
            sizes = [len(p) for p in parts]
            assert max(sizes) - min(sizes) <= 1
            if mode == "contiguous":
                assert all(p == list(range(p[0], p[0] + len(p))) for p in parts if p)
    assert list(shard_indices(10, 1, 3, "round_robin")) == [1, 4, 7]
    assert list(shard_indices(10, 0, 3)) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="out of range"):
        shard_indices(5, 2, 2)
    with pytest.raises(ValueError, match="unknown shard mode"):
        shard_indices(5, 0, 2, "random")


def _rank_main(rank, world_size, port, path, out):
    """One rank (forked child): write its samples, merge, read its batches, gather."""
    import torch
    import torch.distributed as dist

    from saeprobe.distributed import barrier, init_distributed, is_main
    from saeprobe.store import ActivationStore, ActivationStoreWriter, merge_manifests
    from tests.helpers import N_SAMPLES, SHARD_TOKENS, D, add_samples

    torch.set_num_threads(1)  # no OpenMP regions in a forked child
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    for k in ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"):
        os.environ.pop(k, None)
    info = init_distributed()
    assert dist.is_initialized() and dist.get_backend() == "gloo"
    assert info.rank == rank and info.world_size == world_size
    w = ActivationStoreWriter(
        path, d=D, dtype="bf16", fingerprint="fp", shard_tokens=SHARD_TOKENS, rank=rank,
        world_size=world_size,
    )  # fmt: skip
    add_samples(w, shard_indices(N_SAMPLES, rank, world_size, "round_robin"), per_call=3)
    w.close()
    barrier()
    if is_main():
        merge_manifests(path)
    barrier()
    st = ActivationStore(path)
    keys = []
    for b in st.batches(
        16, seed=7, rank=rank, world_size=world_size, fields=("sample_id", "position")
    ):
        keys += (b.sample_id * 100 + b.position.long()).tolist()
    gathered = [None] * world_size
    dist.all_gather_object(gathered, keys)
    if is_main():
        Path(out).write_text(json.dumps({"keys": gathered, "n_tokens": st.n_tokens}))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.integration
def test_two_process_gloo_store(tmp_path):
    from tests.helpers import reference

    path, out = tmp_path / "store", tmp_path / "out.json"
    ctx = multiprocessing.get_context("fork")  # forked: no second torch import
    port = _free_port()
    procs = [ctx.Process(target=_rank_main, args=(r, 2, port, path, out)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        if p.is_alive():
            p.kill()
    assert [p.exitcode for p in procs] == [0, 0]
    assert sorted(f.name for f in path.glob("manifest*.json")) == [
        "manifest.json",
        "manifest.rank0.json",
        "manifest.rank1.json",
    ]
    res = json.loads(out.read_text())
    k0, k1 = res["keys"]
    ref = reference()
    expected = sorted((ref["sample_id"] * 100 + ref["position"].long()).tolist())
    assert res["n_tokens"] == len(expected)
    assert not set(k0) & set(k1) and sorted(k0 + k1) == expected
    assert abs(len(k0) - len(k1)) <= 1
