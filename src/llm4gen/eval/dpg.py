"""DPG-Bench-style scoring of dense prompts: yes/no questions per prompt, with dependencies, any VQA scorer.

Question sets come from DPG-Bench's CSV (``dpg_bench.csv`` of github.com/TencentQQGYLab/ELLA: ``item_id``, ``text``,
``proposition_id``, ``dependency``, ``tuple``, ``question_natural_language``) or from a JSON Lines file with one
prompt per line::

    {"item_id": "p0001", "prompt": "...", "questions": [
        {"id": 1, "question": "Is there a cat?", "dependency": [0], "category": "entity - whole"},
        {"id": 2, "question": "Is the cat black?", "dependency": [1], "category": "attribute - color"}]}

Images: the ``manifest.jsonl`` of ``llm4gen eval generate`` run on the prompt file of :func:`write_prompt_file` (each
image's ``meta.item_id``), or ``{images_dir}/{item_id}.png`` holding ``pic_num`` tiles of ``resolution`` pixels in a
2x2 grid (the original's layout: tiles read left to right, top to bottom), or separate ``{item_id}_{k}.png`` files.
:func:`write_grids` turns a generation folder into such grids, which ELLA's ``compute_dpg_bench.py`` reads as they are.

Scoring is the original's: each question's answer counts 1 if the VQA model says yes (``P(yes) > 0.5``, or exact
"yes" for a generative scorer in exact mode); a question whose parent question was answered no counts 0 (parents are
processed in question order, so zeros propagate down a chain); an image's score is the mean over its questions, a
prompt's the mean over its images, and the DPG score the mean over prompts, x100. ``soft=True`` (ours) uses P(yes)
itself and gates by multiplying: a question counts its P(yes) times its parents' gated values, i.e. the probability
that it and all its ancestors hold if the answers were independent; with 0/1 answers this is the original's rule.
Category scores average the answers before the dependency rule, per level-2 category (``tuple`` before "(") and
level-1 category (the part before "-"). :data:`DEVIATIONS` lists the differences from the original evaluator.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from ..scoring.vqa import VQAScorer
from ..utils import read_jsonl, read_text
from .generate import manifest_path

__all__ = ["DEVIATIONS", "DenseItem", "Question", "apply_dependencies", "item_images", "read_questions", "run_dpg",
           "score_item", "write_grids", "write_prompt_file"]

DEVIATIONS = [
    "VQA model: DPG-Bench uses mPLUG-large (modelscope 'damo/mplug_visual-question-answering_coco_large_en'), which "
    "has no transformers port; we use any transformers VQA model (default Salesforce/blip-vqa-base, or a generative "
    "VLM). Scores are therefore NOT directly comparable with published DPG-Bench numbers; compare models only under "
    "the same scorer.",
    "Answers: mPLUG's free-form answer must equal 'yes'; with a P(yes) scorer we count yes when P(yes) > 0.5, i.e. "
    "'yes' beats 'no' (the free-form answer could be a third word).",
    "The original skips the CSV's first data row (pandas' row 0, question 1 of the first prompt); a later question "
    "of that prompt that depends on question 1 then fails with KeyError: 1, so the original drops the whole first "
    "prompt from the DPG score (it prints 'Failed filename'). We keep the first prompt and all its questions.",
    "Category scores: the original uses the answers of the last tile only; we average over all tiles.",
]


@dataclass
class Question:
    id: int
    question: str
    dependency: list[int]  # parent question ids; 0 = none
    category: str  # level-2 category, e.g. "entity - whole"


@dataclass
class DenseItem:
    item_id: str
    prompt: str
    questions: list[Question]


def _dependency(value: Any, where: str) -> list[int]:
    if isinstance(value, list):
        parts = value
    else:
        parts = [p for p in str(value).split(",") if p.strip()]
    try:
        return [int(str(p).strip()) for p in parts] or [0]
    except ValueError:
        raise ValueError(f"{where}: dependency {value!r} is not a comma-separated list of question ids.") from None


def read_questions(path: str | Path) -> list[DenseItem]:
    """Question sets from a DPG-Bench CSV or a JSONL file (see the module docs), in file order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist. Pass DPG-Bench's dpg_bench.csv or a questions JSONL file.")
    items: dict[str, DenseItem] = {}
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
        need = {"item_id", "proposition_id", "dependency", "question_natural_language"}
        if not need <= set(reader.fieldnames or []):
            raise ValueError(f"{path} lacks the DPG-Bench columns {sorted(need - set(reader.fieldnames or []))}.")
        for row_no, row in enumerate(reader, 2):
            where = f"{path}:{row_no}"
            item = items.setdefault(row["item_id"], DenseItem(row["item_id"], row.get("text", ""), []))
            category = (row.get("tuple") or row.get("category_detailed") or "other").split("(")[0].strip()
            item.questions.append(Question(int(row["proposition_id"]), row["question_natural_language"],
                                           _dependency(row["dependency"], where), category))
    else:
        for line_no, rec in read_jsonl(path, required=("item_id", "questions")):
            where = f"{path}:{line_no}"
            qs = []
            for k, q in enumerate(rec["questions"], 1):
                if not isinstance(q, dict) or "question" not in q:
                    raise ValueError(f"{where}: question {k} must be an object with a 'question' field.")
                qs.append(Question(int(q.get("id", k)), q["question"], _dependency(q.get("dependency", [0]), where),
                                   str(q.get("category", "other")).split("(")[0].strip()))
            items[str(rec["item_id"])] = DenseItem(str(rec["item_id"]), rec.get("prompt", rec.get("text", "")), qs)
    for item in items.values():
        ids = [q.id for q in item.questions]
        if len(set(ids)) != len(ids):
            raise ValueError(f"{path}: item {item.item_id!r} repeats a question id.")
        for q in item.questions:
            bad = [d for d in q.dependency if d != 0 and d not in ids]
            if bad:
                raise ValueError(f"{path}: item {item.item_id!r} question {q.id} depends on unknown question(s) {bad}.")
    if not items:
        raise ValueError(f"{path} holds no questions.")
    return list(items.values())


