"""A small but real run folder for tests (``docs/run-folder.md``), built offline in seconds.

:func:`build_tiny_run` runs the real pipeline on a tiny random Qwen2-VL checkpoint and a few
scikit-image photos with two captions each: :func:`saeprobe.capture.capture` of two hook
points (``final_norm`` and ``resid_post.0``, one forward), one Top-K SAE per hook point
(:func:`sae_training.train`), :func:`analysis.analyze_store` (features, summary, report),
and text-to-image / image-to-text retrieval tasks from the pooled ``mean`` embeddings
(:meth:`saeprobe.run.RunWriter.add_task`). The two hook points are registered as two
models (``tiny-qwen`` and ``tiny-qwen-l0``), so the explorer's model and task menus have
something to choose from.

The random weights make the numbers meaningless; the files are what matter.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["TINY_PHOTOS", "build_tiny_run", "tiny_run_items"]

#: scikit-image sample -> (longest side in pixels, two captions); varied aspect ratios give
#: square and non-square image-token grids
TINY_PHOTOS: dict[str, tuple[int, tuple[str, str]]] = {
    "astronaut": (112, ("A woman in a space suit holding a helmet.", "An astronaut by a flag.")),
    "chelsea": (112, ("A ginger cat looking to the side.", "A cat with orange fur.")),
    "coffee": (112, ("A cup of coffee on a saucer.", "A coffee cup seen from above.")),
    "rocket": (112, ("A rocket on the launch pad.", "A space shuttle ready for launch.")),
    "hubble_deep_field": (112, ("Distant galaxies in deep space.", "A telescope image.")),
    "coins": (112, ("Old coins lying on a table.", "Many small grey coins.")),
    "camera": (84, ("A man with a camera on a tripod.", "A photographer in a field.")),
    "colorwheel": (84, ("A wheel of bright colours.", "A rainbow colour circle.")),
}

#: (model name, hook point); both come from one capture forward
_MODELS = (("tiny-qwen", "final_norm"), ("tiny-qwen-l0", "resid_post.0"))
_SOURCE = "photos"
_DONE = ".tiny_run_complete"


def tiny_run_items() -> list:
    """The photos and their captions as :class:`saeprobe.Item` s, images first.

    Returns
    -------
    list[Item]
        ``len(TINY_PHOTOS)`` image items (ids = photo names) followed by two caption items
        per photo (ids ``<name>#0`` / ``<name>#1``).
    """
    import numpy as np
    from PIL import Image
    from skimage import data

    from saeprobe import Item

    images, texts = [], []
    for name, (side, captions) in TINY_PHOTOS.items():
        arr = getattr(data, name)()
        if arr.dtype == bool:
            arr = arr.astype(np.uint8) * 255
        img = Image.fromarray(arr).convert("RGB")
        img.thumbnail((side, side))
        images.append(Item(name, None, img))
        texts += [Item(f"{name}#{j}", caption) for j, caption in enumerate(captions)]
    return images + texts


def build_tiny_run(out: str | Path, *, steps: int = 150, seed: int = 0) -> Path:
    """Build (once) a run folder with two models, two tasks each, items with thumbnails.

    Parameters
    ----------
    out : str | Path
        The run folder. When it already holds a completed tiny run it is reused as is;
        anything else there (an interrupted build) is removed first.
    steps : int
        SAE training steps per model (batch 64 tokens).
    seed : int
        Seed of the SAE training.

    Returns
    -------
    Path
        ``out``, readable with :class:`saeprobe.run.RunFolder`.
    """
    out = Path(out)
    if (out / _DONE).is_file():
        return out
    if out.exists():  # an interrupted build: start again
        shutil.rmtree(out)
    from saeprobe.atomic import atomic_write_text
    from saeprobe.capture import capture
    from saeprobe.models import load_model
    from saeprobe.run import RunWriter

    from .tiny_models import build_tiny_model

    t0 = time.perf_counter()
    writer = RunWriter(out, title="tiny test run")
    items = tiny_run_items()
    writer.add_items(_SOURCE, items)
    model_dir = build_tiny_model("qwen2_vl", out / "checkpoints" / "qwen2_vl")
    adapter = load_model(str(model_dir), dtype="float32")
    capture_dir = out / "capture"
    capture(
        adapter,
        items,
        [hp for _, hp in _MODELS],
        out=str(capture_dir),
        batch_size=8,
        dtype="float32",
        progress=False,
        data_spec="saeprobe.testing.run",
        model_name=str(model_dir),
    )
    writer.set_stage("capture", time.perf_counter() - t0)
    for name, hook in _MODELS:
        _add_model(
            writer, name, hook, model_dir, adapter.d_model, capture_dir / hook, items, steps, seed
        )
    shutil.rmtree(capture_dir, ignore_errors=True)  # the stores now live in the model folders
    writer.set_stage("total", time.perf_counter() - t0)
    atomic_write_text(out / _DONE, "ok\n", what="marker")
    logger.info("tiny run built in %.1fs at %s", time.perf_counter() - t0, out)
    return out


def _add_model(writer, name, hook, model_dir, d, store_dir, items, steps, seed) -> None:
    """Move the store into the model folder, train its SAE, analyse it, add its tasks."""
    folder = writer.add_model(
        name, path=str(model_dir), kind="mllm", d=d, hook_point=hook, pool="mean", items=_SOURCE
    )
    store = folder / "store"
    if not store.exists():
        shutil.move(str(store_dir), str(store))
    t = time.perf_counter()
    _train(store, folder / "sae", d, steps, seed)
    writer.set_stage(f"train:{name}", time.perf_counter() - t)
    t = time.perf_counter()
    _analyze(folder, store, items)
    writer.set_stage(f"analyze:{name}", time.perf_counter() - t)
    _tasks(writer, name, store, items)


def _train(store: Path, sae_dir: Path, d: int, steps: int, seed: int) -> None:
    from sae_training import StoreSource, TrainConfig, train

    cfg = TrainConfig(
        arch="topk",
        d_in=d,
        width=8 * d,
        k=8,
        recipe="default",
        batch_size=64,
        total_tokens=64 * steps,
        lr=4e-3,
        out_dir=str(sae_dir),
        log_interval=max(1, steps),
        ckpt_interval=steps,
        progress=False,
        device="cpu",
        autocast="none",
        seed=seed,
    )
    train(cfg, StoreSource(str(store)))


def _analyze(folder: Path, store: Path, items: list) -> None:
    from analysis import Pairs, analyze_store
    from saeprobe.store import ActivationStore

    emb, ids = _pooled(ActivationStore(store))
    row = {i: r for r, i in enumerate(ids)}
    captions = [it for it in items if it.image is None]
    img_rows = [row[it.id.split("#")[0]] for it in captions]
    txt_rows = [row[it.id] for it in captions]
    pairs = Pairs(
        emb[img_rows],
        emb[txt_rows],
        [it.id for it in captions],
        {"source": "tiny run"},
        [it.id.split("#")[0] for it in captions],
    )
    analyze_store(
        sae=str(folder / "sae"),
        activations=str(store),
        out=str(folder / "analysis"),
        pairs=pairs,
        items=items,
        title=f"tiny run: {folder.name}",
    )


def _pooled(store) -> tuple:
    pooled, _, ids = store.read_pooled()
    return pooled["mean"].float(), ids


def _tasks(writer, name: str, store: Path, items: list) -> None:
    from saeprobe.store import ActivationStore

    emb, ids = _pooled(ActivationStore(store))
    row = {i: r for r, i in enumerate(ids)}
    images = [it.id for it in items if it.image is not None]
    texts = [it.id for it in items if it.image is None]
    img_of = {t: images.index(t.split("#")[0]) for t in texts}
    common = dict(query_items=_SOURCE, candidate_items=_SOURCE)
    writer.add_task(
        name,
        "t2i",
        queries=emb[[row[t] for t in texts]],
        candidates=emb[[row[i] for i in images]],
        relevant=[{img_of[t]} for t in texts],
        query_ids=texts,
        candidate_ids=images,
        query_modality="text",
        candidate_modality="image",
        task_type=1,
        **common,
    )
    writer.add_task(
        name,
        "i2t",
        queries=emb[[row[i] for i in images]],
        candidates=emb[[row[t] for t in texts]],
        relevant=[{j for j, t in enumerate(texts) if img_of[t] == k} for k in range(len(images))],
        query_ids=images,
        candidate_ids=texts,
        query_modality="image",
        candidate_modality="text",
        task_type=2,
        **common,
    )
