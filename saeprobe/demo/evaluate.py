"""Quality measures of the demo models on scenes (used by the training scripts and tests).

* :func:`clip_retrieval`: zero-shot text -> image and image -> text Recall@k of a
  ``CLIPModel`` over a list of scenes (each scene's 5 captions vs its image).
* :func:`clip_hard_negative_accuracy`: how often a caption prefers its image over a hard
  negative, per attribute.
* :func:`caption_hits` / :func:`llava_captions` / :func:`caption_quality`: whether a
  generated caption names each object's colour and shape, greedy captions of a
  ``LlavaForConditionalGeneration``, and the share of objects named right.

``python -m saeprobe.demo.measure`` prints these for the committed models.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .scenes import COLOURS, PLURALS, SHAPES, Scene, captions, render

logger = logging.getLogger(__name__)

#: CLIP's image normalisation (what ``CLIPImageProcessor`` applies)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: the instruction the LLaVA demo model was trained to answer with a caption
CAPTION_PROMPT = "Describe the image."
#: validation / test sizes of the demo splits (``make_splits(0, {"train": n, **EVAL_SIZES})``
#: gives the same validation and test scenes for any train size ``n``)
EVAL_SIZES = {"val": 300, "test": 500}

__all__ = [
    "CAPTION_PROMPT",
    "EVAL_SIZES",
    "caption_hits",
    "caption_quality",
    "clip_hard_negative_accuracy",
    "clip_retrieval",
    "llava_captions",
    "pixel_values",
]


def pixel_values(images: Sequence[Any]) -> torch.Tensor:
    """``[B, 3, H, W]`` float32 CLIP-normalised pixels of RGB images already at the model size.

    Equal to ``CLIPImageProcessor`` output for images of exactly the crop size (its resize
    and centre crop are then no-ops).
    """
    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in images])
    x = torch.from_numpy(arr).permute(0, 3, 1, 2) / 255.0
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def _recall(sim: torch.Tensor, relevant: list[set[int]], ks: Sequence[int]) -> dict[int, float]:
    order = sim.topk(max(ks), dim=1).indices
    out = {}
    for k in ks:
        hits = [bool(set(order[i, :k].tolist()) & rel) for i, rel in enumerate(relevant)]
        out[k] = float(np.mean(hits))
    return out


@torch.inference_mode()
def clip_retrieval(
    model: Any,
    tokenizer: Any,
    scenes: Sequence[Scene],
    *,
    image_size: int = 96,
    batch_size: int = 256,
    ks: Sequence[int] = (1, 5),
) -> dict[str, Any]:
    """Zero-shot retrieval among ``scenes``: every caption vs every image.

    Parameters
    ----------
    model : transformers.CLIPModel
    tokenizer : the model's tokenizer
    scenes : sequence of Scene
        ``N`` scenes; their 5 captions each are the text side (``5N`` texts).

    Returns
    -------
    dict with ``t2i`` / ``i2t`` (``{k: Recall@k}``), ``chance_t2i`` (``1/N``),
    ``chance_i2t`` (``5/(5N)``), ``n_images``, ``n_texts``.
    """
    model.eval()
    texts, owner = [], []
    for i, s in enumerate(scenes):
        for c in captions(s):
            texts.append(c)
            owner.append(i)
    img, txt = [], []
    for b in range(0, len(scenes), batch_size):
        ims = [render(s, image_size) for s in scenes[b : b + batch_size]]
        out = model.get_image_features(pixel_values=pixel_values(ims))
        img.append(out if torch.is_tensor(out) else out.pooler_output)
    for b in range(0, len(texts), batch_size):
        enc = tokenizer(texts[b : b + batch_size], padding=True, return_tensors="pt")
        out = model.get_text_features(
            input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]
        )
        txt.append(out if torch.is_tensor(out) else out.pooler_output)
    img_e = torch.nn.functional.normalize(torch.cat(img).float(), dim=-1)
    txt_e = torch.nn.functional.normalize(torch.cat(txt).float(), dim=-1)
    sim = txt_e @ img_e.T  # [5N, N]
    t2i = _recall(sim, [{o} for o in owner], ks)
    rel_i2t = [set() for _ in scenes]
    for j, o in enumerate(owner):
        rel_i2t[o].add(j)
    i2t = _recall(sim.T, rel_i2t, ks)
    n = len(scenes)
    return {
        "t2i": t2i,
        "i2t": i2t,
        "chance_t2i": {k: min(1.0, k / n) for k in ks},
        "chance_i2t": {k: min(1.0, 5 * k / len(texts)) for k in ks},
        "n_images": n,
        "n_texts": len(texts),
    }


def _words(text: str) -> list[str]:
    return [w.strip(".,;:!?") for w in text.lower().split()]


def caption_hits(caption: str, scene: Scene) -> list[bool]:
    """Per object of ``scene``: does ``caption`` name its colour and its shape?

    The colour word must come right before the shape word, with at most one word
    (e.g. a size) between them: ``"red circle"`` and ``"red small circle"`` count,
    ``"red square and a blue circle"`` does not count for a red circle. Plurals count.
    """
    words = _words(caption)
    shape_of = {s: s for s in SHAPES} | {p: s for s, p in PLURALS.items()}
    found = set()
    for i, w in enumerate(words):
        shape = shape_of.get(w)
        if shape is None:
            continue
        for j in range(max(0, i - 2), i):
            if words[j] in COLOURS:
                found.add((words[j], shape))
    return [(o.colour, o.shape) in found for o in scene.objects]


@torch.inference_mode()
def llava_captions(
    model: Any,
    processor: Any,
    images: Sequence[Any],
    *,
    prompt: str = CAPTION_PROMPT,
    max_new_tokens: int = 24,
    batch_size: int = 8,
) -> list[str]:
    """Greedy captions of a LLaVA model (one user turn: the image, then ``prompt``)."""
    model.eval()
    conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    text = processor.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
    tok = processor.tokenizer
    out: list[str] = []
    for b in range(0, len(images), batch_size):
        ims = list(images[b : b + batch_size])
        enc = processor(images=ims, text=[text] * len(ims), return_tensors="pt", padding=True)
        gen = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
        )
        new = gen[:, enc["input_ids"].shape[1] :]
        out += [t.strip() for t in tok.batch_decode(new, skip_special_tokens=True)]
    return out


@torch.inference_mode()
def clip_hard_negative_accuracy(
    model: Any,
    tokenizer: Any,
    scenes: Sequence[Scene],
    *,
    seed: int = 0,
    tag: str = "test",
    image_size: int = 96,
) -> dict[str, float]:
    """Per attribute: how often a caption is closer to its scene's image than to the image
    of a hard negative differing in that attribute (the task-1 pairs of
    :func:`saeprobe.demo.scenes_data.build_tasks`; chance 0.5)."""
    from .scenes_data import build_tasks

    task = build_tasks(list(scenes), seed=seed, tag=tag)[1]
    texts = [q["text"] for q in task.queries]
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    t = model.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    t = torch.nn.functional.normalize(
        (t if torch.is_tensor(t) else t.pooler_output).float(), dim=-1
    )
    ims = [render(e["scene"], image_size) for e in task.corpus]
    emb = []
    for b in range(0, len(ims), 256):
        out = model.get_image_features(pixel_values=pixel_values(ims[b : b + 256]))
        emb.append(out if torch.is_tensor(out) else out.pooler_output)
    img = torch.nn.functional.normalize(torch.cat(emb).float(), dim=-1)
    row = {e["id"]: i for i, e in enumerate(task.corpus)}
    wins: dict[str, list[bool]] = {}
    for qi, q in enumerate(task.queries):
        pos = row[q["scene"].id]
        for e in task.corpus:
            if e["role"] == "hard_negative" and e["id"].split("~")[0] == q["scene"].id:
                s_pos, s_neg = float(t[qi] @ img[pos]), float(t[qi] @ img[row[e["id"]]])
                wins.setdefault(e["attribute"], []).append(s_pos > s_neg)
    return {a: float(np.mean(v)) for a, v in sorted(wins.items())}


def caption_quality(model, processor, scenes, prompt: str = CAPTION_PROMPT) -> dict[str, Any]:
    """Greedy captions of ``scenes`` and the share of objects whose colour and shape they name."""
    image_size = model.config.vision_config.image_size
    caps = llava_captions(model, processor, [render(s, image_size) for s in scenes], prompt=prompt)
    hits = [caption_hits(c, s) for c, s in zip(caps, scenes)]
    n_obj = sum(len(h) for h in hits)
    return {
        "object_hit_rate": sum(sum(h) for h in hits) / max(1, n_obj),
        "exact_match": sum(c == captions(s)[0] for c, s in zip(caps, scenes)) / max(1, len(scenes)),
        "n_scenes": len(scenes),
        "n_objects": n_obj,
        "samples": [
            {"id": s.id, "reference": captions(s)[0], "generated": c}
            for s, c in zip(scenes[:12], caps[:12])
        ],
    }
