"""The exact ShapesWorld scorer: find the objects in an image and check them against the scene graph asked for.

Detection, for each image:
1. the background colour is the median of the border pixels;
2. each pixel goes to the nearest palette colour or to the background (pixels far from all of them, such as
   antialiased edges or blur, go nowhere); each colour mask is opened with a 3x3 square, which removes the one-pixel
   fringes that blending two colours creates;
3. connected components of each colour above a minimum area are objects;
4. the shape comes from geometry: extent (area / bounding box), solidity (area / convex hull) and hole ratio (enclosed
   background / filled area), classified by the nearest prototype measured on the generator's own renders; the size
   (small / large) is the nearer, in log scale, of the two prototype bounding-box sizes for that shape.

Scores, per prompt (the asked objects have distinct (colour, shape) pairs):
- ``count``: as many objects found as asked;
- ``colour`` / ``shape``: the fraction of asked colours / shapes present (multisets), and ``*_correct`` when all are;
- ``binding``: the fraction of asked (colour, shape) pairs present: the right colour on the right shape;
- ``size``: the fraction of asked (shape, size) pairs present (independent of colour);
- ``spatial``: the fraction of the graph's relations that hold, among those whose two objects were both found by
  colour and shape (None when there are none to judge);
- ``position``: the fraction of the asked objects found by colour and shape whose centre lies in the cell of the 3x3
  grid that a dense caption names for it ("in the upper left corner", "near the bottom edge, horizontally centred",
  :func:`~llm4gen.shapesworld.world.position_region`), within 2 px at 64 px of the cell's edges (None when no asked
  object was found; :func:`score_folder` gives None for short and relational captions, which name no positions), and
  beside it ``position_chance``, what an image that ignores the position words would score on the same objects
  (:func:`position_chance`);
- ``background``: the background colour is right;
- ``all_correct``: count, binding and size fully right and every relation of the graph holds (``position`` is reported
  beside it, not in it, so that all-correct means the same as in results scored before ``position`` existed).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from ..clip_tokenizer import load_clip_tokenizer
from ..utils import progress_iter
from .world import (
    BACKGROUNDS,
    COLOURS,
    MIN_GAP,
    REGION_EDGES,
    SHAPES,
    SIZES,
    Scene,
    SceneObject,
    position_region,
    read_dataset,
    render_scene,
)

__all__ = [
    "Detection",
    "LENGTH_BUCKETS",
    "METRICS",
    "PROTOTYPES",
    "nearest_shape",
    "ShapesScorer",
    "clip_token_count",
    "detect_objects",
    "cell_box",
    "in_cell",
    "position_chance",
    "score_folder",
    "score_image",
    "summarize",
]

METRICS = ("count", "colour", "shape", "binding", "size", "spatial", "position", "background", "all_correct")
_FEATURES = ("extent", "solidity", "hole", "y_offset", "corners")
_FEATURE_SCALE = np.array([0.08, 0.06, 0.05, 0.03, 0.12])  # typical spread of each feature on clean renders


@dataclass
class Detection:
    colour: str
    shape: str
    size: str
    x: float  # centroid, fraction of the width
    y: float  # centroid, fraction of the height
    area: int  # pixels
    features: tuple[float, ...]  # see _FEATURES
    half_size: float  # half the larger side of the bounding box, pixels


def _features(mask: np.ndarray) -> tuple[tuple[float, ...], float]:
    """Geometry of one silhouette, and half its bounding-box size in pixels.

    Features: extent (filled area / box), solidity (filled area / convex hull), hole ratio (enclosed background /
    filled area), vertical offset of the centroid from the box centre (/ height; a triangle's is about +1/6) and the
    filled fraction of the box's four corner cells (a square's is 1, a cross's 0).
    """
    filled = ndimage.binary_fill_holes(mask)
    ys, xs = np.nonzero(filled)
    y0, x0 = ys.min(), xs.min()
    h, w = ys.max() - y0 + 1, xs.max() - x0 + 1
    area, filled_area = float(mask.sum()), float(filled.sum())
    corners = np.concatenate([np.stack([xs + dx, ys + dy], 1) for dx in (-0.5, 0.5) for dy in (-0.5, 0.5)])
    try:
        hull = ConvexHull(corners).volume
    except QhullError:  # degenerate (a line of pixels)
        hull = float(h * w)
    box = filled[y0 : y0 + h, x0 : x0 + w]
    ch, cw = max(1, h // 4), max(1, w // 4)
    cells = (box[:ch, :cw], box[:ch, -cw:], box[-ch:, :cw], box[-ch:, -cw:])
    corner = float(np.mean([c.mean() for c in cells]))
    y_off = float((ys.mean() - y0 + 0.5) / h - 0.5)
    feats = (filled_area / (h * w), filled_area / max(hull, 1.0), (filled_area - area) / filled_area, y_off, corner)
    return feats, max(h, w) / 2


@lru_cache(maxsize=8)
def _prototypes(size: int, denoised: bool) -> tuple[dict[tuple[str, str], np.ndarray], dict[tuple[str, str], float]]:
    """Mean features and half-size per (shape, size), measured on clean renders at ``size`` pixels (passed through
    the same median filter as noisy images when ``denoised``)."""
    feats: dict[tuple[str, str], list] = {(s, z): [] for s in SHAPES for z in SIZES}
    halves: dict[tuple[str, str], list] = {(s, z): [] for s in SHAPES for z in SIZES}
    offsets = [(i / 7, (3 * i % 7) / 7) for i in range(7)]
    for shape in SHAPES:
        for sz in SIZES:
            for bg in BACKGROUNDS:
                for dx, dy in offsets:
                    obj = SceneObject("red" if bg != "white" else "blue", shape, sz, 0.5 + dx / size, 0.5 + dy / size)
                    img = render_scene(Scene([obj], bg), size)
                    dets = detect_objects(img, _classify=False, _force_denoise=denoised)
                    if len(dets) == 1:
                        feats[(shape, sz)].append(dets[0].features)
                        halves[(shape, sz)].append(dets[0].half_size)
    return ({k: np.mean(v, 0) for k, v in feats.items()}, {k: float(np.mean(v)) for k, v in halves.items()})


PROTOTYPES = ("auto", "clean", "smooth")


def nearest_shape(features: Sequence[float], image_size: int = 64, smooth: bool = False) -> str:
    """The shape whose prototype (measured on clean renders of ``image_size`` pixels, median-filtered when
    ``smooth``) is nearest to a silhouette's :class:`Detection` ``features``, each feature scaled by its spread."""
    protos, _ = _prototypes(image_size, smooth)
    keys = list(protos)
    d = np.linalg.norm((np.stack([protos[k] for k in keys]) - np.asarray(features, dtype=np.float64))
                       / _FEATURE_SCALE, axis=1)
    return keys[int(d.argmin())][0]


def detect_objects(
    image: Image.Image | np.ndarray,
    min_contrast: float = 40.0,
    min_area_fraction: float = 8 / 4096,
    denoise: bool = True,
    prototypes: str = "auto",
    _classify: bool = True,
    _force_denoise: bool = False,
) -> list[Detection]:
    """Find the coloured objects in ``image`` (RGB). Returns one :class:`Detection` per object, largest first.

    ``prototypes`` picks the shape prototypes the silhouettes are matched to: ``"auto"`` (what every published table
    was scored with) uses the median-filtered renders' when the image has pixel noise and is filtered, else the clean
    renders'; ``"clean"`` and ``"smooth"`` (the median-filtered ones) force one set. Blurred images without
    pixel noise, as a diffusion model draws them, get ``"clean"`` from ``"auto"``, which reads many blurred stars as
    crosses; ``"smooth"`` reads them right (research/shapesworld/scorer-audit.md)."""
    if prototypes not in PROTOTYPES:
        raise ValueError(f"prototypes must be one of {PROTOTYPES}, got {prototypes!r}.")
    arr = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float32)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"Expected an RGB image, got an array of shape {arr.shape}.")
    height, width = arr.shape[:2]
    border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
    noisy = float(np.median(np.abs(border - np.median(border, axis=0)))) > 2.0
    noisy = noisy or _force_denoise
    if noisy and denoise:  # pixel noise (e.g. from a diffusion model): a 3x3 median restores clean edges
        arr = ndimage.median_filter(arr, size=(3, 3, 1), mode="nearest")
    bg = np.median(np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]]), axis=0)
    names = list(COLOURS)
    palette = np.array([COLOURS[n] for n in names], dtype=np.float32)
    d_bg = np.linalg.norm(arr - bg, axis=-1)
    comps, n = ndimage.label(d_bg > min_contrast, structure=np.ones((3, 3), dtype=bool))
    min_area = max(4, int(round(min_area_fraction * height * width)))
    detections = []
    for k in range(1, n + 1):
        comp = comps == k
        if comp.sum() < min_area:
            continue
        # the colour: the palette entry nearest to the component's most saturated (core) pixels
        core = comp & (d_bg >= 0.6 * d_bg[comp].max())
        mean = arr[core].mean(0)
        ci = int(np.linalg.norm(palette - mean, axis=1).argmin())
        # the silhouette: pixels at least half-way from the background to that colour (antialiased edges included)
        sil = comp & (d_bg >= 0.5 * float(np.linalg.norm(palette[ci] - bg)))
        area = int(sil.sum())
        if area < min_area:
            continue
        ys, xs = np.nonzero(sil)
        feats, half = _features(sil)
        x, y = float(xs.mean() + 0.5) / width, float(ys.mean() + 0.5) / height
        detections.append(Detection(names[ci], "", "", x, y, area, feats, half))
    if _classify:
        smooth = {"auto": noisy and denoise, "clean": False, "smooth": True}[prototypes]
        _, halves = _prototypes(width, smooth)
        for det in detections:
            det.shape = nearest_shape(det.features, width, smooth)
            small, large = halves[(det.shape, "small")], halves[(det.shape, "large")]
            near_small = abs(math.log(det.half_size / small)) <= abs(math.log(det.half_size / large))
            det.size = "small" if near_small else "large"
    return sorted(detections, key=lambda d: -d.area)


