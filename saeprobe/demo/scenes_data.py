"""Write the shape scenes (:mod:`saeprobe.demo.scenes`) as files saeprobe's readers open.

* :func:`write_coco_parquet`: a COCO-Caption-style parquet (``question_id``, ``image``
  ``{bytes, path}``, ``answer`` = the five captions, plus ``layout`` and ``scene``, the
  scene as JSON), read by :func:`saeprobe.data.open_source` /
  :class:`~saeprobe.data.coco.CocoCaptionSource`.
* :func:`write_mbeir_tasks`: M-BEIR task folders (MRBench parquet layout, read by
  :func:`saeprobe.data.mbeir.open_mbeir`) for the paper's task types 1 (text -> image),
  2 (text -> text), 4 (image -> text), 5 (image -> image) and 7 (image + edit -> image),
  each corpus holding hard negatives that differ from a positive in exactly one
  attribute. Every folder also has ``items.jsonl``: per query / candidate its role
  (``query``, ``positive``, ``hard_negative``, ``distractor``), the attribute a hard
  negative changes and the scene as JSON.
* :func:`write_skimage_task`: an out-of-domain text -> image folder from the
  scikit-image sample photos, with captions written for them.
* :func:`write_dataset`: all of it under one folder, plus ``dataset.json``.

The same arguments give byte-identical files (fixed PNG settings, seeded RNGs, no
timestamps).

Folder names carry M-BEIR's own 0-based task id (``mbeir_scenes_task0`` is the paper's
task 1, see :data:`saeprobe.data.mbeir.MBEIR_ID_TO_TASK`)::

    python -m saeprobe.demo.scenes_data --out data/scenes --seed 0
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_parquet, atomic_write_text
from .scenes import Scene, captions, edit, hard_negatives, jitter, make_splits, render

logger = logging.getLogger(__name__)

__all__ = [
    "MBEIR_FOLDERS",
    "SKIMAGE_CAPTIONS",
    "TaskData",
    "build_tasks",
    "png_bytes",
    "write_coco_parquet",
    "write_dataset",
    "write_mbeir_tasks",
    "write_skimage_task",
]

#: paper task type -> M-BEIR 0-based task id used in the folder name
MBEIR_FOLDERS: dict[int, int] = {1: 0, 2: 1, 4: 3, 5: 4, 7: 7}

#: scikit-image sample photos (offline in scikit-image) and a caption for each
SKIMAGE_CAPTIONS: dict[str, str] = {
    "astronaut": "an astronaut in a white space suit next to a flag",
    "chelsea": "a ginger cat with green eyes looking to the side",
    "coffee": "a cup of coffee on a saucer seen from above",
    "rocket": "a rocket standing on its launch pad",
    "coins": "a grey photo of many old coins",
    "camera": "a man with a camera on a tripod",
    "moon": "the grey surface of the moon full of craters",
    "horse": "the black silhouette of a horse",
    "hubble_deep_field": "many distant galaxies in deep space",
    "immunohistochemistry": "a stained tissue sample under a microscope",
    "page": "a scanned page of printed text",
    "clock": "a wall clock with a white face",
    "checkerboard": "a black and white checkerboard pattern",
    "logo": "the scikit-image logo, a snake on a circle",
    "colorwheel": "a colour wheel with a rainbow of hues",
    "brick": "a grey wall of bricks",
    "grass": "a close view of grass",
    "gravel": "a close view of grey gravel",
    "retina": "a photo of the retina of an eye",
    "cell": "a grey microscope image of a cell",
}


def png_bytes(image: Any) -> bytes:
    """Encode a PIL image as PNG with fixed settings (deterministic bytes)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=6, optimize=False)
    return buf.getvalue()


def _scene_json(scene: Scene) -> str:
    return json.dumps(scene.to_dict(), sort_keys=True, separators=(",", ":"))


