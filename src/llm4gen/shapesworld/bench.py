"""The headline benchmark: does the LLM through the CAM make a model follow dense prompts better than its base?

Two (or more) arms render the same held-out ShapesWorld prompts with the same initial noise, and the exact
ShapesWorld scorer checks each image against the scene graph its prompt describes:

- prompts: the first ``num_prompts`` scenes of the ``test`` split (``prompt_seed``), captioned ``dense`` (40-140
  words). Every test scene contains a (colour, shape) pair that never occurs in training. ``split="train"`` draws
  scenes made only of pairs seen in training instead (new ones: the bundled recipe trains on seed 0 of that split,
  the prompts come from ``prompt_seed``): a control for whether a failure comes from the unseen pairs.
- images: image ``i`` of every arm starts from the same noise (``torch.Generator`` seeded ``image_seed + i``) and
  uses the same scheduler, steps and guidance.
- metrics: count, colour, shape, binding, size, spatial, position, background and all-correct
  (``llm4gen.shapesworld.scorer``; ``position_chance`` beside ``position``), overall and split by the prompt's length
  in CLIP tokens (``<=77``: inside CLIP's window, ``>77``: beyond it).
- statistics: per arm the mean with a 95% percentile-bootstrap interval over prompts; between each arm and the first
  (the reference), the *paired* difference (same prompt, same noise) with its bootstrap interval.

Outputs in ``out_dir``: ``{arm}/{i:05d}.png``, ``results.json`` (settings, caveats as ``notes``, per-prompt scores,
summary, :func:`binding_breakdown`, :func:`position_breakdown`), ``results.summary.json`` (the same without the
per-prompt scores: what ``benchmarks/results/`` keeps), ``quality.png`` (bar chart with the intervals) and
``samples.png`` (a few prompts, the arms side by side).
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..images import make_grid
from ..layout import plan_regions
from ..regions import Region, region_control
from ..sampling import DEFAULT_STEPS
from ..stats import metric_summary, paired_difference
from ..utils import quiet_library_notices, write_report
from .arms import set_scheduler
from .mentions import NOUN_SHAPES, scene_matches
from .scorer import LENGTH_BUCKETS, METRICS, PROTOTYPES, cell_box, clip_token_count, length_bucket, score_image
from .world import HELD_OUT_PAIRS, REGION_EDGES, SPLITS, Scene, ShapesWorld, ShapesWorldConfig, position_region

__all__ = [
    "QualityConfig",
    "RegionArm",
    "benchmark_prompts",
    "binding_breakdown",
    "compare_runs",
    "config_differences",
    "format_percent",
    "planned_regions",
    "plot_quality",
    "position_breakdown",
    "quality_bars",
    "render_arm",
    "run_quality_benchmark",
    "scene_regions",
    "score_with_count_errors",
    "summarize_arm",
]

SCHEDULERS = ("dpm", "ddim", "own")
PLOT_METRICS = ("colour", "shape", "binding", "spatial", "position", "count", "all_correct")


@dataclass
class QualityConfig:
    """Settings of a benchmark run; saved into ``results.json``."""

    num_prompts: int = 500
    prompt_seed: int = 7
    caption_style: str = "dense"
    image_seed: int = 0
    num_inference_steps: int = DEFAULT_STEPS  # the one default of every command (llm4gen.sampling)
    guidance_scale: float = 5.0
    guidance_rescale: float = 0.0  # Lin et al. 2024's rescale of the guided prediction (0 = plain guidance)
    scheduler: str = "dpm"  # dpm (DPM-Solver++ multistep) | ddim | own (whatever the model folder has)
    batch_size: int = 50
    size: int = 64
    bootstrap: int = 2000
    split: str = "test"  # test: every prompt asks for a pair held out of training; train: new scenes of seen pairs
    scorer_prototypes: str = "auto"  # the scorer's detect_objects prototypes (auto: every published table's)

    def __post_init__(self) -> None:
        if self.num_prompts < 1 or self.batch_size < 1 or self.num_inference_steps < 1 or self.bootstrap < 100:
            raise ValueError("num_prompts, batch_size and num_inference_steps must be >= 1, bootstrap >= 100.")
        if not 0.0 <= self.guidance_rescale <= 1.0:
            raise ValueError(f"guidance_rescale must lie in [0, 1] (0 = plain guidance), got {self.guidance_rescale}.")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {self.scheduler!r}.")
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}.")
        if self.scorer_prototypes not in PROTOTYPES:
            raise ValueError(f"scorer_prototypes must be one of {PROTOTYPES}, got {self.scorer_prototypes!r}.")

    @property
    def prompt_set(self) -> str:
        """How tables and charts name the prompts."""
        return ("ShapesWorld held-out dense prompts" if self.split == "test"
                else f"ShapesWorld {self.split}-split dense prompts (new scenes, seen pairs)")


def benchmark_prompts(cfg: QualityConfig) -> list[tuple[str, Any]]:
    """The prompts and their scene graphs: ``[(caption, scene), ...]``, the first ``num_prompts`` of ``cfg.split``
    (``test``: the held-out prompts)."""
    world = ShapesWorld(cfg.split, seed=cfg.prompt_seed,
                        config=ShapesWorldConfig(size=cfg.size, caption_style=cfg.caption_style))
    return [world.caption_of(i) for i in range(cfg.num_prompts)]


# ---------------------------------------------------------------------- regions
def scene_regions(text: str, scene: Any) -> list[Any]:
    """Region guidance's regions for a ShapesWorld caption: per object that the caption names by colour and noun
    (every such mention, its colour, size and noun words), the box of the 3x3 cell its place phrase names
    (:func:`~llm4gen.shapesworld.scorer.cell_box`). The boxes come from the caption's words, not the scene's exact
    positions; objects the caption never names that way get no region."""
    spans: dict[int, list[tuple[int, int]]] = {}
    for ent, attrs, k in scene_matches(text, scene):
        spans.setdefault(k, []).extend([ent, *attrs])
    return [Region(None, cell_box(position_region(scene.objects[k].x, scene.objects[k].y)),
                   spans=tuple(sorted(set(spans[k])))) for k in sorted(spans)]


def planned_regions(text: str) -> list[Any]:
    """Region guidance's regions for a ShapesWorld caption from its words alone: :func:`llm4gen.layout.plan_regions`
    on ShapesWorld's 3x3 grid (:data:`~llm4gen.shapesworld.world.REGION_EDGES`) with its nouns' synonyms ("round disc",
    "plus sign"). Unlike :func:`scene_regions` it needs no scene: it is what a user's prompt gives."""
    return plan_regions(text, edges=REGION_EDGES, synonyms=NOUN_SHAPES)


