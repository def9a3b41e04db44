"""Headline quality benchmark: base (small CLIP only) vs llm4gen (small CLIP + MiniLM through the CAM), trained at
equal compute on ShapesWorld, rendered on held-out dense prompts and scored exactly.

The same as `llm4gen bench quality` (see llm4gen/shapesworld/bench.py for what is measured and how):

    python benchmarks/shapes_quality.py --quick          # 64 prompts, 15 steps: a smoke run, a few minutes here
    python benchmarks/shapes_quality.py                  # 500 prompts, 25 steps: the README's headline table

By default it evaluates the bundled model (models/default) against its base arm (models/default/base_unet, the same
recipe trained on CLIP only). Prints a table and writes results.json (with per-prompt scores), results.summary.json
(without them: what benchmarks/results/shapes_quality_<steps>steps.json holds), quality.png and samples.png to --out
(default runs/benchmarks/shapes_quality).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

if __name__ == "__main__":
    from llm4gen.cli import app

    args = sys.argv[1:]
    if "--out" not in args:
        args += ["--out", "runs/benchmarks/shapes_quality" + ("_quick" if "--quick" in args else "")]
    app(["bench", "quality", *args])
