"""Shared test builders: store samples, M-BEIR folders, analysis inputs, tiny models,
a small training config, and headless Chromium for the browser tests.

Tests import what they need (``from tests.helpers import ...``); fixtures built on these
live in ``tests/conftest.py``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from saeprobe import Item, Modality

# ------------------------------------------------------------------ training config


def train_config(**overrides: Any):
    """A small, CPU-pinned :class:`~sae_training.TrainConfig` (fp32, no autocast, no
    progress bar, no background prefetch): the same numerics on every machine."""
    from sae_training import TrainConfig

    base: dict[str, Any] = {
        "width": 32,
        "k": 4,
        "lr": 1e-3,
        "batch_size": 16,
        "epochs": 1,
        "warmup_steps": 1,
        "autocast": "none",
        "device": "cpu",
        "progress": False,
    }
    base.update(overrides)
    return TrainConfig(**base)


def topk_run_kwargs(**overrides: Any) -> dict[str, Any]:
    """Keyword arguments of the small Top-K :class:`~sae_training.TrainConfig` of the
    multi-process trainer tests (DDP, kill and resume): default recipe, 64 latents, k=4,
    lr 3e-3, 64-token batches, 2 epochs, dead after 128 tokens without firing, metrics every
    5 steps, no progress bar; ``overrides`` win. A plain dict, so that worker processes and
    subprocess scripts can rebuild the config from it."""
    base: dict[str, Any] = {"arch": "topk", "width": 64, "k": 4, "lr": 3e-3, "batch_size": 64}
    base.update(epochs=2, dead_window_tokens=128, log_interval=5, progress=False)
    return {**base, **overrides}


# ------------------------------------------------------------------ SAEs
def random_sae(
    arch: str, d: int, c: int, k: int | None, *, thresholds=(0.4, 0.2), b_dec_std=None, **cfg
):
    """``create_sae`` of ``arch`` (``d`` inputs, ``c`` latents, ``k``, other
    :class:`~saeprobe.sae.SAEConfig` fields ``cfg``) with random non-zero extra parameters,
    so that every term of the forward pass counts: ``b_enc`` ~ N(0, 0.3), ``b_dec`` ~
    N(0, ``b_dec_std``) when given, JumpReLU thresholds ~ U(0, ``thresholds[0]``), BatchTopK
    thresholds ``thresholds[1]``, the Gated ``b_mag`` and ``r_mag`` ~ N(0, 0.3)."""
    from saeprobe.sae import SAEConfig, create_sae

    sae = create_sae(SAEConfig(arch=arch, d_in=d, d_sae=c, k=k, **cfg))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.3)
        if b_dec_std is not None:
            sae.b_dec.normal_(0, b_dec_std)
        if arch == "jumprelu":
            sae.threshold.uniform_(0.0, thresholds[0])
        if arch in ("batchtopk", "matryoshka_batchtopk"):
            sae.threshold.fill_(thresholds[1])
        if arch == "gated":
            sae.b_mag.normal_(0, 0.3)
            sae.r_mag.normal_(0, 0.3)
    return sae


def identity_topk(d: int):
    """Top-K with c = 2d, k = d, encoder = dictionary = [I; -I] and no encoder bias: each
    input is its own code (positive and negative parts), so x_hat == x exactly."""
    from saeprobe.sae import SAEConfig, create_sae

    sae = create_sae(SAEConfig(arch="topk", d_in=d, d_sae=2 * d, k=d))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye]))
        sae.W_dec.copy_(torch.cat([eye, -eye]))
        sae.b_enc.zero_()
    return sae


def dictionary_topk(dictionary: torch.Tensor, k: int, b_enc: float = 0.0):
    """A :class:`~saeprobe.sae.TopKSAE` whose encoder and decoder rows are ``dictionary``
    ([c, d]), every encoder bias ``b_enc``."""
    from saeprobe.sae import SAEConfig, TopKSAE

    c, d = dictionary.shape
    sae = TopKSAE(SAEConfig(arch="topk", d_in=d, d_sae=c, k=k))
    with torch.no_grad():
        sae.W_dec.copy_(dictionary)
        sae.W_enc.copy_(dictionary)
        sae.b_enc.fill_(b_enc)
    return sae


# ------------------------------------------------------------------ tiny HF models
_TINY_CACHE: dict[str, Path] = {}


def tiny_model(family: str, root: Path) -> Path:
    """A tiny random checkpoint of ``family``, built once per test session under ``root``
    (treat it as read-only; copy it before changing files)."""
    from saeprobe.testing import build_tiny_model

    if family not in _TINY_CACHE:
        _TINY_CACHE[family] = build_tiny_model(family, root / family)
    return _TINY_CACHE[family]


# ------------------------------------------------------------------ activation stores
D = 8
N_SAMPLES = 40
SHARD_TOKENS = 32


def make_sample(i: int, d: int = D):
    """Deterministic tokens of sample ``i``: 1..12 tokens, the first one SYSTEM."""
    g = torch.Generator().manual_seed(1000 + i)
    n = int(torch.randint(1, 13, (1,), generator=g))
    acts = torch.randn(n, d, generator=g, dtype=torch.float64)
    mod = torch.randint(0, 3, (n,), generator=g).to(torch.int8)
    mod[0] = int(Modality.SYSTEM)
    return {
        "acts": acts,
        "sample_id": torch.full((n,), i, dtype=torch.int64),
        "position": torch.arange(n, dtype=torch.int32),
        "token_id": torch.randint(0, 50_000, (n,), generator=g),
        "modality": mod,
    }


def add_samples(writer, ids, per_call=1):
    ids = list(ids)
    for j in range(0, len(ids), per_call):
        chunk = [make_sample(i) for i in ids[j : j + per_call]]
        cat = {k: torch.cat([c[k] for c in chunk]) for k in chunk[0]}
        writer.add(cat["acts"], cat["sample_id"], cat["position"], cat["token_id"], cat["modality"])


def reference(ids=range(N_SAMPLES)):
    chunk = [make_sample(i) for i in ids]
    return {k: torch.cat([c[k] for c in chunk]) for k in chunk[0]}


def tiny_store(path, n_samples=48, tokens=12, d=16, seed=4, fingerprint="fp-cli"):
    """A finished bf16 store of sparse-dictionary activations (first token of each sample
    SYSTEM); returns the number of non-SYSTEM tokens."""
    from saeprobe import Modality
    from saeprobe.store import ActivationStoreWriter

    g = torch.Generator().manual_seed(seed)
    D = torch.randn(40, d, generator=g)
    with ActivationStoreWriter(
        path,
        d=d,
        dtype="bf16",
        shard_tokens=100,
        metadata={"model": "tiny", "hook_point": "final_norm"},
        fingerprint=fingerprint,
    ) as w:
        for s in range(n_samples):
            acts = (torch.rand(tokens, 40, generator=g).pow(10) * 3) @ D
            mod = torch.full(
                (tokens,), int(Modality.IMAGE if s % 2 else Modality.TEXT), dtype=torch.int8
            )
            mod[0] = int(Modality.SYSTEM)
            w.add(acts, torch.full((tokens,), s), torch.arange(tokens), torch.arange(tokens), mod)
    return n_samples * (tokens - 1)  # tokens without SYSTEM


# ------------------------------------------------------------------ M-BEIR task folders
_SK_IMAGES = ("astronaut", "camera", "chelsea", "coffee", "coins", "rocket", "moon", "checkerboard")


def sample_images(n: int, size: int = 32) -> list[Image.Image]:
    """``n`` small RGB images from scikit-image's bundled data (cycled, tinted)."""
    import skimage.data

    base = []
    for name in _SK_IMAGES:
        arr = getattr(skimage.data, name)()
        im = Image.fromarray(arr).convert("RGB").resize((size, size))
        base.append(np.asarray(im))
    out = []
    for i in range(n):
        arr = base[i % len(base)].astype(np.int16)
        arr = np.clip(arr + (i // len(base)) * 17, 0, 255).astype(np.uint8)
        out.append(Image.fromarray(arr))
    return out


def make_side(prefix: str, kind: str, n: int, images, texts) -> list[Item]:
    items = []
    for i in range(n):
        items.append(
            Item(
                id=f"{prefix}:{i}",
                text=texts[i] if "text" in kind else None,
                image=images[i] if "image" in kind else None,
            )
        )
    return items


def build_task_folder(root, task: int, n_queries: int = 4, n_corpus: int = 6, name=None):
    """A tiny M-BEIR folder of ``task`` (paper numbering); query i is relevant to
    candidates i and i+1 (mod n_corpus). Returns the folder path."""
    from saeprobe.data.mbeir import TASKS, write_task_folder

    qkind, ckind = TASKS[task]
    imgs = sample_images(max(n_queries, n_corpus))
    qtexts = [f"a photo number {i} of something" for i in range(n_queries)]
    ctexts = [f"caption {i} describing a scene" for i in range(n_corpus)]
    queries = make_side("q", qkind, n_queries, imgs, qtexts)
    corpus = make_side("c", ckind, n_corpus, imgs[::-1], ctexts)
    qrels = {f"q:{i}": {f"c:{i % n_corpus}", f"c:{(i + 1) % n_corpus}"} for i in range(n_queries)}
    mbeir_id = {v: k for k, v in {0: 1, 1: 2, 2: 3, 3: 4, 4: 5, 6: 6, 7: 7, 8: 8}.items()}[task]
    folder = root / (name or f"mbeir_tiny_task{mbeir_id}")
    return write_task_folder(folder, queries, corpus, qrels, corpus_shards=2)


# ------------------------------------------------------------------ analysis CLI inputs
P, D_MODEL = 12, 48
TEXTUAL, VISUAL = [0, 1, 2, 3], [4, 5, 6, 7]
TEMPLATE_C, SYSTEM_C = 8, 9
SEMANTIC = list(range(10, 10 + P))
HARMFUL = [10 + P, 11 + P]
C = 12 + P
T, IMG, TPL, SYS = (
    int(m) for m in (Modality.TEXT, Modality.IMAGE, Modality.TEMPLATE, Modality.SYSTEM)
)


def build_inputs(root: Path, seed: int = 0) -> dict[str, Path]:
    """A token store (image and caption inputs with template/system tokens), matched pooled
    pairs with a harmful shared direction, and a TopKSAE whose dictionary is the planted one."""
    from analysis import save_pairs
    from saeprobe.store import ActivationStoreWriter

    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(D_MODEL, C, generator=g))
    D = q.T.contiguous()
    sae = dictionary_topk(D, k=3, b_enc=-0.1)  # noise-level pre-activations stay at zero
    sae_dir = root / "sae"
    sae.save(sae_dir)

    def noise(n):
        return 0.01 * torch.randn(n, D_MODEL, generator=g)

    store_dir = root / "store"
    w = ActivationStoreWriter(
        store_dir,
        d=D_MODEL,
        dtype="fp32",
        metadata={"model": "synthetic", "hook_point": "final_norm"},
    )
    for p in range(P):
        for sid, own, label, n_own in ((2 * p, VISUAL, IMG, 4), (2 * p + 1, TEXTUAL, T, 3)):
            mods = [SYS] + [TPL] * 2 + [label] * n_own + [TPL]
            rows = []
            for m in mods:
                if m == SYS:
                    rows.append(2.0 * D[SYSTEM_C])
                elif m == TPL:
                    rows.append(1.0 * D[TEMPLATE_C])
                else:
                    c = own[int(torch.randint(0, len(own), (1,), generator=g))]
                    rows.append(1.5 * D[c] + 0.5 * D[SEMANTIC[p]])
            acts = torch.stack(rows) + noise(len(rows))
            n = len(mods)
            w.add(acts, [sid] * n, list(range(n)), [7] * n, mods)
    w.close()

    def side(own):
        style = torch.tensor(own)[torch.randint(0, len(own), (P,), generator=g)]
        h = 0.2 + 3.8 * torch.rand(P, 2, generator=g)
        return D[SEMANTIC] + 0.8 * D[style] + h @ D[HARMFUL] + noise(P)

    pairs = save_pairs(
        root / "pairs.safetensors",
        side(VISUAL),
        side(TEXTUAL),
        image_ids=list(range(P)),
        text_ids=list(range(P)),
    )
    return {"sae": sae_dir, "store": store_dir, "pairs": pairs, "dictionary": D, "sae_obj": sae}


def cli_flags(**flags: Any) -> list[str]:
    """``batch_size=96`` -> ``["--batch-size", "96"]``; ``True`` gives the bare flag."""
    argv: list[str] = []
    for name, value in flags.items():
        argv.append("--" + name.replace("_", "-"))
        if value is not True:
            argv.append(str(value))
    return argv


def train_argv(store: Path, out: Path, **flags: Any) -> list[str]:
    """``saeprobe train`` on ``store`` into ``out``, on the CPU without progress bars."""
    return ["train", "--activations", str(store), "--out", str(out), "--no-progress",
            "--device", "cpu", *cli_flags(**flags)]  # fmt: skip


def run_cli(inputs: dict, out: Path, *extra: str) -> int:
    """``saeprobe analyze`` in-process on :func:`build_inputs`'s files."""
    from saeprobe.cli import main

    return main(
        [
            "analyze",
            "--sae",
            str(inputs["sae"]),
            "--activations",
            str(inputs["store"]),
            "--pairs",
            str(inputs["pairs"]),
            "--out",
            str(out),
            "--n-distractors",
            "2",
            "--ablation-steps",
            "0,1,2",
            "--ks",
            "1,5",
            "--no-progress",
            *extra,
        ]
    )


# ------------------------------------------------------------------ headless Chromium
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def browser_test(fn):
    """Mark test ``fn`` as a browser test, skipped where Debian's chromium is missing."""
    skip = pytest.mark.skipif(
        not os.path.exists(CHROMIUM),
        reason=f"Debian chromium not installed at {CHROMIUM} (apt-get install -y chromium)",
    )
    return pytest.mark.browser(skip(fn))


def watch_console(page, errors: list[str]) -> None:
    """Append ``page``'s console errors and uncaught page errors to ``errors``."""
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))


@contextmanager
def chromium_page(errors: list[str], requests: list[str], **page_kwargs) -> Iterator[tuple]:
    """A page of a fresh headless Chromium (``page_kwargs`` go to ``new_page``) whose
    console / page errors go to ``errors`` and whose requested URLs go to ``requests``;
    yields ``(browser, page)`` and closes the browser afterwards."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(**page_kwargs)
            watch_console(page, errors)
            page.on("request", lambda r: requests.append(r.url))
            yield browser, page
        finally:
            browser.close()


@contextmanager
def serving(app, **kwargs) -> Iterator[str]:
    """The URL of ``app`` (an explorer session or run explorer) served by
    :func:`saeprobe.explorer.serve_in_thread` on 127.0.0.1; shut down and closed afterwards."""
    from saeprobe.explorer import serve_in_thread

    server, url = serve_in_thread(app, **kwargs)
    try:
        yield url
    finally:
        server.shutdown()
        server.server_close()
