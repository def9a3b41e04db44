"""How often `make demo`'s images follow their prompts: the demo's three prompts and arms over many seeds, scored.

`llm4gen demo` shows one seed per prompt. This script renders each demo prompt (``llm4gen.examples.DEMO_PROMPTS``)
with seeds 0..N-1 in the demo's three arms (base: the CLIP-only UNet; llm4gen; llm4gen + regions: region guidance
and the mask with boxes planned from the prompt's words, ``planned_regions``), at the demo's settings (25 steps,
guidance 5), and scores every image with the ShapesWorld scorer against the scene the prompt asks for
(``llm4gen.examples.DEMO_SCENES``). Per prompt and arm: the share of seeds whose image is wholly right (all-correct)
with a 95% Wilson interval, and the mean colour, shape, binding, size, count and position scores. Prints a table,
writes JSON and a PNG grid (per prompt and arm, the first seeds, each captioned with what the scorer found wrong).

    python research/shapesworld/demo_seeds.py --seeds 20            # about 3 minutes on a 2-core CPU
"""

from __future__ import annotations

import argparse
import math
import os
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

METRICS = ("all_correct", "colour", "shape", "binding", "size", "count", "position", "spatial")


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion ``k / n``."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def wrong(row: dict) -> str:
    """What the scorer found wrong in one image, in a few words ("ok" when all-correct)."""
    if row["all_correct"]:
        return "ok"
    found = ", ".join(f"{d['size']} {d['colour']} {d['shape']}" for d in row["found"]) or "nothing"
    return f"found: {found}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/default", help="an LLM4GEN pipeline folder (ShapesWorld)")
    ap.add_argument("--seeds", type=int, default=20, help="seeds 0..N-1 per prompt and arm")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--guidance", type=float, default=None, help="default: the demo's (llm4gen.cli.BUNDLED_GUIDANCE)")
    ap.add_argument("--grid-seeds", type=int, default=8, help="seeds shown per row of the PNG grid")
    ap.add_argument("--scorer-prototypes", default="auto", choices=("auto", "clean", "smooth"),
                    help="the scorer's shape prototypes (llm4gen.shapesworld.scorer.detect_objects; auto: the "
                         "published tables')")
    ap.add_argument("--out", default="runs/research/demo_seeds.json")
    args = ap.parse_args()
    if not (Path(args.model) / "model_index.json").is_file():
        raise SystemExit(f"{args.model} is not a pipeline folder (no model_index.json); give an LLM4GEN pipeline.")
    if args.seeds < 1 or args.steps < 1 or args.grid_seeds < 0:
        raise SystemExit("--seeds and --steps must be >= 1, --grid-seeds >= 0.")

    import torch
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from llm4gen import LLM4GenPipeline
    from llm4gen.cli import BUNDLED_GUIDANCE
    from llm4gen.examples import DEMO_PROMPTS, DEMO_SCENES
    from llm4gen.images import make_grid
    from llm4gen.shapesworld.arms import base_unet_dir, clip_only_pipeline
    from llm4gen.shapesworld.bench import planned_regions
    from llm4gen.shapesworld.scorer import score_image, summarize
    from llm4gen.shapesworld.world import Scene
    from llm4gen.utils import quiet_library_notices, write_report

    guidance = BUNDLED_GUIDANCE if args.guidance is None else args.guidance
    pipe = LLM4GenPipeline.from_pretrained(args.model)
    arms: dict = {}
    if base_unet_dir(args.model) is not None:
        arms["base"] = clip_only_pipeline(pipe, base_unet_dir(args.model))
    arms["llm4gen"] = pipe
    arms["llm4gen + regions"] = pipe
    scenes = [Scene.from_dict(s) for s in DEMO_SCENES]
    seeds = list(range(args.seeds))
    rows: dict[str, dict[str, list[dict]]] = {}
    images: dict[tuple[int, str], list] = {}
    timings: dict[str, float] = {name: 0.0 for name in arms}
    # CLIP's window ends before the long prompts' last words: that is measured, so its notices are silenced
    with quiet_library_notices(), Progress() as bar, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        task = bar.add_task("render", total=len(DEMO_PROMPTS) * len(arms) * len(seeds))
        for i, (prompt, scene) in enumerate(zip(DEMO_PROMPTS, scenes)):
            for name, arm in arms.items():
                arm.set_progress_bar_config(disable=True)
                extra = {"regions": [planned_regions(prompt)] * len(seeds)} if name.endswith("regions") else {}
                start = time.perf_counter()
                # one generator per image: image s has seed s's noise, as a call for that seed alone would
                out = arm([prompt] * len(seeds), num_inference_steps=args.steps, guidance_scale=guidance,
                          generator=[torch.Generator().manual_seed(s) for s in seeds], **extra).images
                timings[name] += time.perf_counter() - start
                bar.advance(task, len(seeds))
                scored = []
                for s, img in zip(seeds, out):
                    row = score_image(img, scene, prototypes=args.scorer_prototypes)
                    row["seed"] = s
                    scored.append(row)
                rows.setdefault(str(i), {})[name] = scored
                images[(i, name)] = out

    summary: dict = {}
    table = Table(title=f"{args.model}: the demo's prompts over {len(seeds)} seeds each ({args.steps} steps, guidance "
                        f"{guidance:g}, scorer prototypes {args.scorer_prototypes}); % of seeds, all-correct with "
                        "95% Wilson interval")
    for col in ("prompt", "arm", "all-correct", *METRICS[1:]):
        table.add_column(col, justify="left" if col in ("prompt", "arm") else "right")
    for i in map(str, range(len(DEMO_PROMPTS))):
        summary[i] = {}
        for name in arms:
            scored = rows[i][name]
            k = sum(int(r["all_correct"]) for r in scored)
            lo, hi = wilson(k, len(scored))
            means = {m: v["mean"] for m, v in summarize(scored).items() if m in METRICS}
            summary[i][name] = {"all_correct_seeds": k, "seeds": len(scored), "all_correct_ci95": [lo, hi], **means}
            cells = [f"{100 * means[m]:.0f}" if means[m] is not None else "-" for m in METRICS[1:]]
            table.add_row(str(int(i) + 1), name, f"{k}/{len(scored)} [{100 * lo:.0f}, {100 * hi:.0f}]", *cells)
    Console(width=160).print(table)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"benchmark": "demo_seeds", "model": args.model, "seeds": seeds, "steps": args.steps,
              "guidance": guidance, "scorer_prototypes": args.scorer_prototypes, "prompts": DEMO_PROMPTS,
              "scenes": DEMO_SCENES, "render_seconds": timings, "summary": summary, "results": rows}
    write_report(out, report)
    if args.grid_seeds:
        shown = seeds[:args.grid_seeds]
        cells, captions = [], []
        for i in range(len(DEMO_PROMPTS)):
            for name in arms:
                for s in shown:
                    cells.append(images[(i, name)][s])
                    captions.append(f"prompt {i + 1}, {name}, seed {s}: {wrong(rows[str(i)][name][s])}")
        make_grid(cells, captions=captions, cols=len(shown), cell=128, caption_lines=None).save(
            out.with_suffix(".png"))
    print(f"wrote {out}" + (f" and {out.with_suffix('.png')}" if args.grid_seeds else ""))


if __name__ == "__main__":
    main()
