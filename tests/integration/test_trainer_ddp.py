"""2-process gloo DDP training equals one process on the same global batches."""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp

from sae_training import TrainConfig
from sae_training.checkpoint import list_checkpoints, load_checkpoint
from sae_training.sources import TensorSource
from sae_training.trainer import train
from tests.helpers import topk_run_kwargs

pytestmark = pytest.mark.usefixtures("one_thread")

# default recipe minus AuxK (AuxK normalises by each shard's residual variance, which is not
# a mean over tokens): b_dec from the (gathered) first global batch, warm-up + decay,
# decoder bias, dead-latent counters from the union of the ranks' firing latents.
CFG = topk_run_kwargs(
    width=48, auxk_coeff=0.0, warmup_steps=3, log_interval=3, ckpt_interval=100, seed=5
)


# fork skips re-importing torch in the workers (seconds on a loaded machine); the workers
# set one intra-op thread before any torch op, so no OpenMP pool is used after the fork
START = "fork" if "fork" in mp.get_all_start_methods() else "spawn"


def _data() -> torch.Tensor:
    g = torch.Generator().manual_seed(2)
    D = torch.randn(64, 12, generator=g)
    return (torch.rand(400, 64, generator=g).pow(8) * 3) @ D  # 400 % 64 != 0: short last batch


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        train(TrainConfig(out_dir=out_dir, **CFG), TensorSource(_data(), seed=1))
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_equals_single_process(tmp_path):
    ddp_dir = tmp_path / "ddp"
    mp.start_processes(
        _worker,
        args=(2, str(tmp_path / "rdzv"), str(ddp_dir)),
        nprocs=2,
        join=True,
        start_method=START,
    )
    single = train(TrainConfig(out_dir=str(tmp_path / "one"), **CFG), TensorSource(_data(), seed=1))
    assert single.step == 2 * 7  # ceil(400 / 64) batches per epoch

    from saeprobe.sae import load_sae

    ddp = load_sae(ddp_dir)  # written by rank 0 only
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        torch.testing.assert_close(
            getattr(ddp, name), getattr(single.sae, name).detach(), rtol=1e-4, atol=1e-5, msg=name
        )
    # and they really trained (not equal to the untouched init)
    from sae_training import apply_recipe
    from sae_training.trainer import build_sae

    init = build_sae(apply_recipe(TrainConfig(**CFG)), 12)
    assert (ddp.W_dec - init.W_dec.detach()).abs().max() > 1e-3
    ck_ddp = load_checkpoint(list_checkpoints(ddp_dir)[-1][1])
    ck_one = load_checkpoint(list_checkpoints(tmp_path / "one")[-1][1])
    assert ck_ddp["step"] == ck_one["step"] and ck_ddp["tokens"] == ck_one["tokens"] == 800
    assert torch.equal(ck_ddp["dead"]["since"], ck_one["dead"]["since"])
    # rank 0 logged metrics over both ranks' tokens: same FVU as the single process
    import json

    rec_ddp = [json.loads(s) for s in (ddp_dir / "metrics.jsonl").read_text().splitlines()]
    rec_one = [json.loads(s) for s in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rec_ddp] == [r["step"] for r in rec_one]
    for a, b in zip(rec_ddp, rec_one, strict=True):
        if "fvu" in a:
            assert a["n_tokens"] == b["n_tokens"]
            assert a["fvu"] == pytest.approx(b["fvu"], rel=1e-4)
