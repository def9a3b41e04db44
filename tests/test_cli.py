"""The `llm4gen` command: help, generate with a saved tiny pipeline, the demo, and its errors."""

from __future__ import annotations

import pytest
from PIL import Image
from typer.testing import CliRunner

from llm4gen.cli import app

runner = CliRunner()


def test_help_lists_every_subcommand():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for cmd in ("generate", "demo"):
        assert cmd in result.output
    gen = runner.invoke(app, ["generate", "--help"])
    for flag in ("--model", "--out", "--steps", "--guidance", "--seed", "--negative", "--num-images"):
        assert flag in gen.output


def test_generate_writes_pngs(tiny_sd_dir, tmp_path):
    def args(out):
        return ["generate", "a red circle and a blue square", "--model", tiny_sd_dir, "--out", str(out),
                "--steps", "2", "--num-images", "2", "--seed", "3", "--negative", "blurry"]

    result = runner.invoke(app, args(tmp_path))
    assert result.exit_code == 0, result.output
    paths = sorted(tmp_path.glob("*.png"))
    assert [p.name for p in paths] == ["seed3_0000.png", "seed3_0001.png"]
    assert all(str(p) in result.output for p in paths)
    assert Image.open(paths[0]).size == (32, 32)
    again = tmp_path / "again"
    assert runner.invoke(app, args(again)).exit_code == 0
    assert Image.open(again / "seed3_0000.png").tobytes() == Image.open(paths[0]).tobytes()


def test_generate_adapter_scale_and_guidance_rescale(tiny_sd_dir, tmp_path):
    def render(out, *extra):
        result = runner.invoke(app, ["generate", "a red circle and a blue square", "--model", tiny_sd_dir, "--out",
                                     str(out), "--steps", "2", *extra])
        assert result.exit_code == 0, result.output
        return Image.open(out / "seed0_0000.png").tobytes()

    trained = render(tmp_path / "a")
    assert render(tmp_path / "b", "--adapter-scale", "1") == trained
    assert render(tmp_path / "c", "--adapter-scale", "0.2") != trained
    result = runner.invoke(app, ["generate", "a cat", "--model", tiny_sd_dir, "--adapter-scale", "-1"])
    assert result.exit_code == 2 and "--adapter-scale" in result.output
    # guidance rescale reaches the sampler (0 = plain guidance) and must lie in [0, 1]
    assert render(tmp_path / "d", "--guidance-rescale", "0") == trained
    assert render(tmp_path / "e", "--guidance-rescale", "0.7") != trained
    result = runner.invoke(app, ["generate", "a cat", "--model", tiny_sd_dir, "--guidance-rescale", "1.5"])
    assert result.exit_code == 2 and "--guidance-rescale" in result.output