class RegionArm:
    """A benchmark arm that samples ``pipe`` with region guidance (:class:`llm4gen.regions.RegionGuidance`) and/or
    masked cross-attention (``mask``: :class:`llm4gen.regions.RegionMask`), as :func:`llm4gen.regions.region_control`
    sets them up: ``regions`` maps each prompt text to its regions (prompts it lacks are sampled unguided).
    Everything else (``scheduler``, progress bars, ...) is the pipeline's."""

    def __init__(self, pipe: Any, regions: dict[str, list[Any]], scale: float = 0.05, steps: int = 10,
                 tokens: str = "llm", mask: bool = False, mask_steps: int | None = None,
                 mask_tokens: str = "both") -> None:
        object.__setattr__(self, "_pipe", pipe)
        object.__setattr__(self, "_regions", regions)
        object.__setattr__(self, "_settings", dict(scale=scale, steps=steps, tokens=tokens, mask=mask,
                                                   mask_steps=mask_steps, mask_tokens=mask_tokens))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipe, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._pipe, name, value)

    def __call__(self, prompt: list[str], **kwargs: Any) -> Any:
        with region_control(self._pipe, prompt, [self._regions.get(p, []) for p in prompt], kwargs,
                            **self._settings):
            return self._pipe(prompt=prompt, **kwargs)


