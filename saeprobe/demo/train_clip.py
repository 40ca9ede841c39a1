"""Train the demo CLIP (``transformers.CLIPModel``) from scratch on the train scenes.

Contrastive training of both towers: each step draws a batch of train scenes,
re-renders each with a fresh jitter, picks one of its five captions, and replaces a
share of the batch by hard negatives of other scenes in the batch (content that
differs in one attribute, never the content of a validation or test scene), so the
model has to bind colours, shapes, sizes and relations. The loss is CLIP's symmetric
InfoNCE over (image, caption) plus a region-phrase InfoNCE (weight ``region_weight``):
the mean of the vision tower's hidden states (layer ``region_layer``) over the patches
an object covers, through a linear head used only in training, against the text
embeddings of the batch's object phrases ("small red circle"). Without it the patch
tokens keep colour but not shape (the CLS token gathers shape), and the LLaVA built on
this tower cannot name shapes. Writes the weights into ``OUT/clip-scenes/`` (fp16 safetensors,
config, tokenizer, image processor) and updates ``OUT/manifest.json``::

    python -m saeprobe.demo.train_clip --out saeprobe/demo/weights      # the committed run
    python -m saeprobe.demo.train_clip --out /tmp/clip --steps 20 --train-scenes 200
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_text
from .evaluate import EVAL_SIZES

logger = logging.getLogger(__name__)

#: the CLIP tokenizer's special tokens
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
CLIP_DIR = "clip-scenes"


@dataclass
class ClipTrainConfig:
    """Configuration of a CLIP training run (the defaults made the committed weights)."""

    seed: int = 0
    data_seed: int = 0
    train_scenes: int = 6000
    steps: int = 3000
    batch_size: int = 128
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup: int = 150
    weight_decay: float = 0.1
    hard_negative_frac: float = 0.25
    region_weight: float = 0.5
    region_layer: int = 3
    image_size: int = 96
    patch_size: int = 16
    vision_hidden: int = 128
    vision_layers: int = 4
    text_hidden: int = 128
    text_layers: int = 3
    heads: int = 4
    projection_dim: int = 128
    vocab_size: int = 640
    max_text_tokens: int = 32
    eval_every: int = 250
    test_eval: bool = True
    threads: int = 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def tokenizer_corpus(seed: int = 0, n: int = 400) -> list[str]:
    """Scene captions and edit instructions the tokenizer is trained on."""
    from .scenes import (
        BACKGROUNDS,
        COLOURS,
        PLURALS,
        SHAPES,
        SIZES,
        TEXTURES,
        captions,
        edit,
        make_scene,
    )

    rng = random.Random(f"{seed}:tokenizer")
    out = [
        " ".join(SHAPES),
        " ".join(PLURALS.values()),
        " ".join(COLOURS),
        " ".join(SIZES),
        " ".join(BACKGROUNDS),
        " ".join(v for v in TEXTURES.values() if v),
    ]
    for i in range(n):
        s = make_scene(rng, f"tok-{i}")
        out += captions(s)
        made = edit(s, rng)
        if made:
            out.append(made[0])
    return out


def build_tokenizer(cfg: ClipTrainConfig):
    """Offline byte-level BPE on the scene vocabulary: ``[BOS] text [EOS]``, pad = EOS."""
    from ..testing.tiny.clip import build_tokenizer_with_template

    return build_tokenizer_with_template(
        BOS,
        EOS,
        EOS,
        vocab_size=cfg.vocab_size,
        extra_corpus=tokenizer_corpus(cfg.data_seed),
        model_max_length=cfg.max_text_tokens,
    )


def build_model(cfg: ClipTrainConfig, tok):
    """A randomly initialised ``CLIPModel`` of the configured size."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tok),
            hidden_size=cfg.text_hidden,
            intermediate_size=4 * cfg.text_hidden,
            num_hidden_layers=cfg.text_layers,
            num_attention_heads=cfg.heads,
            max_position_embeddings=cfg.max_text_tokens,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        ),
        vision_config=dict(
            hidden_size=cfg.vision_hidden,
            intermediate_size=4 * cfg.vision_hidden,
            num_hidden_layers=cfg.vision_layers,
            num_attention_heads=cfg.heads,
            image_size=cfg.image_size,
            patch_size=cfg.patch_size,
        ),
        projection_dim=cfg.projection_dim,
    )
    config.architectures = ["CLIPModel"]
    torch.manual_seed(cfg.seed)
    return CLIPModel(config)