def write_coco_parquet(
    path: str | os.PathLike,
    scenes: list[Scene],
    *,
    image_size: int = 96,
    row_group_size: int = 256,
) -> Path:
    """Write scenes as one COCO-Caption-style parquet file.

    Parameters
    ----------
    path : path
        The ``.parquet`` file (e.g. ``coco/test-00000-of-00001.parquet``, a name
        :func:`saeprobe.data.coco.resolve_parquet_files` reads as split ``test``).
    scenes : list of Scene
    image_size : int
        Rendered side in pixels.

    Returns
    -------
    Path of the written file. Columns: ``question_id`` (scene id), ``image``
    ``{bytes, path}`` (PNG), ``answer`` (list of 5 captions), ``layout``, ``scene``
    (JSON of :meth:`Scene.to_dict`).
    """
    import pyarrow as pa

    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema(
        [
            ("question_id", pa.string()),
            ("image", image_type),
            ("answer", pa.list_(pa.string())),
            ("layout", pa.string()),
            ("scene", pa.string()),
        ]
    )
    table = pa.table(
        {
            "question_id": [s.id for s in scenes],
            "image": [
                {"bytes": png_bytes(render(s, image_size)), "path": f"{s.id}.png"} for s in scenes
            ],
            "answer": [captions(s) for s in scenes],
            "layout": [s.layout for s in scenes],
            "scene": [_scene_json(s) for s in scenes],
        },
        schema=schema,
    )
    out = Path(path)
    atomic_write_parquet(out, table, what="parquet", row_group_size=max(1, row_group_size))
    return out


@dataclass
class TaskData:
    """One retrieval task in memory (before writing).

    Attributes
    ----------
    task : int
        The paper's task type.
    queries, corpus : list of dict
        ``{"id", "text", "scene", "role", "attribute"}``; ``scene`` is rendered for
        image sides, ``text`` is set for text sides.
    qrels : dict query id -> list of relevant corpus ids
    """

    task: int
    queries: list[dict] = field(default_factory=list)
    corpus: list[dict] = field(default_factory=list)
    qrels: dict[str, list[str]] = field(default_factory=dict)


def _entry(id_: str, scene: Scene, role: str, text: str | None = None, attribute=None) -> dict:
    return {"id": id_, "text": text, "scene": scene, "role": role, "attribute": attribute}


def build_tasks(scenes: list[Scene], *, seed: int = 0, tag: str = "test") -> dict[int, TaskData]:
    """Queries, corpora (positives + hard negatives) and qrels of tasks 1, 2, 4, 5, 7.

    Per scene ``s`` (hard negatives avoid the content of every scene of ``scenes``):

    * task 1, text -> image: a caption of ``s`` -> its image; corpus: every scene's
      image and its hard negatives (one per attribute: colour, shape, size, relation,
      count, where applicable);
    * task 2, text -> text: caption 0 -> its captions 1-4; corpus: those plus one
      caption of each hard negative;
    * task 4, image -> text: the image -> its 5 captions; corpus: those plus one
      caption of each hard negative;
    * task 5, image -> image: the image -> a jittered re-render; corpus: the
      re-renders plus the hard negatives (each with its own jitter);
    * task 7, image + edit -> image: the image and an edit ("make the red circle
      green") -> the edited scene; corpus: the edited scenes, the unedited scene
      (re-jittered; it differs from the target in the edited attribute) and one hard
      negative of the edited scene.

    Parameters
    ----------
    scenes : list of Scene
        One split's scenes.
    seed : int
    tag : str
        Mixed into the RNG seed (the split name).
    """
    rng = random.Random(f"{seed}:{tag}:tasks")
    keys = {s.key for s in scenes}
    tasks = {t: TaskData(t) for t in MBEIR_FOLDERS}
    for s in scenes:
        caps = captions(s)
        negs = hard_negatives(s, rng, avoid=keys)
        # task 1
        j = rng.randrange(len(caps))
        t1 = tasks[1]
        t1.queries.append(_entry(f"{s.id}#{j}", s, "query", caps[j]))
        t1.corpus.append(_entry(s.id, s, "positive"))
        t1.corpus += [_entry(n.id, n, "hard_negative", attribute=a) for a, n in negs.items()]
        t1.qrels[f"{s.id}#{j}"] = [s.id]
        # tasks 2 and 4: captions
        neg_caps = []
        for a, n in negs.items():
            k = rng.randrange(1, len(caps))
            neg_caps.append(_entry(f"{n.id}#{k}", n, "hard_negative", captions(n)[k], a))
        t2 = tasks[2]
        t2.queries.append(_entry(f"{s.id}#0", s, "query", caps[0]))
        t2.corpus += [_entry(f"{s.id}#{k}", s, "positive", caps[k]) for k in range(1, len(caps))]
        t2.corpus += neg_caps
        t2.qrels[f"{s.id}#0"] = [f"{s.id}#{k}" for k in range(1, len(caps))]
        t4 = tasks[4]
        t4.queries.append(_entry(s.id, s, "query"))
        t4.corpus += [_entry(f"{s.id}#{k}", s, "positive", caps[k]) for k in range(len(caps))]
        t4.corpus += neg_caps
        t4.qrels[s.id] = [f"{s.id}#{k}" for k in range(len(caps))]
        # task 5: jittered re-render
        t5 = tasks[5]
        moved = jitter(s, rng)
        t5.queries.append(_entry(s.id, s, "query"))
        t5.corpus.append(_entry(moved.id, moved, "positive"))
        for a, n in negs.items():
            t5.corpus.append(_entry(n.id, jitter(n, rng, suffix=""), "hard_negative", attribute=a))
        t5.qrels[s.id] = [moved.id]
        # task 7: edit
        made = edit(s, rng, avoid=keys)
        if made is None:
            logger.info("no valid edit for %s; left out of task 7", s.id)
            continue
        instruction, attr, target = made
        t7 = tasks[7]
        t7.queries.append(_entry(s.id, s, "query", instruction, attr))
        t7.corpus.append(_entry(target.id, target, "positive", attribute=attr))
        t7.corpus.append(
            _entry(f"{s.id}~orig", jitter(s, rng, suffix="~orig"), "hard_negative", attribute=attr)
        )
        tneg = hard_negatives(target, rng, avoid=keys | {s.key})
        if tneg:
            a = rng.choice(sorted(tneg))
            t7.corpus.append(_entry(tneg[a].id, tneg[a], "hard_negative", attribute=a))
        t7.qrels[s.id] = [target.id]
    return tasks


