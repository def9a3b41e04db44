"""ShapesWorld: procedural scenes of coloured shapes with exact scene graphs and long, dense captions.

A scene has 1-4 objects on a plain background. Each object has a colour (8), a shape (6), a size (small / large) and
a position; left/right/above/below relations follow from the positions. Captions come in three styles built from the
same scene graph: ``short`` ("a small red circle and a large blue square"), ``relational`` (adds "to the left of" etc.)
and ``dense`` (40-140 words with filler and detail, like the paper's DensePrompts: many exceed CLIP's 77 tokens and
the decisive facts sometimes come late).

Splits: some (colour, shape) pairs are held out. ``train`` scenes never contain them; every ``test`` scene contains at
least one, so test prompts ask for attribute combinations never seen in training.

Everything is deterministic: item ``k`` of a split depends only on ``(seed, split, k)``, so a dataset can be streamed,
indexed at random, or written to an image folder (``metadata.jsonl``, the diffusers / HF datasets convention) and read
back identically.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ..utils import progress_iter, read_jsonl

__all__ = [
    "BACKGROUNDS",
    "CAPTION_STYLES",
    "COLOURS",
    "HELD_OUT_PAIRS",
    "MIN_GAP",
    "POSITION_CELLS",
    "REGION_EDGES",
    "SHAPES",
    "SIZES",
    "SPLITS",
    "SceneObject",
    "Scene",
    "ShapesItem",
    "ShapesWorld",
    "ShapesWorldConfig",
    "caption_scene",
    "corrupt_scene",
    "drop_count_sentence",
    "drop_relation_sentences",
    "item_rng",
    "object_cover",
    "place_phrase",
    "position_region",
    "read_dataset",
    "render_scene",
    "sample_scene",
    "with_place",
    "write_dataset",
]

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 38, 38),
    "green": (34, 170, 68),
    "blue": (37, 78, 220),
    "yellow": (240, 210, 30),
    "purple": (136, 56, 196),
    "orange": (245, 130, 20),
    "cyan": (30, 200, 215),
    "pink": (245, 110, 180),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (250, 250, 250),
    "grey": (128, 128, 128),
    "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle", "star", "ring", "cross")
SIZES = {"small": 0.125, "large": 0.2}  # radius of the shape's bounding circle, as a fraction of the image width
SPLITS = ("train", "test")
CAPTION_STYLES = ("short", "relational", "dense")
# One held-out shape per colour; every shape keeps at least six colours in training.
HELD_OUT_PAIRS = frozenset(
    {
        ("red", "star"),
        ("green", "ring"),
        ("blue", "triangle"),
        ("yellow", "cross"),
        ("purple", "circle"),
        ("orange", "square"),
        ("cyan", "star"),
        ("pink", "ring"),
    }
)
RELATIONS = ("left of", "right of", "above", "below")
MIN_GAP = 4 / 64  # free space between two objects' bounding circles, as a fraction of the width


@dataclass
class SceneObject:
    colour: str
    shape: str
    size: str
    x: float  # centre, as a fraction of the width (0 = left)
    y: float  # centre, as a fraction of the height (0 = top)

    @property
    def radius(self) -> float:
        return SIZES[self.size]

    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass
class Scene:
    objects: list[SceneObject]
    background: str = "white"
    relations: list[tuple[int, str, int]] = field(default_factory=list)  # (subject index, relation, object index)

    def to_dict(self) -> dict[str, Any]:
        return {
            "background": self.background,
            "objects": [asdict(o) for o in self.objects],
            "relations": [list(r) for r in self.relations],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scene:
        try:
            objects = [SceneObject(**o) for o in data["objects"]]
            relations = [(int(a), str(r), int(b)) for a, r, b in data.get("relations", [])]
            scene = cls(objects=objects, background=data.get("background", "white"), relations=relations)
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"Not a ShapesWorld scene graph ({type(err).__name__}: {err}): {str(data)[:200]}") from err
        scene.validate()
        return scene

    def validate(self) -> None:
        if self.background not in BACKGROUNDS:
            raise ValueError(f"Unknown background {self.background!r}; expected one of {sorted(BACKGROUNDS)}.")
        for o in self.objects:
            if o.colour not in COLOURS or o.shape not in SHAPES or o.size not in SIZES:
                raise ValueError(
                    f"Unknown attribute in {o}; colours {list(COLOURS)}, shapes {SHAPES}, sizes {list(SIZES)}."
                )
        for a, r, b in self.relations:
            if r not in RELATIONS or not (0 <= a < len(self.objects) and 0 <= b < len(self.objects)):
                raise ValueError(f"Bad relation {(a, r, b)} for {len(self.objects)} objects.")


def relations_from_positions(objects: Sequence[SceneObject], min_sep: float = 8 / 64) -> list[tuple[int, str, int]]:
    """Clear pairwise relations: the dominant axis separates the centres by ``min_sep`` and 1.5x the other axis."""
    rels = []
    for i in range(len(objects)):
        for j in range(i + 1, len(objects)):
            dx, dy = objects[j].x - objects[i].x, objects[j].y - objects[i].y
            if abs(dx) >= max(min_sep, 1.5 * abs(dy)):
                rels.append((i, "left of" if dx > 0 else "right of", j))
            elif abs(dy) >= max(min_sep, 1.5 * abs(dx)):
                rels.append((i, "above" if dy > 0 else "below", j))
    return rels


# ---------------------------------------------------------------------- sampling
@dataclass
class ShapesWorldConfig:
    size: int = 64
    min_objects: int = 1
    max_objects: int = 4
    trap_prob: float = 0.5  # scenes whose colours and shapes recur crossed between objects (binding traps)
    caption_style: str = "mixed"  # one of CAPTION_STYLES, or "mixed" (20% short, 20% relational, 60% dense)

    def __post_init__(self) -> None:
        if not 1 <= self.min_objects <= self.max_objects <= 4:
            raise ValueError(f"Need 1 <= min_objects <= max_objects <= 4, got {self.min_objects}, {self.max_objects}.")
        if self.size < 32:
            raise ValueError(f"size must be at least 32 pixels, got {self.size}.")
        if self.caption_style not in (*CAPTION_STYLES, "mixed"):
            raise ValueError(f"caption_style must be one of {CAPTION_STYLES + ('mixed',)}, got {self.caption_style!r}.")


def item_rng(seed: int, split: str, index: int, *stream: int) -> np.random.Generator:
    """Item ``index``'s generator; ``stream`` numbers give independent draws of the same item for other purposes."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
    return np.random.default_rng([int(seed), SPLITS.index(split), int(index), *stream])


