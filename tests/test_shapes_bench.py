"""The headline ShapesWorld benchmark: prompts, statistics, arms, and the whole run on oracle and tiny arms."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch


class RenderArm:
    """A protocol-conforming arm that draws a given scene per prompt (an oracle when the scene is the prompt's)."""

    def __init__(self, scenes_by_prompt: dict[str, object], size: int = 64) -> None:
        self.scenes, self.size, self.calls, self.settings = scenes_by_prompt, size, [], []

    def __call__(self, prompt, generator, **kwargs):
        from llm4gen.shapesworld.world import render_scene

        self.calls.append((list(prompt), [g.initial_seed() for g in generator]))
        self.settings.append(kwargs)
        return SimpleNamespace(images=[render_scene(self.scenes[p], self.size) for p in prompt])


def test_prompts_are_held_out_dense_and_deterministic():
    from llm4gen.shapesworld.bench import QualityConfig, benchmark_prompts
    from llm4gen.shapesworld.world import HELD_OUT_PAIRS

    cfg = QualityConfig(num_prompts=40)
    items = benchmark_prompts(cfg)
    assert items == benchmark_prompts(cfg) and len(items) == 40
    held = {tuple(p) for p in HELD_OUT_PAIRS}
    for text, scene in items:
        assert 40 <= len(text.split()) <= 140
        assert any((o.colour, o.shape) in held for o in scene.objects)
    assert benchmark_prompts(QualityConfig(num_prompts=5, prompt_seed=8))[0][0] != items[0][0]


def test_bootstrap_interval_matches_the_normal_approximation():
    from llm4gen.stats import bootstrap_ci

    rng = np.random.default_rng(1)
    x = (rng.random(900) < 0.3).astype(float)
    lo, hi = bootstrap_ci(x, n_boot=4000)
    half = 1.96 * x.std() / np.sqrt(x.size)  # independent: the CLT interval of a mean
    assert lo == pytest.approx(x.mean() - half, abs=0.006) and hi == pytest.approx(x.mean() + half, abs=0.006)
    assert bootstrap_ci(np.full(50, 0.25)) == (0.25, 0.25)


def test_paired_difference_and_buckets_by_hand():
    from llm4gen.shapesworld.bench import summarize_arm
    from llm4gen.stats import paired_difference

    a = [{"colour": 0.0, "spatial": None, "clip_tokens": 60}, {"colour": 0.5, "spatial": 1.0, "clip_tokens": 90},
         {"colour": 1.0, "spatial": 0.0, "clip_tokens": 120}]
    b = [{"colour": 1.0, "spatial": 1.0, "clip_tokens": 60}, {"colour": 0.5, "spatial": 1.0, "clip_tokens": 90},
         {"colour": 1.0, "spatial": 1.0, "clip_tokens": 120}]
    d = paired_difference(a, b, "colour", n_boot=500)
    assert d["mean"] == pytest.approx(1 / 3) and d["n"] == 3
    assert d["ci95"][0] >= 0.0 and d["ci95"][1] <= 1.0
    s = paired_difference(a, b, "spatial", n_boot=500)  # only prompts judged in both arms
    assert s["n"] == 2 and s["mean"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="same prompts"):
        paired_difference(a, b[:2], "colour")
    for row in a:
        row.update({m: 0.0 for m in ("count", "shape", "binding", "size", "background", "all_correct")})
    from llm4gen.shapesworld.scorer import length_bucket

    assert [r["clip_tokens"] for r in length_bucket(a, ">77 tokens")] == [90, 120]
    with pytest.raises(ValueError, match="Unknown bucket"):
        length_bucket(a, "long")
    summary = summarize_arm(a, n_boot=200)
    assert summary["<=77 tokens"]["colour"] == {"mean": 0.0, "ci95": [0.0, 0.0], "n": 1}
    assert summary[">77 tokens"]["colour"]["mean"] == pytest.approx(0.75)
    assert summary["all"]["spatial"]["n"] == 2


def test_benchmark_prompts_come_from_the_asked_split():
    from llm4gen.shapesworld.bench import QualityConfig, benchmark_prompts
    from llm4gen.shapesworld.world import HELD_OUT_PAIRS

    def held(items):
        return [any((o.colour, o.shape) in HELD_OUT_PAIRS for o in scene.objects) for _, scene in items]

    test = benchmark_prompts(QualityConfig(num_prompts=40))
    train = benchmark_prompts(QualityConfig(num_prompts=40, split="train"))
    assert all(held(test)) and not any(held(train))
    assert {t for t, _ in test}.isdisjoint(t for t, _ in train)
    assert "held-out" in QualityConfig().prompt_set and "seen pairs" in QualityConfig(split="train").prompt_set
    with pytest.raises(ValueError, match="split must be one of"):
        QualityConfig(split="val")
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="guidance_rescale must lie in"):
            QualityConfig(guidance_rescale=bad)


