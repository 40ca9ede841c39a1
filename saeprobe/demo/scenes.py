"""Rendered shape scenes: a deterministic, captioned toy domain for the demo models.

A :class:`Scene` holds one to three :class:`SceneObject` (shape x colour x size, a
position, a scale and a rotation) on a plain background with a texture. Three layouts:

``group``
    ``n`` identical objects (``n`` in 1-3): "two small green triangles".
``pair``
    two different objects and the relation of the first to the second
    (left / right / above / below): "a small red circle left of a large blue square".
``triple``
    three different objects: "a small red circle, a large blue square and a medium
    green star".

Every caption names every object's size, colour and shape, and the count (group) or
the relation (pair); the background is named in one caption of group scenes. The
*content* of a scene is what its captions say (:attr:`Scene.key`); positions, the
background and the texture are nuisance. Content keys are unique over all splits, so
train / validation / test are disjoint by content.

Derived scenes (all keep the layout's validity: distinct objects in pairs / triples,
no overlap, inside the image):

* :func:`jitter`: the same content re-placed a little (position, scale, rotation);
* :func:`hard_negatives`: one scene per attribute (colour, shape, size, relation,
  count) that differs from the scene in exactly that attribute;
* :func:`edit`: an edit instruction ("make the red circle green") and the edited scene.

Everything is drawn with PIL from a seeded :class:`random.Random` (string seeds hash
with SHA-512, independent of ``PYTHONHASHSEED``), so the same seed gives the same
pixels.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "COUNT_WORDS",
    "EDIT_ATTRIBUTES",
    "LAYOUTS",
    "NEGATIVE_ATTRIBUTES",
    "RELATIONS",
    "SHAPES",
    "SIZES",
    "SPLITS",
    "TEXTURES",
    "Scene",
    "SceneObject",
    "attribute_diff",
    "captions",
    "edit",
    "hard_negatives",
    "jitter",
    "make_scene",
    "make_splits",
    "relation_between",
    "render",
]

#: shape names (all start with a consonant, plural in :data:`PLURALS`)
SHAPES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "diamond",
    "star",
    "cross",
    "heart",
    "crescent",
)
PLURALS: dict[str, str] = {s: ("crosses" if s == "cross" else s + "s") for s in SHAPES}
#: object colour name -> RGB (well apart, none used by a background)
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (40, 165, 60),
    "blue": (40, 80, 225),
    "yellow": (240, 215, 40),
    "purple": (140, 55, 180),
    "orange": (245, 135, 25),
    "white": (246, 246, 246),
    "black": (22, 22, 22),
}
#: size name -> nominal radius as a fraction of the image side
SIZES: dict[str, float] = {"small": 0.075, "medium": 0.112, "large": 0.16}
#: background name -> RGB (no object colour word)
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "gray": (128, 128, 128),
    "teal": (35, 112, 118),
    "beige": (208, 192, 160),
}
#: background textures and the adjective captions use for them
TEXTURES: dict[str, str] = {"plain": "", "stripes": "striped", "dots": "dotted", "noise": "grainy"}
RELATIONS: tuple[str, ...] = ("left", "right", "above", "below")
INVERSE: dict[str, str] = {"left": "right", "right": "left", "above": "below", "below": "above"}
LAYOUTS: tuple[str, ...] = ("group", "pair", "triple")
COUNT_WORDS: dict[int, str] = {1: "one", 2: "two", 3: "three"}
NEGATIVE_ATTRIBUTES: tuple[str, ...] = ("colour", "shape", "size", "relation", "count")
EDIT_ATTRIBUTES: tuple[str, ...] = ("colour", "shape", "size")
SPLITS: tuple[str, ...] = ("train", "val", "test")

#: layout mix of generated scenes; group scenes draw n from GROUP_COUNTS
LAYOUT_WEIGHTS: dict[str, float] = {"group": 0.25, "pair": 0.45, "triple": 0.30}
GROUP_COUNTS: dict[int, float] = {1: 0.4, 2: 0.3, 3: 0.3}

_SCALE_RANGE = (0.93, 1.07)  # base radius multiplier
_ANGLE_RANGE = 12.0  # base rotation, degrees (squares never look like diamonds)
_BORDER = 0.02  # free margin at the image border
_GAP = 0.04  # free space between objects
_MAIN_RATIO = 2.0  # pair: main-axis offset >= ratio x cross-axis offset (generation)
_KEEP_RATIO = 1.4  # ... and after jitter
_SUPERSAMPLE = 4


@dataclass(frozen=True)
class SceneObject:
    """One drawn object.

    Attributes
    ----------
    shape, colour, size : str
        Names from :data:`SHAPES`, :data:`COLOURS`, :data:`SIZES`.
    x, y : float
        Centre, as fractions of the image side (y grows downwards).
    scale : float
        Radius multiplier around the size's nominal radius.
    angle : float
        Rotation in degrees (counter-clockwise).
    """

    shape: str
    colour: str
    size: str
    x: float
    y: float
    scale: float = 1.0
    angle: float = 0.0

    @property
    def radius(self) -> float:
        """Radius as a fraction of the image side."""
        return SIZES[self.size] * self.scale

    @property
    def descriptor(self) -> tuple[str, str, str]:
        """``(size, colour, shape)``."""
        return (self.size, self.colour, self.shape)

    @property
    def phrase(self) -> str:
        """``"small red circle"``."""
        return f"{self.size} {self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """A scene: objects on a background.

    Attributes
    ----------
    id : str
        Stable id (``"test-00012"``; derived scenes append ``~neg-colour`` etc.).
    layout : str
        ``group``, ``pair`` or ``triple``.
    objects : tuple of SceneObject
    relation : str | None
        Pair scenes: the relation of ``objects[0]`` to ``objects[1]``.
    background : str
        A name from :data:`BACKGROUNDS`.
    texture : str
        A name from :data:`TEXTURES`.
    texture_seed : int
        Seeds the dots / noise of the background.
    """

    id: str
    layout: str
    objects: tuple[SceneObject, ...]
    relation: str | None = None
    background: str = "gray"
    texture: str = "plain"
    texture_seed: int = 0
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def n(self) -> int:
        return len(self.objects)

    @property
    def key(self) -> tuple:
        """The content key (what the captions say), canonical: equal keys = same content.

        ``("group", n, descriptor)``, ``("pair", "left" | "above", left/top descriptor,
        right/bottom descriptor)`` or ``("triple", sorted descriptors)``.
        """
        if self.layout == "group":
            return ("group", self.n, self.objects[0].descriptor)
        if self.layout == "pair":
            a, b = self.objects[0].descriptor, self.objects[1].descriptor
            rel = self.relation
            if rel in ("right", "below"):
                a, b, rel = b, a, INVERSE[rel]
            return ("pair", rel, a, b)
        return ("triple", tuple(sorted(o.descriptor for o in self.objects)))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``Scene.from_dict`` inverts it)."""
        d = asdict(self)
        d["objects"] = [asdict(o) for o in self.objects]
        d.pop("meta")
        if self.meta:
            d["meta"] = dict(self.meta)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scene:
        d = dict(d)
        d["objects"] = tuple(SceneObject(**o) for o in d["objects"])
        return cls(**d)


