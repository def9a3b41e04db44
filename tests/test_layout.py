"""The layout planner (llm4gen.layout): boxes from a prompt's own place words, checked by hand and against
ShapesWorld scenes' true positions; regions="auto" in the pipeline, the command line and the app."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from llm4gen.layout import plan_regions, region_words
from llm4gen.regions import Region

T, TT = 1 / 3, 2 / 3


def plan(prompt, **kwargs):
    """(words, box rounded) per planned region, in order."""
    return [(region_words(prompt, r), tuple(round(v, 4) for v in r.box)) for r in plan_regions(prompt, **kwargs)]


def box(x0, y0, x1, y1):
    return tuple(round(v, 4) for v in (x0, y0, x1, y1))


@pytest.mark.parametrize("prompt, want", [
    # sides: a column of the 3x3 grid, the full height; each place goes to the thing named before it
    ("a red cube on the left and a blue ball on the right",
     [("red cube", box(0, 0, T, 1)), ("blue ball", box(TT, 0, 1, 1))]),
    # a place that comes first goes to the thing named after it
    ("In the upper right corner, there is a small cyan ring.", [("small cyan ring", box(TT, 0, 1, T))]),
    ("On the left is a red cube and on the right a blue ball.",
     [("red cube", box(0, 0, T, 1)), ("blue ball", box(TT, 0, 1, 1))]),
    # two halves of one place joined; "right in the centre" is the centre
    ("A large purple triangle sits near the bottom edge, horizontally centred.",
     [("large purple triangle", box(T, TT, TT, 1))]),
    ("A large red star sits on the left side, halfway down.", [("large red star", box(0, T, T, TT))]),
    ("A small green square sits right in the centre of the image.", [("small green square", box(T, T, TT, TT))]),
    # things without attribute words: the words a determiner starts
    ("a photo of an old lighthouse at the top of the image, and a small wooden boat at the bottom right",
     [("old lighthouse", box(0, 0, 1, T)), ("small wooden boat", box(TT, TT, 1, 1))]),
    ("a cat sleeping in the lower-left corner", [("cat", box(0, TT, T, 1))]),
    # relations between things without places: halves
    ("a dog to the left of a cat", [("dog", box(0, 0, 0.5, 1)), ("cat", box(0.5, 0, 1, 1))]),
    ("A cat on the left of the sofa", [("cat", box(0, 0, 0.5, 1)), ("sofa", box(0.5, 0, 1, 1))]),
    ("a bird on the right of a tree", [("bird", box(0.5, 0, 1, 1)), ("tree", box(0, 0, 0.5, 1))]),
    ("a lamp above a sofa", [("lamp", box(0, 0, 1, 0.5)), ("sofa", box(0, 0.5, 1, 1))]),
    ("a ball under a table", [("ball", box(0, 0.5, 1, 1)), ("table", box(0, 0, 1, 0.5))]),
    ("a girl on the top of a bowl", [("girl", box(0, 0, 1, 0.5)), ("bowl", box(0, 0.5, 1, 1))]),
    ("a man on the bottom of a bench", [("man", box(0, 0.5, 1, 1)), ("bench", box(0, 0, 1, 0.5))]),
    ("a dog next to a wooden chair", [("dog", box(0, 0, 0.5, 1)), ("wooden chair", box(0.5, 0, 1, 1))]),
    ("A red apple sits beside a green pear.", [("red apple", box(0, 0, 0.5, 1)), ("green pear", box(0.5, 0, 1, 1))]),
    # "the centre" is no thing; a relation needs its things close by: the star and "the triangle" are, the
    # triangle and the star before it are not
    ("a green triangle below the centre pointing up, and a yellow star floating just above the triangle",
     [("green triangle / triangle", box(0, 0.5, 1, 1)), ("yellow star", box(0, 0, 1, 0.5))]),
    # the place owns the last thing before it: the circle here has none
    ("a red circle and a blue square in the top left", [("blue square", box(0, 0, T, T))]),
    # nothing placed, nothing planned
    ("a red circle and a blue square", []),
    ("An astronaut riding a horse, digital art.", []),
])
def test_plan_regions_by_hand(prompt, want):
    assert plan(prompt) == want


def test_later_mentions_join_their_region():
    prompt = ("A large red star sits on the left side, halfway down. A small blue star sits in the upper right "
              "corner. The red star is to the left of the blue star.")
    assert plan(prompt) == [("large red star / red star", box(0, T, T, TT)),
                            ("small blue star / blue star", box(TT, 0, 1, T))]
    # a place already given wins over a relation; two things of one noun stay apart by colour
    regions = plan_regions(prompt)
    assert [prompt[s:e] for s, e in regions[0].spans] == ["large", "red", "star", "red", "star"]
    # a colour named after its thing is the thing's ("coloured green"), synonyms join other nouns, and a row alone
    # ("near the top edge") is the full width
    prompt = ("One of the figures is a big plus sign, coloured green, placed in the lower left corner. Notice that "
              "the green cross appears above the small red round disc. The red circle sits near the top edge.")
    assert plan(prompt, synonyms={"plus": "cross", "round": "circle"}) == [
        ("big plus / green / green cross", box(0, TT, T, 1)), ("small red round / red circle", box(0, 0, 1, T))]
    # without the synonym the cross mention is another thing, the relation then places nothing new
    assert plan(prompt)[0] == ("big plus / green", box(0, TT, T, 1))


def test_edges_and_bad_input():
    prompt = "a red cube in the upper left corner"
    assert plan(prompt, edges=(0.25, 0.75)) == [("red cube", box(0, 0, 0.25, 0.25))]
    for edges in [(0.6, 0.4), (0, 0.5), (0.3, 1.0)]:
        with pytest.raises(ValueError, match="edges must be two fractions"):
            plan_regions(prompt, edges=edges)
    with pytest.raises(TypeError, match="one prompt string"):
        plan_regions(["a red cube on the left"])
    assert region_words("a red cube", Region("red cube", (0, 0, 1, 1))) == "red cube"


def test_planned_boxes_are_shapesworlds_true_cells():
    """Independent check on ShapesWorld: over 150 dense captions drawn from random scenes, the planner (words only)
    gives one region per object, and each region's words name one object whose true position lies in its box."""
    import re

    from llm4gen.shapesworld.bench import planned_regions
    from llm4gen.shapesworld.mentions import NOUN_SHAPES
    from llm4gen.shapesworld.scorer import cell_box
    from llm4gen.shapesworld.world import caption_scene, position_region, sample_scene

    rng = np.random.default_rng(7)
    objects = 0
    for _ in range(150):
        scene = sample_scene(rng)
        text = caption_scene(scene, "dense", rng)
        regions = planned_regions(text)
        assert len(regions) == len(scene.objects), text
        for r in regions:
            words = re.findall(r"[a-z]+", region_words(text, r).lower())
            named = [o for o in scene.objects if o.colour in words and o.shape in {NOUN_SHAPES.get(w) for w in words}]
            assert len(named) == 1, (region_words(text, r), text)
            assert r.box == pytest.approx(cell_box(position_region(named[0].x, named[0].y)))
            objects += 1
    assert objects > 300