@pytest.mark.parametrize("name", ["scale 0.1/10 steps", "a\\b", "..", " "])
def test_arm_names_that_cannot_be_folders_are_refused_before_rendering(tmp_path, name):
    from llm4gen.shapesworld.bench import QualityConfig, run_quality_benchmark

    class NeverCalled:
        def __call__(self, *args, **kwargs):
            raise AssertionError("rendered before the names were checked")

    with pytest.raises(ValueError, match="cannot be folder names"):
        run_quality_benchmark({"ok": NeverCalled(), name: NeverCalled()}, tmp_path, QualityConfig(num_prompts=2),
                              progress=False)
    assert not any(tmp_path.iterdir())


def test_oracle_arm_scores_perfectly_and_a_shifted_arm_is_caught(tmp_path):
    from llm4gen.shapesworld.bench import QualityConfig, benchmark_prompts, run_quality_benchmark

    cfg = QualityConfig(num_prompts=12, batch_size=5, scheduler="own", bootstrap=200, image_seed=100,
                        num_inference_steps=7, guidance_scale=3.5, guidance_rescale=0.7)
    items = benchmark_prompts(cfg)
    oracle = RenderArm({t: s for t, s in items})
    shifted = RenderArm({t: items[(i + 1) % len(items)][1] for i, (t, _) in enumerate(items)})
    report = run_quality_benchmark({"oracle": oracle, "shifted": shifted}, tmp_path, cfg, progress=False, samples=3)
    assert report["summary"]["oracle"]["all"]["all_correct"]["mean"] == 1.0
    assert report["summary"]["oracle"]["all"]["position"]["mean"] == 1.0
    assert all(b["position"] == 1.0 for b in report["position_breakdown"]["oracle"].values())
    assert report["summary"]["shifted"]["all"]["all_correct"]["mean"] < 0.5
    assert report["differences"]["shifted"]["all"]["all_correct"]["mean"] < -0.5
    # batches of 5 in prompt order, image i seeded image_seed + i in every arm
    assert [len(p) for p, _ in oracle.calls] == [5, 5, 2]
    assert [s for _, seeds in oracle.calls for s in seeds] == list(range(100, 112))
    assert oracle.calls == shifted.calls
    # every batch is sampled with the config's steps, guidance and guidance rescale
    assert all((k["num_inference_steps"], k["guidance_scale"], k["guidance_rescale"]) == (7, 3.5, 0.7)
               for k in oracle.settings + shifted.settings)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["results"]["oracle"][3]["text"] == items[3][0]
    assert (tmp_path / "oracle" / "00011.png").is_file()
    for name in ("quality.png", "samples.png"):
        from PIL import Image

        with Image.open(tmp_path / name) as im:
            assert im.size[0] > 300 and len(set(im.convert("L").getdata())) > 10


def test_quality_bars_leave_out_what_could_not_be_scored(tmp_path):
    """A metric with n = 0 (spatial when no relation could be judged) must not be drawn as a 0% bar; the others are
    100 x the summary's mean and interval."""
    from llm4gen.shapesworld.bench import PLOT_METRICS, plot_quality, quality_bars
    from llm4gen.shapesworld.scorer import LENGTH_BUCKETS

    def stat(mean, n=10):
        return {"mean": mean, "ci95": None if mean is None else [mean - 0.05, mean + 0.05], "n": n}

    per_bucket = {m: stat(0.25 + 0.1 * k) for k, m in enumerate(PLOT_METRICS)}
    per_bucket["spatial"] = stat(None, 0)
    summary = {arm: {b: dict(per_bucket) for b in LENGTH_BUCKETS} for arm in ("base", "llm4gen")}
    summary["llm4gen"]["all"] = {**per_bucket, "spatial": stat(1.0, 1)}
    bars = quality_bars(summary)
    base, llm = bars["all"]["base"], bars["all"]["llm4gen"]
    j = PLOT_METRICS.index("spatial")
    assert np.isnan(base["mean"][j]) and np.isnan(base["lo"][j]) and base["n"][j] == 0
    assert llm["mean"][j] == 100.0 and llm["n"][j] == 1
    k = PLOT_METRICS.index("binding")
    assert base["mean"][k] == pytest.approx(100 * (0.25 + 0.1 * k))
    assert (base["lo"][k], base["hi"][k]) == pytest.approx((100 * (0.2 + 0.1 * k), 100 * (0.3 + 0.1 * k)))
    path = plot_quality(summary, tmp_path / "q.png")
    assert path.is_file() and path.stat().st_size > 10_000