def _pairs_for(split: str) -> list[tuple[str, str]]:
    allowed = [(c, s) for c in COLOURS for s in SHAPES]
    return [p for p in allowed if p not in HELD_OUT_PAIRS] if split == "train" else allowed


def _sample_pairs(rng: np.random.Generator, n: int, split: str, trap: bool) -> list[tuple[str, str]]:
    pool = _pairs_for(split)
    for _ in range(1000):
        if trap and n >= 2:
            cols = list(rng.choice(list(COLOURS), 2, replace=False))
            shps = list(rng.choice(SHAPES, 2, replace=False))
            crossed = [(cols[0], shps[0]), (cols[1], shps[1]), (cols[0], shps[1]), (cols[1], shps[0])]
            pairs = crossed[:2] + [crossed[k] for k in rng.permutation([2, 3])][: max(0, min(n, 4) - 2)]
            while len(pairs) < n:
                pairs.append(tuple(pool[rng.integers(len(pool))]))
        else:
            pairs = [tuple(pool[k]) for k in rng.choice(len(pool), n, replace=False)]
        pairs = [(str(c), str(s)) for c, s in pairs]
        if len(set(pairs)) < n:
            continue
        if split == "train" and any(p in HELD_OUT_PAIRS for p in pairs):
            continue
        if split == "test" and not any(p in HELD_OUT_PAIRS for p in pairs):
            continue
        return [pairs[k] for k in rng.permutation(n)]
    raise RuntimeError("could not sample attribute pairs")  # pragma: no cover - the pools are large