def background_name(image: Image.Image | np.ndarray) -> str:
    arr = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float32)
    border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
    bg = np.median(border, axis=0)
    return min(BACKGROUNDS, key=lambda n: float(np.linalg.norm(bg - np.array(BACKGROUNDS[n]))))


def _multiset_fraction(asked: Sequence, found: Sequence) -> float:
    asked_c, found_c = Counter(asked), Counter(found)
    return sum(min(n, found_c[k]) for k, n in asked_c.items()) / max(len(asked), 1)


def _relation_holds(a: Detection, rel: str, b: Detection, tol: float = 2 / 64) -> bool:
    if rel == "left of":
        return a.x < b.x - tol
    if rel == "right of":
        return a.x > b.x + tol
    if rel == "above":
        return a.y < b.y - tol
    if rel == "below":
        return a.y > b.y + tol
    raise ValueError(f"Unknown relation {rel!r}.")


_lo, _hi = REGION_EDGES
_CELL_SPANS = {"left": (0.0, _lo), "top": (0.0, _lo), "centre": (_lo, _hi), "middle": (_lo, _hi), "right": (_hi, 1.0),
               "bottom": (_hi, 1.0)}  # each cell name of position_region: the span it covers on its axis


def cell_box(cell: tuple[str, str]) -> tuple[float, float, float, float]:
    """The box ``(x0, y0, x1, y1)`` (fractions of the image, y down) of ``cell`` of the 3x3 grid, as
    :func:`~llm4gen.shapesworld.world.position_region` names it: what a dense caption's place phrase says."""
    if cell[0] not in ("left", "centre", "right") or cell[1] not in ("top", "middle", "bottom"):
        raise ValueError(f"A cell is (left|centre|right, top|middle|bottom), got {cell!r}.")
    (x0, x1), (y0, y1) = _CELL_SPANS[cell[0]], _CELL_SPANS[cell[1]]
    return x0, y0, x1, y1