class SceneBatches:
    """Endless training batches: (pixel values, caption token ids, attention mask).

    Each step takes ``batch_size`` scenes from a seeded epoch permutation of the train
    scenes; a share ``hard_negative_frac`` of the slots holds a hard negative of a scene
    of the same batch instead. Every image is a fresh jittered render.
    """

    def __init__(self, scenes, tok, cfg: ClipTrainConfig, avoid: set):
        self.scenes = list(scenes)
        self.tok = tok
        self.cfg = cfg
        self.avoid = set(avoid) | {s.key for s in self.scenes}
        self.rng = random.Random(f"{cfg.seed}:clip-batches")
        self._order: list[int] = []

    def _next(self) -> int:
        if not self._order:
            self._order = list(range(len(self.scenes)))
            self.rng.shuffle(self._order)
        return self._order.pop()

    def __call__(self):
        from .evaluate import pixel_values
        from .scenes import captions, hard_negatives, jitter, render

        cfg, rng = self.cfg, self.rng
        n_neg = int(round(cfg.batch_size * cfg.hard_negative_frac))
        base = [self.scenes[self._next()] for _ in range(cfg.batch_size - n_neg)]
        batch = list(base)
        tries = 0
        while len(batch) < cfg.batch_size and tries < 4 * cfg.batch_size:
            tries += 1
            s = base[rng.randrange(len(base))]
            negs = hard_negatives(s, rng, avoid=self.avoid)
            if negs:
                batch.append(negs[rng.choice(sorted(negs))])
        while len(batch) < cfg.batch_size:
            batch.append(self.scenes[self._next()])
        # one hard negative can equal another batch item's content: keep one per key
        seen, unique = set(), []
        for s in batch:
            if s.key not in seen:
                seen.add(s.key)
                unique.append(s)
        moved = [jitter(s, rng) for s in unique]
        images = [render(s, cfg.image_size) for s in moved]
        texts = [rng.choice(captions(s)) for s in unique]
        enc = self.tok(texts, padding=True, truncation=True, return_tensors="pt")
        return pixel_values(images), enc["input_ids"], enc["attention_mask"], moved


def region_weights(scenes, grid: int) -> tuple[Any, list[str]]:
    """Patch-averaging weights of every object and its phrase.

    Returns
    -------
    weights : Tensor [R, B * grid * grid]
        Row ``r`` averages the patches (row-major per image) whose centre lies inside
        object ``r`` (at least the patch holding its centre).
    phrases : list of str
        ``"small red circle"`` per object.
    """
    import torch

    rows, phrases = [], []
    n = grid * grid
    centres = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid
    cy, cx = torch.meshgrid(centres, centres, indexing="ij")
    for b, s in enumerate(scenes):
        for o in s.objects:
            inside = ((cx - o.x) ** 2 + (cy - o.y) ** 2).sqrt() <= o.radius
            inside[min(grid - 1, int(o.y * grid)), min(grid - 1, int(o.x * grid))] = True
            w = torch.zeros(len(scenes) * n)
            w[b * n : (b + 1) * n] = inside.flatten().float() / inside.sum()
            rows.append(w)
            phrases.append(o.phrase)
    return torch.stack(rows), phrases


class RegionHead:
    """Training-only head of the region-phrase loss (a linear map and a logit scale)."""

    def __init__(self, d_vision: int, d_proj: int):
        import torch

        self.proj = torch.nn.Linear(d_vision, d_proj)
        self.log_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def parameters(self):
        return [*self.proj.parameters(), self.log_scale]

    def loss(self, model, tok, hidden, scenes, grid: int):
        """Cross-entropy of each object's region over the batch's distinct phrases."""
        import torch

        weights, phrases = region_weights(scenes, grid)
        patches = hidden[:, 1:].reshape(-1, hidden.shape[-1])  # [B * grid^2, d]
        region = torch.nn.functional.normalize(self.proj(weights @ patches), dim=-1)
        distinct = sorted(set(phrases))
        enc = tok(distinct, padding=True, return_tensors="pt")
        out = model.get_text_features(
            input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]
        )
        text = torch.nn.functional.normalize(
            out if torch.is_tensor(out) else out.pooler_output, dim=-1
        )
        target = torch.tensor([distinct.index(p) for p in phrases])
        scale = self.log_scale.clamp(0, math.log(100)).exp()
        return torch.nn.functional.cross_entropy(scale * region @ text.T, target)