def test_an_arm_against_itself_differs_by_exactly_zero(tmp_path):
    from llm4gen.shapesworld.arms import clip_only_pipeline
    from llm4gen.shapesworld.bench import QualityConfig, run_quality_benchmark
    from llm4gen.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline(llm=None)
    cfg = QualityConfig(num_prompts=3, num_inference_steps=2, batch_size=2, bootstrap=100)
    report = run_quality_benchmark({"a": clip_only_pipeline(pipe), "b": clip_only_pipeline(pipe)}, tmp_path, cfg,
                                   progress=False)
    a, b = (np.asarray(__import__("PIL.Image").Image.open(tmp_path / n / "00001.png")) for n in ("a", "b"))
    assert np.array_equal(a, b)
    for m, d in report["differences"]["b"]["all"].items():
        assert d["mean"] in (0.0, None), m


def test_clip_only_pipeline_uses_the_same_clip_and_the_given_unet(tmp_path):
    from diffusers import StableDiffusionPipeline

    from llm4gen.shapesworld.arms import clip_only_pipeline, load_arm
    from llm4gen.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline(llm=None)
    base = clip_only_pipeline(pipe)
    assert type(base) is StableDiffusionPipeline
    prompt = "a red circle above a blue square"
    fused = pipe.encode_fused_prompt(prompt, do_classifier_free_guidance=False).prompt_embeds
    clip_only, _ = base.encode_prompt(prompt, "cpu", 1, False)
    assert torch.allclose(fused[:, :77], clip_only)  # the CLIP half of the fused tokens
    # a UNet given by folder is loaded, and a whole pipeline folder works too
    other = build_tiny_pipeline(llm=None, seed=5)
    other.unet.save_pretrained(tmp_path / "unet_only")
    pipe.save_pretrained(tmp_path / "pipe")
    for ref in (tmp_path / "unet_only", tmp_path / "pipe"):
        swapped = clip_only_pipeline(pipe, ref)
        expect = other.unet if ref.name == "unet_only" else pipe.unet
        assert torch.equal(swapped.unet.conv_in.weight, expect.conv_in.weight)
    loaded = load_arm(tmp_path / "pipe", unet=tmp_path / "unet_only")
    assert type(loaded) is StableDiffusionPipeline
    assert torch.equal(loaded.unet.conv_in.weight, other.unet.conv_in.weight)
    with pytest.raises(FileNotFoundError, match="not a UNet folder"):
        clip_only_pipeline(pipe, tmp_path)
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        load_arm(tmp_path / "unet_only")
    (tmp_path / "xl").mkdir()
    (tmp_path / "xl" / "model_index.json").write_text('{"_class_name": "LLM4GenXLPipeline"}')
    with pytest.raises(ValueError, match="SD1.x-style"):
        load_arm(tmp_path / "xl")
    wide = build_tiny_pipeline(llm=None, clip_dim=48)
    with pytest.raises(ValueError, match="cross_attention_dim"):
        clip_only_pipeline(pipe, wide.unet)


def test_count_errors_against_scenes_with_an_object_more_or_less():
    from llm4gen.shapesworld.bench import score_with_count_errors
    from llm4gen.shapesworld.world import Scene, SceneObject, render_scene

    two = Scene([SceneObject("red", "circle", "large", 0.3, 0.3), SceneObject("blue", "square", "large", 0.7, 0.7)],
                background="black")
    one = Scene(two.objects[:1], background="black")
    rows = score_with_count_errors([render_scene(two), render_scene(one), render_scene(two)], [two, two, one])
    assert [(r["too_many"], r["too_few"], r["surplus"]) for r in rows] == [(0.0, 0.0, 0.0), (0.0, 1.0, -1.0),
                                                                            (1.0, 0.0, 1.0)]
    assert rows[0]["all_correct"] == 1.0  # the extra keys leave the scorer's own untouched