def test_generate_region_guidance(tiny_sd_dir, tmp_path):
    import numpy as np
    import torch

    from llm4gen import LLM4GenPipeline
    from llm4gen.regions import Region

    def render(out, *extra):
        return runner.invoke(app, ["generate", "a red circle and a blue square", "--model", tiny_sd_dir, "--out",
                                   str(out), "--steps", "3", *extra])

    result = render(tmp_path / "a", "--region", "red circle:0,0,0.5,0.5", "--region", "blue square:0.5,0.5,1,1",
                    "--region-scale", "0.5", "--region-steps", "2")
    assert result.exit_code == 0, result.output
    # exactly what the pipeline gives for those regions (the CLI's guidance is 7.5 for a model given by path)
    pipe = LLM4GenPipeline.from_pretrained(tiny_sd_dir)
    want = pipe("a red circle and a blue square", num_inference_steps=3, guidance_scale=7.5,
                generator=torch.Generator().manual_seed(0), region_guidance_scale=0.5, region_guidance_steps=2,
                regions=[Region("red circle", (0, 0, 0.5, 0.5)), Region("blue square", (0.5, 0.5, 1, 1))]).images[0]
    got = Image.open(tmp_path / "a" / "seed0_0000.png")
    assert np.array_equal(np.asarray(got), np.asarray(want))
    assert render(tmp_path / "b").exit_code == 0
    assert Image.open(tmp_path / "b" / "seed0_0000.png").tobytes() != got.tobytes()
    # the mask is on by default (above, as the pipeline's); here alone (scale 0) for the first two steps
    result = render(tmp_path / "m", "--region", "red circle:0,0,0.5,0.5", "--region", "blue square:0.5,0.5,1,1",
                    "--region-scale", "0", "--region-mask-steps", "2")
    assert result.exit_code == 0, result.output
    want = pipe("a red circle and a blue square", num_inference_steps=3, guidance_scale=7.5,
                generator=torch.Generator().manual_seed(0), region_guidance_scale=0, region_mask=True,
                region_mask_steps=2,
                regions=[Region("red circle", (0, 0, 0.5, 0.5)), Region("blue square", (0.5, 0.5, 1, 1))]).images[0]
    masked = Image.open(tmp_path / "m" / "seed0_0000.png")
    assert np.array_equal(np.asarray(masked), np.asarray(want))
    assert masked.tobytes() not in (got.tobytes(), Image.open(tmp_path / "b" / "seed0_0000.png").tobytes())
    # --no-region-mask: the guidance alone
    result = render(tmp_path / "g", "--region", "red circle:0,0,0.5,0.5", "--region", "blue square:0.5,0.5,1,1",
                    "--region-scale", "0.5", "--region-steps", "2", "--no-region-mask")
    assert result.exit_code == 0, result.output
    want = pipe("a red circle and a blue square", num_inference_steps=3, guidance_scale=7.5,
                generator=torch.Generator().manual_seed(0), region_guidance_scale=0.5, region_guidance_steps=2,
                region_mask=False,
                regions=[Region("red circle", (0, 0, 0.5, 0.5)), Region("blue square", (0.5, 0.5, 1, 1))]).images[0]
    alone = Image.open(tmp_path / "g" / "seed0_0000.png")
    assert np.array_equal(np.asarray(alone), np.asarray(want)) and alone.tobytes() != got.tobytes()
    assert Region.parse("a big: red circle : 0, 0.1, 0.5,1") == Region("a big: red circle", (0, 0.1, 0.5, 1))
    for bad, message in [("red circle", "PHRASE:X0,Y0,X1,Y1"), ("red circle:0,0,1", "PHRASE:X0,Y0,X1,Y1"),
                         ("green star:0,0,1,1", "'green star' does not occur"), ("red circle:0,0,2,1", "x1 <= 1")]:
        result = render(tmp_path / "c", "--region", bad)
        assert result.exit_code == 1 and message in result.output, (bad, result.output)


def test_generate_samples_a_model_with_its_folders_settings_however_it_is_named(tiny_sd_dir, tmp_path, monkeypatch):
    """The guidance a model folder recommends (llm4gen_sampling.json) is used with and without --model; a folder
    without the file gets 7.5; an explicit --guidance wins."""
    import shutil

    from llm4gen.sampling import SamplingDefaults

    def render(out, *extra):
        result = runner.invoke(app, ["generate", "a red circle and a blue square", "--out", str(out), "--steps", "2",
                                     "--device", "cpu", *extra])
        assert result.exit_code == 0, result.output
        return Image.open(out / "seed0_0000.png").tobytes()

    plain = render(tmp_path / "a", "--model", tiny_sd_dir)
    assert render(tmp_path / "b", "--model", tiny_sd_dir, "--guidance", "7.5") == plain  # no file: 7.5
    own = tmp_path / "model"
    shutil.copytree(tiny_sd_dir, own)
    SamplingDefaults(guidance_scale=3.0).save(own)
    named = render(tmp_path / "c", "--model", str(own))
    assert named != plain and named == render(tmp_path / "d", "--model", tiny_sd_dir, "--guidance", "3")
    monkeypatch.setattr("llm4gen.cli.common.bundled_model_dir", lambda: own)
    assert render(tmp_path / "e") == named  # no --model: the same folder, the same settings
    assert render(tmp_path / "f", "--model", str(own), "--guidance", "7.5") == plain  # explicit wins


def test_generate_errors_are_messages(tmp_path, monkeypatch):
    result = runner.invoke(app, ["generate", "a cat", "--model", str(tmp_path)])
    assert result.exit_code == 1
    assert "model_index.json" in result.output
    monkeypatch.setattr("llm4gen.cli.common.bundled_model_dir", lambda: None)
    result = runner.invoke(app, ["generate", "a cat"])
    assert result.exit_code == 2 and "--model" in result.output