# --------------------------------------------------------------------------- geometry
def relation_between(a: SceneObject, b: SceneObject, ratio: float = 1.0) -> str | None:
    """Relation of ``a`` to ``b`` (``left`` when ``a`` is left of ``b``, ...).

    ``None`` when the main-axis offset is not at least ``ratio`` times the other one.
    """
    dx, dy = b.x - a.x, b.y - a.y
    if abs(dx) >= abs(dy):
        if abs(dx) < ratio * abs(dy) or dx == 0:
            return None
        return "left" if dx > 0 else "right"
    if abs(dy) < ratio * abs(dx):
        return None
    return "above" if dy > 0 else "below"


def _inside(o: SceneObject, border: float = _BORDER) -> bool:
    r = o.radius + border
    return r <= o.x <= 1 - r and r <= o.y <= 1 - r


def _apart(a: SceneObject, b: SceneObject, gap: float = _GAP) -> bool:
    return math.hypot(a.x - b.x, a.y - b.y) >= a.radius + b.radius + gap


def _valid(scene: Scene, *, border: float = _BORDER, gap: float = _GAP, ratio=_MAIN_RATIO) -> bool:
    objs = scene.objects
    if not all(_inside(o, border) for o in objs):
        return False
    if not all(_apart(objs[i], objs[j], gap) for i in range(len(objs)) for j in range(i)):
        return False
    if scene.layout == "group":
        return len({o.descriptor for o in objs}) == 1 and 1 <= len(objs) <= 3
    if len({o.descriptor for o in objs}) != len(objs):
        return False  # pair / triple objects must be different
    if scene.layout == "pair":
        return len(objs) == 2 and relation_between(objs[0], objs[1], ratio) == scene.relation
    return len(objs) == 3