def test_metric_summary_by_hand():
    from llm4gen.stats import metric_summary

    rows = [{"spatial": 1.0}, {"spatial": None}, {"spatial": 0.0}, {"spatial": 1.0}, {}]
    s = metric_summary(rows, "spatial", n_boot=500)
    assert s["mean"] == pytest.approx(2 / 3) and s["n"] == 3 and 0.0 <= s["ci95"][0] <= s["ci95"][1] <= 1.0
    assert metric_summary([{"spatial": None}], "spatial") == {"mean": None, "ci95": None, "n": 0}


def test_binding_breakdown_counts_swapped_pairs_and_held_out_pairs_by_hand():
    from llm4gen.shapesworld.bench import binding_breakdown
    from llm4gen.shapesworld.scorer import score_image
    from llm4gen.shapesworld.world import HELD_OUT_PAIRS, Scene, SceneObject, render_scene

    assert ("red", "star") in HELD_OUT_PAIRS and ("blue", "circle") not in HELD_OUT_PAIRS
    asked = Scene([SceneObject("red", "star", "large", 0.3, 0.3), SceneObject("blue", "circle", "large", 0.7, 0.7)],
                  background="white")
    # the same two colours and shapes, each colour on the other shape: colour and shape right, binding wrong
    swapped = Scene([SceneObject("red", "circle", "large", 0.3, 0.3), SceneObject("blue", "star", "large", 0.7, 0.7)],
                    background="white")
    alone = Scene([SceneObject("red", "star", "large", 0.5, 0.5)], background="white")
    missing = Scene(asked.objects[1:], background="white")  # the held-out red star left out
    drawn = [swapped, asked, alone, missing]
    scenes = [asked, asked, alone, asked]
    rows = [score_image(render_scene(d), s) for d, s in zip(drawn, scenes)]
    assert (rows[0]["colour"], rows[0]["shape"], rows[0]["binding"]) == (1.0, 1.0, 0.0)  # the scorer agrees
    b = binding_breakdown(rows, [s.to_dict() for s in scenes])  # scene dicts are accepted too
    assert list(b) == ["1", "2"]
    assert b["1"] == {"prompts": 1, "held_out_pairs": {"n": 1, "found": 1.0}, "seen_pairs": {"n": 0, "found": None},
                      "parts_right": 1, "pairs_wrong": 0}
    # two-object prompts: red star found once of three, blue circle twice of three; two prompts have every colour
    # and shape (the swapped and the exact one), and one of them pairs them wrongly
    assert b["2"] == {"prompts": 3, "held_out_pairs": {"n": 3, "found": pytest.approx(1 / 3)},
                      "seen_pairs": {"n": 3, "found": pytest.approx(2 / 3)}, "parts_right": 2, "pairs_wrong": 1}
    with pytest.raises(ValueError, match="one scene per result row"):
        binding_breakdown(rows, scenes[:2])
    with pytest.raises(ValueError, match="'found'"):
        binding_breakdown([{"colour": 1.0, "shape": 1.0, "binding": 1.0}], [alone])


