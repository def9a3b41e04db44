"""Paired comparison of one arm across two `llm4gen bench quality` runs: what changed when a model was replaced.

`llm4gen bench quality` compares the two arms of one model (base vs llm4gen) prompt by prompt. This script compares
the *same* arm of two runs instead, e.g. the bundled model against the one it replaced, on the same prompts and noise
(the runs must have used the same prompt seed, image seed, sampler, steps and guidance; the script checks this and
that the prompt texts agree; ``--sampler-may-differ`` compares two sampler settings of one model instead, e.g.
``llm4gen bench quality --guidance-rescale 0.7`` against the default; runs scored with different
``--scorer-prototypes`` are compared too, and the title and JSON say so). Per metric and prompt-length bucket it
reports the mean of ``after - before`` over the prompts scored in both, with a paired bootstrap interval::

    python research/shapesworld/compare_quality.py runs/bench-29500/results.json runs/bench-36500/results.json

Prints a table and writes JSON (default runs/research/compare_quality.json, and its summary
``compare_quality.summary.json`` where the report holds per-item records) and a chart of the differences
(.png next to it).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("before", help="results.json of the earlier run")
    ap.add_argument("after", help="results.json of the later run")
    ap.add_argument("--arm", default="llm4gen", help="the arm to compare (default: llm4gen)")
    ap.add_argument("--before-arm", default=None, help="the arm of the earlier run, if named otherwise")
    ap.add_argument("--sampler-may-differ", action="store_true",
                    help="allow different steps / guidance / guidance rescale / scheduler (a sampling comparison)")
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--out", default="runs/research/compare_quality.json")
    args = ap.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from rich.console import Console
    from rich.table import Table

    from llm4gen.shapesworld.bench import SAMPLER_KEYS, compare_runs, config_differences, format_percent
    from llm4gen.shapesworld.scorer import LENGTH_BUCKETS, METRICS
    from llm4gen.utils import write_report

    runs = []
    for path in (args.before, args.after):
        try:
            runs.append(json.loads(Path(path).read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise SystemExit(f"{path} does not exist: give the results.json written by "
                             "`llm4gen bench quality`.") from None
        except json.JSONDecodeError as err:
            raise SystemExit(f"{path} is not valid JSON ({err}); rerun `llm4gen bench quality` to "
                             "rewrite it.") from None
    try:
        diff = compare_runs(runs[0], runs[1], arm=args.arm, before_arm=args.before_arm, n_boot=args.bootstrap,
                            sampler_may_differ=args.sampler_may_differ)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    sampler = config_differences(runs[0], runs[1], SAMPLER_KEYS)
    # the same images scored otherwise (llm4gen bench quality --scorer-prototypes): the difference is the scorer's
    scoring = config_differences(runs[0], runs[1], ("scorer_prototypes",))

    def label(path: str) -> str:  # bench quality always writes results.json: name its folder too
        p = Path(path)
        return f"{p.parent.name}/{p.name}" if p.name == "results.json" else p.name

    names = f"{label(args.after)} - {label(args.before)}"
    if sampler or scoring:
        names += " (" + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in {**sampler, **scoring}.items()) + ")"
    table = Table(title=f"{args.arm}: {names}, paired, % points [95% CI]")
    table.add_column("metric")
    for bucket in LENGTH_BUCKETS:
        table.add_column(bucket, justify="right")
    for m in METRICS:
        table.add_row(m, *(format_percent(diff[b][m], signed=True) + ("" if diff[b][m]["mean"] is None else
                                                                       f" (n={diff[b][m]['n']})")
                           for b in LENGTH_BUCKETS))
    Console().print(table)

    out = Path(args.out)
    write_report(out, {"before": str(args.before), "after": str(args.after), "arm": args.arm,
                       "before_arm": args.before_arm or args.arm,
                       "sampler_differences": {k: list(v) for k, v in sampler.items()},
                       "scoring_differences": {k: list(v) for k, v in scoring.items()},
                       "differences": diff})
    fig, axes = plt.subplots(1, len(LENGTH_BUCKETS), figsize=(5.2 * len(LENGTH_BUCKETS), 4.0), sharey=True)
    for ax, bucket in zip(axes, LENGTH_BUCKETS):
        shown = [m for m in METRICS if diff[bucket][m]["mean"] is not None]
        mean = [100 * diff[bucket][m]["mean"] for m in shown]
        err = [[100 * (diff[bucket][m]["mean"] - diff[bucket][m]["ci95"][0]) for m in shown],
               [100 * (diff[bucket][m]["ci95"][1] - diff[bucket][m]["mean"]) for m in shown]]
        ax.bar(range(len(shown)), mean, yerr=err, capsize=3, color="tab:orange")
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(shown)), shown, rotation=30)
        ax.set_title(f"{bucket} (n={diff[bucket]['colour']['n']})")
    axes[0].set_ylabel("after - before, % points (95% CI)")
    fig.suptitle(f"{args.arm}: {names}, same prompts and noise")
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
