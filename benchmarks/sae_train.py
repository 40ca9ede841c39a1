"""Benchmark one Top-K SAE training step: forward, loss, backward, grad clip, Adam step.

Compares saeprobe's sparse fast path, its dense eager path, sae-lens ``TopKTrainingSAE``
(dense decode) and overcomplete's ``TopKSAE`` (the paper authors' code), all with the paper's
loss ``mean((x - x_hat)^2) + 0.01 * mean(|z|)``, grad-norm clip 1.0 and Adam, on the same random
data in the same run; plus the floors (encoder matmul, torch.topk) and a per-part breakdown of
the fast step.

    python benchmarks/sae_train.py                                   # CPU: d=512 c=8192 k=32 B=1024
    python benchmarks/sae_train.py --device cuda --preset paper      # d=3584 c=32768 k=50 B=4096

Timings are medians over ``--steps`` steps after ``--warmup`` steps (CUDA events on GPU).
saeprobe's steps use Adam(fused=True) and renormalise the dictionary after each step;
the peers use torch.optim.Adam defaults as their code does (overcomplete renormalises the
dictionary inside its forward).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import platform
import statistics
import sys
import time
import types
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from saeprobe.sae import SAEConfig, create_sae, kernels  # noqa: E402

PRESETS = {
    "cpu": dict(d=512, c=8192, k=32, batch=1024),
    "paper": dict(d=3584, c=32768, k=50, batch=4096),
    "paligemma": dict(d=2304, c=20736, k=50, batch=4096),
}
L1 = 0.01


class Timer:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def once(self, fn: Callable[[], object]) -> float:
        if self.cuda:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            return a.elapsed_time(b)
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3

    def __call__(self, fns: list[Callable[[], object]], steps: int, warmup: int) -> list[float]:
        """Median ms of each function, timed round-robin (one call of each per round) so that
        a machine whose load changes during the run affects every entry alike."""
        for fn in fns:
            for _ in range(warmup):
                fn()
        times: list[list[float]] = [[] for _ in fns]
        for _ in range(steps):
            for i, fn in enumerate(fns):
                times[i].append(self.once(fn))
        return [statistics.median(t) for t in times]


def autocast(device: torch.device, bf16: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16)


def import_overcomplete_topk():
    """overcomplete's TopKSAE without its heavy package __init__ (sklearn, timm, ...)."""
    spec = importlib.util.find_spec("overcomplete")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0])
    for name, folder in (("overcomplete", root), ("overcomplete.sae", root / "sae")):
        if name not in sys.modules:
            stub = types.ModuleType(name)
            stub.__path__ = [str(folder)]
            sys.modules[name] = stub
    return importlib.import_module("overcomplete.sae.topk_sae").TopKSAE


def make_ours(args, device, fast: bool):
    cfg = SAEConfig(arch="topk", d_in=args.d, d_sae=args.c, k=args.k)
    sae = create_sae(cfg).to(device)
    params = list(sae.parameters())
    opt = torch.optim.Adam(params, lr=8e-4, fused=True)

    def step(x, bf16):
        opt.zero_grad(set_to_none=True)
        with autocast(device, bf16):
            out = sae.training_forward(x, l1_coeff=L1, fast=fast)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        opt.step()
        sae.normalize_dictionary_()

    return sae, step


def make_sae_lens(args, device):
    from sae_lens.saes.sae import TrainStepInput
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    cfg = TopKTrainingSAEConfig(d_in=args.d, d_sae=args.c, k=args.k, device=str(device))
    sae = TopKTrainingSAE(cfg).to(device)
    params = list(sae.parameters())
    opt = torch.optim.Adam(params, lr=8e-4)

    def step(x, bf16):
        opt.zero_grad(set_to_none=True)
        with autocast(device, bf16):
            out = sae.training_forward_pass(
                TrainStepInput(x, {}, None, n_training_steps=0, is_logging_step=False)
            )
            loss = (out.sae_out.float() - x).pow(2).mean() + L1 * out.feature_acts.abs().mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    return step


def make_overcomplete(args, device, TopKSAE):
    model = TopKSAE(args.d, nb_concepts=args.c, top_k=args.k, device=str(device))
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=8e-4)

    def step(x, bf16):
        opt.zero_grad(set_to_none=True)
        with autocast(device, bf16):
            _, z, x_hat = model(x)
            loss = (x - x_hat.float()).pow(2).mean() + L1 * z.abs().mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    return step