def apply_dependencies(answers: dict[int, float], questions: Sequence[Question]) -> dict[int, float]:
    """Gate each answer by its parents, in question order: the answer times each parent's gated answer. With yes/no
    answers (1/0) this is the original's rule (a question with a parent answered no counts 0, and zeros propagate
    down a chain); with P(yes) answers (``soft``) a question counts the probability that it and all its ancestors
    hold, taken as independent."""
    out = dict(answers)
    for q in questions:
        for p in q.dependency:
            if p != 0:
                out[q.id] *= out[p]
    return out


def item_images(images_dir: str | Path, item_id: str, pic_num: int = 4, resolution: int | None = None
                ) -> list[Image.Image]:
    """The images of one prompt: tiles of ``{item_id}.png`` (a 2x2 grid of ``resolution``-pixel tiles; default
    resolution: half the grid's width when ``pic_num > 1``) or the separate files ``{item_id}_*.png``."""
    root = Path(images_dir)
    manifest = _manifest_files(root).get(item_id)
    if manifest:
        return [_open(root / f) for f in manifest]
    grid = next((root / f"{item_id}{ext}" for ext in (".png", ".jpg", ".jpeg", ".webp")
                 if (root / f"{item_id}{ext}").is_file()), None)
    if grid is not None:
        with Image.open(grid) as im:
            im = im.convert("RGB")
        res = resolution or (im.width // 2 if pic_num > 1 else im.width)
        boxes = [(0, 0, res, res), (res, 0, 2 * res, res), (0, res, res, 2 * res), (res, res, 2 * res, 2 * res)]
        if not 1 <= pic_num <= 4:
            raise ValueError(f"pic_num must be 1-4 tiles of a 2x2 grid, got {pic_num}.")
        needed = boxes[pic_num - 1]
        if needed[2] > im.width or needed[3] > im.height:
            raise ValueError(f"{grid} is {im.width}x{im.height}, too small for {pic_num} tiles of {res} px.")
        return [im.crop(b) for b in boxes[:pic_num]]
    files = sorted(p for p in root.glob(f"{item_id}_*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp")
                   and p.stem[len(item_id) + 1 :].isdigit())
    out = []
    for p in files:
        with Image.open(p) as im:
            out.append(im.convert("RGB"))
    return out


def _open(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


_MANIFESTS: dict[tuple[str, int], dict[str, list[str]]] = {}


def _manifest_files(root: Path) -> dict[str, list[str]]:
    """item_id -> image files, from the ``manifest.jsonl`` of ``llm4gen eval generate`` (prompt files written by
    :func:`write_prompt_file` carry the item_id into it)."""
    path = manifest_path(root)
    if not path.is_file():
        return {}
    key = (str(path), path.stat().st_mtime_ns)
    if key not in _MANIFESTS:
        out: dict[str, list[str]] = {}
        for _, rec in read_jsonl(path):
            item = (rec.get("meta") or {}).get("item_id")
            if item is not None and "file" in rec:
                out.setdefault(str(item), []).append(rec["file"])
        _MANIFESTS[key] = out
    return _MANIFESTS[key]


def write_prompt_file(questions_path: str | Path, out_path: str | Path) -> Path:
    """One ``{"item_id", "prompt"}`` line per prompt of a question set: the prompt file for ``llm4gen eval generate``
    (the manifest it writes then links every image to its item)."""
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for item in read_questions(questions_path):
            if not item.prompt.strip():
                raise ValueError(f"{questions_path}: item {item.item_id!r} has no prompt text.")
            f.write(json.dumps({"item_id": item.item_id, "prompt": item.prompt}, ensure_ascii=False) + "\n")
    return out


def write_grids(images_dir: str | Path, out_dir: str | Path) -> tuple[list[Path], int, int]:
    """Write the images of an ``llm4gen eval generate`` folder (its manifest gives each image's ``meta.item_id``) as
    DPG-Bench's ``{out_dir}/{item_id}.png``: up to four square tiles of one size in a 2x2 grid, in image order left
    to right, top to bottom (unused tiles black); one image per prompt is written as it is. ELLA's scorer reads them
    with ``--resolution`` = the tile size and ``--pic-num`` = the images per prompt. Returns the files, the tile
    size and the most images of a prompt."""
    src, out = Path(images_dir), Path(out_dir)
    if out.resolve() == src.resolve():
        raise ValueError(f"Write the grids to another folder than {src}: DPG-Bench's scorer reads every file of it.")
    by_item: dict[str, list[tuple[int, str]]] = {}
    for _, rec in read_jsonl(manifest_path(src), required=("file", "prompt")):
        item = (rec.get("meta") or {}).get("item_id")
        if item is None:
            raise ValueError(f"{manifest_path(src)}: {rec['file']} has no meta.item_id; generate from the prompt file "
                             "of `llm4gen eval dpg --export-prompts`.")
        by_item.setdefault(str(item), []).append((int(rec.get("image_index", 0)), rec["file"]))
    sizes = set()
    for item, files in by_item.items():  # check everything before writing anything
        if "/" in item or "\\" in item or "." in item:
            raise ValueError(f"item_id {item!r} cannot be a DPG-Bench file name (the scorer reads the id up to the "
                             "first '.'); use ids without '/', '\\' or '.'.")
        if len(files) > 4:
            raise ValueError(f"{item} has {len(files)} images; a DPG-Bench grid holds at most 4 (--num-images 4).")
        item_sizes = set()
        for _, f in files:
            with Image.open(src / f) as im:  # reads the header only
                item_sizes.add(im.size)
        if len(item_sizes) > 1 or (len(files) > 1 and any(w != h for w, h in item_sizes)):
            raise ValueError(f"The images of {item} must be square and of one size for a 2x2 grid (DPG-Bench cuts "
                             f"square tiles), got {sorted(item_sizes)}; generate with --height = --width.")
        sizes |= {w for w, _ in item_sizes}
    if len(sizes) > 1:
        raise ValueError(f"{src} holds images of several sizes {sorted(sizes)}; DPG-Bench scores one --resolution.")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for item, files in by_item.items():
        tiles = [_open(src / f) for _, f in sorted(files)]
        grid, res = tiles[0], tiles[0].width
        if len(tiles) > 1:
            grid = Image.new("RGB", (2 * res, 2 * res))
            for k, tile in enumerate(tiles):
                grid.paste(tile, ((k % 2) * res, (k // 2) * res))
        target = out / f"{item}.png"
        tmp = out.parent / f".{out.name}.{item}.{os.getpid()}.tmp"
        grid.save(tmp, format="PNG")
        os.replace(tmp, target)
        written.append(target)
    return written, (sizes.pop() if sizes else 0), max((len(f) for f in by_item.values()), default=0)


def score_item(vqa: VQAScorer, images: Sequence[Image.Image], item: DenseItem, soft: bool = False
               ) -> dict[str, Any]:
    """Score one prompt's images: ``{"score", "image_scores", "answers"}`` (answers: per image, question id ->
    the answer before the dependency rule)."""
    questions = item.questions
    pairs_images = [im for im in images for _ in questions]
    pairs_questions = [q.question for _ in images for q in questions]
    probs = vqa.score(pairs_images, pairs_questions) if pairs_questions else []
    image_scores, answers = [], []
    for k in range(len(images)):
        p = probs[k * len(questions) : (k + 1) * len(questions)]
        raw = {q.id: (float(v) if soft else float(v > 0.5)) for q, v in zip(questions, p)}
        final = apply_dependencies(raw, questions)
        image_scores.append(sum(final.values()) / len(final))
        answers.append(raw)
    return {"score": sum(image_scores) / len(image_scores), "image_scores": image_scores, "answers": answers}


def run_dpg(images_dir: str | Path, questions_path: str | Path, vqa: VQAScorer, out_dir: str | Path | None = None,
            pic_num: int = 4, resolution: int | None = None, limit: int | None = None, soft: bool = False,
            scorer_name: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Score every prompt that has images; write ``dpg_results.json`` (summary) and ``dpg_details.jsonl`` (per prompt)
    to ``out_dir`` (default: ``images_dir``) and return the summary. Scores are percentages, as DPG-Bench prints."""
    from tqdm.auto import tqdm

    items = read_questions(questions_path)
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}.")
        items = items[:limit]
    out = Path(out_dir or images_dir)
    out.mkdir(parents=True, exist_ok=True)
    details, scores, without = [], [], []
    l2: dict[str, list[float]] = defaultdict(list)
    for item in tqdm(items, desc="DPG", disable=not progress, leave=False):
        images = item_images(images_dir, item.item_id, pic_num, resolution)
        if not images:
            without.append(item.item_id)
            continue
        res = score_item(vqa, images, item, soft=soft)
        scores.append(res["score"])
        for answers in res["answers"]:
            for q in item.questions:
                l2[q.category].append(answers[q.id])
        details.append({"item_id": item.item_id, "prompt": item.prompt, **res})
    if not scores:
        raise ValueError(f"No prompt of {questions_path} has images in {images_dir} (expected {{item_id}}.png grids "
                         "or {item_id}_{k}.png files).")
    l1: dict[str, list[float]] = defaultdict(list)
    for cat, values in l2.items():
        l1[cat.split("-")[0].strip()].extend(values)
    with open(out / "dpg_details.jsonl", "w", encoding="utf-8") as f:
        for d in details:
            f.write(json.dumps(d) + "\n")
    summary = {
        "benchmark": "DPG-Bench",
        "scorer": scorer_name or getattr(vqa, "name", type(vqa).__name__),
        "answers": "P(yes)" if soft else "yes if P(yes) > 0.5",
        "dpg_score": 100 * sum(scores) / len(scores),
        "num_prompts": len(scores),
        "prompts_without_images": without,
        "level1": {k: 100 * sum(v) / len(v) for k, v in sorted(l1.items())},
        "level2": {k: 100 * sum(v) / len(v) for k, v in sorted(l2.items())},
        "limit": limit,
        "deviations": DEVIATIONS,
    }
    (out / "dpg_results.json").write_text(json.dumps(summary, indent=1))
    return summary