def _place(
    rng: random.Random,
    kinds: list[tuple[str, str, str]],
    relation: str | None = None,
    fixed: tuple[SceneObject, ...] = (),
    tries: int = 300,
) -> tuple[SceneObject, ...] | None:
    """Random non-overlapping placements of objects ``kinds`` (after ``fixed`` ones)."""
    for _ in range(tries):
        placed = list(fixed)
        ok = True
        for shape, colour, size in kinds:
            scale = rng.uniform(*_SCALE_RANGE)
            r = SIZES[size] * scale + _BORDER
            o = SceneObject(
                shape,
                colour,
                size,
                x=rng.uniform(r, 1 - r),
                y=rng.uniform(r, 1 - r),
                scale=scale,
                angle=rng.uniform(-_ANGLE_RANGE, _ANGLE_RANGE),
            )
            if not all(_apart(o, p) for p in placed):
                ok = False
                break
            placed.append(o)
        if not ok:
            continue
        if relation is not None and relation_between(placed[0], placed[1], _MAIN_RATIO) != relation:
            continue
        return tuple(placed)
    return None


# --------------------------------------------------------------------------- scenes
def _descriptor(rng: random.Random) -> tuple[str, str, str]:
    return (rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(list(SIZES)))


def _weighted(rng: random.Random, weights: dict) -> Any:
    keys = list(weights)
    return rng.choices(keys, weights=[weights[k] for k in keys])[0]


def make_scene(rng: random.Random, scene_id: str, layout: str | None = None) -> Scene:
    """Draw a random valid scene.

    Parameters
    ----------
    rng : random.Random
    scene_id : str
    layout : str, optional
        ``group``, ``pair`` or ``triple``; default drawn from :data:`LAYOUT_WEIGHTS`.
    """
    while True:
        lay = layout or _weighted(rng, LAYOUT_WEIGHTS)
        relation = None
        if lay == "group":
            n = _weighted(rng, GROUP_COUNTS)
            kinds = [_descriptor(rng)] * n
        elif lay == "pair":
            kinds = [_descriptor(rng), _descriptor(rng)]
            relation = rng.choice(RELATIONS)
        elif lay == "triple":
            kinds = [_descriptor(rng) for _ in range(3)]
        else:
            raise ValueError(f"unknown layout {lay!r}; choose one of {list(LAYOUTS)}")
        if lay != "group" and len(set(kinds)) != len(kinds):
            continue
        objs = _place(rng, kinds, relation)
        if objs is None:
            continue
        return Scene(
            id=scene_id,
            layout=lay,
            objects=objs,
            relation=relation,
            background=rng.choice(list(BACKGROUNDS)),
            texture=rng.choice(list(TEXTURES)),
            texture_seed=rng.randrange(2**31),
        )