def _write_task(out: Path, data: TaskData, image_size: int) -> Path:
    from .._types import Item
    from ..data.mbeir import TASKS, write_task_folder

    qkind, ckind = TASKS[data.task]

    def items(entries: list[dict], kind: str) -> list[Item]:
        rows = []
        for e in entries:
            image = png_bytes(render(e["scene"], image_size)) if "image" in kind else None
            rows.append(Item(e["id"], text=e["text"] if "text" in kind else None, image=image))
        return rows

    write_task_folder(out, items(data.queries, qkind), items(data.corpus, ckind), data.qrels)
    lines = []
    for side, entries in (("query", data.queries), ("corpus", data.corpus)):
        for e in entries:
            row = {
                "side": side,
                "id": e["id"],
                "role": e["role"],
                "attribute": e["attribute"],
                "text": e["text"],
                "scene": e["scene"].to_dict(),
            }
            lines.append(json.dumps(row, sort_keys=True, separators=(",", ":")))
    atomic_write_text(out / "items.jsonl", "\n".join(lines) + "\n")
    return out


def write_mbeir_tasks(
    out_dir: str | os.PathLike,
    scenes: list[Scene],
    *,
    seed: int = 0,
    tag: str = "test",
    image_size: int = 96,
    tasks: tuple[int, ...] = tuple(MBEIR_FOLDERS),
) -> dict[int, Path]:
    """Write M-BEIR task folders ``out_dir/mbeir_scenes_task{K}`` (K: M-BEIR's id).

    See :func:`build_tasks` for what each task holds.

    Returns
    -------
    dict paper task type -> folder.
    """
    unknown = set(tasks) - set(MBEIR_FOLDERS)
    if unknown:
        raise ValueError(
            f"no scene task of types {sorted(unknown)}; choose from {list(MBEIR_FOLDERS)}"
        )
    built = build_tasks(scenes, seed=seed, tag=tag)
    root = Path(out_dir)
    out = {}
    for t in tasks:
        folder = root / f"mbeir_scenes_task{MBEIR_FOLDERS[t]}"
        out[t] = _write_task(folder, built[t], image_size)
        logger.info(
            "task %d: %d queries, %d candidates -> %s",
            t,
            len(built[t].queries),
            len(built[t].corpus),
            folder,
        )
    return out


