"""Why does the llm4gen arm draw too many objects? Render held-out prompts with and without one kind of sentence.

A dense ShapesWorld caption names every object once in its own sentence and may name some of them again in relation
sentences ("The orange square is above the blue square."). If an arm draws a new object for a repeated mention,
removing those sentences, with the scene, the noise and every other sentence unchanged, lowers how often it draws
too many. Run on the bundled model::

    python research/shapesworld/count_relations.py --model models/default --prompts 200

``--drop count`` removes instead the sentence that states the total ("In total there are three figures in the
scene."), which every dense caption has near its start, inside CLIP's 77-token window: an arm that reads the total
from it counts worse without it, one that counts the object sentences does not change.

Each arm (the base arm from ``base_unet/`` when the folder has one, and llm4gen) renders the first ``--prompts``
held-out benchmark prompts that have such sentences twice: as they are and without them (same noise per prompt).
Prints a table (per arm: object count right, too many, too few, mean surplus, colour, shape, binding; the paired
difference without - with, with a 95% bootstrap interval) and writes JSON (default
runs/research/count_relations.json, or count_sentence.json for ``--drop count``) and a PNG of the first prompts
next to it.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from PIL import Image

# --drop: what the sentences are called, and the default JSON name
DROPS = {"relations": ("relation sentences", "count_relations"), "count": ("a count sentence", "count_sentence")}
METRICS = ("count", "too_many", "too_few", "surplus", "colour", "shape", "binding", "all_correct")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/default", help="an LLM4GEN pipeline folder (base_unet/ optional)")
    ap.add_argument("--drop", choices=sorted(DROPS), default="relations",
                    help="which sentences to remove: the relation sentences, or the one stating the total")
    ap.add_argument("--prompts", type=int, default=200, help="held-out prompts with such sentences to render")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--out", help="JSON path (default: runs/research/count_relations.json or count_sentence.json)")
    args = ap.parse_args()
    what, out_name = DROPS[args.drop]
    args.out = args.out or f"runs/research/{out_name}.json"
    if args.prompts < 1:
        raise SystemExit("--prompts must be >= 1.")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from rich.console import Console
    from rich.table import Table

    from llm4gen.images import make_grid
    from llm4gen.shapesworld import world as shapes
    from llm4gen.shapesworld.arms import base_unet_dir, load_arm
    from llm4gen.shapesworld.bench import QualityConfig, benchmark_prompts, render_arm, score_with_count_errors
    from llm4gen.stats import paired_difference
    from llm4gen.utils import write_report

    if not (Path(args.model) / "model_index.json").is_file():
        raise SystemExit(f"{args.model} is not a pipeline folder (no model_index.json): give --model.")
    # the headline benchmark's prompts in its order; scan far enough to find --prompts with such sentences
    drop = {"relations": shapes.drop_relation_sentences, "count": shapes.drop_count_sentence}[args.drop]
    cfg = QualityConfig(num_prompts=max(500, 3 * args.prompts), num_inference_steps=args.steps,
                        guidance_scale=args.guidance, batch_size=args.batch_size, bootstrap=args.bootstrap)
    items, stripped, dropped = [], [], []
    for text, scene in benchmark_prompts(cfg):
        kept, rel = drop(text)
        if rel:
            items.append((text, scene))
            stripped.append(kept)
            dropped.append(rel)
        if len(items) == args.prompts:
            break
    if len(items) < args.prompts:
        raise SystemExit(f"Only {len(items)} of the scanned prompts have {what}; lower --prompts.")

    arms = {}
    if base_unet_dir(args.model) is not None:
        arms["base"] = lambda: load_arm(args.model, unet=base_unet_dir(args.model))
    arms["llm4gen"] = lambda: load_arm(args.model)
    with_, without = f"with {args.drop}", f"without {args.drop}"
    versions = {with_: [t for t, _ in items], without: stripped}
    scenes = [s for _, s in items]
    rows: dict[str, dict[str, list[dict]]] = {}
    images: dict[str, dict[str, list]] = {}
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    for arm, load in arms.items():
        pipe = load()
        rows[arm], images[arm] = {}, {}
        for version, prompts in versions.items():
            Console().print(f"[bold]{arm}[/bold]: rendering {len(prompts)} prompts {version}")
            imgs = render_arm(pipe, prompts, cfg)
            rows[arm][version], images[arm][version] = score_with_count_errors(imgs, scenes), imgs
        seconds[arm] = time.perf_counter() - t0
        t0 = time.perf_counter()

    def mean(rs: list[dict], m: str) -> float | None:
        vals = [r[m] for r in rs if r.get(m) is not None]
        return sum(vals) / len(vals) if vals else None

    summary = {arm: {v: {m: mean(rows[arm][v], m) for m in METRICS} for v in versions} for arm in arms}
    diffs = {arm: {m: paired_difference(rows[arm][with_], rows[arm][without], m,
                                        args.bootstrap) for m in METRICS} for arm in arms}

    table = Table(title=f"{len(items)} held-out prompts with {what} ({args.model}): % of prompts "
                        "(surplus: objects found - asked); diff = without - with, paired 95% CI")
    table.add_column("arm")
    table.add_column("metric")
    for col in (*versions, "diff"):
        table.add_column(col, justify="right")
    for arm in arms:
        for m in METRICS:
            k = 1 if m == "surplus" else 100
            d = diffs[arm][m]
            cells = [f"{k * summary[arm][v][m]:.2f}" if m == "surplus" else f"{k * summary[arm][v][m]:.1f}"
                     for v in versions]
            cells.append(f"{k * d['mean']:+.2f} [{k * d['ci95'][0]:+.2f}, {k * d['ci95'][1]:+.2f}]")
            table.add_row(arm if m == METRICS[0] else "", m.replace("_", " "), *cells)
        table.add_section()
    Console().print(table)

    # the count split by how many objects the prompt asks for: does an arm follow the asked number or a habit?
    asked = sorted({len(scene.objects) for scene in scenes})

    def by_asked(rs: list[dict]) -> dict[int, dict]:
        out = {}
        for n in asked:
            sel = [r for r in rs if r["num_asked"] == n]
            out[n] = {"prompts": len(sel), "count": mean(sel, "count"), "surplus": mean(sel, "surplus")}
        return out

    by_objects = {arm: {v: by_asked(rows[arm][v]) for v in versions} for arm in arms}
    split = Table(title="object count right, % (mean surplus), by objects asked for (prompts)")
    split.add_column("arm")
    split.add_column("version")
    for n in asked:
        split.add_column(f"{n} ({sum(len(scene.objects) == n for scene in scenes)})", justify="right")
    for arm in arms:
        for v in versions:
            split.add_row(arm if v == with_ else "", v, *[
                f"{100 * c['count']:.0f} ({c['surplus']:+.2f})" for c in by_objects[arm][v].values()])
    Console().print(split)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    per_prompt = [
        {"index": i, "text": text, f"without_{args.drop}": stripped[i], "dropped": dropped[i],
         "num_asked": len(scene.objects),
         **{f"{arm}/{v}/num_found": rows[arm][v][i]["num_found"] for arm in arms for v in versions}}
        for i, (text, scene) in enumerate(items)
    ]
    report = {"model": str(args.model), "dropped": what, "prompts": len(items), "steps": args.steps,
              "guidance": args.guidance, "prompt_seed": cfg.prompt_seed, "image_seed": cfg.image_seed,
              "render_seconds": seconds,
              "summary": summary, "differences": diffs, "by_objects": by_objects, "per_prompt": per_prompt}
    write_report(out, report)
    n = min(4, len(items))
    cells, captions = [], []
    for arm in arms:
        for v in versions:
            for i in range(n):
                cells.append(images[arm][v][i].resize((192, 192), Image.NEAREST))
                head = f"[{arm}, {v}] found {rows[arm][v][i]['num_found']} of {rows[arm][v][i]['num_asked']}."
                # the prompts differ only in these sentences (the rest is in the JSON)
                tail = " ".join(dropped[i]) if v == with_ else "(the same prompt without them)"
                captions.append(f"{head} Dropped: {tail}")
    grid = out.with_suffix(".png")
    make_grid(cells, captions, cols=n, cell=192, caption_lines=9).save(grid)
    print(f"wrote {out} and {grid}")


if __name__ == "__main__":
    main()