def test_position_breakdown_and_chance():
    from llm4gen.shapesworld.bench import position_breakdown
    from llm4gen.shapesworld.scorer import position_chance, score_image
    from llm4gen.shapesworld.world import Scene, SceneObject, render_scene

    # by hand: a small object (radius 0.125) is placed uniformly in [0.15625, 0.84375] on each axis; its upper left
    # cell reaches 0.36 + 2/64 = 0.39125, so it lands there with probability (0.235 / 0.6875) ** 2
    small_ul = SceneObject("red", "star", "small", 0.2, 0.2)
    assert position_chance(small_ul) == pytest.approx((0.235 / 0.6875) ** 2)
    # against a simulation of the generator's placement, for every cell and both sizes
    rng = np.random.default_rng(0)
    for size, r in (("small", 0.125), ("large", 0.2)):
        xy = rng.uniform(r + 2 / 64, 1 - r - 2 / 64, size=(200_000, 2))
        for x, y in ((0.3, 0.3), (0.5, 0.3), (0.7, 0.5), (0.5, 0.5), (0.3, 0.7)):
            spans = [(0, 0.36 + 2 / 64) if v < 0.36 else (0.64 - 2 / 64, 1) if v > 0.64 else
                     (0.36 - 2 / 64, 0.64 + 2 / 64) for v in (x, y)]
            hit = ((xy[:, 0] >= spans[0][0]) & (xy[:, 0] <= spans[0][1]) & (xy[:, 1] >= spans[1][0])
                   & (xy[:, 1] <= spans[1][1])).mean()
            assert position_chance(SceneObject("red", "star", size, x, y)) == pytest.approx(hit, abs=0.004)
    # rows of score_image: one object placed right, one of two placed wrong, one prompt with nothing found
    one = Scene([small_ul], "white")
    two = Scene([small_ul, SceneObject("blue", "circle", "small", 0.8, 0.8)], "white")
    moved = Scene([SceneObject("red", "star", "small", 0.2, 0.8), two.objects[1]], "white")
    rows = [score_image(render_scene(one), one), score_image(render_scene(moved), two),
            score_image(render_scene(Scene([], "white")), two)]
    assert rows[0]["position"] == 1.0 and rows[1]["position"] == 0.5 and rows[2]["position"] is None
    # two objects found: the mean of their odds in a two-object scene
    two_chance = np.mean([position_chance(o, 2) for o in two.objects])
    assert rows[1]["position_chance"] == pytest.approx(two_chance)
    assert abs(two_chance - position_chance(small_ul, 2)) < 0.01  # upper left and lower right: by symmetry the same
    b = position_breakdown(rows)
    assert b == {"1": {"prompts": 1, "position": 1.0, "chance": pytest.approx(position_chance(small_ul))},
                 "2": {"prompts": 1, "position": 0.5, "chance": pytest.approx(two_chance)}}


def test_position_chance_of_crowded_scenes_matches_the_generator():
    from llm4gen.shapesworld.scorer import position_chance
    from llm4gen.shapesworld.world import SceneObject, ShapesWorld, ShapesWorldConfig, position_region

    world = ShapesWorld("train", seed=3, config=ShapesWorldConfig(min_objects=4, max_objects=4))
    objs = [o for k in range(1500) for o in world.scene(k).objects]
    for size in ("small", "large"):
        pts = np.array([(o.x, o.y) for o in objs if o.size == size])
        for x, y in ((0.2, 0.2), (0.5, 0.2), (0.5, 0.5)):
            h, v = position_region(x, y)
            spans = [(0, 0.36 + 2 / 64) if c in ("left", "top") else (0.64 - 2 / 64, 1) if c in ("right", "bottom")
                     else (0.36 - 2 / 64, 0.64 + 2 / 64) for c in (h, v)]
            hit = ((pts[:, 0] >= spans[0][0]) & (pts[:, 0] <= spans[0][1]) & (pts[:, 1] >= spans[1][0])
                   & (pts[:, 1] <= spans[1][1])).mean()
            assert position_chance(SceneObject("red", "star", size, x, y), 4) == pytest.approx(hit, abs=0.025)
    # crowding pushes objects out of the centre: a corner is likelier, the centre less likely than for a lone object
    corner, centre = SceneObject("red", "star", "small", 0.2, 0.2), SceneObject("red", "star", "small", 0.5, 0.5)
    assert position_chance(corner, 4) > position_chance(corner, 1) + 0.04
    assert position_chance(centre, 4) < position_chance(centre, 1) - 0.1


