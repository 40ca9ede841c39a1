"""Capture throughput: saeprobe hooks + early stop vs a plain HF forward.

Same model, same encoded inputs, same run. Baselines:

* ``hf_full``: ``model(**inputs, output_hidden_states=True)`` on the
  ``...ForConditionalGeneration`` (LM head included), what most scripts do;
* ``hf_base``: the base model (no LM head) with ``output_hidden_states=True``.

saeprobe figures: ``final_norm`` (the paper's layer: nothing to skip but the
LM head and the per-layer hidden-state tuple) and ``resid_post.{n/2}`` (early
stop halfway). Tokens/s counts attended tokens. Prints a table with ratios.

    python benchmarks/capture.py                 # CPU, small Qwen2-VL-shaped model
    python benchmarks/capture.py --preset gpu7b  # Qwen2-VL-7B-shaped, 4 layers (CUDA)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

PRESETS = {
    # a small but not toy-sized language model so that matmuls dominate
    "cpu": dict(
        hidden=512, inter=1376, layers=4, heads=8, kv=2, vocab=32000, batch=8, dtype="float32"
    ),
    "gpu7b": dict(
        hidden=3584, inter=18944, layers=4, heads=28, kv=4, vocab=152064, batch=16, dtype="bfloat16"
    ),
}


def build_adapter(preset: dict, device: str):
    from transformers import AutoConfig, Qwen2VLForConditionalGeneration

    from saeprobe.models import load_model
    from saeprobe.testing import build_tiny_model

    tmp = tempfile.mkdtemp(prefix="saeprobe-bench-")
    path = build_tiny_model("qwen2_vl", tmp)
    base = load_model(str(path), dtype="float32")  # real tokenizer/processor/adapter code
    cfg = AutoConfig.from_pretrained(str(path))
    head_dim = preset["hidden"] // preset["heads"]
    half = head_dim // 2
    section = [half // 4, (half - half // 4) // 2]
    section.append(half - sum(section))
    tc = cfg.text_config
    tc.hidden_size = preset["hidden"]
    tc.intermediate_size = preset["inter"]
    tc.num_hidden_layers = preset["layers"]
    tc.num_attention_heads = preset["heads"]
    tc.num_key_value_heads = preset["kv"]
    tc.vocab_size = preset["vocab"]
    tc.rope_parameters = {**tc.rope_parameters, "mrope_section": section}
    if getattr(tc, "layer_types", None):
        tc.layer_types = [tc.layer_types[0]] * preset["layers"]
    cfg.vision_config.hidden_size = preset["hidden"]
    cfg.vision_config.out_hidden_size = preset["hidden"]
    dtype = getattr(torch, preset["dtype"])
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2VLForConditionalGeneration._from_config(cfg, dtype=dtype).eval()
    return type(base)(model, base.processor, name_or_path="bench")


def make_items(n: int):
    from PIL import Image
    from skimage import data

    from saeprobe import Item

    photos = [
        Image.fromarray(data.astronaut()),
        Image.fromarray(data.chelsea()),
        Image.fromarray(data.coffee()),
    ]
    captions = [
        "A woman in a space suit holding a helmet, with a flag behind her.",
        "A ginger cat looking to the side on a wooden floor.",
        "A cup of coffee on a saucer with a spoon, seen from above.",
    ]
    items = []
    for i in range(n):
        if i % 2 == 0:
            items.append(Item(f"t{i}", text=captions[i % 3] * (1 + i % 3)))
        else:
            items.append(Item(f"i{i}", image=photos[i % 3].resize((224, 224))))
    return items


def timeit(fn, repeat: int, device: str) -> float:
    fn()  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    ap.add_argument("--device", default=None)
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    preset = PRESETS[args.preset]
    device = args.device or ("cuda" if args.preset.startswith("gpu") else "cpu")
    torch.set_grad_enabled(False)

    from saeprobe.capture import iter_captures
    from saeprobe.hooks import parse_hook_points, run_with_hooks

    adapter = build_adapter(preset, device)
    items = make_items(preset["batch"] * args.batches)
    batches = [
        adapter.encode(items[i : i + preset["batch"]]).to(device)
        for i in range(0, len(items), preset["batch"])
    ]
    n_tokens = sum(b.n_tokens for b in batches)
    n = adapter.n_layers

    def hf_full():
        for b in batches:
            out = adapter.model(**b.inputs, output_hidden_states=True, use_cache=False)
            h = out.hidden_states[-1]
            h[b.attention_mask.bool()].cpu()

    def hf_base():
        for b in batches:
            out = adapter.forward(b, output_hidden_states=True)
            h = out.hidden_states[-1]
            h[b.attention_mask.bool()].cpu()

    def ours(point):
        pts = parse_hook_points(point, n)

        def go():
            for b in batches:
                h = run_with_hooks(adapter, b, pts)[pts[0].name]
                h[b.attention_mask.bool()].cpu()

        return go

    def ours_pipeline():
        # the full capture pipeline: encode + hooks + labels + mean pooling, per token to CPU
        for _ in iter_captures(adapter, items, "final_norm", batch_size=preset["batch"]):
            pass

    rows = [
        (
            "hf_full: ForConditionalGeneration + output_hidden_states",
            timeit(hf_full, args.repeat, device),
        ),
        ("hf_base: base model + output_hidden_states", timeit(hf_base, args.repeat, device)),
        ("saeprobe hooks: final_norm", timeit(ours("final_norm"), args.repeat, device)),
        (
            f"saeprobe hooks: resid_post.{n // 2 - 1} (early stop)",
            timeit(ours(str(n // 2 - 1)), args.repeat, device),
        ),
    ]
    pipeline = timeit(ours_pipeline, args.repeat, device)
    ref_full, ref_base = rows[0][1], rows[1][1]
    name = "cuda" if device.startswith("cuda") else "cpu"
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name()
    print(
        f"capture benchmark: preset={args.preset} device={name} d={preset['hidden']} "
        f"layers={n} vocab={preset['vocab']} dtype={preset['dtype']} "
        f"batches={len(batches)}x{preset['batch']} tokens={n_tokens:,}"
    )
    print(f"{'what':62s} {'s':>8s} {'tokens/s':>12s} {'vs hf_full':>11s} {'vs hf_base':>11s}")
    for label, sec in rows:
        print(
            f"{label:62s} {sec:8.3f} {n_tokens / sec:12,.0f} {ref_full / sec:10.2f}x {ref_base / sec:10.2f}x"
        )
    print(
        f"{'saeprobe iter_captures (encode+hooks+labels+pool), final_norm':62s} {pipeline:8.3f} "
        f"{n_tokens / pipeline:12,.0f} {ref_full / pipeline:10.2f}x {ref_base / pipeline:10.2f}x"
    )
    print(
        "(ratios > 1.0x: saeprobe is faster; the pipeline row also includes preprocessing, "
        "which the HF rows do not)"
    )


if __name__ == "__main__":
    main()
