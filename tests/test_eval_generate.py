"""The generation runner and prompt files: seeds, names, batching, resuming, manifests, any diffusers pipeline."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llm4gen.eval.generate import (
    GenerationSettings,
    generate_images,
    image_filename,
    image_seed,
    is_valid_png,
    plan_generation,
    read_manifest,
)
from llm4gen.eval.prompts import read_prompt_records, read_prompts

PROMPTS = ["a red circle on grey", "a blue square and a small green star"]


# ---------------------------------------------------------------------------------------------------- prompt files
def test_read_prompts_from_every_format(tmp_path):
    (tmp_path / "p.txt").write_text("  first prompt \n\nsecond prompt\n")
    assert read_prompts(tmp_path / "p.txt") == ["first prompt", "second prompt"]
    (tmp_path / "l.json").write_text(json.dumps(["a", "b"]))
    assert read_prompts(tmp_path / "l.json") == ["a", "b"]
    (tmp_path / "o.json").write_text(json.dumps([{"id": 1, "text": "x", "category": "color"}, {"id": 2, "text": "y"}]))
    records = read_prompt_records(tmp_path / "o.json")
    assert [r["prompt"] for r in records] == ["x", "y"]
    assert records[0]["meta"] == {"id": 1, "category": "color"}
    (tmp_path / "w.json").write_text(json.dumps({"prompts": [{"caption": "c"}]}))
    assert read_prompts(tmp_path / "w.json") == ["c"]
    (tmp_path / "f.json").write_text(json.dumps([{"short": "s", "long": "a long one"}]))
    assert read_prompts(tmp_path / "f.json", column="long") == ["a long one"]
    (tmp_path / "p.jsonl").write_text('{"prompt": "j1"}\n\n"j2"\n')
    assert read_prompts(tmp_path / "p.jsonl") == ["j1", "j2"]
    (tmp_path / "p.csv").write_text('id,description\n1,"a cat, on a mat"\n2,a dog\n')
    assert read_prompts(tmp_path / "p.csv", column="description") == ["a cat, on a mat", "a dog"]
    assert read_prompt_records(tmp_path / "p.csv", column="description")[0]["meta"] == {"id": "1"}
    (tmp_path / "p.tsv").write_text("prompt\tn\nt1\t1\n")
    assert read_prompts(tmp_path / "p.tsv") == ["t1"]


def test_read_prompts_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_prompts(tmp_path / "none.txt")
    (tmp_path / "e.txt").write_text("\n \n")
    with pytest.raises(ValueError, match="no prompts"):
        read_prompts(tmp_path / "e.txt")
    (tmp_path / "p.csv").write_text("id,description\n1,a\n")
    with pytest.raises(ValueError, match=r"which field.*--column"):
        read_prompts(tmp_path / "p.csv")
    with pytest.raises(ValueError, match=r"no 'text' field/column; it has \['id', 'description'\]"):
        read_prompts(tmp_path / "p.csv", column="text")
    (tmp_path / "n.json").write_text(json.dumps([{"prompt": 3}]))
    with pytest.raises(ValueError, match="item 0: the prompt is a int"):
        read_prompts(tmp_path / "n.json")
    (tmp_path / "bad.json").write_text("[1,")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_prompts(tmp_path / "bad.json")
    (tmp_path / "p.txt").write_text("x\n")
    with pytest.raises(ValueError, match="plain text file"):
        read_prompts(tmp_path / "p.txt", column="prompt")


# ------------------------------------------------------------------------------------------------ seeds and names
def test_byte_order_marks_are_dropped_wherever_prompts_or_questions_are_read(tmp_path):
    from llm4gen.data.dense_prompts import read_examples
    from llm4gen.eval.compbench import read_prompt_file
    from llm4gen.eval.dpg import read_questions
    from llm4gen.utils import read_jsonl

    bom = "\ufeff"
    files = {
        "p.txt": "a red apple\r\na green leaf\n",
        "p.csv": "id,prompt\n1,a red apple\n2,a green leaf\n",
        "p.tsv": "prompt\tid\na red apple\t1\na green leaf\t2\n",
        "p.json": json.dumps(["a red apple", "a green leaf"]),
        "p.jsonl": '{"prompt": "a red apple"}\n"a green leaf"\n',
    }
    for name, text in files.items():
        (tmp_path / name).write_text(bom + text, encoding="utf-8")  # as Excel and Notepad save UTF-8
        assert read_prompts(tmp_path / name) == ["a red apple", "a green leaf"], name
    assert read_prompt_records(tmp_path / "p.csv")[0]["meta"] == {"id": "1"}  # the first column keeps its name
    assert image_filename(read_prompts(tmp_path / "p.txt")[0], 0, 0, 1, "compbench") == "a red apple_000000.png"
    (tmp_path / "color_val.txt").write_text(bom + "a red apple\n", encoding="utf-8")
    assert read_prompt_file(tmp_path, "color") == ["a red apple"]
    (tmp_path / "q.csv").write_text(bom + "item_id,text,proposition_id,dependency,tuple,question_natural_language\n"
                                    "p1,a red scene,1,0,entity - whole (scene),is it red?\n", encoding="utf-8")
    assert [(i.item_id, i.prompt) for i in read_questions(tmp_path / "q.csv")] == [("p1", "a red scene")]
    assert read_jsonl(tmp_path / "p.jsonl", objects_only=False)[0] == (1, {"prompt": "a red apple"})
    (tmp_path / "ex.txt").write_text(bom + "first example\n\nsecond\n", encoding="utf-8")
    assert read_examples(tmp_path / "ex.txt") == ["first example", "second"]
    # a file in another encoding: the error names the file
    (tmp_path / "latin.txt").write_bytes("un caf\xe9 rouge\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin\.txt is not UTF-8 text"):
        read_prompts(tmp_path / "latin.txt")
    (tmp_path / "latin.csv").write_bytes("item_id,question_natural_language\nx,caf\xe9?\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin\.csv is not UTF-8 text"):
        read_questions(tmp_path / "latin.csv")


def test_image_seeds_are_deterministic_distinct_and_documented():
    seeds = {image_seed(0, p, i) for p in range(50) for i in range(20)}
    assert len(seeds) == 1000
    assert image_seed(0, 3, 1) == image_seed(0, 3, 1)
    assert image_seed(1, 3, 1) != image_seed(0, 3, 1)
    assert all(0 <= s < 2**63 for s in seeds)
    state = np.random.SeedSequence([7, 2, 5]).generate_state(2, dtype=np.uint32)
    assert image_seed(7, 2, 5) == ((int(state[0]) << 32) | int(state[1])) & (2**63 - 1)


def test_file_names():
    assert image_filename("anything", 12, 3, 4, "llm4gen") == "00012_03.png"
    assert image_filename("a cat/dog\non a mat", 2, 1, 4, "compbench") == "a cat-dog on a mat_000009.png"
    long_a, long_b = "é" * 300 + " a", "é" * 300 + " b"
    name_a, name_b = (image_filename(p, 0, 0, 1, "compbench") for p in (long_a, long_b))
    assert len(name_a.encode()) <= 255 and name_a != name_b
    assert name_a.endswith("_000000.png") and "~" in name_a
    name_a.encode("utf-8").decode("utf-8")  # no character cut in half
    with pytest.raises(ValueError, match="naming"):
        image_filename("x", 0, 0, 1, "other")
    items = plan_generation(["p0", "p1", "p2"], GenerationSettings(num_images=2, limit=2, seed=5))
    assert [(it.prompt_index, it.image_index, it.file) for it in items] == [
        (0, 0, "00000_00.png"), (0, 1, "00000_01.png"), (1, 0, "00001_00.png"), (1, 1, "00001_01.png")]
    assert items[3].seed == image_seed(5, 1, 1)


def test_compbench_names_keep_duplicate_prompts_apart():
    items = plan_generation(["same", "same"], GenerationSettings(naming="compbench", num_images=2))
    assert [it.file for it in items] == ["same_000000.png", "same_000001.png", "same_000002.png", "same_000003.png"]
    assert len({it.seed for it in items}) == 4


def test_is_valid_png(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    Image.new("RGB", (4, 4)).save(tmp_path / "j.png", format="JPEG")
    assert is_valid_png(tmp_path / "ok.png")
    assert not is_valid_png(tmp_path / "bad.png")
    assert not is_valid_png(tmp_path / "j.png")
    assert not is_valid_png(tmp_path / "none.png")


# ------------------------------------------------------------------------------------------------------- the runner
@pytest.fixture(scope="module")
def plain_sd_dir(tmp_path_factory, tiny_sd_dir) -> str:
    """A stock diffusers StableDiffusionPipeline folder (no LLM4GEN parts) with the tiny SD's weights."""
    from diffusers import StableDiffusionPipeline

    from llm4gen import LLM4GenPipeline

    tiny = LLM4GenPipeline.from_pretrained(tiny_sd_dir)
    pipe = StableDiffusionPipeline(vae=tiny.vae, text_encoder=tiny.text_encoder, tokenizer=tiny.tokenizer,
                                   unet=tiny.unet, scheduler=tiny.scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    out = tmp_path_factory.mktemp("plain-sd") / "pipeline"
    pipe.save_pretrained(out)
    return str(out)


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def test_generate_with_a_plain_diffusers_pipeline_batches_and_resumes(plain_sd_dir, tmp_path):
    settings = GenerationSettings(num_images=2, seed=3, steps=2, guidance=2.0, batch_size=3)
    out = tmp_path / "run"
    result = generate_images(plain_sd_dir, PROMPTS, out, settings, device="cpu", progress=False)
    assert (result.planned, result.skipped, result.generated) == (4, 0, 4)
    manifest = read_manifest(out)
    assert [r["file"] for r in manifest] == ["00000_00.png", "00000_01.png", "00001_00.png", "00001_01.png"]
    assert manifest[3]["prompt"] == PROMPTS[1] and manifest[3]["seed"] == image_seed(3, 1, 1)
    assert manifest[0]["model"] == plain_sd_dir and manifest[0]["settings"]["steps"] == 2
    assert all(is_valid_png(out / r["file"]) for r in manifest)
    assert not [p for p in os.listdir(out) if p.startswith(".")]  # no temp files left
    first = {r["file"]: _pixels(out / r["file"]) for r in manifest}
    assert not np.array_equal(first["00000_00.png"], first["00000_01.png"])  # different seeds, different images

    # each image depends on its own seed only: batch size 1 gives the same pixels (up to batched-conv rounding)
    single = tmp_path / "single"
    generate_images(plain_sd_dir, PROMPTS, single, GenerationSettings(num_images=2, seed=3, steps=2, guidance=2.0,
                                                                       batch_size=1), device="cpu", progress=False)
    for name, pixels in first.items():
        assert np.abs(_pixels(single / name) - pixels).max() <= 2, name

    # resume: a missing and a corrupt image are regenerated, the rest is left alone
    os.remove(out / "00000_01.png")
    (out / "00001_00.png").write_bytes(b"not a png")
    untouched = os.stat(out / "00000_00.png").st_mtime_ns
    again = generate_images(plain_sd_dir, PROMPTS, out, settings, device="cpu", progress=False)
    assert (again.skipped, again.generated) == (2, 2)
    assert os.stat(out / "00000_00.png").st_mtime_ns == untouched
    # the two redone images went through in a batch of 2, not 3: the same pixels up to batched-conv rounding
    assert np.abs(_pixels(out / "00000_01.png") - first["00000_01.png"]).max() <= 2
    assert len(read_manifest(out)) == 4
    assert generate_images(plain_sd_dir, PROMPTS, out, settings, device="cpu", progress=False).generated == 0

    # other settings or prompts are refused instead of mixed in
    with pytest.raises(ValueError, match="steps: 2 -> 3"):
        generate_images(plain_sd_dir, PROMPTS, out, GenerationSettings(num_images=2, seed=3, steps=3, guidance=2.0),
                        device="cpu", progress=False)
    with pytest.raises(ValueError, match="other prompts"):
        generate_images(plain_sd_dir, ["another prompt", PROMPTS[1]], out, settings, device="cpu", progress=False)


def test_cli_generate_llm4gen_pipeline_compbench_names_then_score(tiny_sd_dir, tmp_path):
    from typer.testing import CliRunner

    from llm4gen.cli import app
    from test_eval_metrics import make_tiny_clip

    prompts_file = tmp_path / "prompts.csv"
    prompts_file.write_text("category,description\ncolor,a red apple/pear\ncolor,a green leaf\nshape,a round dog\n")
    out = tmp_path / "samples"
    args = ["eval", "generate", str(prompts_file), "--model", tiny_sd_dir, "--out", str(out), "--column",
            "description", "--num-images", "2", "--steps", "2", "--naming", "compbench", "--limit", "2",
            "--batch-size", "4", "--device", "cpu", "--negative", "blurry"]
    runner = CliRunner()
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == ["a green leaf_000002.png", "a green leaf_000003.png", "a red apple-pear_000000.png",
                     "a red apple-pear_000001.png"]
    manifest = read_manifest(out)
    assert manifest[0]["prompt"] == "a red apple/pear" and manifest[0]["meta"] == {"category": "color"}
    assert manifest[0]["settings"]["negative_prompt"] == "blurry"
    assert "4" in result.output  # the table: 4 planned / generated
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "manifest" in again.output

    clip = make_tiny_clip(tmp_path / "clip")
    scored = runner.invoke(app, ["eval", "score", str(out), "--clip-model", clip, "--limit", "3"])
    assert scored.exit_code == 0, scored.output
    report = json.loads((tmp_path / "samples.scores" / "scores.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == names  # samples/ still holds the images only
    assert report["num_images"] == 3 and 0 <= report["metrics"]["clip_score"]["mean"] <= 100

    bad = runner.invoke(app, ["eval", "generate", str(prompts_file), "--model", tiny_sd_dir, "--out",
                              str(tmp_path / "x"), "--column", "nope"])
    assert bad.exit_code == 1 and "no 'nope' field/column" in " ".join(bad.output.split())
    bad = runner.invoke(app, ["eval", "generate", str(prompts_file), "--model", str(tmp_path / "no-model"), "--out",
                              str(tmp_path / "x"), "--column", "description"])
    assert bad.exit_code == 1 and "does not exist" in " ".join(bad.output.split())
