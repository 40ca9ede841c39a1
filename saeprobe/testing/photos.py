"""A small captioned photo folder (scikit-image sample photos), for tests and examples."""

from __future__ import annotations

from pathlib import Path

__all__ = ["PHOTOS", "write_photo_folder"]

#: scikit-image sample -> its two captions
PHOTOS: dict[str, list[str]] = {
    "astronaut": [
        "A woman in a space suit holding a helmet.",
        "An astronaut posing next to a flag.",
    ],
    "chelsea": ["A ginger cat looking to the side.", "A cat with orange fur on the floor."],
    "coffee": ["A cup of coffee on a saucer.", "A coffee cup with a spoon, seen from above."],
    "rocket": ["A rocket on the launch pad.", "A space shuttle ready for launch."],
    "hubble_deep_field": ["Distant galaxies in deep space.", "A telescope image full of galaxies."],
    "coins": ["Old coins lying on a table.", "A grey picture of many small coins."],
}


def write_photo_folder(folder: str | Path, size: int = 64) -> Path:
    """``folder/<name>.png`` (``size`` px squares) and ``captions.csv`` (image, caption) for
    :data:`PHOTOS`: an ``images+captions`` source for :func:`saeprobe.data.open_source`."""
    import csv

    from PIL import Image
    from skimage import data

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, captions in PHOTOS.items():
        img = Image.fromarray(getattr(data, name)()).convert("RGB").resize((size, size))
        img.save(folder / f"{name}.png")
        rows += [(f"{name}.png", c) for c in captions]
    with open(folder / "captions.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption"])
        w.writerows(rows)
    return folder