def skimage_photo(name: str, image_size: int = 96):
    """A scikit-image sample photo, centre-cropped to a square, RGB, ``image_size`` px."""
    import numpy as np
    from PIL import Image
    from skimage import data

    arr = np.asarray(getattr(data, name)())
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype != np.uint8:
        arr = np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    im = Image.fromarray(arr).convert("RGB")
    side = min(im.size)
    left, top = (im.width - side) // 2, (im.height - side) // 2
    im = im.crop((left, top, left + side, top + side))
    return im.resize((image_size, image_size), Image.BICUBIC)


def write_skimage_task(out_dir: str | os.PathLike, *, image_size: int = 96) -> Path:
    """Out-of-domain text -> image task (paper task 1) from scikit-image sample photos.

    Queries are the captions of :data:`SKIMAGE_CAPTIONS`, the corpus the photos.
    """
    from .._types import Item
    from ..data.mbeir import write_task_folder

    names = list(SKIMAGE_CAPTIONS)
    queries = [Item(f"{n}#0", text=SKIMAGE_CAPTIONS[n]) for n in names]
    corpus = [Item(n, image=png_bytes(skimage_photo(n, image_size))) for n in names]
    qrels = {f"{n}#0": [n] for n in names}
    return write_task_folder(Path(out_dir), queries, corpus, qrels)


def write_dataset(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    sizes: dict[str, int] | None = None,
    image_size: int = 96,
    task_splits: tuple[str, ...] = ("test",),
) -> dict[str, Any]:
    """Write the whole scenes dataset.

    Layout::

        out_dir/coco/{train,val,test}-00000-of-00001.parquet
        out_dir/mbeir/{split}/mbeir_scenes_task{0,1,3,4,7}/   (per split in task_splits)
        out_dir/mbeir/mbeir_skimage_task0/
        out_dir/dataset.json

    Parameters
    ----------
    out_dir : path
    seed : int
    sizes : dict, optional
        Scenes per split (see :func:`saeprobe.demo.scenes.make_splits`).
    image_size : int
    task_splits : tuple of str
        Splits written as M-BEIR task folders.

    Returns
    -------
    dict: ``coco`` (split -> file), ``mbeir`` (split -> {task: folder}), ``ood`` (folder),
    ``sizes``.
    """
    root = Path(out_dir)
    splits = make_splits(seed, sizes)
    coco = {
        name: write_coco_parquet(
            root / "coco" / f"{name}-00000-of-00001.parquet", scenes, image_size=image_size
        )
        for name, scenes in splits.items()
    }
    mbeir = {
        name: write_mbeir_tasks(
            root / "mbeir" / name, splits[name], seed=seed, tag=name, image_size=image_size
        )
        for name in task_splits
    }
    ood = write_skimage_task(root / "mbeir" / "mbeir_skimage_task0", image_size=image_size)
    info = {
        "seed": seed,
        "image_size": image_size,
        "sizes": {k: len(v) for k, v in splits.items()},
        "coco": {k: str(v.relative_to(root)) for k, v in coco.items()},
        "mbeir": {
            split: {str(t): str(p.relative_to(root)) for t, p in f.items()}
            for split, f in mbeir.items()
        },
        "ood": str(ood.relative_to(root)),
    }
    atomic_write_text(root / "dataset.json", json.dumps(info, indent=2, sort_keys=True) + "\n")
    return {"coco": coco, "mbeir": mbeir, "ood": ood, "sizes": info["sizes"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", type=int, default=6000, help="train scenes")
    p.add_argument("--val", type=int, default=300, help="validation scenes")
    p.add_argument("--test", type=int, default=500, help="test scenes")
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--task-splits", default="test", help="comma-separated splits written as M-BEIR")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    res = write_dataset(
        args.out,
        seed=args.seed,
        sizes={"train": args.train, "val": args.val, "test": args.test},
        image_size=args.image_size,
        task_splits=tuple(s for s in args.task_splits.split(",") if s),
    )
    print(json.dumps({"sizes": res["sizes"], "out": str(args.out)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