def make_splits(
    seed: int = 0,
    sizes: dict[str, int] | None = None,
    *,
    max_tries: int = 40,
) -> dict[str, list[Scene]]:
    """Train / val / test scenes with unique content keys over all splits.

    Splits are drawn in the order test, val, train, each from its own RNG (seeded by
    ``f"{seed}:{split}"``), so the test and validation scenes do not depend on the
    train size. A draw whose content key is taken is redrawn (the same layout up to
    ``max_tries`` times, then any layout).

    Parameters
    ----------
    seed : int
    sizes : dict, optional
        Scenes per split; default ``{"train": 6000, "val": 300, "test": 500}``.

    Returns
    -------
    dict split -> list of Scene (ids ``"{split}-{index:05d}"``).
    """
    sizes = dict(sizes or {"train": 6000, "val": 300, "test": 500})
    unknown = set(sizes) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown splits {sorted(unknown)}; use {list(SPLITS)}")
    taken: set[tuple] = set()
    out: dict[str, list[Scene]] = {}
    for split in ("test", "val", "train"):
        rng = random.Random(f"{seed}:{split}")
        scenes: list[Scene] = []
        for i in range(sizes.get(split, 0)):
            sid = f"{split}-{i:05d}"
            layout = _weighted(rng, LAYOUT_WEIGHTS)
            for attempt in range(10 * max_tries):
                s = make_scene(rng, sid, layout if attempt < max_tries else None)
                if s.key not in taken:
                    break
            else:
                raise RuntimeError(f"could not draw a new scene content for {sid}")
            taken.add(s.key)
            scenes.append(s)
        out[split] = scenes
    return {s: out[s] for s in SPLITS if s in sizes}


# --------------------------------------------------------------------------- captions
def _a(phrase: str) -> str:
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


def _background_phrase(scene: Scene) -> str:
    adj = TEXTURES[scene.texture]
    return f"on a {adj + ' ' if adj else ''}{scene.background} background"


_REL_SHORT = {"left": "left of", "right": "right of", "above": "above", "below": "below"}
_REL_LONG = {
    "left": "to the left of",
    "right": "to the right of",
    "above": "placed above",
    "below": "placed below",
}
# where the *other* object is, seen from the subject: "and a blue square to its right"
_REL_ITS = {
    "left": "to its left",
    "right": "to its right",
    "above": "above it",
    "below": "below it",
}
_REL_ON = {"left": "on its left", "right": "on its right", "above": "above it", "below": "below it"}


def captions(scene: Scene) -> list[str]:
    """Five paraphrased captions (at most 13 words); the first is the canonical one.

    Each names every object's size, colour and shape and the count (group) or the
    relation (pair).
    """
    objs = scene.objects
    if scene.layout == "group":
        o = objs[0]
        if scene.n == 1:
            return [
                _a(o.phrase),
                f"{_a(o.phrase)} {_background_phrase(scene)}",
                f"a picture of {_a(o.phrase)}",
                f"one {o.size} {o.shape}, coloured {o.colour}",
                f"a single {o.phrase}",
            ]
        num = COUNT_WORDS[scene.n]
        plural = f"{o.size} {o.colour} {PLURALS[o.shape]}"
        every = "both" if scene.n == 2 else "all"
        return [
            f"{num} {plural}",
            f"{num} {plural} {_background_phrase(scene)}",
            f"a picture of {num} {plural}",
            f"{num} {o.size} {PLURALS[o.shape]}, {every} {o.colour}",
            f"exactly {num} {plural}",
        ]
    if scene.layout == "pair":
        a, b = _a(objs[0].phrase), _a(objs[1].phrase)
        rel = scene.relation
        inv = INVERSE[rel]
        return [
            f"{a} {_REL_SHORT[rel]} {b}",
            f"{b} {_REL_SHORT[inv]} {a}",
            f"{a} {_REL_LONG[rel]} {b}",
            f"{a} and {b} {_REL_ITS[inv]}",
            f"{b} with {a} {_REL_ON[rel]}",
        ]
    p = [_a(o.phrase) for o in objs]
    return [
        f"{p[0]}, {p[1]} and {p[2]}",
        f"{p[1]}, {p[2]} and {p[0]}",
        f"{p[2]}, {p[0]} and {p[1]}",
        f"{p[2]}, {p[1]}, {p[0]}",
        f"{p[0]} plus {p[1]}, {p[2]}",
    ]


