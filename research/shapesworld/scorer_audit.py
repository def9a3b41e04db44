"""Audit the ShapesWorld scorer on generated images: does the shape it reads match what a person sees?

The scorer (``llm4gen.shapesworld.scorer``) classifies each object's silhouette by its nearest prototype, measured on
clean renders. Generated images are blurrier, so its verdicts there need checking by eye. Two steps:

1. ``python research/shapesworld/scorer_audit.py --model models/default`` renders an arm (llm4gen by default;
   ``--arm base``) on the headline benchmark's first ``--prompts`` held-out prompts and noise, detects every object,
   draws up to ``--per-shape`` of the detections the scorer gave each shape (a fixed random sample), and writes one
   numbered contact sheet per shape (``sheet_<shape>.png``: each crop enlarged around the object) and ``audit.json``
   (which object each number is, its colour, size, place and features) into ``--out-dir``.
2. A person looks at the sheets and writes what each crop shows into a labels JSON (``{"star": ["star", "cross",
   ...], ...}``: per sheet, one word per crop in number order, a shape or ``other``), then
   ``python research/shapesworld/scorer_audit.py --out-dir DIR --labels FILE`` prints, per shape the scorer said, how
   many crops show that shape (its precision by eye) and what the others show, and writes ``DIR/agreement.json``.

Labels are one reader's judgement: the result says how far the scorer can be trusted, not an exact error rate.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

OTHER = "other"


def _words(labels: dict, sheet: str) -> list[str]:
    """A sheet's labels as compared: trimmed, lower case."""
    return [str(w).strip().lower() for w in labels[sheet]]


def agreement(audit: dict, labels: dict) -> dict:
    """Per shape the scorer said: crops, how many a reader labelled the same shape, and the reader's label counts."""
    from llm4gen.shapesworld.world import SHAPES

    allowed = set(SHAPES) | {OTHER}
    out: dict = {}
    for shape, crops in audit["sheets"].items():
        if shape not in labels:
            raise SystemExit(f"The labels have no entry for the {shape!r} sheet; give one word per crop for each sheet "
                             f"({', '.join(audit['sheets'])}).")
        said = _words(labels, shape)
        if len(said) != len(crops):
            raise SystemExit(f"The {shape!r} sheet has {len(crops)} crops but the labels give {len(said)}: one word "
                             "per crop, in number order.")
        bad = sorted(set(said) - allowed)
        if bad:
            raise SystemExit(f"Unknown labels {bad} for the {shape!r} sheet; use one of {sorted(allowed)}.")
        counts = {w: said.count(w) for w in sorted(set(said))}
        out[shape] = {"crops": len(said), "same": counts.get(shape, 0),
                      "precision": counts.get(shape, 0) / len(said) if said else None, "labels": counts}
    return out


def estimated_recall(audit: dict, result: dict) -> dict:
    """Per shape a reader saw: how many objects of it the images hold and how many of those the scorer named so,
    estimated by scaling each sheet's label counts to all the scorer's detections of that shape (a stratified
    estimate: the sheets are random samples of each shape's detections)."""
    totals: dict[str, float] = {}
    for said, r in result.items():
        scale = audit["detections"][said] / r["crops"]
        for seen, n in r["labels"].items():
            totals[seen] = totals.get(seen, 0.0) + n * scale
    out = {}
    for seen, total in sorted(totals.items()):
        if seen == OTHER:
            continue
        named = audit["detections"].get(seen, 0) * result[seen]["precision"] if seen in result else 0.0
        out[seen] = {"estimated_objects": total, "estimated_named_so": named, "recall": named / total}
    return out