def _place(rng: np.random.Generator, sizes: Sequence[str]) -> list[tuple[float, float]] | None:
    placed: list[tuple[float, float, float]] = []
    for size in sizes:
        r = SIZES[size]
        for _ in range(200):
            x, y = (float(v) for v in rng.uniform(r + 2 / 64, 1 - r - 2 / 64, size=2))
            if all(math.hypot(x - px, y - py) >= r + pr + MIN_GAP for px, py, pr in placed):
                placed.append((round(x, 4), round(y, 4), r))
                break
        else:
            return None
    return [(x, y) for x, y, _ in placed]


def sample_scene(rng: np.random.Generator, split: str = "train", config: ShapesWorldConfig | None = None) -> Scene:
    """Sample one scene of ``split`` from ``rng``."""
    cfg = config or ShapesWorldConfig()
    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    trap = bool(rng.random() < cfg.trap_prob)
    pairs = _sample_pairs(rng, n, split, trap)
    background = str(rng.choice(list(BACKGROUNDS)))
    for _ in range(100):
        sizes = [str(s) for s in rng.choice(list(SIZES), n)]
        positions = _place(rng, sizes)
        if positions is not None:
            break
    else:  # pragma: no cover - four objects always fit when small
        sizes = ["small"] * n
        positions = _place(rng, sizes)
    objects = [SceneObject(c, s, z, x, y) for (c, s), z, (x, y) in zip(pairs, sizes, positions)]
    return Scene(objects=objects, background=background, relations=relations_from_positions(objects))


def object_cover(obj: SceneObject, side: int, supersample: int = 4) -> np.ndarray:
    """Per cell of a ``side`` x ``side`` grid over the image (flattened row-major, y down, as a UNet's attention
    positions), the fraction of the cell inside the object's bounding disc; float32, shape ``[side * side]``."""
    grid = (np.arange(side * supersample, dtype=np.float32) + 0.5) / (side * supersample)
    inside = ((grid[None, :] - obj.x) ** 2 + (grid[:, None] - obj.y) ** 2) <= obj.radius**2
    return inside.astype(np.float32).reshape(side, supersample, side, supersample).mean((1, 3)).reshape(-1)


# ---------------------------------------------------------------------- rendering
def _shape_polygons(shape: str, cx: float, cy: float, r: float) -> list[tuple[str, Any]]:
    """Drawing primitives for one shape centred at (cx, cy) with bounding radius r (pixels, y down)."""
    if shape == "circle":
        return [("ellipse", (cx - r, cy - r, cx + r, cy + r))]
    if shape == "square":
        h = 0.7 * r  # corners on the bounding circle
        return [("rectangle", (cx - h, cy - h, cx + h, cy + h))]
    if shape == "triangle":
        return [("polygon", [(cx, cy - r), (cx + 0.866 * r, cy + 0.5 * r), (cx - 0.866 * r, cy + 0.5 * r)])]
    if shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else 0.45 * r
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
        return [("polygon", pts)]
    if shape == "ring":
        h = 0.5 * r  # the hole: the ring is half its radius thick
        return [("ellipse", (cx - r, cy - r, cx + r, cy + r)), ("hole", (cx - h, cy - h, cx + h, cy + h))]
    if shape == "cross":
        w, a = 0.3 * r, 0.95 * r  # arm ends stay inside the bounding circle
        return [("rectangle", (cx - a, cy - w, cx + a, cy + w)), ("rectangle", (cx - w, cy - a, cx + w, cy + a))]
    raise ValueError(f"Unknown shape {shape!r}; expected one of {SHAPES}.")


def render_scene(scene: Scene, size: int = 64, supersample: int = 4) -> Image.Image:
    """Render ``scene`` as an RGB image of ``size`` x ``size`` pixels, antialiased by supersampling."""
    big = size * supersample
    bg = BACKGROUNDS[scene.background]
    img = Image.new("RGB", (big, big), bg)
    draw = ImageDraw.Draw(img)
    for o in scene.objects:
        colour = COLOURS[o.colour]
        for kind, geom in _shape_polygons(o.shape, o.x * big, o.y * big, o.radius * big):
            if kind == "ellipse":
                draw.ellipse(geom, fill=colour)
            elif kind == "hole":
                draw.ellipse(geom, fill=bg)
            elif kind == "rectangle":
                draw.rectangle(geom, fill=colour)
            else:
                draw.polygon(geom, fill=colour)
    return img.resize((size, size), Image.LANCZOS) if supersample > 1 else img