# --------------------------------------------------------------------------- derived scenes
def jitter(
    scene: Scene,
    rng: random.Random,
    *,
    shift: float = 0.04,
    scale: float = 0.06,
    angle: float = 8.0,
    tries: int = 60,
    suffix: str = "~jitter",
) -> Scene:
    """The same content re-placed a little: position ``+-shift``, scale ``x(1 +- scale)``,
    rotation ``+-angle`` degrees per object (the layout stays valid; the relation still
    holds). After ``tries`` failed draws the jitter is halved; at worst the scene is
    returned unmoved (with the new id)."""
    for attempt in range(tries):
        f = 1.0 if attempt < tries // 2 else 0.5
        objs = tuple(
            replace(
                o,
                x=o.x + f * rng.uniform(-shift, shift),
                y=o.y + f * rng.uniform(-shift, shift),
                scale=o.scale * (1 + f * rng.uniform(-scale, scale)),
                angle=o.angle + f * rng.uniform(-angle, angle),
            )
            for o in scene.objects
        )
        cand = replace(scene, id=scene.id + suffix, objects=objs)
        if _valid(cand, border=0.005, gap=0.01, ratio=_KEEP_RATIO):
            return cand
    return replace(scene, id=scene.id + suffix)


def _with_objects(scene: Scene, objs: tuple[SceneObject, ...], suffix: str, **kw) -> Scene:
    return replace(scene, id=scene.id + suffix, objects=objs, **kw)


def _attribute_variants(scene: Scene, attribute: str, rng: random.Random) -> list[Scene]:
    """All valid scenes differing from ``scene`` in ``attribute`` only (shuffled)."""
    objs = scene.objects
    out: list[Scene] = []
    field_of = {"colour": ("colour", list(COLOURS)), "shape": ("shape", list(SHAPES))}
    field_of["size"] = ("size", list(SIZES))
    if attribute in field_of:
        name, values = field_of[attribute]
        targets = (
            [tuple(range(len(objs)))]
            if scene.layout == "group"
            else [(i,) for i in range(len(objs))]
        )
        for idx in targets:
            for v in values:
                if v == getattr(objs[idx[0]], name):
                    continue
                new = tuple(replace(o, **{name: v}) if i in idx else o for i, o in enumerate(objs))
                out.append(_with_objects(scene, new, ""))
    elif attribute == "relation" and scene.layout == "pair":
        # mirror the pair across the image centre along the relation's axis
        horizontal = scene.relation in ("left", "right")
        new = tuple(
            replace(o, x=1 - o.x, angle=-o.angle)
            if horizontal
            else replace(o, y=1 - o.y, angle=-o.angle)
            for o in objs
        )
        out.append(_with_objects(scene, new, "", relation=INVERSE[scene.relation]))
    elif attribute == "count" and scene.layout == "group":
        if scene.n > 1:
            out.append(_with_objects(scene, objs[:-1], ""))
        if scene.n < 3:
            o = objs[0]
            for _ in range(20):
                extra = _place(rng, [(o.shape, o.colour, o.size)], fixed=objs)
                if extra is not None:
                    out.append(_with_objects(scene, extra, ""))
                    break
    out = [s for s in out if _valid(s, ratio=_KEEP_RATIO)]
    rng.shuffle(out)
    return out


def attribute_diff(a: Scene, b: Scene) -> list[str]:
    """Content attributes in which ``b`` differs from ``a``, objects compared in order.

    Attributes: ``layout``, ``count``, ``colour``, ``shape``, ``size`` (of any object)
    and ``relation`` (a pair whose objects swapped sides differs in ``relation`` only).
    ``[]`` means the same content (equal :attr:`Scene.key`).
    """
    if a.key == b.key:
        return []
    if a.layout != b.layout or (a.n != b.n and a.layout != "group"):
        return ["layout"]
    diff: list[str] = []
    if a.layout == "group":
        if a.n != b.n:
            diff.append("count")
        diff += _object_diff(a.objects[0], b.objects[0])
        return diff
    if a.layout == "pair":
        ka, kb = a.key, b.key
        if ka[1] == kb[1] and ka[2:] == kb[2:][::-1]:
            return ["relation"]
        if ka[1] != kb[1] or a.relation != b.relation:
            diff.append("relation")
    for o, r in zip(a.objects, b.objects):
        diff += _object_diff(o, r)
    return sorted(set(diff), key=NEGATIVE_ATTRIBUTES.index)