def in_cell(x: Any, y: Any, cell: tuple[str, str], tol: float = 2 / 64) -> Any:
    """Whether the point ``(x, y)`` (fractions of the width and height; floats or arrays) lies in ``cell`` of the
    3x3 grid (:func:`~llm4gen.shapesworld.world.position_region`'s names), ``tol`` beyond its edges included."""
    (x0, x1), (y0, y1) = _CELL_SPANS[cell[0]], _CELL_SPANS[cell[1]]
    return (x >= x0 - tol) & (x <= x1 + tol) & (y >= y0 - tol) & (y <= y1 + tol)


@cache
def _placements(num_objects: int, size: str, samples: int = 20_000) -> np.ndarray:
    """Centres ``[samples, 2]`` of the objects of ``size`` in scenes of ``num_objects`` objects, placed as
    :func:`~llm4gen.shapesworld.world.sample_scene` places them (sizes uniform; one object after another, each at the
    first of up to 200 uniform draws that keeps its gap to those before; a scene where one finds no room is drawn
    again), vectorised over scenes."""
    rng, names = np.random.default_rng(0), list(SIZES)
    radii = np.array([SIZES[n] for n in names])
    out: list[np.ndarray] = []
    while sum(len(o) for o in out) < samples:
        batch = 4096
        which = rng.integers(0, len(names), (batch, num_objects))
        r = radii[which]
        pos = np.zeros((batch, num_objects, 2))
        ok = np.ones(batch, dtype=bool)
        for k in range(num_objects):
            low = (r[:, k] + 2 / 64)[:, None, None]
            cand = low + rng.random((batch, 200, 2)) * (1 - 2 * low)
            valid = np.ones((batch, 200), dtype=bool)
            for j in range(k):
                gap = np.linalg.norm(cand - pos[:, None, j], axis=-1)
                valid &= gap >= (r[:, k] + r[:, j] + MIN_GAP)[:, None]
            ok &= valid.any(axis=1)
            pos[:, k] = cand[np.arange(batch), valid.argmax(axis=1)]
        out.append(pos[ok][which[ok] == names.index(size)])
    return np.concatenate(out)[:samples]


