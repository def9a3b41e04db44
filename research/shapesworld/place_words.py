"""Do the place words move the object at all? One-object prompts rendered with each of the nine place phrases.

The headline benchmark finds objects in the cell their caption names about as often as chance, even alone in the
scene. That could still hide a weak pull. This script takes the held-out one-object prompts of the headline benchmark
and renders each one nine times, with its place phrase ("in the upper left corner", "right in the centre of the
image", ...) replaced by each cell's phrase in turn and *everything else the same*: the rest of the caption, and the
noise (image ``i`` of every version is seeded ``image_seed + i``). Where the drawn object is (the largest object of
the asked colour, found by the ShapesWorld scorer's detector) then depends on the place words alone. Reported per arm:

- **x shift**: per prompt, the mean drawn x (fraction of the width) over the three "right" phrasings minus that over
  the three "left" ones, averaged over prompts with a bootstrap interval. Text in full control: about +0.45 (the
  cells' centres are 0.45 apart for a small object); ignored: 0.
- **y shift**: the same for "bottom" minus "top".
- **in named cell**: the share of images with the object in the cell its phrase names (2 px tolerance), against
  the chance of a uniformly placed object.

    python research/shapesworld/place_words.py --model models/default

Prints a table and writes JSON (default runs/research/place_words.json, and its summary
``place_words.summary.json`` where the report holds per-item records) and a grid of the first prompts' nine
versions per arm (.png next to it).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

_AT = {"left": 0.2, "centre": 0.5, "right": 0.8, "top": 0.2, "middle": 0.5, "bottom": 0.8}  # a point in each cell


def drawn_object(image: Any, colour: str) -> Any:
    """The largest object of ``colour`` the ShapesWorld detector finds in ``image`` (a ``Detection``), or None."""
    from llm4gen.shapesworld.scorer import detect_objects

    return next((d for d in detect_objects(image) if d.colour == colour), None)  # largest first


def place_effect(rows: list[dict[str, Any]], n_boot: int = 2000) -> dict[str, Any]:
    """``rows``: one per (prompt, cell) with ``prompt``, ``cell`` ([h, v]), ``x``/``y`` (None: nothing drawn),
    ``in_cell`` and ``chance``. Per-prompt contrasts right - left (x) and bottom - top (y) over the prompts that drew
    the object in all six of those versions, their mean and bootstrap interval, and the in-cell share."""
    from llm4gen.stats import bootstrap_ci

    by_prompt: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        by_prompt.setdefault(r["prompt"], []).append(r)

    def contrast(axis: str, k: int, low: str, high: str) -> dict[str, Any]:
        diffs = []
        for rs in by_prompt.values():
            lo = [r[axis] for r in rs if r["cell"][k] == low]
            hi = [r[axis] for r in rs if r["cell"][k] == high]
            if lo and hi and None not in lo + hi:
                diffs.append(float(np.mean(hi) - np.mean(lo)))
        d = np.array(diffs)
        return {"mean": float(d.mean()) if d.size else None, "ci95": list(bootstrap_ci(d, n_boot)) if d.size else None,
                "prompts": int(d.size)}

    drawn = [r for r in rows if r["x"] is not None]
    return {"x_shift": contrast("x", 0, "left", "right"), "y_shift": contrast("y", 1, "top", "bottom"),
            "in_cell": float(np.mean([r["in_cell"] for r in drawn])) if drawn else None,
            "chance": float(np.mean([r["chance"] for r in drawn])) if drawn else None,
            "images": len(rows), "drawn": len(drawn)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/default", help="an LLM4GEN pipeline folder (ShapesWorld)")
    ap.add_argument("--prompts", type=int, default=40, help="one-object held-out prompts (each rendered 9 times)")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--batch-size", type=int, default=45)
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--out", default="runs/research/place_words.json")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.prompts < 1:
        raise SystemExit("--prompts must be at least 1.")

    from rich.console import Console
    from rich.table import Table

    from llm4gen.images import make_grid
    from llm4gen.shapesworld.arms import base_unet_dir, load_arm
    from llm4gen.shapesworld.bench import QualityConfig, benchmark_prompts, render_arm
    from llm4gen.shapesworld.scorer import in_cell, position_chance
    from llm4gen.shapesworld.world import POSITION_CELLS, SceneObject, with_place
    from llm4gen.utils import write_report

    if not (Path(args.model) / "model_index.json").is_file():
        raise SystemExit(f"{args.model} is not a pipeline folder (no model_index.json): give --model.")
    cfg = QualityConfig(num_prompts=max(500, 5 * args.prompts), num_inference_steps=args.steps,
                        guidance_scale=args.guidance, batch_size=args.batch_size, bootstrap=args.bootstrap)
    items = [(t, s) for t, s in benchmark_prompts(cfg) if len(s.objects) == 1][: args.prompts]
    if len(items) < args.prompts:
        raise SystemExit(f"Only {len(items)} one-object prompts among the first {cfg.num_prompts}; lower --prompts.")
    versions = {cell: [with_place(t, s.objects[0], cell) for t, s in items] for cell in POSITION_CELLS}
    arms = {}
    if base_unet_dir(args.model) is not None:
        arms["base"] = lambda: load_arm(args.model, unet=base_unet_dir(args.model))
    arms["llm4gen"] = lambda: load_arm(args.model)
    report: dict[str, Any] = {"model": args.model, "prompts": len(items), "config": vars(args), "arms": {}}
    grid_cells, grid_captions = [], []
    for arm, load in arms.items():
        t0 = time.perf_counter()
        pipe = load()
        rows = []
        for cell, prompts in versions.items():
            images = render_arm(pipe, prompts, cfg)
            for i, (image, (_, scene)) in enumerate(zip(images, items)):
                obj = scene.objects[0]
                det = drawn_object(image, obj.colour)
                named = SceneObject(obj.colour, obj.shape, obj.size, _AT[cell[0]], _AT[cell[1]])  # for the odds
                rows.append({"prompt": i, "cell": list(cell), "x": None if det is None else det.x,
                             "y": None if det is None else det.y,
                             "in_cell": None if det is None else float(in_cell(det.x, det.y, cell)),
                             "chance": position_chance(named)})
                if i == 0:
                    grid_cells.append(image)
                    grid_captions.append(f"[{arm}] {' '.join(cell)}")
        report["arms"][arm] = {"seconds": time.perf_counter() - t0, **place_effect(rows, args.bootstrap),
                               "rows": rows}

    table = Table(title=f"Place words, one-object held-out prompts ({len(items)} x 9 phrasings, same noise): "
                        "shift of the drawn object's centre (fraction of the image), 95% CI")
    for col in ("arm", "x shift (right - left)", "y shift (bottom - top)", "in named cell %", "chance %", "drawn"):
        table.add_column(col, justify="left" if col == "arm" else "right")
    for arm, r in report["arms"].items():
        cells = []
        for key in ("x_shift", "y_shift"):
            s = r[key]
            cells.append("-" if s["mean"] is None else
                         f"{s['mean']:+.3f} [{s['ci95'][0]:+.3f}, {s['ci95'][1]:+.3f}] (n={s['prompts']})")
        table.add_row(arm, *cells, *("-" if r[k] is None else f"{100 * r[k]:.1f}" for k in ("in_cell", "chance")),
                      f"{r['drawn']} / {r['images']}")
    Console(width=max(Console().width, 130)).print(table)
    out = Path(args.out)
    write_report(out, report)
    grid = make_grid(grid_cells, grid_captions, cols=len(POSITION_CELLS), cell=128, caption_lines=2)
    grid.save(out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
