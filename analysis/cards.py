"""Feature cards: one concept's statistics, tag, top-activating inputs and bridge partners."""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from saeprobe import Item


@dataclass
class TopInput:
    """An input that activates the concept strongly (``image_png`` is base64 PNG or None)."""

    sample_id: int
    activation: float
    item_id: str | None = None
    text: str | None = None
    image_png: str | None = None


@dataclass
class FeatureCard:
    """Everything shown for one concept in the report."""

    feature: int
    stats: dict[str, float]
    tag: str
    is_bridge: bool = False
    is_distractor: bool = False
    top_inputs: list[TopInput] = field(default_factory=list)
    bridges_to: list[tuple[int, float]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_html(self) -> str:
        return render_card(self)


def image_to_png_b64(image: Any, size: int = 96) -> str:
    """A PIL image (or array) as a base64 PNG thumbnail of at most ``size`` pixels a side."""
    from PIL import Image

    img = image if isinstance(image, Image.Image) else Image.fromarray(image)
    img = img.convert("RGB")
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


ItemLookup = Sequence[Item] | Mapping[int, Item] | Callable[[int], Item | None] | None


def _lookup(items: ItemLookup | Any, sample_id: int) -> Item | None:
    """The item of a store sample id from a list, a dict, a callable or a data source
    (anything with ``.item(index)``, e.g. :func:`saeprobe.data.open_source`)."""
    if items is None:
        return None
    if hasattr(items, "item") and not isinstance(items, (Sequence, Mapping)):
        try:
            return items.item(sample_id)
        except (IndexError, KeyError):
            return None
    if callable(items) and not isinstance(items, (Sequence, Mapping)):
        return items(sample_id)
    if isinstance(items, Mapping):
        return items.get(sample_id)
    return items[sample_id] if 0 <= sample_id < len(items) else None


def build_card(
    feature: int,
    stats: Mapping[str, float],
    tag: str,
    top: Sequence[tuple[int, float]] = (),
    items: ItemLookup = None,
    bridges_to: Sequence[tuple[int, float]] = (),
    is_bridge: bool = False,
    is_distractor: bool = False,
    thumb_size: int = 96,
    max_text: int = 300,
) -> FeatureCard:
    """Build a card; ``top`` is ``[(sample_id, activation)]`` (sample id = index of the item in
    data order, as in activation stores), resolved through ``items`` (a list of
    :class:`saeprobe.Item`, a dict or a callable)."""
    inputs = []
    for sid, act in top:
        it = _lookup(items, int(sid))
        text = img = None
        item_id = None
        if it is not None:
            item_id = it.id
            text = (it.text or "")[:max_text] or None
            if it.image is not None:
                img = image_to_png_b64(it.image, thumb_size)
        inputs.append(TopInput(int(sid), float(act), item_id, text, img))
    return FeatureCard(
        int(feature),
        {k: float(v) for k, v in stats.items()},
        tag,
        bool(is_bridge),
        bool(is_distractor),
        inputs,
        [(int(j), float(v)) for j, v in bridges_to],
    )


def _fmt(v: float) -> str:
    return "nan" if isinstance(v, float) and math.isnan(v) else f"{v:.4g}"


def render_card(card: FeatureCard) -> str:
    """Self-contained HTML fragment of a card (images inline as data URIs)."""
    e = html.escape
    flags = []
    if card.is_bridge:
        flags.append('<span class="flag bridge">bridge</span>')
    if card.is_distractor:
        flags.append('<span class="flag distractor">distractor</span>')
    stats = "".join(f"<tr><th>{e(k)}</th><td>{_fmt(v)}</td></tr>" for k, v in card.stats.items())
    tops = []
    for t in card.top_inputs:
        img = (
            f'<img alt="sample {t.sample_id}" src="data:image/png;base64,{t.image_png}">'
            if t.image_png
            else ""
        )
        label = e(t.item_id) if t.item_id else f"sample {t.sample_id}"
        txt = f"<div class='txt'>{e(t.text)}</div>" if t.text else ""
        tops.append(
            f"<div class='top'>{img}<div class='meta'>{label} &middot; z = {t.activation:.3g}</div>{txt}</div>"
        )
    bridges = ", ".join(f"c{j} ({v:.3g})" for j, v in card.bridges_to) or "none"
    return (
        f"<div class='card' id='card-{card.feature}'><h3>concept {card.feature} "
        f"<span class='tag {e(card.tag)}'>{e(card.tag)}</span>{''.join(flags)}</h3>"
        f"<table class='stats'>{stats}</table>"
        f"<div class='bridges'>bridges to: {bridges}</div>"
        f"<div class='tops'>{''.join(tops) or '<em>no top inputs recorded</em>'}</div></div>"
    )