# ---------------------------------------------------------------------- captions
_SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big", "huge")}
_SHAPE_WORDS = {
    "circle": ("circle", "round disc"),
    "square": ("square", "square block"),
    "triangle": ("triangle", "triangle pointing upwards"),
    "star": ("star", "five-pointed star"),
    "ring": ("ring", "hollow ring"),
    "cross": ("cross", "plus sign"),
}
_NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
_INTROS = (
    "This is a simple synthetic picture drawn in a flat, clean style, with no shadows, textures or gradients.",
    "The image shows a minimal, diagram-like scene rendered with crisp edges and evenly saturated colours.",
    "What we see here is a tidy little composition of geometric figures, the kind found in a children's puzzle book.",
    "The picture is an abstract arrangement of plain geometric shapes, laid out flat like paper cut-outs on a table.",
    "Rendered in a clean vector style, this small square image contains only a handful of simple elements.",
)
_FILLERS = (
    "The lighting is perfectly even, so every colour looks flat and uniform from edge to edge.",
    "There is no text, no frame and no perspective; everything lies on the same flat plane.",
    "The overall mood is calm and orderly, a bit like a page from an old geometry textbook.",
    "The edges of the figures are sharp, and none of them touch or overlap one another.",
    "Nothing else appears in the frame, and plenty of empty space surrounds the figures.",
    "The composition feels balanced, although the figures are not arranged in any strict grid.",
)
_BACKGROUND_SENTENCES = (
    "The background is a uniform {bg} colour.",
    "Everything sits on a plain {bg} backdrop.",
    "The canvas behind the figures is a flat, even {bg}.",
)
_OBJECT_SENTENCES = (
    "{A_size} {colour} {shape} sits {where}.",
    "{where_cap}, there is {a_size} {colour} {shape}.",
    "One of the figures is a {size} {shape}, coloured {colour}, placed {where}.",
    "We can also see {a_colour} {shape}; it is {size_adj} and located {where}.",
)
_RELATION_SENTENCES = (
    "The {a} is {rel} the {b}.",
    "Notice that the {a} appears {rel} the {b}.",
    "Looking closely, the {a} is positioned {rel} the {b}.",
)
_REL_WORDS = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}


REGION_EDGES = (0.36, 0.64)  # a dense caption names each object's cell of the 3x3 grid these edges cut the image into
POSITION_CELLS = tuple((h, v) for v in ("top", "middle", "bottom") for h in ("left", "centre", "right"))


def position_region(x: float, y: float) -> tuple[str, str]:
    """The cell of the 3x3 grid a dense caption names for an object centred at ``(x, y)`` (fractions of the width and
    height, y downwards): ``(horizontal, vertical)``, ``left``/``centre``/``right`` and ``top``/``middle``/``bottom``.
    """
    lo, hi = REGION_EDGES
    horizontal = "left" if x < lo else "right" if x > hi else "centre"
    return horizontal, "top" if y < lo else "bottom" if y > hi else "middle"


def place_phrase(cell: tuple[str, str]) -> str:
    """The words a dense caption uses for an object in ``cell`` (as :func:`position_region` names it), e.g.
    ``("left", "top")`` -> "in the upper left corner"."""
    h, v = cell
    if h == "centre" and v == "middle":
        return "right in the centre of the image"
    if h == "centre":
        return f"near the {v} edge, horizontally centred"
    if v == "middle":
        return f"on the {h} side, halfway down"
    return f"in the {'upper' if v == 'top' else 'lower'} {h} corner"


def _where(o: SceneObject) -> str:
    return place_phrase(position_region(o.x, o.y))