def test_demo_writes_images_and_grid(tmp_path, monkeypatch):
    monkeypatch.setattr("llm4gen.cli.common.bundled_model_dir", lambda: None)
    result = runner.invoke(app, ["demo", "--out", str(tmp_path), "--steps", "2"])
    assert result.exit_code == 0, result.output
    assert "RANDOMLY INITIALISED" in result.output
    said = " ".join(result.output.split())  # the long prompts' note, without a base column to speak of
    assert "CLIP reads the first 77" in said and "base column" not in said
    from llm4gen.examples import DEMO_PROMPTS

    assert (tmp_path / "grid.png").is_file() and len(list(tmp_path.glob("demo_*.png"))) == len(DEMO_PROMPTS)
    # each caption is the whole prompt: rows tall enough for its last words (42 characters a line at 256 px)
    import textwrap

    from PIL import Image

    lines = max(len(textwrap.wrap(f"[llm4gen] {p}", 42)) for p in DEMO_PROMPTS)
    assert lines > 10
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.size == (256, len(DEMO_PROMPTS) * (256 + lines * 12 + 8))


def test_demo_with_a_bundled_model_renders_both_arms_side_by_side(tmp_path, monkeypatch, tiny_sd_dir):
    import shutil

    import numpy as np
    from PIL import Image

    from llm4gen.examples import DEMO_PROMPTS

    model = tmp_path / "default"
    shutil.copytree(tiny_sd_dir, model)
    shutil.copytree(model / "unet", model / "base_unet")  # stands in for the base arm's UNet
    monkeypatch.setattr("llm4gen.cli.common.bundled_model_dir", lambda: model)
    out = tmp_path / "out"
    result = runner.invoke(app, ["demo", "--out", str(out), "--steps", "2"])
    assert result.exit_code == 0, result.output
    assert "RANDOMLY" not in result.output and "side by side" in result.output
    # said once, instead of diffusers' truncation notice per call: what the long prompts' extra tokens go to
    said = " ".join(result.output.split())
    counts = [len(ids) for ids in _clip_ids(tiny_sd_dir, DEMO_PROMPTS)]
    assert counts[1] > 77 and counts[2] > 77  # the long demo prompts, with any vocabulary
    if counts[0] > 77:  # the tiny test vocabulary spells words out in pieces
        listed = f"Prompts 1, 2 and 3 are {counts[0]}, {counts[1]} and {counts[2]}"
    else:
        listed = f"Prompts 2 and 3 are {counts[1]} and {counts[2]}"
    assert f"note: {listed} CLIP tokens: CLIP reads the first 77" in said
    assert "up to 64 of its own tokens" in said and "The base column reads CLIP's window only." in said
    base = sorted(out.glob("demo_*_base.png"))
    llm = sorted(out.glob("demo_*_llm4gen.png"))
    guided = sorted(out.glob("demo_*_llm4gen_regions.png"))
    assert len(base) == len(llm) == len(guided) == len(DEMO_PROMPTS)
    # same seed, same UNet here: the arms differ only by the LLM tokens, so the images differ but share a size
    a, b = np.asarray(Image.open(base[0])), np.asarray(Image.open(llm[0]))
    assert a.shape == b.shape and not np.array_equal(a, b)
    assert not np.array_equal(b, np.asarray(Image.open(guided[0])))  # the third column is guided
    with Image.open(out / "grid.png") as grid:
        assert grid.size[0] >= 3 * 256
        # the grid's third column shows the guided image with the planned boxes drawn on it
        from llm4gen.images import draw_regions
        from llm4gen.layout import region_words
        from llm4gen.shapesworld.bench import planned_regions

        boxes = [(region_words(DEMO_PROMPTS[0], r), r.box) for r in planned_regions(DEMO_PROMPTS[0])]
        drawn = draw_regions(Image.open(guided[0]), boxes).resize((256, 256), Image.NEAREST)
        assert len(boxes) == 2 and np.array_equal(np.asarray(grid.convert("RGB"))[:256, 512:768], np.asarray(drawn))