def render_arm(pipe: Any, prompts: list[str], cfg: QualityConfig, progress: Any = None) -> list[Image.Image]:
    """Render ``prompts`` (image ``i`` from noise seeded ``cfg.image_seed + i``) in batches of ``cfg.batch_size``."""
    set_scheduler(pipe, cfg.scheduler)
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    images: list[Image.Image] = []
    # CLIP's window cuts most dense prompts: that is what is measured, so the per-batch notices are silenced
    with quiet_library_notices():
        for start in range(0, len(prompts), cfg.batch_size):
            texts = prompts[start : start + cfg.batch_size]
            gens = [torch.Generator().manual_seed(cfg.image_seed + start + k) for k in range(len(texts))]
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                out = pipe(prompt=texts, num_inference_steps=cfg.num_inference_steps,
                           guidance_scale=cfg.guidance_scale, guidance_rescale=cfg.guidance_rescale,
                           generator=gens, height=cfg.size, width=cfg.size)
            if len(out.images) != len(texts):
                raise RuntimeError(f"The pipeline returned {len(out.images)} images for {len(texts)} prompts.")
            images.extend(out.images)
            if progress is not None:
                progress(len(texts))
    return images


# ---------------------------------------------------------------------- statistics
def summarize_arm(results: list[dict[str, Any]], n_boot: int = 2000) -> dict[str, dict[str, Any]]:
    """``{bucket: {metric: {"mean", "ci95", "n"}}}`` for one arm's per-prompt results (with ``clip_tokens``)."""
    metrics = (*METRICS, "position_chance")
    return {bucket: {m: metric_summary(length_bucket(results, bucket), m, n_boot) for m in metrics}
            for bucket in LENGTH_BUCKETS}