def _object_diff(o: SceneObject, r: SceneObject) -> list[str]:
    return [
        name
        for name, x, y in (
            ("colour", o.colour, r.colour),
            ("shape", o.shape, r.shape),
            ("size", o.size, r.size),
        )
        if x != y
    ]


def hard_negatives(
    scene: Scene,
    rng: random.Random,
    avoid: set[tuple] | frozenset = frozenset(),
    attributes: tuple[str, ...] = NEGATIVE_ATTRIBUTES,
) -> dict[str, Scene]:
    """One scene per applicable attribute that differs from ``scene`` in exactly it.

    ``colour`` / ``shape`` / ``size`` change one object (every object of a group),
    ``relation`` mirrors a pair (the relation flips), ``count`` adds or removes one
    object of a group. Candidates whose content key is in ``avoid`` (e.g. the keys of
    the other scenes of the split) are skipped. Ids are ``"{scene.id}~neg-{attribute}"``.

    Returns
    -------
    dict attribute -> Scene (attributes with no valid variant are left out).
    """
    out: dict[str, Scene] = {}
    for attr in attributes:
        for cand in _attribute_variants(scene, attr, rng):
            if cand.key != scene.key and cand.key not in avoid:
                out[attr] = replace(cand, id=f"{scene.id}~neg-{attr}")
                break
    return out


def _reference(scene: Scene, index: int) -> str:
    """Shortest unique description of ``objects[index]``: "circle", "red circle", ..."""
    o = scene.objects[index]
    others = [p for i, p in enumerate(scene.objects) if i != index]
    if scene.layout == "group":
        return PLURALS[o.shape] if scene.n > 1 else o.shape
    for words in ((o.shape,), (o.colour, o.shape), (o.size, o.shape), (o.size, o.colour, o.shape)):

        def matches(p: SceneObject, words=words) -> bool:
            return all(w in (p.size, p.colour, p.shape) for w in words)

        if not any(matches(p) for p in others):
            return " ".join(words)
    return o.phrase


def edit(
    scene: Scene,
    rng: random.Random,
    avoid: set[tuple] | frozenset = frozenset(),
    attributes: tuple[str, ...] = EDIT_ATTRIBUTES,
) -> tuple[str, str, Scene] | None:
    """An edit instruction and the edited scene (one attribute of one object changed).

    Returns
    -------
    (instruction, attribute, edited scene) | None
        e.g. ``("make the red circle green", "colour", scene)``; the edited scene's id is
        ``"{scene.id}~edit"``, its objects keep their places. ``None`` when no edit
        gives a valid scene outside ``avoid``.
    """
    attrs = list(attributes)
    rng.shuffle(attrs)
    for attr in attrs:
        for cand in _attribute_variants(scene, attr, rng):
            if cand.key == scene.key or cand.key in avoid:
                continue
            i = next(j for j, (o, r) in enumerate(zip(scene.objects, cand.objects)) if o != r)
            ref = _reference(scene, i)
            new = cand.objects[i]
            plural = scene.layout == "group" and scene.n > 1
            if attr == "colour":
                text = f"make the {ref} {new.colour}"
            elif attr == "size":
                text = f"make the {ref} {new.size}"
            else:
                target = PLURALS[new.shape] if plural else _a(new.shape)
                text = f"turn the {ref} into {target}"
            return text, attr, replace(cand, id=f"{scene.id}~edit")
    return None