def test_bench_quality_command(tmp_path, monkeypatch, tiny_sd_dir):
    import json
    import shutil

    model = tmp_path / "default"
    shutil.copytree(tiny_sd_dir, model)
    monkeypatch.setattr("llm4gen.cli.common.bundled_model_dir", lambda: model)
    result = runner.invoke(app, ["bench", "quality", "--out", str(tmp_path / "o"), "--prompts", "2"])
    assert result.exit_code != 0 and "--base-unet" in result.output  # no base arm anywhere: says how to give one
    shutil.copytree(model / "unet", model / "base_unet")
    result = runner.invoke(app, ["bench", "quality", "--out", str(tmp_path / "o"), "--prompts", "3", "--steps", "2",
                                 "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "o" / "results.json").read_text())
    assert report["arms"] == ["base", "llm4gen"] and len(report["results"]["llm4gen"]) == 3
    assert report["config"]["num_inference_steps"] == 2
    assert sum(b["prompts"] for b in report["binding_breakdown"]["llm4gen"].values()) == 3
    assert "Binding by objects asked" in result.output
    assert report["notes"] == [] and "not a fair base" not in result.output  # base_unet/ shares the folder's schedule
    assert (tmp_path / "o" / "quality.png").is_file() and (tmp_path / "o" / "samples.png").is_file()
    # an llm4gen arm retrained on a zero-SNR schedule, its base arm still the old one: run, but say it is not fair
    rescaled = tmp_path / "rescaled"
    shutil.copytree(model, rescaled, ignore=shutil.ignore_patterns("base_unet"))
    config_path = rescaled / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "rescale_betas_zero_snr": True}))
    result = runner.invoke(app, ["bench", "quality", "--out", str(tmp_path / "z"), "--prompts", "2", "--steps", "2",
                                 "--model", str(rescaled), "--base-unet", str(model / "base_unet")])
    assert result.exit_code == 0, result.output
    (note,) = json.loads((tmp_path / "z" / "results.json").read_text())["notes"]
    assert "rescale_betas_zero_snr: False in training, True here" in note and "not a fair base" in note
    assert "not a fair base" in result.output
    result = runner.invoke(app, ["bench", "quality", "--out", str(tmp_path / "v"), "--split", "val"])
    assert result.exit_code != 0 and "split must be one of" in result.output
    assert report["config"]["scorer_prototypes"] == "auto"  # every published table's scorer
    result = runner.invoke(app, ["bench", "quality", "--out", str(tmp_path / "v"), "--scorer-prototypes", "blurred"])
    assert result.exit_code != 0 and "scorer_prototypes must be one of" in result.output
    result = runner.invoke(app, ["bench", "quality", "--out", str(tmp_path / "s"), "--prompts", "3", "--steps", "2",
                                 "--batch-size", "2", "--adapter-scale", "0"])
    assert result.exit_code == 0, result.output
    zero = json.loads((tmp_path / "s" / "results.json").read_text())["results"]
    # the base arm is untouched; the llm4gen arm now renders other images from the same noise
    assert [r["file_name"] for r in zero["base"]] == [r["file_name"] for r in report["results"]["base"]]
    for name in ("base/00000.png", "llm4gen/00000.png"):
        same = (tmp_path / "s" / name).read_bytes() == (tmp_path / "o" / name).read_bytes()
        assert same == name.startswith("base")


def _clip_ids(model: str, texts: list[str]) -> list[list[int]]:
    """Each text's CLIP token ids (with start and end) by the saved pipeline's own tokenizer, one text at a time."""
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer")
    tok.model_max_length = 10**6  # counting only
    return [tok(t)["input_ids"] for t in texts]


def test_clip_window_note_counts_each_long_prompt_and_names_the_llms_limit(tiny_sd_dir):
    from types import SimpleNamespace

    from llm4gen import LLM4GenPipeline
    from llm4gen.cli.generate import clip_window_note

    pipe = LLM4GenPipeline.from_pretrained(tiny_sd_dir)
    long, longer = " ".join(["red"] * 80), " ".join(["red"] * 81)
    n, m = (len(ids) for ids in _clip_ids(tiny_sd_dir, [long, longer]))
    assert 77 < n < m
    assert clip_window_note(pipe, ["a red circle"]) is None
    one = clip_window_note(pipe, [long])
    assert one.startswith(f"The prompt is {n} CLIP tokens: CLIP reads the first 77 ") and "up to 64 of its own" in one
    assert clip_window_note(pipe, ["a cat", long]).startswith(f"Prompt 2 is {n} CLIP tokens")
    assert clip_window_note(pipe, [long, longer, "a cat"]).startswith(f"Prompts 1 and 2 are {n} and {m} CLIP")
    four = clip_window_note(pipe, [long, "a", longer, long])
    assert four.startswith(f"Prompts 1, 3 and 4 are {n}, {m} and {n} CLIP")
    assert clip_window_note(SimpleNamespace(tokenizer=pipe.tokenizer), [long]) is None  # no LLM: nothing reads on