def position_breakdown(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``position`` and ``position_chance`` (means over the prompts judged on them) by the number of objects asked
    (``{"1": {"prompts", "position", "chance"}, ...}``): whether an arm follows position words at all, even where
    there is only one object to place."""
    out: dict[str, dict[str, Any]] = {}
    for n in sorted({r["num_asked"] for r in results}):
        rows = [r for r in results if r["num_asked"] == n and r.get("position") is not None]
        out[str(n)] = {"prompts": len(rows),
                       "position": float(np.mean([r["position"] for r in rows])) if rows else None,
                       "chance": float(np.mean([r["position_chance"] for r in rows])) if rows else None}
    return out


def score_with_count_errors(images: list[Image.Image], scenes: list[Any]) -> list[dict[str, Any]]:
    """:func:`~llm4gen.shapesworld.scorer.score_image` of each image against its scene, plus ``too_many`` / ``too_few``
    (1.0 or 0.0) and ``surplus`` (objects found - objects asked)."""
    rows = []
    for img, scene in zip(images, scenes):
        row = score_image(img, scene)
        surplus = row["num_found"] - row["num_asked"]
        row.update(too_many=float(surplus > 0), too_few=float(surplus < 0), surplus=float(surplus))
        rows.append(row)
    return rows


def binding_breakdown(results: list[dict[str, Any]], scenes: list[Any]) -> dict[str, dict[str, Any]]:
    """Where binding fails, by the number of objects asked (``{"1": {...}, "2": {...}, ...}``).

    For each count: ``prompts``; ``held_out_pairs`` / ``seen_pairs``: how many asked (colour, shape) pairs are of a
    kind held out of training (:data:`~llm4gen.shapesworld.world.HELD_OUT_PAIRS`) or seen in it, and the fraction of
    them drawn (``found``: an object found with that colour and shape, each found object used once); ``parts_right``:
    prompts whose every asked colour and every asked shape is in the image (``colour`` and ``shape`` both 1), and
    ``pairs_wrong``: how many of those still miss a pair, i.e. put a right colour on a wrong shape. ``results`` are
    :func:`~llm4gen.shapesworld.scorer.score_image` rows (with ``found``), in the order of ``scenes``.
    """
    from collections import Counter

    if len(results) != len(scenes):
        raise ValueError(f"binding_breakdown needs one scene per result row: {len(results)} rows, "
                         f"{len(scenes)} scenes.")
    tally: dict[int, dict[str, int]] = {}
    for row, scene in zip(results, scenes):
        if isinstance(scene, dict):
            scene = Scene.from_dict(scene)
        if "found" not in row:
            raise ValueError("binding_breakdown needs score_image rows with their 'found' objects.")
        t = tally.setdefault(len(scene.objects), dict.fromkeys(
            ("prompts", "held_out", "held_out_found", "seen", "seen_found", "parts_right", "pairs_wrong"), 0))
        t["prompts"] += 1
        left = Counter((f["colour"], f["shape"]) for f in row["found"])
        for o in scene.objects:
            kind = "held_out" if (o.colour, o.shape) in HELD_OUT_PAIRS else "seen"
            t[kind] += 1
            if left[(o.colour, o.shape)] > 0:
                left[(o.colour, o.shape)] -= 1
                t[f"{kind}_found"] += 1
        if row["colour"] == 1 and row["shape"] == 1:
            t["parts_right"] += 1
            t["pairs_wrong"] += row["binding"] < 1

    def share(kind: str, t: dict[str, int]) -> dict[str, Any]:
        return {"n": t[kind], "found": t[f"{kind}_found"] / t[kind] if t[kind] else None}

    return {str(n): {"prompts": t["prompts"], "held_out_pairs": share("held_out", t), "seen_pairs": share("seen", t),
                     "parts_right": t["parts_right"], "pairs_wrong": t["pairs_wrong"]}
            for n, t in sorted(tally.items())}


# The QualityConfig fields that decide which prompts and noise a run used: two runs compared prompt by prompt must
# agree on them (bootstrap and batch_size change neither)
PAIRING_KEYS = ("num_prompts", "prompt_seed", "caption_style", "image_seed", "size", "split")
# How the noise became images: the same unless a comparison is about them (a sampling sweep)
SAMPLER_KEYS = ("num_inference_steps", "guidance_scale", "guidance_rescale", "scheduler")
# Keys added after results were published: a run that lacks one used this value
_CONFIG_DEFAULTS = {"guidance_rescale": 0.0, "scorer_prototypes": "auto"}  # what runs saved before a key used


def config_differences(before: dict[str, Any], after: dict[str, Any],
                       keys: tuple[str, ...] = PAIRING_KEYS + SAMPLER_KEYS) -> dict[str, tuple[Any, Any]]:
    """The ``keys`` of two ``llm4gen bench quality`` runs' configs that differ: ``{key: (before's, after's)}``. A
    key absent from both is no difference; one added since a run was saved takes the value that run used."""
    values = {k: tuple(run.get("config", {}).get(k, _CONFIG_DEFAULTS.get(k)) for run in (before, after))
              for k in keys}
    return {k: v for k, v in values.items() if v[0] != v[1]}


def compare_runs(before: dict[str, Any], after: dict[str, Any], arm: str = "llm4gen", before_arm: str | None = None,
                 n_boot: int = 2000, sampler_may_differ: bool = False) -> dict[str, dict[str, Any]]:
    """Paired difference ``after - before`` of one arm across two ``llm4gen bench quality`` runs (their results.json
    contents), e.g. a new model against the one it replaces: ``{bucket: {metric: {"mean", "ci95", "n"}}}``.

    The runs must have rendered the same prompts from the same noise (the config keys in ``PAIRING_KEYS``) with the
    same sampler (``SAMPLER_KEYS``: steps, guidance, guidance rescale, scheduler) and hold the same prompt texts in
    the same order, else a ValueError says which differs: a pairing of different prompts would give a meaningless
    interval, and a sampler change would mix into a model comparison. ``sampler_may_differ=True`` allows the
    latter, for comparing sampler settings themselves (one model, same prompts and noise).
    ``before_arm`` defaults to ``arm``."""
    before_arm = before_arm or arm
    for name, run, key in (("before", before, before_arm), ("after", after, arm)):
        if key not in run.get("results", {}):
            raise ValueError(f"The {name} run has no arm {key!r} (it has {sorted(run.get('results', {}))}); "
                             "pick one with arm= / before_arm=.")

    def listed(differ: dict[str, tuple[Any, Any]]) -> str:
        return "; ".join(f"{k}: {a!r} vs {b!r}" for k, (a, b) in differ.items())

    differ = config_differences(before, after, PAIRING_KEYS)
    if differ:
        raise ValueError(f"The two runs did not render the same prompts and noise ({listed(differ)}); rerun one of "
                         "them with the other's settings.")
    differ = {} if sampler_may_differ else config_differences(before, after, SAMPLER_KEYS)
    if differ:
        raise ValueError(f"The two runs sampled with different settings ({listed(differ)}): rerun one with the "
                         "other's, or pass sampler_may_differ=True (compare_quality.py: --sampler-may-differ) if "
                         "comparing those settings is the point.")
    a, b = before["results"][before_arm], after["results"][arm]
    if [r.get("text") for r in a] != [r.get("text") for r in b]:
        raise ValueError("The two runs hold different prompt texts (another prompt generator or split); they "
                         "cannot be paired prompt by prompt.")
    return {bucket: {m: paired_difference(length_bucket(a, bucket), length_bucket(b, bucket), m, n_boot)
                     for m in METRICS} for bucket in LENGTH_BUCKETS}


# ---------------------------------------------------------------------- report
def quality_bars(summary: dict[str, Any], metrics: tuple[str, ...] = PLOT_METRICS) -> dict[str, dict[str, Any]]:
    """What :func:`plot_quality` draws: ``{bucket: {arm: {"mean", "lo", "hi", "n"}}}``, each an array over
    ``metrics`` in percent. A metric an arm could not be scored on (spatial with no relation whose two objects were
    both found: ``n = 0``) is NaN, so it is left out rather than drawn as a 0% bar."""
    out: dict[str, dict[str, Any]] = {}
    for bucket in LENGTH_BUCKETS:
        out[bucket] = {}
        for arm, per_bucket in summary.items():
            stats = [per_bucket[bucket][m] for m in metrics]
            out[bucket][arm] = {
                "mean": np.array([np.nan if s["mean"] is None else 100 * s["mean"] for s in stats]),
                "lo": np.array([np.nan if s["ci95"] is None else 100 * s["ci95"][0] for s in stats]),
                "hi": np.array([np.nan if s["ci95"] is None else 100 * s["ci95"][1] for s in stats]),
                "n": np.array([s["n"] for s in stats]),
            }
    return out


def plot_quality(summary: dict[str, Any], path: str | os.PathLike, title: str = "ShapesWorld held-out dense prompts",
                 metrics: tuple[str, ...] = PLOT_METRICS, few: int = 20) -> Path:
    """A bar chart: one panel per length bucket, metrics on the x axis, one bar per arm, 95% intervals as whiskers.

    Bars scored on fewer than ``few`` prompts carry their ``n`` (spatial relations are judged only where both objects
    were found); metrics with no scored prompt get no bar and an "n=0" mark."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = quality_bars(summary, metrics)
    arms = list(summary)
    fig, axes = plt.subplots(1, len(LENGTH_BUCKETS), figsize=(5.2 * len(LENGTH_BUCKETS), 4.2), sharey=True)
    width = 0.8 / len(arms)
    x = np.arange(len(metrics))
    for ax, bucket in zip(np.atleast_1d(axes), LENGTH_BUCKETS):
        for k, arm in enumerate(arms):
            b = bars[bucket][arm]
            pos = x + (k - (len(arms) - 1) / 2) * width
            drawn = ~np.isnan(b["mean"])
            ax.bar(pos[drawn], b["mean"][drawn], width, label=arm, color=f"C{k}",
                   yerr=np.stack([b["mean"] - b["lo"], b["hi"] - b["mean"]])[:, drawn], capsize=2)
            for j in np.flatnonzero(b["n"] < few):  # at the foot of the bar, where no whisker or title reaches
                ax.text(pos[j], 1.0, f"n={b['n'][j]}", ha="center", va="bottom", fontsize=7, rotation=90)
        n = max(int(bars[bucket][arm]["n"][metrics.index("all_correct")]) if "all_correct" in metrics else 0
                for arm in arms)
        ax.set_xticks(x, [m.replace("_", "-") for m in metrics], rotation=30)
        ax.set_title(f"{bucket} (n={n})" if n else bucket)
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("accuracy (%), 95% CI")
    # one legend under the panels: inside a panel it covers bars once there are more than two arms
    fig.legend(*np.atleast_1d(axes)[0].get_legend_handles_labels(), loc="lower center", ncol=len(arms), fontsize=9,
               frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def format_percent(stat: dict[str, Any], signed: bool = False) -> str:
    """A ``{"mean", "ci95"}`` statistic (fractions) as a table cell in percent, ``"72.4 [70.0, 74.9]"``, or with
    ``signed`` as a difference, ``"+17.0 [+14.3, +19.8]"``; ``"-"`` where nothing could be scored (mean None)."""
    if stat.get("mean") is None:
        return "-"
    f = "{:+.1f}" if signed else "{:.1f}"
    lo, hi = stat["ci95"]
    return f"{f.format(100 * stat['mean'])} [{f.format(100 * lo)}, {f.format(100 * hi)}]"


def _print_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    arms = list(report["summary"])
    ref = arms[0]
    prompt_set = QualityConfig(split=report.get("config", {}).get("split", "test")).prompt_set
    table = Table(title=f"{prompt_set}: accuracy % [95% CI]; diff = arm - {ref} (paired)")
    table.add_column("prompts")
    table.add_column("metric")
    for arm in arms:
        table.add_column(arm, justify="right")
    for arm in arms[1:]:
        table.add_column(f"diff {arm}", justify="right")
    for bucket in LENGTH_BUCKETS:
        for m in ("colour", "shape", "binding", "spatial", "position", "position_chance", "count", "size",
                  "all_correct"):
            cells = []
            for arm in arms:
                # results older than the metric lack it
                cells.append(format_percent(report["summary"][arm][bucket].get(m, {"mean": None})))
            for arm in arms[1:]:
                cells.append(format_percent(report["differences"][arm][bucket].get(m, {"mean": None}), signed=True))
            n = report["summary"][ref][bucket]["colour"]["n"]
            table.add_row(f"{bucket} (n={n})" if m == "colour" else "", m.replace("_", " "), *cells)
        table.add_section()
    Console().print(table)
    pairs = Table(title="Binding by objects asked: pairs drawn % (held out of training / seen in it); prompts with "
                        "every colour and shape drawn, and of those how many still pair them wrongly")
    for col in ("arm", "objects", "prompts", "held-out pairs", "seen pairs", "colours+shapes all drawn",
                "of those, pairs wrong"):
        pairs.add_column(col, justify="left" if col == "arm" else "right")
    for arm in arms:
        for j, (n, b) in enumerate(report["binding_breakdown"][arm].items()):
            pct = ["-" if b[k]["found"] is None else f"{100 * b[k]['found']:.1f} (n={b[k]['n']})"
                   for k in ("held_out_pairs", "seen_pairs")]
            pairs.add_row(arm if j == 0 else "", n, str(b["prompts"]), *pct, str(b["parts_right"]),
                          str(b["pairs_wrong"]))
        pairs.add_section()
    Console().print(pairs)
    if "position_breakdown" in report:
        where = Table(title="Position by objects asked: % of found objects in the cell the caption names (chance: a "
                            "layout that ignores the position words)")
        for col in ("arm", "objects", "prompts judged", "position", "chance"):
            where.add_column(col, justify="left" if col == "arm" else "right")
        for arm in arms:
            for j, (n, b) in enumerate(report["position_breakdown"][arm].items()):
                where.add_row(arm if j == 0 else "", n, str(b["prompts"]),
                              *("-" if b[k] is None else f"{100 * b[k]:.1f}" for k in ("position", "chance")))
            where.add_section()
        Console().print(where)
    for note in report.get("notes", []):
        Console(stderr=True).print(f"note: {note}", style="yellow", markup=False, highlight=False)


def run_quality_benchmark(arms: dict[str, Any], out_dir: str | os.PathLike, cfg: QualityConfig | None = None,
                          progress: bool = True, samples: int = 6, notes: list[str] | None = None
                          ) -> dict[str, Any]:
    """Render, score and compare ``arms`` (``{name: pipeline}``; the first is the reference for differences).

    ``notes`` (caveats a reader of the results must see, such as a base arm off its training schedule) are stored in
    the report as ``notes``. Returns the report written to ``out_dir/results.json`` (see the module docs)."""
    cfg = cfg or QualityConfig()
    if len(arms) < 1:
        raise ValueError("Give at least one arm.")
    bad = [name for name in arms if not name.strip() or name in (".", "..") or any(c in name for c in "/\\")]
    if bad:  # each arm's images go to out_dir/<name>/
        raise ValueError(f"Arm names {bad} cannot be folder names: use names without '/' or '\\' (not '.' or '..'), "
                         "such as 'scale 0.05, 10 steps'.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    items = benchmark_prompts(cfg)
    prompts = [text for text, _ in items]
    tokens = clip_token_count(prompts)
    per_arm: dict[str, list[dict[str, Any]]] = {}
    images: dict[str, list[Image.Image]] = {}
    timings: dict[str, float] = {}
    bar = None
    if progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        bar.start()
    try:
        for name, pipe in arms.items():
            task = bar.add_task(f"render {name}", total=len(prompts)) if bar else None
            t0 = time.perf_counter()
            imgs = render_arm(pipe, prompts, cfg, (lambda n, t=task: bar.update(t, advance=n)) if bar else None)
            timings[name] = time.perf_counter() - t0
            (out / name).mkdir(exist_ok=True)
            rows = []
            for i, (img, (text, scene)) in enumerate(zip(imgs, items)):
                img.save(out / name / f"{i:05d}.png")
                row = score_image(img, scene, prototypes=cfg.scorer_prototypes)
                row.update(index=i, text=text, clip_tokens=tokens[i], file_name=f"{name}/{i:05d}.png")
                rows.append(row)
            per_arm[name], images[name] = rows, imgs
    finally:
        if bar is not None:
            bar.stop()
    names = list(arms)
    summary = {name: summarize_arm(per_arm[name], cfg.bootstrap) for name in names}
    differences = {
        name: {bucket: {m: paired_difference(length_bucket(per_arm[names[0]], bucket),
                                             length_bucket(per_arm[name], bucket), m, cfg.bootstrap)
                        for m in METRICS} for bucket in LENGTH_BUCKETS}
        for name in names[1:]
    }
    scenes = [scene for _, scene in items]
    report = {"config": asdict(cfg), "arms": names, "notes": list(notes or []), "render_seconds": timings,
              "summary": summary,
              "differences": differences,
              "binding_breakdown": {name: binding_breakdown(per_arm[name], scenes) for name in names},
              "position_breakdown": {name: position_breakdown(per_arm[name]) for name in names},
              "results": per_arm}
    write_report(out / "results.json", report)
    plot_quality(summary, out / "quality.png", title=cfg.prompt_set)
    _sample_grid(images, prompts, samples).save(out / "samples.png")
    if progress:
        _print_table(report)
    return report


def _sample_grid(images: dict[str, list[Image.Image]], prompts: list[str], n: int) -> Image.Image:
    """Rows = arms, columns = the first ``n`` prompts, each cell captioned with the arm's name and the prompt."""
    n = min(n, len(prompts))
    cells, captions = [], []
    for name, imgs in images.items():
        for i in range(n):
            cells.append(imgs[i].resize((192, 192), Image.NEAREST))
            captions.append(f"[{name}] {prompts[i]}")
    return make_grid(cells, captions, cols=n, cell=192, caption_lines=9)