def breakdown(sae, args, device, x, bf16, timer) -> dict[str, float]:
    """Per-part times of the fast step, each part run on its own (median ms)."""
    params = list(sae.parameters())
    opt = torch.optim.Adam(params, lr=8e-4, fused=True)
    W, b, Wd = sae.W_enc, sae.b_enc, sae.W_dec
    with autocast(device, bf16), torch.no_grad():
        pre = F.linear(x, W, b)
    idx = pre.topk(args.k, dim=1, sorted=False).indices

    def encoder():
        with autocast(device, bf16), torch.no_grad():
            F.linear(x, W, b)

    def topk():
        pre.topk(args.k, dim=1, sorted=False)

    def decode():
        with torch.no_grad():
            v = kernels.gather_pre_acts(x, W, b, idx, pre).relu()
            kernels.sparse_decode(v, idx, Wd)

    def fwd_loss():
        v = kernels.gather_pre_acts(x, W, b, idx, pre).relu()
        x_hat = kernels.sparse_decode(v, idx, Wd)
        return (x_hat - x).pow(2).mean() + L1 * v.abs().sum() / (x.shape[0] * args.c)

    def backward():
        sae.zero_grad(set_to_none=True)
        fwd_loss().backward()

    backward()

    def optimizer():
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        opt.step()
        sae.normalize_dictionary_()

    named = [
        ("encoder matmul", encoder),
        ("top-k", topk),
        ("gather + sparse decode", decode),
        ("sparse fwd + backward", backward),
        ("clip + Adam + renorm", optimizer),
    ]
    times = timer([fn for _, fn in named], args.steps, args.warmup)
    t = {name: ms for (name, _), ms in zip(named, times)}
    t["sparse backward (= row above - fwd)"] = max(
        t["sparse fwd + backward"] - t["gather + sparse decode"], 0.0
    )
    return t


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None)
    p.add_argument("--d", type=int)
    p.add_argument("--c", type=int)
    p.add_argument("--k", type=int)
    p.add_argument("--batch", type=int)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None, help="default: 2 (CUDA), 1 (CPU)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument(
        "--dtypes", default=None, help="comma list of fp32,bf16 (CPU: fp32,bf16; CUDA: bf16,fp32)"
    )
    p.add_argument("--skip-peers", action="store_true")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    preset = PRESETS[args.preset or ("paper" if device.type == "cuda" else "cpu")]
    for key, val in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, val)
    if args.steps is None:
        args.steps = 10 if device.type == "cuda" else 3
    if args.warmup is None:
        args.warmup = 2 if device.type == "cuda" else 1
    if args.threads:
        torch.set_num_threads(args.threads)
    dtypes = (args.dtypes or ("bf16,fp32" if device.type == "cuda" else "fp32,bf16")).split(",")
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    timer = Timer(device)
    x = torch.randn(args.batch, args.d, device=device)
    B = args.batch
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        torch.backends.cuda.matmul.allow_tf32 = False
    else:
        name = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(
        f"# SAE training step: d={args.d} c={args.c} k={args.k} B={B} on {args.device} ({name}), "
        f"torch {torch.__version__}, median of {args.steps} round-robin rounds after "
        f"{args.warmup} warm-ups\n"
    )

    rows: list[tuple[str, str, float]] = []
    W = torch.randn(args.c, args.d, device=device) / args.d**0.5
    bias = torch.zeros(args.c, device=device)
    TopKOC = None if args.skip_peers else import_overcomplete_topk()
    for dt in dtypes:
        bf16 = dt == "bf16"
        with autocast(device, bf16), torch.no_grad():
            pre = F.linear(x, W, bias)

        def enc(bf16=bf16):
            with autocast(device, bf16), torch.no_grad():
                F.linear(x, W, bias)

        impls: list[tuple[str, Callable]] = [
            ("floor: encoder matmul", enc),
            ("floor: torch.topk", lambda pre=pre: pre.topk(args.k, 1, sorted=False)),
        ]
        makers = [
            ("saeprobe fast (sparse)", lambda: make_ours(args, device, fast=True)[1]),
            ("saeprobe eager (dense)", lambda: make_ours(args, device, fast=False)[1]),
        ]
        if not args.skip_peers:
            makers.append(("sae-lens TopKTrainingSAE", lambda: make_sae_lens(args, device)))
            if TopKOC is not None:
                makers.append(
                    (
                        "overcomplete TopKSAE (paper)",
                        lambda: make_overcomplete(args, device, TopKOC),
                    )
                )
        for label, make in makers:
            step = make()
            impls.append((label, lambda s=step, bf16=bf16: s(x, bf16)))
        times = timer([fn for _, fn in impls], args.steps, args.warmup)
        rows.extend((label, dt, ms) for (label, _), ms in zip(impls, times))
        del impls, pre
        if device.type == "cuda":
            torch.cuda.empty_cache()

    fast = {dt: ms for lab, dt, ms in rows if lab.startswith("saeprobe fast")}
    print("| what | dtype | ms / step | tokens / s | saeprobe fast speed-up |")
    print("|---|---|---:|---:|---:|")
    for lab, dt, ms in rows:
        ratio = "" if lab.startswith(("floor", "saeprobe fast")) else f"{ms / fast[dt]:.2f}x"
        print(f"| {lab} | {dt} | {ms:.1f} | {B / ms * 1e3:,.0f} | {ratio} |")
    print()
    for dt in dtypes:
        peers = [
            (lab, ms)
            for lab, d_, ms in rows
            if d_ == dt and lab.startswith(("sae-lens", "overcomplete"))
        ]
        if peers:
            lab, ms = min(peers, key=lambda r: r[1])
            print(
                f"{dt}: saeprobe fast {fast[dt]:.1f} ms/step ({B / fast[dt] * 1e3:,.0f} tokens/s) is "
                f"{ms / fast[dt]:.2f}x the faster peer ({lab}, {ms:.1f} ms)"
            )

    for dt in dtypes:
        bf16 = dt == "bf16"
        sae, _ = make_ours(args, device, fast=True)
        parts = breakdown(sae, args, device, x, bf16, timer)
        print(f"\nBreakdown of the fast step ({dt}), each part timed alone (round-robin):\n")
        print("| part | ms |")
        print("|---|---:|")
        for key, ms in parts.items():
            print(f"| {key} | {ms:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