def test_generate_says_what_a_prompt_past_clips_window_reaches(tiny_sd_dir, tmp_path):
    long = "a red circle on the left and " + " ".join(["blue"] * 90)
    result = runner.invoke(app, ["generate", long, "--model", tiny_sd_dir, "--out", str(tmp_path), "--steps", "1"])
    assert result.exit_code == 0, result.output
    n = len(_clip_ids(tiny_sd_dir, [long])[0])
    assert f"note: The prompt is {n} CLIP tokens: CLIP reads the first 77" in " ".join(result.output.split())
    short = runner.invoke(app, ["generate", "a red circle", "--model", tiny_sd_dir, "--out", str(tmp_path / "s"),
                                "--steps", "1"])
    assert short.exit_code == 0 and "CLIP tokens" not in short.output


def test_generate_keeps_earlier_outputs_and_says_how_each_was_made(tiny_sd_dir, tmp_path):
    """A second run into the same folder numbers on (--overwrite replaces); every PNG carries an A1111-style
    `parameters` text chunk (prompt, negative prompt, seed, steps, guidance, model, version) that reads back."""
    import re

    from llm4gen import __version__
    from llm4gen.cli.common import read_png_parameters

    def run(*extra):
        result = runner.invoke(app, ["generate", "a red circle", "--model", tiny_sd_dir, "--out", str(tmp_path),
                                     "--steps", "2", "--device", "cpu", *extra])
        assert result.exit_code == 0, result.output
        return result

    run("--num-images", "2")
    first = (tmp_path / "seed0_0000.png").read_bytes()
    run("--negative", "blurry, dark", "--guidance", "3.5")
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["seed0_0000.png", "seed0_0001.png", "seed0_0002.png"]
    assert (tmp_path / "seed0_0000.png").read_bytes() == first  # kept
    fields = read_png_parameters(tmp_path / "seed0_0002.png")
    assert fields["prompt"] == "a red circle" and fields["negative prompt"] == "blurry, dark"
    assert (fields["seed"], fields["steps"], fields["cfg scale"], fields["size"]) == ("0", "2", "3.5", "32x32")
    assert fields["model"] == tiny_sd_dir and fields["version"] == f"llm4gen {__version__}"
    # the chunk as AUTOMATIC1111 writes it: prompt, "Negative prompt: ...", then "Key: value" pairs
    from PIL import Image

    text = Image.open(tmp_path / "seed0_0002.png").text["parameters"]
    assert text.split("\n")[:2] == ["a red circle", "Negative prompt: blurry, dark"]
    assert re.match(r"Steps: 2, Sampler: \w+, CFG scale: 3.5, Seed: 0, Size: 32x32, Model: ", text.split("\n")[2])
    assert "Negative prompt" not in read_png_parameters(tmp_path / "seed0_0000.png")
    run("--overwrite", "--guidance", "2")  # replaces seed0_0000 only
    assert len(list(tmp_path.glob("*.png"))) == 3 and (tmp_path / "seed0_0000.png").read_bytes() != first
    assert read_png_parameters(tmp_path / "seed0_0000.png")["cfg scale"] == "2"
    assert read_png_parameters(tmp_path / "seed0_0001.png")["cfg scale"] == "7.5"


def test_each_image_of_a_batch_has_its_own_seed(tiny_sd_dir, tmp_path):
    """With -n N the images take seeds SEED .. SEED+N-1 and each PNG records its own, so one image of a batch is made
    again alone from the seed its PNG names."""
    import numpy as np
    from PIL import Image

    from llm4gen.cli.common import read_png_parameters

    def run(out, *extra):
        return runner.invoke(app, ["generate", "a red circle", "--model", tiny_sd_dir, "--out", str(out), "--steps",
                                   "2", "--device", "cpu", *extra])

    assert run(tmp_path / "batch", "--seed", "5", "-n", "3").exit_code == 0
    batch = sorted((tmp_path / "batch").glob("*.png"))
    assert [read_png_parameters(p)["seed"] for p in batch] == ["5", "6", "7"]
    assert run(tmp_path / "alone", "--seed", "6").exit_code == 0
    pixels = [np.asarray(Image.open(p), dtype=np.int16) for p in [*batch, tmp_path / "alone" / "seed6_0000.png"]]
    assert np.abs(pixels[1] - pixels[3]).max() <= 2  # the same noise; a batch of 3 vs 1 differs only in rounding
    assert np.abs(pixels[0] - pixels[1]).max() > 10 and np.abs(pixels[2] - pixels[1]).max() > 10
    result = run(tmp_path / "last", "--seed", str(2**64 - 2), "-n", "3")
    assert result.exit_code == 1 and "the last image's seed" in " ".join(result.output.split())