def lr_at(step: int, cfg: ClipTrainConfig) -> float:
    """Linear warm-up then cosine decay to ``min_lr``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, t)))


def train(cfg: ClipTrainConfig, *, progress: bool = True) -> tuple[Any, Any, dict]:
    """Train a CLIP; return ``(model, tokenizer, history)``.

    ``history`` holds the per-step ``loss`` list, ``val`` evaluations (step,
    Recall@k), ``wall_s`` and the final ``test`` retrieval scores.
    """
    import torch
    from tqdm.auto import tqdm

    from .evaluate import clip_retrieval
    from .scenes import make_splits

    torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    splits = make_splits(cfg.data_seed, {"train": cfg.train_scenes, **EVAL_SIZES})
    tok = build_tokenizer(cfg)
    model = build_model(cfg, tok)
    avoid = {s.key for name in ("val", "test") for s in splits[name]}
    batches = SceneBatches(splits["train"], tok, cfg, avoid)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [
        p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)
    ]
    head = RegionHead(cfg.vision_hidden, cfg.projection_dim)
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay + head.parameters(), "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("CLIP with %.2fM parameters; %d train scenes", n_params / 1e6, len(splits["train"]))
    history: dict[str, Any] = {"loss": [], "region_loss": [], "val": [], "n_params": n_params}
    bar = tqdm(range(cfg.steps), desc="clip", disable=not progress, mininterval=5)
    for step in bar:
        model.train()
        px, ids, mask, scenes = batches()
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        out = model(
            input_ids=ids,
            attention_mask=mask,
            pixel_values=px,
            return_loss=True,
            output_hidden_states=cfg.region_weight > 0,
        )
        loss = out.loss
        if cfg.region_weight > 0:
            hidden = out.vision_model_output.hidden_states[cfg.region_layer]
            region = head.loss(model, tok, hidden, scenes, cfg.image_size // cfg.patch_size)
            loss = loss + cfg.region_weight * region
            history["region_loss"].append(region.item())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        history["loss"].append(loss.item())
        bar.set_postfix(loss=f"{history['loss'][-1]:.3f}", refresh=False)
        last = step + 1 == cfg.steps
        if cfg.eval_every and ((step + 1) % cfg.eval_every == 0 or last):
            r = clip_retrieval(model, tok, splits["val"], image_size=cfg.image_size)
            history["val"].append({"step": step + 1, "t2i": r["t2i"], "i2t": r["i2t"]})
            recent = history["loss"][-50:]
            recent_region = history["region_loss"][-50:] or [0.0]
            logger.info(
                "step %d loss %.3f (region %.3f; means of the last %d) val t2i R@1 %.3f "
                "R@5 %.3f i2t R@1 %.3f",
                step + 1,
                sum(recent) / len(recent),
                sum(recent_region) / len(recent_region),
                len(recent),
                r["t2i"][1],
                r["t2i"][5],
                r["i2t"][1],
            )
    history["wall_s"] = time.perf_counter() - t0
    if cfg.test_eval:
        history["test"] = clip_retrieval(model, tok, splits["test"], image_size=cfg.image_size)
    model.eval()
    return model, tok, history


def save(model, tok, out_dir: str | Path, cfg: ClipTrainConfig, history: dict) -> Path:
    """Write ``out_dir/clip-scenes`` (fp16 weights) and update ``out_dir/manifest.json``."""
    import copy

    import torch
    from transformers import CLIPProcessor

    from .models import image_processor, update_manifest

    root = Path(out_dir)
    folder = root / CLIP_DIR
    folder.mkdir(parents=True, exist_ok=True)
    half = copy.deepcopy(model).to(torch.float16)
    half.save_pretrained(folder)
    CLIPProcessor(image_processor=image_processor(cfg.image_size), tokenizer=tok).save_pretrained(
        folder
    )
    info = {
        "config": cfg.to_dict(),
        "wall_s": round(history["wall_s"], 1),
        "n_params": history["n_params"],
        "final_loss": sum(history["loss"][-50:]) / max(1, len(history["loss"][-50:])),
        "val": history["val"],
        "test": history.get("test"),
        "loss": [round(v, 4) for v in history["loss"]],
        "region_loss": [round(v, 4) for v in history["region_loss"]],
    }
    atomic_write_text(root / "clip-scenes.train.json", json.dumps(info, indent=2) + "\n")
    update_manifest(root)
    return folder


def add_config_flags(parser: argparse.ArgumentParser, defaults: Any) -> None:
    """One ``--flag`` per field of a config dataclass (``--x`` / ``--no-x`` for booleans)."""
    for f in dataclasses.fields(defaults):
        flag = "--" + f.name.replace("_", "-")
        value = getattr(defaults, f.name)
        if isinstance(value, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=value)
        else:
            parser.add_argument(flag, type=type(value), default=value)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Train the demo CLIP on the shape scenes.")
    p.add_argument(
        "--out", required=True, help="weights folder (writes clip-scenes/ and manifest.json)"
    )
    add_config_flags(p, ClipTrainConfig())
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = ClipTrainConfig(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(ClipTrainConfig)}
    )
    model, tok, history = train(cfg, progress=not args.no_progress)
    folder = save(model, tok, args.out, cfg, history)
    t = history.get("test") or {}
    summary = {"out": str(folder), "wall_s": round(history["wall_s"], 1)}
    summary.update({k: t.get(k) for k in ("t2i", "i2t", "chance_t2i")})
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