def test_demo_prompts_plan_the_cells_their_words_name():
    """The demo's third column: every object of the three demo prompts gets the cell its place words name."""
    from llm4gen.examples import DEMO_PROMPTS
    from llm4gen.shapesworld.bench import planned_regions

    lo, hi = 0.36, 0.64
    want = [
        [("large red circle", (0, 0, lo, lo)), ("small blue square", (hi, hi, 1, 1))],
        [("large yellow star / yellow star", (hi, 0, 1, lo)), ("small green square / green square", (0, hi, lo, 1))],
        [("large red star / red star", (0, lo, lo, hi)), ("small cyan ring", (hi, 0, 1, lo)),
         ("large purple triangle / purple triangle", (lo, hi, hi, 1))],
    ]
    for prompt, expected in zip(DEMO_PROMPTS, want, strict=True):
        got = [(region_words(prompt, r), r.box) for r in planned_regions(prompt)]
        assert [w for w, _ in got] == [w for w, _ in expected]
        for (_, b), (_, e) in zip(got, expected):
            assert b == pytest.approx(e)


def test_demo_scenes_are_what_the_demo_prompts_ask_for():
    """DEMO_SCENES (what research/shapesworld/demo_seeds.py scores the demo's images against): per prompt the objects
    it names, each centred in the cell its planned region boxes, with its size and colour words and the prompt's
    relation; a rendering of each scene scores all-correct (the renderer and the scorer agree it is a valid scene)."""
    from llm4gen.examples import DEMO_PROMPTS, DEMO_SCENES
    from llm4gen.shapesworld.bench import planned_regions
    from llm4gen.shapesworld.scorer import cell_box, score_image
    from llm4gen.shapesworld.world import Scene, position_region, render_scene

    for prompt, data in zip(DEMO_PROMPTS, DEMO_SCENES, strict=True):
        scene = Scene.from_dict(data)
        regions = planned_regions(prompt)
        assert len(regions) == len(scene.objects)
        for obj, region in zip(scene.objects, regions):
            words = region_words(prompt, region)
            assert f"{obj.size} {obj.colour} {obj.shape}" in words
            assert region.box == pytest.approx(cell_box(position_region(obj.x, obj.y)))
        for a, rel, b in scene.relations:
            named = f"The {scene.objects[a].name()} is to the {rel.split()[0]} of the {scene.objects[b].name()}."
            assert named in prompt
        assert re.search(rf"\b{scene.background} (background|backdrop|colour)", prompt)
        assert score_image(render_scene(scene, 64), scene)["all_correct"] == 1.0


