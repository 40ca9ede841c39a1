"""Print the model-card numbers of the committed demo models (JSON)::

    python -m saeprobe.demo.measure                    # CLIP retrieval + LLaVA captions
    python -m saeprobe.demo.measure --llava-scenes 0   # CLIP only (no SmolLM2 needed)

CLIP: zero-shot retrieval among the 500 test scenes and the hard-negative accuracy per
attribute; LLaVA: greedy captions of the first ``--llava-scenes`` test scenes and the
share of objects whose colour and shape they name (see :mod:`saeprobe.demo.evaluate`).
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def measure(
    cache_dir: str | None = None, llava_scenes: int = 100, threads: int = 1
) -> dict[str, Any]:
    """The numbers of docs/models/clip-scenes.md and llava-scenes.md, as a dict."""
    import torch
    from transformers import AutoTokenizer, CLIPModel

    from .evaluate import (
        EVAL_SIZES,
        caption_quality,
        clip_hard_negative_accuracy,
        clip_retrieval,
    )
    from .models import clip_folder, llava_folder
    from .scenes import make_splits

    torch.set_num_threads(threads)
    test = make_splits(0, {"train": 0, **EVAL_SIZES})["test"]
    folder = clip_folder(cache_dir)
    clip = CLIPModel.from_pretrained(str(folder)).eval()
    tok = AutoTokenizer.from_pretrained(str(folder))
    report: dict[str, Any] = {"clip": clip_retrieval(clip, tok, test)}
    report["clip"]["hard_negative_accuracy"] = clip_hard_negative_accuracy(clip, tok, test)
    if llava_scenes:
        from transformers import LlavaForConditionalGeneration, LlavaProcessor

        folder = llava_folder(cache_dir)
        model = LlavaForConditionalGeneration.from_pretrained(str(folder), dtype=torch.float32)
        processor = LlavaProcessor.from_pretrained(str(folder))
        report["llava"] = caption_quality(model.eval(), processor, test[:llava_scenes])
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Measure the demo models on the test scenes.")
    p.add_argument("--cache-dir", default=None, help="cache root (default: $SAEPROBE_CACHE)")
    p.add_argument("--llava-scenes", type=int, default=100, help="test scenes captioned (0: skip)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    report = measure(args.cache_dir, args.llava_scenes, args.threads)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