def test_device_and_dtype_auto(monkeypatch, tiny_sd_dir, tmp_path):
    import torch

    from llm4gen.cli import common

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert common.resolve_device("auto") == "cuda" and common.resolve_device("cuda:1") == "cuda:1"
    assert common.resolve_dtype("auto", "cuda") == common.resolve_dtype("auto", "cuda:1") == torch.float16
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert common.resolve_device("auto") == "mps" and common.resolve_dtype("auto", "mps") == torch.float32
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert common.resolve_device("auto") == "cpu" and common.resolve_dtype("auto", "cpu") == torch.float32
    assert common.resolve_dtype("bf16", "cpu") == torch.bfloat16
    # generate and the app default to auto: with CUDA "available", they ask for cuda in float16
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    asked = []

    def fake_load(model, xl, device, trust_remote_code, dtype=None, sampling=None):
        asked.append((device, dtype))
        raise OSError("stop here")

    monkeypatch.setattr("llm4gen.cli.generate.load_pipeline", fake_load)
    result = runner.invoke(app, ["generate", "a red circle", "--model", tiny_sd_dir, "--out", str(tmp_path)])
    assert result.exit_code == 1 and asked == [("cuda", torch.float16)], result.output
    result = runner.invoke(app, ["generate", "a red circle", "--model", tiny_sd_dir, "--dtype", "fp64"])
    assert result.exit_code == 2 and "--dtype" in result.output


@pytest.mark.parametrize("name, notice", [
    ("transformers.utils.import_utils", "`CLIPImageProcessor` requires torchvision (not installed); falling back to "
                                        "`CLIPImageProcessorPil` for backward compatibility."),
    ("DeepSpeed", "Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to detect it."),
])
def test_library_notices_that_are_not_the_users_business_are_silenced(name, notice):
    import logging

    from llm4gen.utils import silence_irrelevant_notices

    logger = logging.getLogger(name)
    silence_irrelevant_notices()
    silence_irrelevant_notices()  # twice adds nothing
    assert sum(type(f).__name__ == "_DropNotices" for f in logger.filters) == 1
    kept = []

    class Keep(logging.Handler):
        def emit(self, record):
            kept.append(record.getMessage())

    handler = Keep()
    logger.addHandler(handler)
    try:
        logger.warning(notice)
        logger.warning("Token indices sequence length is longer than the specified maximum")  # the user's business
    finally:
        logger.removeHandler(handler)
    assert kept == ["Token indices sequence length is longer than the specified maximum"]