@pytest.fixture(scope="module")
def tiny_pipe(tiny_sd_dir):
    from llm4gen import LLM4GenPipeline

    pipe = LLM4GenPipeline.from_pretrained(tiny_sd_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _sample(pipe, prompt, **kwargs):
    return pipe(prompt, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np",
                **kwargs).images


def test_pipeline_auto_regions_are_the_planned_ones(tiny_pipe):
    prompt = "a red circle in the upper left corner and a blue square in the lower right corner"
    auto = _sample(tiny_pipe, prompt, regions="auto", region_guidance_scale=0.5)
    assert np.array_equal(auto, _sample(tiny_pipe, prompt, regions=plan_regions(prompt), region_guidance_scale=0.5))
    assert not np.allclose(auto, _sample(tiny_pipe, prompt))
    # per prompt of a batch; a prompt that places nothing is sampled plain, with a warning naming it
    prompts = [prompt, "a red circle and a blue square"]
    with pytest.warns(UserWarning, match=r"prompt\(s\) \[1\] name no place"):
        batch = _sample(tiny_pipe, prompts, regions="auto", region_guidance_scale=0.5)
    by_hand = _sample(tiny_pipe, prompts, regions=[plan_regions(prompt), []], region_guidance_scale=0.5)
    assert np.array_equal(batch, by_hand)
    with pytest.warns(UserWarning, match="name no place"):
        plain = _sample(tiny_pipe, prompts[1], regions="auto")
    assert np.array_equal(plain, _sample(tiny_pipe, prompts[1]))
    with pytest.raises(ValueError, match='or "auto"'):
        _sample(tiny_pipe, prompt, regions="automatic")


def test_generate_auto_regions(tiny_sd_dir, tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from llm4gen import LLM4GenPipeline
    from llm4gen.cli import app

    prompt = "a red circle on the left and a blue square on the right"
    runner = CliRunner()
    result = runner.invoke(app, ["generate", prompt, "--model", tiny_sd_dir, "--out", str(tmp_path / "a"), "--steps",
                                 "3", "--auto-regions", "--region-scale", "0.5"])
    assert result.exit_code == 0, result.output
    assert "region: 'red circle' in box (0.00, 0.00, 0.33, 1.00)" in result.output
    pipe = LLM4GenPipeline.from_pretrained(tiny_sd_dir)
    want = pipe(prompt, num_inference_steps=3, guidance_scale=7.5, generator=torch.Generator().manual_seed(0),
                regions=plan_regions(prompt), region_guidance_scale=0.5).images[0]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a" / "seed0_0000.png")), np.asarray(want))
    # beside it, the image with the boxes drawn (llm4gen.images.draw_regions), and its path printed
    from llm4gen.images import draw_regions

    drawn = tmp_path / "a" / "seed0_0000_regions.png"
    assert str(drawn) in result.output.replace("\n", "")
    want_drawn = draw_regions(want, [(region_words(prompt, r), r.box) for r in plan_regions(prompt)])
    assert np.array_equal(np.asarray(Image.open(drawn)), np.asarray(want_drawn))
    result = runner.invoke(app, ["generate", "a red circle", "--model", tiny_sd_dir, "--out", str(tmp_path / "b"),
                                 "--steps", "2", "--auto-regions"])
    assert result.exit_code == 0 and "names no place" in result.output
    result = runner.invoke(app, ["generate", prompt, "--model", tiny_sd_dir, "--out", str(tmp_path / "c"),
                                 "--auto-regions", "--region", "red circle:0,0,1,1"])
    assert result.exit_code == 1 and "not both" in result.output


def test_singular_by_hand_and_plural_mentions_join_their_region():
    from llm4gen.utils import singular

    cases = {"berries": "berry", "boxes": "box", "dishes": "dish", "benches": "bench", "glasses": "glass",
             "Cats": "cat", "glass": "glass", "bus": "bus", "ties": "tie", "cat": "cat"}
    assert {w: singular(w) for w in cases} == cases
    # "the boxes" later in the prompt is the wooden box placed before
    prompt = "A wooden box sits on the left. The boxes are stacked."
    assert plan(prompt) == [("wooden box / boxes", box(0, 0, T, 1))]
