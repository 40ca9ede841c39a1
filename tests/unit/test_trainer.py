"""SAE trainer: configs, recipes, metrics, all architectures on planted data, NaN handling,
dimension checks and training from a real activation store."""

from __future__ import annotations

import json
import math

import pytest
import torch

from sae_training import RECIPES, TrainConfig, apply_recipe
from sae_training.metrics import DeadLatentTracker, ReconstructionStats, fired_mask
from sae_training.sources import IterableSource, StoreSource, TensorSource, shard_rows
from sae_training.trainer import BadDataError, LRSchedule, Trainer, train

# float tolerances: also run on the AVX2 code path; 2 shared cores: one intra-op thread is
# several times faster than two here
pytestmark = [pytest.mark.numerics, pytest.mark.usefixtures("one_thread")]


def planted(n: int, d: int = 32, m: int = 128, active: int = 4, seed: int = 0, dict_seed: int = 0):
    """``x = z @ D``: ``m`` unit-norm atoms, ``active`` of them per row with values in [0.5, 2.5]."""
    gd = torch.Generator().manual_seed(dict_seed)
    D = torch.randn(m, d, generator=gd)
    D = D / D.norm(dim=1, keepdim=True)
    g = torch.Generator().manual_seed(1000 + seed)
    idx = torch.rand(n, m, generator=g).argsort(1)[:, :active]
    vals = torch.rand(n, active, generator=g) * 2 + 0.5
    z = torch.zeros(n, m).scatter_(1, idx, vals)
    return z @ D, D


def _paper(**overrides) -> TrainConfig:
    """The paper's recipe on a small run (48 latents, k=4, 32-token batches, one epoch, no
    progress bar); ``overrides`` win."""
    base = dict(recipe="paper", width=48, k=4, batch_size=32, epochs=1, progress=False)
    return TrainConfig(**{**base, **overrides})


def _topk(**overrides) -> TrainConfig:
    """A small Top-K run (k=4, lr 3e-3, 128-token batches, two epochs, two warm-up steps,
    no progress bar); ``overrides`` win."""
    base = dict(arch="topk", k=4, lr=3e-3, batch_size=128, epochs=2, warmup_steps=2, progress=False)
    return TrainConfig(**{**base, **overrides})


