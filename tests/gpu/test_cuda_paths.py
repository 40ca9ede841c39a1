"""The CUDA code paths against their CPU / float64 references (skipped without a GPU; run by
``benchmarks/gpu_suite.sh`` on a GPU machine)."""

from __future__ import annotations

import pytest
import torch

from saeprobe.models import load_model
from saeprobe.ranking import topk_search
from saeprobe.whitening import Whitener, realign
from tests import adapter_checks as checks
from tests.unit.test_sae_kernels import D, _run, _sae
from tests.unit.test_whitening import _embeddings, _realign64

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A tiny Qwen2-VL checkpoint and the mixed text / image / image + text items."""
    from saeprobe.testing import build_tiny_model

    path = build_tiny_model("qwen2_vl", tmp_path_factory.mktemp("qwen2_vl"))
    return {"path": path, "items": checks.mixed_items(checks.LONG_TEXTS)}


def test_cuda_bf16_hooks_and_padding(built):
    """On a GPU in bf16: hooks still equal hidden_states; padding changes little."""
    adapter = load_model(str(built["path"]), dtype="bf16", device="cuda")
    batch = adapter.encode(built["items"]).to(adapter.device)
    cap = {}
    h = adapter.final_norm().register_forward_hook(lambda m, a, o: cap.__setitem__("n", o))
    try:
        with torch.no_grad():
            out = adapter.forward(batch, output_hidden_states=True)
    finally:
        h.remove()
    mask = batch.attention_mask.bool()
    assert torch.equal(cap["n"][mask], out.hidden_states[-1][mask])
    for b, item in enumerate(built["items"]):
        single = adapter.encode([item]).to(adapter.device)
        with torch.no_grad():
            ref = adapter.forward(single).last_hidden_state[0].float()
        n = ref.shape[0]
        got = out.last_hidden_state[b, :n].float()
        torch.testing.assert_close(got, ref, atol=5e-2, rtol=5e-2)


def test_topk_cuda_matches_cpu():
    g = torch.Generator().manual_seed(3)
    q = torch.randn(50, 32, generator=g)
    c = torch.randn(2000, 32, generator=g)
    cpu = topk_search(q, c, 10, chunk_size=300)
    gpu = topk_search(q.half(), c.half(), 10, chunk_size=300, device="cuda")
    assert gpu.indices.device.type == "cpu"
    ref = topk_search(q.half().float(), c.half().float(), 10)
    torch.testing.assert_close(gpu.scores, ref.scores, atol=1e-3, rtol=0)
    assert (gpu.indices == ref.indices).float().mean() > 0.95
    assert cpu.indices.shape == gpu.indices.shape


def test_cuda_bf16_fast_matches_eager():
    sae = _sae("float32").cuda()
    x = torch.randn(256, D, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        fast, gf = _run(sae, x, True, l1_coeff=0.01)
        eager, ge = _run(sae, x, False, l1_coeff=0.01)
    assert torch.equal(fast.indices.sort(1).values, eager.indices.sort(1).values)
    torch.testing.assert_close(fast.loss, eager.loss, rtol=1e-3, atol=1e-5)
    for n in gf:
        scale = ge[n].abs().max().item()
        torch.testing.assert_close(gf[n], ge[n], rtol=0, atol=1e-2 * scale, msg=n)


def test_cuda_realign_matches_cpu():
    X = _embeddings(n=3000, d=256, seed=13)
    cpu = realign(X)
    gpu32 = realign(X.cuda())
    torch.testing.assert_close(gpu32.cpu(), cpu, atol=1e-4, rtol=0)
    gpu16 = realign(X.half().cuda())
    assert gpu16.dtype == torch.float16
    torch.testing.assert_close(
        gpu16.double().cpu(), _realign64(X.half().float()), atol=2e-3, rtol=0
    )
    # streaming on CUDA equals in-memory
    s = Whitener("realign", device="cuda").fit(X[i : i + 700] for i in range(0, 3000, 700))
    torch.testing.assert_close(s.transform(X).cpu(), cpu, atol=1e-4, rtol=0)