def with_place(text: str, obj: SceneObject, cell: tuple[str, str]) -> str:
    """``text`` (a ``dense`` caption naming ``obj``'s place) with that phrase replaced by ``cell``'s, also where it
    starts a sentence; everything else unchanged. Meant for one-object captions (another object in the same cell
    would have its phrase replaced too)."""
    old, new = _where(obj), place_phrase(cell)
    variants = [(old, new), (old[0].upper() + old[1:], new[0].upper() + new[1:])]
    if not any(o in text for o, _ in variants):
        raise ValueError(f"The caption does not hold the object's place phrase {old!r}: {text!r}")
    for o, n in variants:
        text = text.replace(o, n)
    return text


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return str(options[int(rng.integers(len(options)))])


def _count_sentence(n: int) -> str:
    if n == 1:
        return "There is only one figure in the scene."
    return f"In total there are {_NUMBER_WORDS[n]} figures in the scene."


def _a(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def caption_scene(scene: Scene, style: str, rng: np.random.Generator) -> str:
    """A caption of ``scene`` in ``style`` (``short``, ``relational`` or ``dense``)."""
    objs = scene.objects
    if style == "short":
        return _join([_a(f"{o.size} {o.colour} {o.shape}") for o in objs])
    if style == "relational":
        parts = [_a(f"{o.size} {o.colour} {o.shape}") for o in objs]
        rels = [f"the {objs[a].name()} {_REL_WORDS[r]} the {objs[b].name()}" for a, r, b in scene.relations[:3]]
        text = _join(parts) + f" on a {scene.background} background"
        return text + (", with " + _join(rels) if rels else "")
    if style != "dense":
        raise ValueError(f"style must be one of {CAPTION_STYLES}, got {style!r}.")
    object_sents = []
    for k in rng.permutation(len(objs)):
        o = objs[int(k)]
        template = _pick(rng, _OBJECT_SENTENCES)
        where = _where(o)
        size = _pick(rng, _SIZE_WORDS[o.size])
        object_sents.append(
            template.format(
                size=size, a_size=_a(size), A_size=_a(size).capitalize(), a_colour=_a(o.colour), size_adj=o.size,
                colour=o.colour,
                shape=_pick(rng, _SHAPE_WORDS[o.shape]), where=where, where_cap=where[0].upper() + where[1:],
            )
        )
    rel_sents = [
        _pick(rng, _RELATION_SENTENCES).format(a=objs[a].name(), rel=_REL_WORDS[r], b=objs[b].name())
        for a, r, b in (scene.relations[int(k)] for k in rng.permutation(len(scene.relations))[:3])
    ]
    rel_sents = rel_sents[: int(rng.integers(min(1, len(rel_sents)), len(rel_sents) + 1))]
    intro = [_pick(rng, _INTROS)] if rng.random() < 0.6 else []
    bg = _pick(rng, _BACKGROUND_SENTENCES).format(bg=scene.background)
    fillers = [_FILLERS[int(k)] for k in rng.permutation(len(_FILLERS))]
    late = bool(rng.random() < 0.35)  # then the filler comes first and the decisive facts late
    before: list[str] = []
    after: list[str] = []

    def assemble() -> list[str]:
        return intro + [_count_sentence(len(objs))] + before + [bg] + object_sents + rel_sents + after

    def words() -> int:
        return sum(len(x.split()) for x in assemble())

    target = int(rng.integers(40, 121))  # varied lengths: some dense prompts fit CLIP's window, most do not
    for extra in fillers:
        if words() >= 40 and words() + len(extra.split()) > target:
            break
        (before if late and len(before) < 2 else after).append(extra)
    while words() > 140 and (rel_sents or intro):  # keep every object; drop relations, then the intro
        if rel_sents:
            rel_sents.pop()
        else:
            intro.clear()
    sentences = assemble()
    return " ".join(sentences)


@functools.lru_cache(maxsize=1)
def _relation_sentence_regex() -> re.Pattern[str]:
    name = "(?:" + "|".join(f"{c} {s}" for c in COLOURS for s in SHAPES) + ")"
    rel = "(?:" + "|".join(re.escape(w) for w in _REL_WORDS.values()) + ")"
    forms = [re.escape(t).replace(r"\{a\}", name).replace(r"\{b\}", name).replace(r"\{rel\}", rel)
             for t in _RELATION_SENTENCES]
    return re.compile("(?:" + "|".join(forms) + ")")


def drop_relation_sentences(caption: str) -> tuple[str, list[str]]:
    """Split a ``dense`` caption into the caption without its relation sentences ("The red circle is above the blue
    square.") and those sentences. Every other sentence (count, background, objects, filler) is kept verbatim and in
    order, so the result describes the same scene minus the explicit relations (the positions stay in the object
    sentences)."""
    return _split_sentences(caption, _relation_sentence_regex().fullmatch)


def drop_count_sentence(caption: str) -> tuple[str, list[str]]:
    """Split a ``dense`` caption into the caption without the sentence that states how many objects there are ("In
    total there are three figures in the scene.") and that sentence (a list: empty when the caption has none, as
    ``short`` and ``relational`` captions). Every other sentence is kept verbatim and in order."""
    stated = {_count_sentence(n) for n in _NUMBER_WORDS}
    return _split_sentences(caption, stated.__contains__)


def _split_sentences(caption: str, drop: Callable[[str], object]) -> tuple[str, list[str]]:
    """``caption`` without the sentences for which ``drop`` is true, and those sentences, both in order."""
    if not isinstance(caption, str):
        raise TypeError(f"caption must be a string, got {type(caption).__name__}.")
    kept: list[str] = []
    dropped: list[str] = []
    for sentence in re.split(r"(?<=[.!?])\s+", caption.strip()):
        (dropped if drop(sentence) else kept).append(sentence)
    return " ".join(kept), dropped


# ---------------------------------------------------------------------- items, datasets
@dataclass
class ShapesItem:
    image: Image.Image
    caption: str
    scene: Scene
    captions: dict[str, str]
    style: str
    index: int
    split: str

    def metadata(self, file_name: str) -> dict[str, Any]:
        return {
            "file_name": file_name,
            "text": self.caption,
            "style": self.style,
            "captions": self.captions,
            "scene": self.scene.to_dict(),
            "index": self.index,
            "split": self.split,
        }


class ShapesWorld:
    """A deterministic ShapesWorld split: ``world[k]`` is item ``k``; iterating streams items 0, 1, 2, ...

    ``len(world)`` is ``num_items`` (``None`` streams forever).
    """

    def __init__(
        self, split: str = "train", seed: int = 0, num_items: int | None = None, config: ShapesWorldConfig | None = None
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
        self.split, self.seed, self.num_items = split, int(seed), num_items
        self.config = config or ShapesWorldConfig()

    def __len__(self) -> int:
        if self.num_items is None:
            raise TypeError("This ShapesWorld streams without end (num_items=None) and has no length.")
        return self.num_items

    def scene(self, index: int) -> Scene:
        return sample_scene(item_rng(self.seed, self.split, index), self.split, self.config)

    def _describe(self, index: int) -> tuple[Scene, dict[str, str], str]:
        if index < 0 or (self.num_items is not None and index >= self.num_items):
            raise IndexError(f"index {index} out of range for {self.num_items} items")
        rng = item_rng(self.seed, self.split, index)
        scene = sample_scene(rng, self.split, self.config)
        captions = {style: caption_scene(scene, style, rng) for style in CAPTION_STYLES}
        style = self.config.caption_style
        if style == "mixed":
            style = CAPTION_STYLES[int(rng.choice(3, p=[0.2, 0.2, 0.6]))]
        return scene, captions, style

    def caption_of(self, index: int) -> tuple[str, Scene]:
        """Item ``index``'s caption and scene, without rendering its image."""
        scene, captions, style = self._describe(index)
        return captions[style], scene

    def __getitem__(self, index: int) -> ShapesItem:
        scene, captions, style = self._describe(index)
        image = render_scene(scene, self.config.size)
        return ShapesItem(image, captions[style], scene, captions, style, index, self.split)

    def take(self, n: int, progress: bool = False) -> list[ShapesItem]:
        """Items 0..n-1, with a progress bar if asked."""
        indices: Any = range(n)
        if progress:
            indices = progress_iter(indices, f"ShapesWorld {self.split}")
        return [self[k] for k in indices]

    def __iter__(self) -> Iterator[ShapesItem]:
        k = 0
        while self.num_items is None or k < self.num_items:
            yield self[k]
            k += 1


def corrupt_scene(scene: Scene, kind: str, rng: np.random.Generator | None = None) -> tuple[Scene, bool]:
    """A corrupted copy of ``scene`` to render, for validating a scorer against the original graph.

    ``kind``: ``swap-colours`` (two objects of different colours and shapes trade colours: binding breaks, colours and
    shapes stay), ``drop-object`` (one object disappears: count breaks), ``mirror`` (left and right swap: left/right
    relations break; apply it by flipping the rendered image). Returns ``(scene, applicable)``.
    """
    rng = rng or np.random.default_rng(0)
    objs = [SceneObject(**asdict(o)) for o in scene.objects]
    if kind == "swap-colours":
        cand = [(i, j) for i in range(len(objs)) for j in range(i + 1, len(objs))
                if objs[i].colour != objs[j].colour and objs[i].shape != objs[j].shape]
        if not cand:
            return scene, False
        i, j = cand[int(rng.integers(len(cand)))]
        objs[i].colour, objs[j].colour = objs[j].colour, objs[i].colour
    elif kind == "drop-object":
        if len(objs) < 2:
            return scene, False
        del objs[int(rng.integers(len(objs)))]
    elif kind == "mirror":
        for o in objs:
            o.x = round(1 - o.x, 4)
        if not any(r in ("left of", "right of") for _, r, _ in scene.relations):
            return scene, False
    else:
        raise ValueError(f"Unknown corruption {kind!r}; expected swap-colours, drop-object or mirror.")
    return Scene(objs, scene.background, relations_from_positions(objs)), True


def write_dataset(
    out_dir: str | os.PathLike,
    num_items: int,
    split: str = "train",
    seed: int = 0,
    config: ShapesWorldConfig | None = None,
    corrupt: str | None = None,
    progress: bool = True,
) -> Path:
    """Write ``num_items`` items as ``out_dir/{index:06d}.png`` plus ``metadata.jsonl`` (one JSON line per image:
    ``file_name``, ``text``, ``style``, ``captions``, ``scene``). With ``corrupt`` the images show a corrupted scene
    (see :func:`corrupt_scene`) while the metadata keeps the true one; items it cannot apply to are skipped."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    world = ShapesWorld(split, seed, num_items, config)
    iterator = range(num_items)
    if progress:
        iterator = progress_iter(iterator, f"ShapesWorld {split}")
    with open(out / "metadata.jsonl", "w", encoding="utf-8") as meta:
        for k in iterator:
            item = world[k]
            image = item.image
            if corrupt is not None:
                bad, ok = corrupt_scene(item.scene, corrupt, np.random.default_rng([seed, k, 7]))
                if not ok:
                    continue
                image = render_scene(bad if corrupt != "mirror" else item.scene, world.config.size)
                if corrupt == "mirror":
                    image = image.transpose(Image.FLIP_LEFT_RIGHT)
            name = f"{k:06d}.png"
            image.save(out / name)
            meta.write(json.dumps(item.metadata(name)) + "\n")
    return out


def read_dataset(folder: str | os.PathLike) -> list[dict[str, Any]]:
    """Read an image folder's ``metadata.jsonl``: a list of records with ``path`` (absolute), ``text`` and ``scene``
    (a :class:`Scene`) plus the stored fields. Images are opened lazily by the caller."""
    folder = Path(folder)
    meta = folder / "metadata.jsonl"
    if not meta.is_file():
        raise FileNotFoundError(
            f"{folder} has no metadata.jsonl; it should list each image's file_name, text and scene graph "
            "(write one with `llm4gen shapes make-data`)."
        )
    records = []
    for _, rec in read_jsonl(meta, required=("file_name", "scene")):
        rec["scene"] = Scene.from_dict(rec["scene"])
        rec["path"] = str(folder / rec["file_name"])
        records.append(rec)
    return records