def test_the_command_line_says_nothing_about_torchvision(tmp_path, tiny_sd_dir):
    """A real `llm4gen generate` in a fresh process: transformers' torchvision notices and the loading bars are gone;
    the denoising progress bar stays."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
    done = subprocess.run([sys.executable, "-m", "llm4gen", "generate", "a red circle", "--model", tiny_sd_dir,
                           "--out", str(tmp_path), "--steps", "2", "--device", "cpu"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "torchvision" not in done.stderr and "Loading pipeline components" not in done.stderr
    assert "Loading weights" not in done.stderr and "2/2" in done.stderr


def test_the_bundled_model_says_what_it_knows_once(tmp_path, monkeypatch, tiny_sd_dir):
    """generate and demo on the bundled model: one line on its domain and an example prompt, from its folder."""
    import shutil

    from llm4gen.sampling import SamplingDefaults

    model = tmp_path / "default"
    shutil.copytree(tiny_sd_dir, model)
    SamplingDefaults(domain="64 px ShapesWorld: shapes.", example_prompt="a big red star").save(model)
    monkeypatch.setattr("llm4gen.cli.common.bundled_model_dir", lambda: model)
    for args in (["generate", "a photo of a ginger cat", "--out", str(tmp_path / "g")],
                 ["demo", "--out", str(tmp_path / "d")]):
        result = runner.invoke(app, [*args, "--steps", "1", "--device", "cpu"])
        assert result.exit_code == 0, result.output
        assert result.output.count("This model knows 64 px ShapesWorld: shapes.") == 1
        assert "Try: llm4gen generate 'a big red star'" in result.output
    result = runner.invoke(app, ["generate", "a cat", "--model", str(model), "--out", str(tmp_path / "m"),
                                 "--steps", "1", "--device", "cpu"])
    assert "This model knows" not in result.output  # a model the user named is theirs to know


def test_demo_prints_its_time(tmp_path, monkeypatch):
    import re

    monkeypatch.setattr("llm4gen.cli.common.bundled_model_dir", lambda: None)
    result = runner.invoke(app, ["demo", "--out", str(tmp_path), "--device", "cpu"])  # and the one default of steps
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    match = re.search(r"demo: 3 images of 25 steps in ([\d.]+) s \(([\d.]+) s each\) after ([\d.]+) s loading, "
                      r"([\d.]+) s in all, on cpu \((\d+) CPU threads\)", said)
    assert match, said
    run, each, load, total = (float(match.group(i)) for i in range(1, 5))
    # printed rounded: run and the totals to 0.1 s, each image to 0.01 s
    assert abs(run / 3 - each) <= 0.05 / 3 + 0.006 and abs(run + load - total) <= 0.11 and total > 0


def test_one_default_for_steps_and_the_models_own_settings_in_every_command(tiny_sd_dir, tmp_path, monkeypatch):
    """Without --steps, generate and the ShapesWorld benchmark sample 25 steps (the demo: test_demo_prints_its_time;
    the app's page: tests/test_app.py); with a model folder's llm4gen_sampling.json, its steps and guidance."""
    import json
    import shutil

    from llm4gen.cli.common import read_png_parameters
    from llm4gen.sampling import SamplingDefaults

    result = runner.invoke(app, ["generate", "a red circle", "--model", tiny_sd_dir, "--out", str(tmp_path / "g"),
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert read_png_parameters(tmp_path / "g" / "seed0_0000.png")["steps"] == "25"
    model = tmp_path / "model"
    shutil.copytree(tiny_sd_dir, model)
    shutil.copytree(model / "unet", model / "base_unet")

    def bench(out):
        result = runner.invoke(app, ["bench", "quality", "--model", str(model), "--out", str(tmp_path / out),
                                     "--prompts", "1", "--batch-size", "1", "--device", "cpu"])
        assert result.exit_code == 0, result.output
        return json.loads((tmp_path / out / "results.json").read_text())["config"]

    config = bench("b")
    assert (config["num_inference_steps"], config["guidance_scale"]) == (25, 7.5)
    SamplingDefaults(guidance_scale=3.0, num_inference_steps=3).save(model)
    config = bench("c")
    assert (config["num_inference_steps"], config["guidance_scale"]) == (3, 3.0)


@pytest.mark.parametrize("command", [
    ["data", "dense-prompts", "{tmp}/p.jsonl", "--model", "{tmp}/llm"],
    ["data", "recaption", "{tmp}/images", "--out", "{tmp}/out", "--captioner", "{tmp}/captioner"],
    ["eval", "score", "{tmp}/images"],
    ["eval", "compbench", "{tmp}/root", "--prompts-dir", "{tmp}/prompts"],
    ["eval", "dpg", "{tmp}/images", "--questions", "{tmp}/q.csv"],
    ["bench", "quality", "--model", "{tmp}/model", "--base-unet", "{tmp}/base", "--out", "{tmp}/bench"],
    ["demo", "--out", "{tmp}/demo"],
    ["app"],
])
def test_every_command_with_a_device_resolves_auto_and_names_a_bad_one(command, tmp_path, monkeypatch):
    """Every command that takes --device defaults to auto (cuda, then mps, then cpu) and refuses a device torch does
    not know in one line, before any model or data loads (the paths above do not exist: their errors would come
    later)."""
    import typer

    args = [a.replace("{tmp}", str(tmp_path)) for a in command]
    monkeypatch.setattr("llm4gen.shapesworld.arms.base_schedule_differences", lambda *a: {})
    result = runner.invoke(app, [*args, "--device", "foo"])
    said = " ".join(result.output.split())
    assert result.exit_code != 0 and "'foo' is not a torch device" in said, said
    assert "Traceback" not in result.output
    # the default is auto, resolved by the same rule as generate's
    cmd = typer.main.get_command(app).commands[command[0]]
    if hasattr(cmd, "commands"):  # a command group: eval, data, bench
        cmd = cmd.commands[command[1]]
    assert next(p for p in cmd.params if p.name == "device").default == "auto"