# --------------------------------------------------------------------------- rendering
def _polygon(shape: str, n_heart: int = 48) -> list[tuple[float, float]]:
    """Unit-radius outline (x right, y down) of a polygonal shape, unrotated."""
    if shape == "square":
        s = 0.8
        return [(-s, -s), (s, -s), (s, s), (-s, s)]
    if shape == "triangle":
        return [
            (math.cos(a), -math.sin(a)) for a in (math.pi / 2, 7 * math.pi / 6, 11 * math.pi / 6)
        ]
    if shape == "diamond":
        return [(0.0, -1.0), (0.72, 0.0), (0.0, 1.0), (-0.72, 0.0)]
    if shape == "star":
        pts = []
        for k in range(10):
            r = 1.0 if k % 2 == 0 else 0.45
            a = math.pi / 2 + k * math.pi / 5
            pts.append((r * math.cos(a), -r * math.sin(a)))
        return pts
    if shape == "cross":
        w = 0.34
        return [
            (-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w),
            (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w),
        ]  # fmt: skip
    if shape == "heart":
        pts = []
        for k in range(n_heart):
            t = 2 * math.pi * k / n_heart
            x = 16 * math.sin(t) ** 3
            y = -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t))
            pts.append((x / 16.5, (y - 2.5) / 16.5))
        return pts
    raise ValueError(f"{shape!r} is not a polygon shape")


def _rotate(pts, angle: float, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    return [(cx + r * (x * c + y * s), cy + r * (-x * s + y * c)) for x, y in pts]


def _draw_object(canvas, o: SceneObject, side: int) -> None:
    from PIL import Image, ImageDraw

    r = o.radius * side
    cx, cy = o.x * side, o.y * side
    x0, y0 = int(math.floor(cx - r)) - 2, int(math.floor(cy - r)) - 2
    size = int(math.ceil(2 * r)) + 5
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    lx, ly = cx - x0, cy - y0
    if o.shape == "circle":
        draw.ellipse([lx - r, ly - r, lx + r, ly + r], fill=255)
    elif o.shape == "crescent":
        draw.ellipse([lx - r, ly - r, lx + r, ly + r], fill=255)
        a = math.radians(o.angle)
        ox, oy = lx + 0.45 * r * math.cos(a), ly - 0.45 * r * math.sin(a)
        ri = 0.78 * r
        draw.ellipse([ox - ri, oy - ri, ox + ri, oy + ri], fill=0)
    else:
        draw.polygon(_rotate(_polygon(o.shape), o.angle, lx, ly, r), fill=255)
    canvas.paste(COLOURS[o.colour], (x0, y0), mask)


def _background(scene: Scene, side: int, ss: int):
    from PIL import Image, ImageDraw

    base = np.array(BACKGROUNDS[scene.background], dtype=np.float32)
    big = side * ss
    if scene.texture == "noise":
        noise = np.random.default_rng(scene.texture_seed).normal(0.0, 11.0, (side, side, 1))
        arr = np.clip(base[None, None, :] + noise, 0, 255).round().astype(np.uint8)
        return Image.fromarray(arr, "RGB").resize((big, big), Image.NEAREST)
    canvas = Image.new("RGB", (big, big), tuple(int(v) for v in base))
    draw = ImageDraw.Draw(canvas)
    if scene.texture == "stripes":
        shade = tuple(int(v * 0.84) for v in base)
        period, width = 12 * ss * side / 96, 5 * ss * side / 96
        off = (scene.texture_seed % 12) * ss * side / 96
        k = -2 * big
        while k < 2 * big:
            x = k + off
            draw.polygon(
                [(x, 0), (x + width, 0), (x + width - big, big), (x - big, big)], fill=shade
            )
            k += period
    elif scene.texture == "dots":
        shade = tuple(min(255, int(v * 1.2 + 12)) for v in base)
        step = 12 * ss * side / 96
        rng = random.Random(scene.texture_seed)
        ox, oy = rng.uniform(0, step), rng.uniform(0, step)
        rad = 1.6 * ss * side / 96
        y = oy - step
        while y < big + step:
            x = ox - step
            while x < big + step:
                draw.ellipse([x - rad, y - rad, x + rad, y + rad], fill=shade)
                x += step
            y += step
    return canvas


def render(scene: Scene, size: int = 96):
    """Draw a scene as an RGB ``PIL.Image`` of ``size`` x ``size`` pixels.

    Drawn at 4x and box-filtered down (anti-aliased edges); deterministic.
    """
    from PIL import Image

    canvas = _background(scene, size, _SUPERSAMPLE)
    big = size * _SUPERSAMPLE
    for o in scene.objects:
        _draw_object(canvas, o, big)
    return canvas.resize((size, size), Image.BOX)