def position_chance(obj: SceneObject, num_objects: int = 1, tol: float = 2 / 64) -> float:
    """The probability that an object of ``obj``'s size, placed as the generator places objects in a scene of
    ``num_objects`` objects, lands in ``obj``'s named cell (``tol`` beyond its edges included): what ``position``
    scores for an image whose layout follows the training scenes' but ignores the caption's position words. Alone in
    a scene an object's centre is uniform over the image less its radius and a 2 px margin; in crowded scenes objects
    are pushed apart, towards the edges, so the odds of the corner cells rise (estimated from 20,000 placements)."""
    cells = position_region(obj.x, obj.y)
    if num_objects == 1:  # exact
        a, b = SIZES[obj.size] + 2 / 64, 1 - SIZES[obj.size] - 2 / 64
        p = 1.0
        for cell in cells:
            c0, c1 = _CELL_SPANS[cell]
            p *= max(0.0, min(b, c1 + tol) - max(a, c0 - tol)) / (b - a)
        return p
    xy = _placements(int(num_objects), obj.size)
    return float(in_cell(xy[:, 0], xy[:, 1], cells, tol).mean())


def score_image(image: Image.Image | np.ndarray, scene: Scene | dict[str, Any], prototypes: str = "auto"
                ) -> dict[str, Any]:
    """Score one image against the scene graph it was asked to show (see the module docs for the metrics);
    ``prototypes`` as :func:`detect_objects` takes it."""
    if isinstance(scene, dict):
        scene = Scene.from_dict(scene)
    dets = detect_objects(image, prototypes=prototypes)
    asked = scene.objects
    n = len(asked)
    # match each asked object to the found object with the same colour and shape (nearest if several)
    matched: list[Detection | None] = []
    free = list(dets)
    for o in asked:
        cands = [d for d in free if d.colour == o.colour and d.shape == o.shape]
        best = min(cands, key=lambda d: math.hypot(d.x - o.x, d.y - o.y), default=None)
        if best is not None:
            free.remove(best)
        matched.append(best)
    # relations between asked objects that were both found (identified by colour and shape)
    judged = [
        _relation_holds(matched[a], r, matched[b])
        for a, r, b in scene.relations
        if matched[a] is not None and matched[b] is not None
    ]
    spatial = sum(judged) / len(judged) if judged else None
    placed = [bool(in_cell(m.x, m.y, position_region(o.x, o.y))) for m, o in zip(matched, asked) if m is not None]
    chance = [position_chance(o, n) for m, o in zip(matched, asked) if m is not None]
    result = {
        "num_asked": n,
        "num_found": len(dets),
        "count": float(len(dets) == n),
        "colour": _multiset_fraction([o.colour for o in asked], [d.colour for d in dets]),
        "shape": _multiset_fraction([o.shape for o in asked], [d.shape for d in dets]),
        "binding": sum(m is not None for m in matched) / n,
        "size": _multiset_fraction([(o.shape, o.size) for o in asked], [(d.shape, d.size) for d in dets]),
        "spatial": spatial,
        "position": sum(placed) / len(placed) if placed else None,
        "position_chance": sum(chance) / len(chance) if chance else None,
        "background": float(background_name(image) == scene.background),
        "found": [
            {"colour": d.colour, "shape": d.shape, "size": d.size, "x": round(d.x, 3), "y": round(d.y, 3)} for d in dets
        ],
    }
    result["all_correct"] = float(
        result["count"] == 1
        and result["binding"] == 1
        and result["size"] == 1
        and all(judged)
        and len(judged) == len(scene.relations)
    )
    return result