def fvu64(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    x, x_hat = x.double(), x_hat.double()
    return float((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


# ----------------------------------------------------------------------------- config


def test_config_json_round_trip_and_errors(tmp_path):
    cfg = TrainConfig(
        arch="jumprelu",
        d_in=48,
        width=512,
        k=8,
        recipe="paper",
        lr=1e-3,
        batch_size=128,
        total_tokens=10_000,
        adam_betas=(0.8, 0.95),
        sae_kwargs={"jumprelu_bandwidth": 0.05},
        wandb_project="p",
    )
    path = tmp_path / "cfg.json"
    cfg.to_json(path)
    back = TrainConfig.from_json(path)
    assert back == cfg
    assert TrainConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError, match="unknown TrainConfig keys"):
        TrainConfig.from_dict({"arch": "topk", "widht": 3})
    with pytest.raises(ValueError, match="unknown arch"):
        TrainConfig(arch="no_such_arch")
    with pytest.raises(ValueError, match="k=64 exceeds width"):
        TrainConfig(width=32, k=64)


def test_recipes_fill_only_unset_fields():
    paper = apply_recipe(TrainConfig(recipe="paper"))
    assert (paper.lr, paper.batch_size, paper.grad_clip, paper.l1_coeff) == (8e-4, 4096, 1.0, 0.01)
    assert (paper.epochs, paper.auxk_coeff, paper.warmup_steps, paper.k) == (5, 0.0, 0, 50)
    assert paper.decoder_bias is False and paper.init_from_data is False
    default = apply_recipe(TrainConfig(width=2**16, lr=None))
    assert math.isclose(default.lr, 2e-4 / 2)  # 1/sqrt(width) scaling from 2e-4 at 16k
    assert default.auxk_coeff == 1 / 32 and default.init_from_data and default.warmup_steps > 0
    mine = apply_recipe(TrainConfig(recipe="paper", lr=1e-2, total_tokens=1000))
    assert mine.lr == 1e-2 and mine.epochs is None and mine.total_tokens == 1000
    assert set(RECIPES) == {"paper", "default"}
    for name in ("qwen2-vl-7b", "qwen3-vl-8b", "paligemma2-3b", "chameleon-7b"):
        from pathlib import Path

        import sae_training

        f = Path(sae_training.__file__).parent / "configs" / f"{name}.json"
        c = apply_recipe(TrainConfig.from_json(f))
        c.validate()
        assert c.k == 50 and c.recipe == "paper" and c.lr == 8e-4
    assert TrainConfig.from_json(f).d_in == 4096  # chameleon-7b


def test_lr_schedule_closed_form():
    s = LRSchedule(1.0, warmup=4, decay_steps=10, total=20, shape="linear")
    assert [s(i) for i in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert s(9) == 1.0 and s(10) == 1.0 and s(15) == 0.5 and s(19) == pytest.approx(0.1)
    c = LRSchedule(2.0, decay_steps=10, total=20, shape="cosine")
    assert c(15) == pytest.approx(2.0 * 0.5 * (1 - math.cos(math.pi * 0.5)))
    assert LRSchedule(1.0, warmup=0, decay_steps=5, total=None)(100) == 1.0


# ----------------------------------------------------------------------------- metrics


def test_reconstruction_stats_match_float64_definitions():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(300, 7, generator=g) * torch.arange(1, 8) + torch.arange(7) * 3.0
    x_hat = x + 0.3 * torch.randn(300, 7, generator=g)
    st = ReconstructionStats(7)
    for lo in range(0, 300, 128):  # uneven batches
        st.update(
            x[lo : lo + 128], x_hat[lo : lo + 128], l0_per_token_sum=2.0 * x[lo : lo + 128].shape[0]
        )
    m = st.compute()
    xd, hd = x.double(), x_hat.double()
    sse = (xd - hd).pow(2).sum()
    assert m["mse"] == pytest.approx(float(sse / xd.numel()), rel=1e-6)
    assert m["fvu"] == pytest.approx(float(sse / (xd - xd.mean(0)).pow(2).sum()), rel=1e-6)
    assert m["r2"] == pytest.approx(float(1 - sse / (xd - xd.mean()).pow(2).sum()), rel=1e-6)
    assert m["l0"] == pytest.approx(2.0) and m["n_tokens"] == 300
    # per-dimension and scalar-mean definitions really differ on data with shifted means
    assert abs((1 - m["fvu"]) - m["r2"]) > 1e-3


def test_dead_latent_tracker_and_fired_mask():
    values = torch.tensor([[1.0, 0.0], [2.0, 3.0]])
    indices = torch.tensor([[0, 5], [2, 0]])
    fired = fired_mask(values, indices, 6)
    assert fired.tolist() == [True, False, True, False, False, False]  # index 5 had value 0
    assert fired_mask(torch.tensor([[0.0, 1.0, 0.0]]), None, 3).tolist() == [False, True, False]
    t = DeadLatentTracker(6, window=100)
    t.update(fired, 60)
    assert t.dead_fraction() == 0.0
    t.update(torch.tensor([True] + [False] * 5), 50)
    assert t.since.tolist() == [0, 110, 50, 110, 110, 110]
    assert t.dead_mask.tolist() == [False, True, False, True, True, True]
    assert shard_rows(torch.arange(5)[:, None], 1, 2).flatten().tolist() == [3, 4]


# ----------------------------------------------------------------------------- training

ARCH_SETTINGS = {
    "topk": {"lr": 3e-3, "epochs": 6, "fast": False},  # dense path is faster at this toy size
    "batchtopk": {"lr": 5e-3, "epochs": 10},
    "jumprelu": {"lr": 3e-3, "epochs": 8, "l1_coeff": 3.0},
    "standard": {"lr": 3e-3, "epochs": 8, "l1_coeff": 5.0},
}


@pytest.mark.parametrize("arch", list(ARCH_SETTINGS))
def test_arch_recovers_planted_dictionary(arch):
    x, D = planted(4096)
    held, _ = planted(2048, seed=1)
    cfg = TrainConfig(
        arch=arch,
        width=256,
        k=4,
        batch_size=128,
        warmup_steps=20,
        log_interval=8,
        dead_window_tokens=2048,
        progress=False,
        **ARCH_SETTINGS[arch],
    )
    res = train(cfg, x)
    sae = res.sae.eval()
    with torch.no_grad():
        x_hat = sae(held)
    fvu = fvu64(held, x_hat)
    assert fvu < 0.2, f"{arch}: held-out FVU {fvu:.3f}"
    W = sae.dictionary.detach()
    cos = (D @ (W / W.norm(dim=1, keepdim=True)).T).max(1).values
    assert float((cos > 0.9).float().mean()) >= 0.8, f"{arch}: planted atoms recovered {cos}"
    # logged metrics are consistent with an independent evaluation of the same SAE
    assert res.step == 4096 // 128 * cfg.epochs and res.tokens == 4096 * cfg.epochs
    assert res.history and res.history[-1]["step"] == res.step
    assert 0 < res.metrics["fvu"] < 1 and res.metrics["l0"] > 0
    if arch == "topk":
        assert res.metrics["l0"] == pytest.approx(4.0)


def _reference_paper_loop(x: torch.Tensor, steps: int, batch: int, width: int, k: int, seed: int):
    """The paper's training loop written out densely (no saeprobe kernels)."""
    from sae_training.trainer import build_sae

    cfg = apply_recipe(TrainConfig(recipe="paper", width=width, k=k, seed=seed))
    sae = build_sae(cfg, x.shape[1])
    W_enc, b_enc, W_dec = (
        p.detach().clone().requires_grad_(True) for p in (sae.W_enc, sae.b_enc, sae.W_dec)
    )
    opt = torch.optim.Adam([W_enc, b_enc, W_dec], lr=8e-4)
    for s in range(steps):
        xb = x[s * batch : (s + 1) * batch]
        pre = torch.relu(xb @ W_enc.T + b_enc)
        top = pre.topk(k, dim=1)
        z = torch.zeros_like(pre).scatter(1, top.indices, top.values)
        loss = (z @ W_dec - xb).pow(2).mean() + 0.01 * z.abs().mean()
        opt.zero_grad()
        loss.backward()
        with torch.no_grad():
            g = W_dec.grad
            g -= (g * W_dec).sum(1, keepdim=True) * W_dec  # rows are unit norm
        torch.nn.utils.clip_grad_norm_([W_enc, b_enc, W_dec], 1.0)
        opt.step()
        with torch.no_grad():
            W_dec /= W_dec.norm(dim=1, keepdim=True)
    return W_enc.detach(), b_enc.detach(), W_dec.detach()


def test_paper_recipe_equals_reference_loop():
    x, _ = planted(6 * 64, d=16, m=48)
    cfg = _paper(width=64, k=5, batch_size=64, seed=7, shuffle=False, fast=True)
    res = train(cfg, TensorSource(x, shuffle=False))
    W_enc, b_enc, W_dec = _reference_paper_loop(x, 6, 64, 64, 5, seed=7)
    assert res.step == 6
    torch.testing.assert_close(res.sae.W_dec.detach(), W_dec, rtol=1e-4, atol=2e-6)
    torch.testing.assert_close(res.sae.W_enc.detach(), W_enc, rtol=1e-4, atol=2e-6)
    torch.testing.assert_close(res.sae.b_enc.detach(), b_enc, rtol=1e-4, atol=2e-6)
    assert res.sae.b_dec is None  # the paper's SAE has no decoder bias


# ----------------------------------------------------------------------------- bad data


def _batches(n_batches: int, bad: set[int], d: int = 16, b: int = 32):
    x, _ = planted(n_batches * b, d=d, m=40, seed=5)
    out = []
    for i in range(n_batches):
        xb = x[i * b : (i + 1) * b].clone()
        if i in bad:
            xb[3, 2] = float("nan") if i % 2 else float("inf")
        out.append(xb)
    return out


def test_nan_batches_are_skipped_and_counted(caplog):
    bad = {2, 5, 6}
    data = _batches(10, bad)
    cfg = _paper(lr=1e-3, max_bad_batches=2, max_bad_fraction=0.5, log_interval=4)
    with caplog.at_level("WARNING"):
        res = train(cfg, IterableSource(data))
    assert res.bad_batches == 3 and res.step == 7 and res.tokens == 7 * 32
    assert sum("NaN/Inf" in r.message for r in caplog.records) == 3
    assert res.history[-1]["bad_batches"] == 3
    # skipping is exact: same weights as training on the good batches only
    clean = train(cfg, IterableSource([b for i, b in enumerate(data) if i not in bad]))
    for (name, a), b in zip(
        res.sae.state_dict().items(), clean.sae.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def test_too_many_bad_batches_stop_with_clear_error():
    cfg = _paper(max_bad_batches=2)
    with pytest.raises(BadDataError, match="3 consecutive batches had NaN/Inf"):
        train(cfg, IterableSource(_batches(10, {3, 4, 5})))
    spread = {1, 3, 5, 7}  # never 3 in a row, but 4 of 8 > 10%
    cfg2 = cfg.replace(max_bad_fraction=0.1)
    with pytest.raises(BadDataError, match=r"of \d+ batches .* had NaN/Inf"):
        train(cfg2, IterableSource(_batches(10, spread)))


def test_dimension_mismatch_is_an_immediate_error(tmp_path):
    x, _ = planted(64, d=16, m=40)
    cfg = _paper(d_in=32, out_dir=str(tmp_path / "run"))
    with pytest.raises(ValueError, match="dimension mismatch: the data has d=16 .* d_in=32"):
        Trainer(cfg, x)
    assert not (tmp_path / "run").exists()  # failed before anything was written
    # width unknown up front: the first batch is checked before any step
    calls = []

    def stream(epoch):
        calls.append(epoch)
        yield x[:32]

    with pytest.raises(ValueError, match=r"shape \(32, 16\) but the SAE expects \[B, 32\]"):
        train(cfg.replace(out_dir=None), IterableSource(stream))
    assert calls == [0]


# ----------------------------------------------------------------------------- store


def _write_store(path, x: torch.Tensor, tokens_per_sample: int = 16, system: int = 2):
    from saeprobe import Modality
    from saeprobe.store import ActivationStoreWriter

    n = x.shape[0] // tokens_per_sample
    with ActivationStoreWriter(
        path,
        d=x.shape[1],
        dtype="fp32",
        shard_tokens=96,
        metadata={"model": "tiny/planted", "hook_point": "final_norm"},
        fingerprint="planted-v1",
    ) as w:
        for s in range(n):
            acts = x[s * tokens_per_sample : (s + 1) * tokens_per_sample].clone()
            mod = torch.full((tokens_per_sample,), int(Modality.TEXT), dtype=torch.int8)
            mod[:system] = int(Modality.SYSTEM)
            acts[:system] = float("nan")  # system tokens are dropped before training
            w.add(
                acts,
                torch.full((tokens_per_sample,), s),
                torch.arange(tokens_per_sample),
                torch.arange(tokens_per_sample),
                mod,
            )


def test_train_from_activation_store(tmp_path):
    from saeprobe.sae import load_sae

    x, _ = planted(1024, d=16, m=40)
    _write_store(tmp_path / "store", x)
    src = StoreSource(tmp_path / "store", drop_system=True, seed=0)
    assert src.d == 16 and src.n_tokens() == 1024 - 64 * 2
    out = tmp_path / "sae"
    cfg = _topk(width=64, log_interval=5, ckpt_interval=4, out_dir=str(out))
    res = train(cfg, tmp_path / "store")
    assert res.bad_batches == 0 and res.tokens == 2 * 896 and res.step == 2 * 7
    assert math.isfinite(res.metrics["fvu"])
    loaded = load_sae(out)
    torch.testing.assert_close(loaded.W_dec, res.sae.W_dec.detach().cpu())
    torch.testing.assert_close(loaded.b_dec, res.sae.b_dec.detach().cpu())
    saved = json.loads((out / "cfg.json").read_text())
    meta = saved["metadata"]
    assert meta["model_name"] == "tiny/planted" and meta["hook_point"] == "final_norm"
    assert meta["training"]["store_fingerprint"] == "planted-v1"
    lines = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "fvu" in r] == [5, 10, 14]
    for r in lines:
        if "fvu" in r:
            assert {"mse", "r2", "l0", "dead", "tokens_per_s"} <= set(r)
    summary = json.loads((out / "training.json").read_text())
    assert summary["steps"] == 14 and summary["config"]["width"] == 64
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step_000000012.pt",
        "step_000000014.pt",
    ]
    # keeping SYSTEM tokens feeds the NaN rows to the trainer: they are caught, not trained on
    with pytest.raises(BadDataError):
        train(cfg.replace(drop_system=False, out_dir=None, max_bad_batches=1), tmp_path / "store")


def test_bf16_autocast_keeps_fp32_master_weights():
    x, _ = planted(1024, d=16, m=40)
    base = _topk(width=48, fast=False)
    fp32 = train(base, x)
    bf16 = train(base.replace(autocast="bf16"), x)
    assert all(p.dtype == torch.float32 for p in bf16.sae.parameters())
    opt_state = bf16.sae.W_dec  # trained in fp32 master precision: not bf16-rounded values
    assert not torch.equal(opt_state, opt_state.bfloat16().float())
    assert bf16.metrics["fvu"] == pytest.approx(fp32.metrics["fvu"], abs=0.05)
    assert not torch.equal(bf16.sae.W_dec, fp32.sae.W_dec)  # autocast really ran in bf16
    with pytest.raises(ValueError, match="unknown autocast 'fp8'"):
        TrainConfig(autocast="fp8")


def test_prefetch_thread_is_exact_and_propagates_errors():
    from sae_training.trainer import prefetch

    x, _ = planted(640, d=16, m=40)
    cfg = _topk(width=48, batch_size=64, epochs=None, total_tokens=500)
    a = train(cfg, x)
    b = train(cfg.replace(prefetch_batches=2), x)
    assert a.step == b.step == 8
    for (name, t), u in zip(a.sae.state_dict().items(), b.sae.state_dict().values(), strict=True):
        assert torch.equal(t, u), name

    def broken():
        yield torch.zeros(2, 3)
        raise OSError("shard 7 is truncated")

    it = prefetch(broken(), 2)
    assert next(it).shape == (2, 3)
    with pytest.raises(OSError, match="shard 7 is truncated"):
        next(it)