def test_base_schedule_differences_reads_the_schedule_of_the_folder_holding_the_unet(tmp_path):
    from llm4gen.shapesworld.arms import base_schedule_differences

    def folder(name, **config):
        path = tmp_path / name
        (path / "scheduler").mkdir(parents=True)
        (path / "unet").mkdir()
        (path / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
        return path

    sd = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type="v_prediction")
    shipped = folder("shipped", **sd, rescale_betas_zero_snr=False, timestep_spacing="leading")
    (shipped / "base_unet").mkdir()
    # a missing key means diffusers' default (False), and sampling settings (spacing, solver) are not compared
    same = folder("same", **sd, timestep_spacing="trailing", algorithm_type="dpmsolver++")
    zero_snr = folder("zsnr", **sd, rescale_betas_zero_snr=True)
    eps = folder("eps", **{**sd, "prediction_type": "epsilon"})
    assert base_schedule_differences(same, shipped / "base_unet") == {}
    assert base_schedule_differences(zero_snr, shipped / "base_unet") == {"rescale_betas_zero_snr": (True, False)}
    # a training run's output folder, or its unet/
    assert base_schedule_differences(shipped, zero_snr) == {"rescale_betas_zero_snr": (False, True)}
    assert base_schedule_differences(eps, zero_snr / "unet") == {
        "prediction_type": ("epsilon", "v_prediction"), "rescale_betas_zero_snr": (False, True)}
    # a bare UNet folder: its schedule is unknown, nothing to compare
    bare = tmp_path / "bare" / "unet"
    bare.mkdir(parents=True)
    assert base_schedule_differences(zero_snr, bare) == {}
    (eps / "scheduler" / "scheduler_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        base_schedule_differences(eps, shipped / "base_unet")


def _bench_run(rows, **config):
    from llm4gen.shapesworld.scorer import METRICS

    cfg = {"num_prompts": len(rows), "prompt_seed": 7, "caption_style": "dense", "image_seed": 0,
           "num_inference_steps": 25, "guidance_scale": 5.0, "scheduler": "dpm", "size": 64, "split": "test",
           "batch_size": 50, "bootstrap": 2000, **config}
    full = [{**{m: 0.0 for m in METRICS}, **row} for row in rows]
    base = [{**row, "colour": 0.0} for row in full]  # another arm, told apart by its colour
    return {"config": cfg, "results": {"base": base, "llm4gen": full}}


def test_compare_runs_pairs_one_arm_across_two_runs_by_hand(tmp_path):
    import subprocess
    import sys

    from llm4gen.shapesworld.bench import compare_runs

    texts = ["a red circle", "a blue square and " + "more words " * 40, "a green star and " + "words " * 50]
    before = _bench_run([{"text": t, "clip_tokens": n, "position": p, "colour": c}
                         for t, n, p, c in zip(texts, (20, 90, 110), (0.0, None, 0.5), (1.0, 0.5, 0.0))])
    after = _bench_run([{"text": t, "clip_tokens": n, "position": p, "colour": c}
                        for t, n, p, c in zip(texts, (20, 90, 110), (1.0, 1.0, 1.0), (1.0, 0.0, 0.0))],
                       batch_size=25, bootstrap=500)  # neither changes the prompts or the noise
    diff = compare_runs(before, after, n_boot=300)
    # position: judged in both runs for prompts 0 and 2 only -> (1 - 0 + 1 - 0.5) / 2
    assert diff["all"]["position"]["mean"] == pytest.approx(0.75) and diff["all"]["position"]["n"] == 2
    assert diff["all"]["colour"]["mean"] == pytest.approx(-0.5 / 3)
    assert diff[">77 tokens"]["colour"]["mean"] == pytest.approx(-0.25) and diff[">77 tokens"]["colour"]["n"] == 2
    assert diff["<=77 tokens"]["position"] == {"mean": 1.0, "ci95": [1.0, 1.0], "n": 1}
    # an arm against itself, across runs: exactly zero
    assert diff["all"]["shape"] == {"mean": 0.0, "ci95": [0.0, 0.0], "n": 3}
    # before_arm picks the earlier run's arm: its base (colour 0 throughout) -> the later run's llm4gen (1, 0.5, 0)
    assert compare_runs(after, before, before_arm="base", n_boot=300)["all"]["colour"]["mean"] == pytest.approx(0.5)

    with pytest.raises(ValueError, match="image_seed: 0 vs 1"):
        compare_runs(before, _bench_run([{"text": t, "clip_tokens": 20} for t in texts], image_seed=1))
    # runs saved before guidance_rescale existed used plain guidance: they pair with 0.0, not with 0.7
    rows = [{"text": t, "clip_tokens": n} for t, n in zip(texts, (20, 90, 110))]
    assert compare_runs(before, _bench_run(rows, guidance_rescale=0.0), n_boot=100)["all"]["colour"]["n"] == 3
    with pytest.raises(ValueError, match="sampled with different settings \\(guidance_rescale: 0.0 vs 0.7\\)"):
        compare_runs(before, _bench_run(rows, guidance_rescale=0.7))
    # ... unless comparing sampler settings is the point; the prompts and noise must still agree
    resampled = _bench_run([{**r, "colour": 1.0} for r in rows], guidance_rescale=0.7, num_inference_steps=10)
    # colour (1, 0.5, 0) before -> 1 everywhere: (0 + 0.5 + 1) / 3
    assert compare_runs(before, resampled, sampler_may_differ=True, n_boot=100)["all"]["colour"]["mean"] == \
        pytest.approx(0.5)
    with pytest.raises(ValueError, match="same prompts and noise \\(prompt_seed: 7 vs 8\\)"):
        compare_runs(before, _bench_run(rows, prompt_seed=8), sampler_may_differ=True)
    with pytest.raises(ValueError, match="different prompt texts"):
        compare_runs(before, _bench_run([{"text": t.upper(), "clip_tokens": 20} for t in texts]))
    with pytest.raises(ValueError, match="no arm 'entity'"):
        compare_runs(before, after, arm="entity")

    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(before))
    b.write_text(json.dumps(after))
    out = tmp_path / "cmp.json"
    script = [sys.executable, "research/shapesworld/compare_quality.py"]
    done = subprocess.run([*script, str(a), str(b), "--bootstrap", "200", "--out", str(out)],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    assert "+75.0" in done.stdout  # the position row
    saved = json.loads(out.read_text())
    assert saved["differences"]["all"]["position"]["mean"] == pytest.approx(0.75)
    assert out.with_suffix(".png").stat().st_size > 0
    c = tmp_path / "c.json"
    c.write_text(json.dumps(_bench_run(rows, guidance_scale=7.5)))
    done = subprocess.run([*script, str(a), str(c), "--bootstrap", "200", "--out", str(out)],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode != 0 and "--sampler-may-differ" in done.stderr
    done = subprocess.run([*script, str(a), str(c), "--bootstrap", "200", "--out", str(out), "--sampler-may-differ"],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    assert "guidance_scale 5.0 -> 7.5" in " ".join(done.stdout.split())
    assert json.loads(out.read_text())["sampler_differences"] == {"guidance_scale": [5.0, 7.5]}
    # the same run scored with the smooth prototypes: compared, and the title and JSON name the scorer change
    d = tmp_path / "d.json"
    d.write_text(json.dumps({**after, "config": {**after["config"], "scorer_prototypes": "smooth"}}))
    done = subprocess.run([*script, str(a), str(d), "--bootstrap", "200", "--out", str(out)],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    assert "scorer_prototypes auto -> smooth" in " ".join(done.stdout.split())
    assert json.loads(out.read_text())["scoring_differences"] == {"scorer_prototypes": ["auto", "smooth"]}
    (tmp_path / "bad.json").write_text("{not json")
    done = subprocess.run([*script, str(a), str(tmp_path / "bad.json"), "--out", str(out)],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode != 0 and "not valid JSON" in done.stderr


def test_format_percent_by_hand():
    from llm4gen.shapesworld.bench import format_percent

    assert format_percent({"mean": 0.7241, "ci95": [0.69983, 0.74933], "n": 500}) == "72.4 [70.0, 74.9]"
    assert format_percent({"mean": 0.17, "ci95": [0.1433, 0.198]}, signed=True) == "+17.0 [+14.3, +19.8]"
    assert format_percent({"mean": -0.026, "ci95": [-0.043, 0.0]}, signed=True) == "-2.6 [-4.3, +0.0]"
    assert format_percent({"mean": None, "ci95": None, "n": 0}) == "-"


def test_quality_benchmark_scores_with_the_configured_prototypes(tmp_path):
    """An oracle arm whose renders are blurred without noise (as a diffusion model draws): scored with the smooth
    prototypes every shape is right; with "auto" (clean prototypes for noise-free images) stars are lost."""
    from PIL import ImageFilter

    from llm4gen.shapesworld.bench import QualityConfig, benchmark_prompts, run_quality_benchmark

    class BlurArm(RenderArm):
        def __call__(self, prompt, generator, **kwargs):
            out = super().__call__(prompt, generator, **kwargs)
            return SimpleNamespace(images=[im.filter(ImageFilter.GaussianBlur(1.2)) for im in out.images])

    cfg = QualityConfig(num_prompts=16, batch_size=16, bootstrap=100, scheduler="own")
    items = benchmark_prompts(cfg)
    assert sum(o.shape == "star" for _, scene in items for o in scene.objects) >= 3
    arm = BlurArm(dict(items))
    shape = {}
    for prototypes in ("auto", "smooth"):
        cfg = QualityConfig(num_prompts=16, batch_size=16, bootstrap=100, scheduler="own",
                            scorer_prototypes=prototypes)
        report = run_quality_benchmark({"oracle": arm}, tmp_path / prototypes, cfg, progress=False, samples=1)
        assert report["config"]["scorer_prototypes"] == prototypes
        shape[prototypes] = report["summary"]["oracle"]["all"]["shape"]["mean"]
    assert shape["smooth"] == 1.0 and shape["auto"] < 1.0
    with pytest.raises(ValueError, match="scorer_prototypes must be one of"):
        QualityConfig(scorer_prototypes="blurred")


def test_quiet_library_notices_silences_both_libraries_and_restores_their_levels():
    """render_arm and the demo / region benchmarks run prompts past CLIP's window on purpose: inside the block only
    errors are logged, after it each library is back at the level it had, also when the block raises."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from llm4gen.utils import quiet_library_notices

    before = diffusers_logging.get_verbosity(), transformers_logging.get_verbosity()
    diffusers_logging.set_verbosity_info()
    transformers_logging.set_verbosity_warning()
    try:
        with pytest.raises(RuntimeError, match="inside"):
            with quiet_library_notices():
                assert diffusers_logging.get_verbosity() == diffusers_logging.ERROR
                assert transformers_logging.get_verbosity() == transformers_logging.ERROR
                raise RuntimeError("inside")
        assert diffusers_logging.get_verbosity() == diffusers_logging.INFO
        assert transformers_logging.get_verbosity() == transformers_logging.WARNING
    finally:
        diffusers_logging.set_verbosity(before[0])
        transformers_logging.set_verbosity(before[1])


def test_progress_iter_yields_everything_in_order_without_a_helper_thread():
    """The library's item loops draw their bar from the calling thread (rich's `track` starts a thread that once
    deadlocked the suite): same items, same order, no thread while iterating, the bar stopped after."""
    import threading

    from llm4gen.utils import progress_iter

    before = threading.active_count()
    seen, threads = [], []
    for item in progress_iter(range(50), "items", refresh_every=0.0):
        seen.append(item)
        threads.append(threading.active_count())
    assert seen == list(range(50)) and set(threads) == {before}
    assert list(progress_iter(iter("abc"), "letters")) == ["a", "b", "c"]  # no len(): an open-ended bar
    assert threading.active_count() == before


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from llm4gen.tiny import build_tiny_pipeline

    root = tmp_path_factory.mktemp("arms")
    build_tiny_pipeline(llm_max_length=256, llm_padding="max_length", work_dir=root / "work").save_pretrained(
        root / "model")
    return root / "model"


def test_load_with_tokenizers_gives_fast_tokenizers_or_names_the_folder(tiny_folder, tmp_path):
    from llm4gen.shapesworld.arms import load_with_tokenizers

    pipe, clip_tok, llm_tok = load_with_tokenizers(tiny_folder)
    assert clip_tok.is_fast and llm_tok.is_fast and llm_tok is pipe.llm_encoder.tokenizer
    assert clip_tok("a red circle")["input_ids"] == pipe.tokenizer("a red circle")["input_ids"]
    with pytest.raises(FileNotFoundError, match="no model_index.json"):
        load_with_tokenizers(tmp_path)


def test_denoiser_arms_gives_the_llm4gen_arm_and_the_base_arm_where_saved(tiny_folder, tmp_path):
    from llm4gen.shapesworld.arms import denoiser_arms

    pipe, arms = denoiser_arms(tiny_folder)
    assert list(arms) == ["llm4gen"]
    model, reads_llm = arms["llm4gen"]
    assert reads_llm and model.unet is pipe.unet and model.adapter is pipe.adapter and not model.training
    with_base = tmp_path / "with-base"
    shutil.copytree(tiny_folder, with_base)
    pipe.unet.save_pretrained(with_base / "base_unet")
    _, arms = denoiser_arms(with_base)
    base, reads_llm = arms["base (CLIP only)"]
    assert list(arms) == ["llm4gen", "base (CLIP only)"] and not reads_llm and base.adapter is None
    assert not base.training and base.unet is not arms["llm4gen"][0].unet
    with pytest.raises(FileNotFoundError, match="no model_index.json"):
        denoiser_arms(tmp_path / "nowhere")
