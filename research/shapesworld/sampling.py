"""Which sampler settings suit a model? Render its llm4gen arm at several guidance / guidance-rescale / step settings.

Every setting renders the same held-out dense prompts from the same noise (``llm4gen bench quality``'s prompts and
seeds, 25 DPM-Solver++ steps unless the setting says otherwise) with the llm4gen arm, scores the images exactly and
reports each metric with its 95% bootstrap interval and the *paired* difference to the first setting (the
reference). Run on the bundled model::

    python research/shapesworld/sampling.py --model models/default --setting 5,0,25 --setting 7.5,0,25 \\
        --setting 3,0,25 --setting 5,0.7,25 --setting 7.5,0.7,25 --setting 5,0,50

A setting is ``GUIDANCE,RESCALE,STEPS`` (rescale: Lin et al. 2024's rescale of the guided prediction, 0 = plain
guidance). Each setting's images and results.json go to ``--work/g{G}_r{R}_s{S}``; a results.json there with the
same settings is reused, so an interrupted sweep resumes where it stopped. Prints a table and writes JSON (default
runs/research/sampling.json) and a chart of the differences (``.png`` beside it).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

SHOWN = ("colour", "shape", "binding", "count", "position", "all_correct")


def parse_setting(text: str) -> tuple[float, float, int]:
    """``"7.5,0.7,25"`` -> ``(7.5, 0.7, 25)``, with a message naming the problem for anything else."""
    parts = [p.strip() for p in text.split(",")]
    try:
        guidance, rescale, steps = float(parts[0]), float(parts[1]), int(parts[2])
        if len(parts) != 3:
            raise ValueError
    except (ValueError, IndexError):
        raise SystemExit(f"--setting takes GUIDANCE,RESCALE,STEPS such as 5,0,25 or 7.5,0.7,25; got {text!r}."
                         ) from None
    if not 0.0 <= rescale <= 1.0 or steps < 1:
        raise SystemExit(f"--setting {text!r}: the rescale must lie in [0, 1] and the steps be >= 1.")
    return guidance, rescale, steps


def setting_name(guidance: float, rescale: float, steps: int) -> str:
    return f"g{guidance:g}_r{rescale:g}_s{steps}"


def plot_differences(rows: list[dict], path: Path, title: str) -> None:
    """One group of bars per metric, one bar per setting after the reference, 95% intervals as whiskers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    others = rows[1:]
    fig, ax = plt.subplots(figsize=(9.5, 4.2))
    width = 0.8 / max(len(others), 1)
    x = np.arange(len(SHOWN))
    for k, row in enumerate(others):
        stats = [row["difference"]["all"][m] for m in SHOWN]
        mean = np.array([np.nan if s["mean"] is None else 100 * s["mean"] for s in stats])
        lo = np.array([np.nan if s["ci95"] is None else 100 * s["ci95"][0] for s in stats])
        hi = np.array([np.nan if s["ci95"] is None else 100 * s["ci95"][1] for s in stats])
        ax.bar(x + (k - (len(others) - 1) / 2) * width, mean, width, yerr=[mean - lo, hi - mean], capsize=2,
               label=row["name"])
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(x, [m.replace("_", "-") for m in SHOWN])
    ax.set_ylabel(f"minus {rows[0]['name']}, % points (95% CI)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars, not over them
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/default", help="an LLM4GEN pipeline folder (its llm4gen arm)")
    ap.add_argument("--setting", action="append", default=[], metavar="G,R,S",
                    help="guidance,rescale,steps; repeat it; the first is the reference (default: 5,0,25 7.5,0,25)")
    ap.add_argument("--prompts", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--work", default="runs/research/sampling",
                    help="folder for each setting's images and results.json")
    ap.add_argument("--out", default="runs/research/sampling.json")
    args = ap.parse_args()
    settings = [parse_setting(s) for s in (args.setting or ["5,0,25", "7.5,0,25"])]
    if len(set(settings)) != len(settings) or len(settings) < 2:
        raise SystemExit("Give at least two different --setting values (the first is the reference).")
    if not (Path(args.model) / "model_index.json").is_file():
        raise SystemExit(f"{args.model} is not a pipeline folder (no model_index.json); give an LLM4GEN pipeline.")

    from rich.console import Console
    from rich.table import Table

    from llm4gen.shapesworld.arms import load_arm
    from llm4gen.shapesworld.bench import QualityConfig, compare_runs, format_percent, run_quality_benchmark
    from llm4gen.utils import write_report

    pipe, runs = None, []
    for guidance, rescale, steps in settings:
        try:
            cfg = QualityConfig(num_prompts=args.prompts, guidance_scale=guidance, guidance_rescale=rescale,
                                num_inference_steps=steps, batch_size=args.batch_size, bootstrap=args.bootstrap)
        except ValueError as err:
            raise SystemExit(str(err)) from None
        folder = Path(args.work) / setting_name(guidance, rescale, steps)
        saved = folder / "results.json"
        run = json.loads(saved.read_text(encoding="utf-8")) if saved.is_file() else None
        if run is not None and run.get("config") == asdict(cfg) and run.get("arms") == ["llm4gen"] \
                and run.get("model") == str(args.model):
            print(f"reusing {saved}")
        else:
            pipe = pipe or load_arm(args.model)
            run = run_quality_benchmark({"llm4gen": pipe}, folder, cfg, progress=False)
            run["model"] = str(args.model)
            write_report(saved, run)
            print(f"rendered {setting_name(guidance, rescale, steps)} in {run['render_seconds']['llm4gen']:.0f} s")
        runs.append(run)

    rows = []
    for (guidance, rescale, steps), run in zip(settings, runs):
        rows.append({"name": setting_name(guidance, rescale, steps), "guidance": guidance, "guidance_rescale": rescale,
                     "steps": steps, "render_seconds": run["render_seconds"]["llm4gen"],
                     "summary": run["summary"]["llm4gen"],
                     "difference": compare_runs(runs[0], run, sampler_may_differ=True, n_boot=args.bootstrap)})
    table = Table(title=f"{args.model}, llm4gen arm, {args.prompts} held-out dense prompts: % [95% CI], and the "
                        f"paired difference to {rows[0]['name']}")
    table.add_column("setting")
    for m in SHOWN:
        table.add_column(m.replace("_", "-"), justify="right")
    for row in rows:
        table.add_row(row["name"], *(format_percent(row["summary"]["all"][m]) for m in SHOWN))
        if row is not rows[0]:
            table.add_row("", *(format_percent(row["difference"]["all"][m], signed=True) for m in SHOWN))
    console = Console()
    (console if console.is_terminal else Console(width=150)).print(table)  # a log file: one line per row

    out = Path(args.out)
    write_report(out, {"model": str(args.model), "prompts": args.prompts, "reference": rows[0]["name"],
                       "settings": rows})
    plot_differences(rows, out.with_suffix(".png"),
                     f"{args.model}: sampler settings against {rows[0]['name']}, same prompts and noise")
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
