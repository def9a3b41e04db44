"""Does region guidance make a ShapesWorld model draw what its dense prompts say? Both arms, with and without it.

Region guidance (``llm4gen.regions``) moves the latents during the first denoising steps so that each named object's
words attend inside a box. With ``--boxes scene`` (the default) each object's box is the cell of the 3x3 grid that its
place phrase names ("in the upper right corner" -> the upper right ninth) and its words are every mention of it by
colour and noun (``llm4gen.shapesworld.bench.scene_regions``): what the prompt says, not where the scene put the
object. With ``--boxes planned`` the regions come from the caption's words alone (``llm4gen.layout.plan_regions``,
as ``regions="auto"`` plans them); ``--boxes scene planned`` runs both. The script renders the headline benchmark's
held-out prompts from the same noise (25 DPM-Solver++ steps, guidance 5) without and with region guidance, for the
base arm and the llm4gen arm (the base arm guides its CLIP tokens, the llm4gen arm ``--tokens``, default the CAM's),
scores every image exactly and reports each arm with 95% bootstrap intervals and the paired differences: guidance on
each arm, llm4gen against base when both are guided, and planned against scene boxes when both are run.
``--methods`` picks how the boxes act: ``guide`` (region guidance alone, this script's default), ``mask`` (masked
cross-attention alone, ``llm4gen.regions.RegionMask``: in prompts with two regions or more each object's words are
read only inside its box; no extra UNet pass) and ``both`` (what ``regions=`` does by default); each is paired against
the unguided arm, and against ``guide`` when that runs too; ``--mask-steps N`` masks only the first N steps.

    python research/shapesworld/region_guidance.py --model models/default

Images and the full results.json go to ``--work``; prints a table and writes JSON (default
runs/research/region_guidance.json) and a bar chart of the arms (``.png`` beside it).
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

METHODS = {"guide": "", "mask": " (mask)", "both": " (guide + mask)"}  # method -> arm-name suffix
SHOWN = ("colour", "shape", "binding", "count", "position", "all_correct")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/default", help="an LLM4GEN pipeline folder (ShapesWorld)")
    ap.add_argument("--prompts", type=int, default=500)
    ap.add_argument("--scale", type=float, default=0.05, help="RMS change of the latents per guided step")
    ap.add_argument("--steps", type=int, default=10, help="guided denoising steps (the first ones)")
    ap.add_argument("--tokens", default="llm", choices=("llm", "clip", "both"), help="the llm4gen arm's guided tokens")
    ap.add_argument("--boxes", nargs="+", default=["scene"], choices=("scene", "planned"),
                    help="where the boxes come from: the scene's cells as its caption names them (scene_regions), "
                         "and/or llm4gen.layout.plan_regions on the caption's words alone (planned_regions)")
    ap.add_argument("--methods", nargs="+", default=["guide"], choices=METHODS,
                    help="guide: region guidance; mask: masked cross-attention (RegionMask, every step, the CLIP and "
                         "LLM tokens, prompts with two regions or more); both: the two (the pipeline's default)")
    ap.add_argument("--mask-steps", type=int, default=None,
                    help="mask and both: mask only the first N denoising steps (default: all)")
    ap.add_argument("--no-base", action="store_true", help="leave out the base arm (base_unet/) and its guided twin")
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--work", default="runs/research/region_guidance", help="folder for the images and results.json")
    ap.add_argument("--out", default="runs/research/region_guidance.json")
    args = ap.parse_args()
    if not (Path(args.model) / "model_index.json").is_file():
        raise SystemExit(f"{args.model} is not a pipeline folder (no model_index.json); give an LLM4GEN pipeline.")
    if args.scale < 0 or args.steps < 0 or (args.mask_steps is not None and args.mask_steps < 0):
        raise SystemExit("--scale, --steps and --mask-steps must be >= 0.")

    from rich.console import Console
    from rich.table import Table

    from llm4gen.shapesworld.arms import base_unet_dir, load_arm
    from llm4gen.shapesworld.bench import (
        LENGTH_BUCKETS,
        METRICS,
        QualityConfig,
        RegionArm,
        benchmark_prompts,
        format_percent,
        length_bucket,
        planned_regions,
        plot_quality,
        run_quality_benchmark,
        scene_regions,
    )
    from llm4gen.stats import paired_difference
    from llm4gen.utils import write_report

    try:
        cfg = QualityConfig(num_prompts=args.prompts, batch_size=args.batch_size, bootstrap=args.bootstrap)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    prompts = benchmark_prompts(cfg)
    boxes = list(dict.fromkeys(args.boxes))
    methods = list(dict.fromkeys(args.methods))
    regions = {"scene": {text: scene_regions(text, scene) for text, scene in prompts},
               "planned": {text: planned_regions(text) for text, _ in prompts}}
    suffix = {"scene": " + regions", "planned": " + planned regions"}
    variants = [(b, m) for b in boxes for m in methods]  # each arm is rendered once per (box source, method)

    def arm_name(arm: str, b: str, m: str) -> str:
        return arm + suffix[b] + METHODS[m]

    def controlled(pipe, b: str, m: str, tokens: str) -> RegionArm:
        return RegionArm(pipe, regions[b], args.scale if m != "mask" else 0.0, args.steps, tokens=tokens,
                         mask=m != "guide", mask_steps=args.mask_steps)

    arms: dict = {}
    base_dir = None if args.no_base else base_unet_dir(args.model)
    if not args.no_base and base_dir is None:
        raise SystemExit(f"{args.model} has no base arm (base_unet/); pass --no-base to guide the llm4gen arm alone.")
    if base_dir is not None:
        base = load_arm(args.model, base_dir)
        arms["base"] = base
        for b, m in variants:
            arms[arm_name("base", b, m)] = controlled(base, b, m, "clip")
    llm4gen = load_arm(args.model)
    arms["llm4gen"] = llm4gen
    for b, m in variants:
        arms[arm_name("llm4gen", b, m)] = controlled(llm4gen, b, m, args.tokens)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # CLIP's window ends before many regions of dense prompts: that is measured
        report = run_quality_benchmark(arms, args.work, cfg, progress=True)

    sides = (["base"] if base_dir is not None else []) + ["llm4gen"]
    pairs = [(arm, arm_name(arm, b, m)) for arm in sides for b, m in variants]
    pairs += [(arm_name("base", b, m), arm_name("llm4gen", b, m)) for b, m in variants if base_dir is not None]
    if len(boxes) == 2:
        pairs += [(arm_name(arm, "scene", m), arm_name(arm, "planned", m)) for arm in sides for m in methods]
    if "guide" in methods:
        pairs += [(arm_name(arm, b, "guide"), arm_name(arm, b, m))
                  for arm in sides for b, m in variants if m != "guide"]
    results = report["results"]
    differences = {
        f"{after} - {before}": {bucket: {m: paired_difference(length_bucket(results[before], bucket),
                                                               length_bucket(results[after], bucket), m,
                                                               args.bootstrap) for m in METRICS}
                                for bucket in LENGTH_BUCKETS}
        for before, after in pairs
    }
    guided = {b: sum(1 for rs in regions[b].values() if rs) for b in boxes}
    table = Table(title=f"{args.model}: region guidance (scale {args.scale:g}, {args.steps} steps; "
                        f"{', '.join(methods)}"
                        f"{'' if args.mask_steps is None else f', mask {args.mask_steps} steps'}) on "
                        f"{args.prompts} held-out dense prompts (with regions: "
                        f"{', '.join(f'{n} {b}' for b, n in guided.items())}): % [95% CI]")
    table.add_column("arm / paired difference")
    for m in SHOWN:
        table.add_column(m.replace("_", "-"), justify="right")
    for name in arms:
        table.add_row(name, *(format_percent(report["summary"][name]["all"][m]) for m in SHOWN))
    for name, diff in differences.items():
        table.add_row(name, *(format_percent(diff["all"][m], signed=True) for m in SHOWN))
    console = Console()
    (console if console.is_terminal else Console(width=160)).print(table)

    out = Path(args.out)
    write_report(out, {
        "model": str(args.model), "prompts": args.prompts, "boxes": boxes,
        "prompts_with_regions": guided[boxes[0]] if len(boxes) == 1 else guided,
        "regions": {b: sum(len(regions[b][text]) for text, _ in prompts) for b in boxes},
        "methods": methods, "mask_steps": args.mask_steps, "scale": args.scale, "steps": args.steps,
        "llm4gen_tokens": args.tokens,
        "config": report["config"],
        "arms": list(arms), "render_seconds": report["render_seconds"], "summary": report["summary"],
        "differences": differences, "binding_breakdown": report["binding_breakdown"],
        "position_breakdown": report["position_breakdown"],
    })
    plot_quality(report["summary"], out.with_suffix(".png"),
                 title=f"{cfg.prompt_set}: without and with region guidance")
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