def prototype_agreement(audit: dict, labels: dict) -> dict:
    """For each prototype set the scorer has (``clean``, ``smooth``): the labelled crops (not ``other``) re-classified
    from their stored features, the share whose shape the reader saw, and the recall per shape the reader saw, each
    crop weighted by its sheet's detections / crops (a stratified estimate over all detections)."""
    from llm4gen.shapesworld.scorer import nearest_shape

    size = int(audit.get("image_size", 64))
    out = {}
    for name, smooth in (("clean", False), ("smooth", True)):
        total = right = 0.0
        per: dict[str, list[float]] = {}
        for said, crops in audit["sheets"].items():
            weight = audit["detections"][said] / len(crops)
            for crop, seen in zip(crops, _words(labels, said)):
                if seen == OTHER:
                    continue
                hit = nearest_shape(crop["features"], size, smooth) == seen
                total, right = total + weight, right + weight * hit
                counts = per.setdefault(seen, [0.0, 0.0])
                counts[0], counts[1] = counts[0] + weight, counts[1] + weight * hit
        out[name] = {"accuracy": right / total if total else None,
                     "recall": {shape: hit / n for shape, (n, hit) in sorted(per.items())}}
    return out


def make_audit(model: str, arm: str, prompts: int, per_shape: int, seed: int, out_dir: Path) -> dict:
    """Render, detect, sample and write the contact sheets and audit.json (step 1)."""
    from PIL import Image, ImageDraw

    from llm4gen.shapesworld.arms import base_unet_dir, load_arm
    from llm4gen.shapesworld.bench import QualityConfig, benchmark_prompts, render_arm
    from llm4gen.shapesworld.scorer import detect_objects
    from llm4gen.shapesworld.world import SHAPES
    from llm4gen.utils import write_report

    cfg = QualityConfig(num_prompts=prompts)
    items = benchmark_prompts(cfg)
    if arm == "base":
        if base_unet_dir(model) is None:
            raise SystemExit(f"{model} has no base arm (base_unet/); audit --arm llm4gen.")
        pipe = load_arm(model, base_unet_dir(model))
    else:
        pipe = load_arm(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        images = render_arm(pipe, [text for text, _ in items], cfg, None)
    found: dict[str, list] = {s: [] for s in SHAPES}
    for k, img in enumerate(images):
        for d in detect_objects(img):
            found[d.shape].append((k, d))
    rng = random.Random(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    sheets: dict[str, list[dict]] = {}
    cell, cols = 100, 8
    for shape, dets in found.items():
        if not dets:
            continue
        pick = rng.sample(dets, min(per_shape, len(dets)))
        rows = (len(pick) + cols - 1) // cols
        sheet = Image.new("RGB", (cols * cell, rows * cell), "white")
        draw = ImageDraw.Draw(sheet)
        for j, (k, d) in enumerate(pick):
            side = images[k].size[0]
            h = max(8, int(d.half_size) + 3)
            cx, cy = d.x * side, d.y * side
            crop = images[k].crop((int(cx - h), int(cy - h), int(cx + h), int(cy + h))).resize(
                (cell - 4, cell - 4), Image.BICUBIC)
            x, y = (j % cols) * cell, (j // cols) * cell
            sheet.paste(crop, (x, y))
            draw.text((x + 3, y + 2), str(j), fill="white", stroke_width=2, stroke_fill="black")
        sheet.save(out_dir / f"sheet_{shape}.png")
        sheets[shape] = [{"number": j, "prompt": k, "colour": d.colour, "size": d.size, "x": round(d.x, 3),
                          "y": round(d.y, 3), "features": [round(float(f), 4) for f in d.features]}
                         for j, (k, d) in enumerate(pick)]
    audit = {"model": model, "arm": arm, "image_size": images[0].size[0],
             "config": {"num_prompts": prompts, "prompt_seed": cfg.prompt_seed, "image_seed": cfg.image_seed},
             "detections": {s: len(v) for s, v in found.items()}, "sample_seed": seed, "sheets": sheets}
    write_report(out_dir / "audit.json", audit)
    return audit


def main() -> None:
    from llm4gen.utils import write_report

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/default", help="an LLM4GEN pipeline folder (ShapesWorld)")
    ap.add_argument("--arm", default="llm4gen", choices=("llm4gen", "base"))
    ap.add_argument("--prompts", type=int, default=250, help="the headline benchmark's first N held-out prompts")
    ap.add_argument("--per-shape", type=int, default=48, help="crops per contact sheet")
    ap.add_argument("--seed", type=int, default=0, help="seed of the sample drawn per sheet")
    ap.add_argument("--out-dir", default="runs/research/scorer_audit")
    ap.add_argument("--labels", help="step 2: a JSON of what each crop shows, per sheet")
    args = ap.parse_args()
    out_dir = Path(args.out_dir)

    from rich.console import Console
    from rich.table import Table

    if args.labels is None:
        if not (Path(args.model) / "model_index.json").is_file():
            raise SystemExit(f"{args.model} is not a pipeline folder (no model_index.json); give an LLM4GEN pipeline.")
        if args.prompts < 1 or args.per_shape < 1:
            raise SystemExit("--prompts and --per-shape must be >= 1.")
        audit = make_audit(args.model, args.arm, args.prompts, args.per_shape, args.seed, out_dir)
        print(f"detections per shape: {audit['detections']}")
        sheets = ", ".join(str(out_dir / f"sheet_{s}.png") for s in audit["sheets"])
        print(f"wrote {sheets} and {out_dir / 'audit.json'}; label the crops and run again with --out-dir {out_dir} "
              "--labels FILE")
        return
    audit_path = out_dir / "audit.json"
    if not audit_path.is_file():
        raise SystemExit(f"{audit_path} is missing: run step 1 (without --labels) with this --out-dir first.")
    try:
        labels = json.loads(Path(args.labels).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SystemExit(f"Could not read the labels {args.labels}: {err}") from None
    audit = json.loads(audit_path.read_text())
    result = agreement(audit, labels)
    table = Table(title=f"ShapesWorld scorer vs a reader's labels: {audit['model']}, {audit['arm']} arm, "
                        f"{audit['config']['num_prompts']} held-out prompts")
    for col in ("scorer said", "crops", "reader agrees", "reader saw"):
        table.add_column(col, justify="right" if col in ("crops", "reader agrees") else "left")
    for shape, r in result.items():
        table.add_row(shape, str(r["crops"]), f"{r['same']} ({100 * r['precision']:.0f}%)",
                      ", ".join(f"{w} {n}" for w, n in sorted(r["labels"].items(), key=lambda x: -x[1])))
    console = Console(width=140)
    console.print(table)
    recall = estimated_recall(audit, result)
    table = Table(title="Per shape the reader saw: objects in the images and the share the scorer named so "
                        "(estimated from the sheets)")
    for col in ("reader saw", "objects (est.)", "scorer named so (est.)", "recall"):
        table.add_column(col, justify="left" if col == "reader saw" else "right")
    for shape, r in recall.items():
        table.add_row(shape, f"{r['estimated_objects']:.0f}", f"{r['estimated_named_so']:.0f}",
                      f"{100 * r['recall']:.0f}%")
    console.print(table)
    by_set = prototype_agreement(audit, labels)
    shapes = sorted({s for r in by_set.values() for s in r["recall"]})
    table = Table(title="The labelled crops re-classified with each prototype set of the scorer (detect_objects' "
                        "prototypes=; auto picks clean for noise-free images): agreement with the reader")
    for col in ("prototypes", "accuracy", *(f"{s} recall" for s in shapes)):
        table.add_column(col, justify="left" if col == "prototypes" else "right")
    for name, r in by_set.items():
        table.add_row(name, f"{100 * r['accuracy']:.1f}%", *(f"{100 * r['recall'][s]:.0f}%" for s in shapes))
    console.print(table)
    report = {"audit": str(audit_path), "labels_file": args.labels, "detections": audit["detections"],
              "agreement": result, "estimated_recall": recall, "prototype_sets": by_set}
    write_report(out_dir / "agreement.json", report)
    print(f"wrote {out_dir / 'agreement.json'}")


if __name__ == "__main__":
    main()