def summarize(results: Sequence[dict[str, Any]]) -> dict[str, dict[str, float | int | None]]:
    """Mean of each metric (and ``position_chance``) over ``results`` (``spatial`` over those that have relations),
    with the counts."""
    out: dict[str, dict[str, float | int | None]] = {}
    for m in (*METRICS, "position_chance"):
        vals = [r[m] for r in results if r.get(m) is not None]
        out[m] = {"mean": float(np.mean(vals)) if vals else None, "n": len(vals)}
    return out


class ShapesScorer:
    """Score images against scene graphs and keep per-prompt results; ``summary()`` averages them."""

    def __init__(self) -> None:
        self.results: list[dict[str, Any]] = []

    def add(self, image: Image.Image | np.ndarray, scene: Scene | dict[str, Any], **info: Any) -> dict[str, Any]:
        result = {**info, **score_image(image, scene)}
        self.results.append(result)
        return result

    def summary(self) -> dict[str, dict[str, float | int | None]]:
        return summarize(self.results)


def clip_token_count(texts: Sequence[str], tokenizer: Any = None) -> list[int]:
    """CLIP tokens per text (start and end tokens included, no truncation), with OpenAI CLIP's vocabulary."""
    if tokenizer is None:
        tokenizer = load_clip_tokenizer(model_max_length=1_000_000)  # only counting: no length warning
    return [len(ids) for ids in tokenizer(list(texts), add_special_tokens=True, truncation=False)["input_ids"]]


LENGTH_BUCKETS = ("all", "<=77 tokens", ">77 tokens")


def length_bucket(results: Sequence[dict[str, Any]], bucket: str) -> list[dict[str, Any]]:
    """The rows of ``results`` in ``bucket`` (one of :data:`LENGTH_BUCKETS`), by their ``clip_tokens``."""
    if bucket == "all":
        return list(results)
    if bucket == "<=77 tokens":
        return [r for r in results if r["clip_tokens"] <= 77]
    if bucket == ">77 tokens":
        return [r for r in results if r["clip_tokens"] > 77]
    raise ValueError(f"Unknown bucket {bucket!r}; use one of {LENGTH_BUCKETS}.")


def score_folder(folder: str, tokenizer: Any = None, progress: bool = True, prototypes: str = "auto"
                 ) -> dict[str, Any]:
    """Score every image listed in ``folder/metadata.jsonl`` against its scene graph (``prototypes`` as
    :func:`detect_objects` takes it; ``"smooth"`` for a diffusion model's soft images).

    Returns ``{"summary": {bucket: {metric: {"mean", "n"}}}, "results": [per image]}`` with buckets ``all``,
    ``<=77 tokens`` and ``>77 tokens`` (the prompt's length in CLIP tokens: inside or beyond CLIP's window).
    """
    if prototypes not in PROTOTYPES:
        raise ValueError(f"prototypes must be one of {PROTOTYPES}, got {prototypes!r}.")
    records = read_dataset(folder)
    if not records:
        raise ValueError(f"{folder}/metadata.jsonl lists no images.")
    lengths = clip_token_count([r.get("text", "") for r in records], tokenizer)
    iterator: Any = zip(records, lengths)
    if progress:
        iterator = progress_iter(list(iterator), "Scoring")
    results = []
    for rec, n_tokens in iterator:
        try:
            with Image.open(rec["path"]) as im:
                image = im.convert("RGB")
        except FileNotFoundError:
            raise FileNotFoundError(f"{rec['path']} is listed in metadata.jsonl but does not exist.") from None
        except OSError as err:
            raise ValueError(f"{rec['path']} is not a readable image ({err}).") from err
        result = score_image(image, rec["scene"], prototypes=prototypes)
        if rec.get("style", "dense") != "dense":  # short and relational captions name no positions
            result["position"] = result["position_chance"] = None
        result.update(file_name=rec["file_name"], text=rec.get("text", ""), clip_tokens=n_tokens)
        results.append(result)
    summary = {bucket: summarize(length_bucket(results, bucket)) for bucket in LENGTH_BUCKETS}
    return {"summary": summary, "results": results}
