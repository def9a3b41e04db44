"""T2I-CompBench runner, the VQA scorers and the detector wrapper: rules checked by hand, plumbing end to end on tiny
models built from configs."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

from llm4gen.eval import compbench as cb
from llm4gen.scoring.detect import Detection, HFObjectDetector
from llm4gen.scoring.vqa import BlipVQAScorer, GenerativeVQAScorer, load_vqa_scorer, yes_probability
from tiny_eval_models import make_tiny_blip_captioner, make_tiny_blip_vqa, make_tiny_clip, make_tiny_detr


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("compbench-models")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {"vqa": make_tiny_blip_vqa(root / "vqa"), "vqa_noenc": make_tiny_blip_vqa(root / "vqa2", with_enc=False),
                "cap": make_tiny_blip_captioner(root / "cap"), "detr": make_tiny_detr(root / "detr"),
                "clip": make_tiny_clip(root / "clip")}


IMAGES = [Image.new("RGB", (40, 30), (255, 0, 0)), Image.new("RGB", (30, 30), (0, 200, 0))]


class TableVQA:
    """A test double: P(yes) looked up per question."""

    name = "table"

    def __init__(self, table: dict[str, float], default: float = 1.0) -> None:
        self.table, self.default, self.calls = table, default, []

    def score(self, images, questions):
        self.calls.append(list(questions))
        return [self.table.get(q, self.default) for q in questions]


class FixedDetector:
    name = "fixed"

    def __init__(self, detections: list[Detection]) -> None:
        self.detections = detections

    def detect(self, images):
        return [list(self.detections) for _ in images]


# ------------------------------------------------------------------------------------------------------- VQA
def test_yes_probability_renormalises_over_the_two_words():
    logits = torch.log(torch.tensor([[0.2, 0.6, 0.2], [0.01, 0.01, 0.98]]))
    p = yes_probability(logits, yes_ids=[0], no_ids=[1])
    assert p.tolist() == pytest.approx([0.25, 0.5])
    # several spellings of a word add up
    assert yes_probability(logits, [0, 2], [1]).tolist()[0] == pytest.approx(0.4 / 1.0)


def test_blip_p_yes_matches_transformers_generate(models):
    scorer = load_vqa_scorer(models["vqa"])
    assert isinstance(scorer, BlipVQAScorer) and scorer.enc_token_id is not None
    cls_scorer = BlipVQAScorer.from_pretrained(models["vqa"], question_start="cls")
    qs = ["a red apple?", "a green leaf and a dog?"]
    got = cls_scorer.score(IMAGES, qs)
    # independent path: transformers' own generate (which starts the question with [CLS]) and its first-step scores
    proc, model = cls_scorer.processor, cls_scorer.model
    for image, q, value in zip(IMAGES, qs, got):
        inputs = proc(images=image, text=q, return_tensors="pt")
        gen = model.generate(**inputs, max_new_tokens=1, output_scores=True, return_dict_in_generate=True)
        probs = torch.softmax(gen.scores[0][0].float(), -1)
        yes, no = probs[cls_scorer.yes_ids[0]], probs[cls_scorer.no_ids[0]]
        assert value == pytest.approx(float(yes / (yes + no)), abs=1e-5)
    # batching (questions of different lengths) changes nothing
    cls_scorer.batch_size = 1
    assert cls_scorer.score(IMAGES, qs) == pytest.approx(got, abs=1e-6)
    # the original's [ENC] start token changes the encoding
    assert scorer.score(IMAGES, qs) != pytest.approx(got, abs=1e-6)
    assert BlipVQAScorer.from_pretrained(models["vqa_noenc"]).enc_token_id is None
    with pytest.raises(ValueError, match="ENC"):
        BlipVQAScorer.from_pretrained(models["vqa_noenc"], question_start="enc")


def test_blip_scorer_follows_the_decoder(models):
    scorer = BlipVQAScorer.from_pretrained(models["vqa"])
    bias = scorer.model.text_decoder.cls.predictions.bias
    with torch.no_grad():
        bias[scorer.yes_ids[0]] += 40
    assert scorer.score(IMAGES, ["a dog?", "a cat?"]) == pytest.approx([1.0, 1.0], abs=1e-4)
    exact = BlipVQAScorer(scorer.model, scorer.processor, mode="exact")
    assert exact.score(IMAGES, ["a dog?", "a cat?"]) == [1.0, 1.0]
    with torch.no_grad():
        bias[scorer.no_ids[0]] += 80
    assert scorer.score(IMAGES, ["a dog?", "a cat?"]) == pytest.approx([0.0, 0.0], abs=1e-4)
    assert exact.score(IMAGES, ["a dog?", "a cat?"]) == [0.0, 0.0]
    with pytest.raises(ValueError, match="questions"):
        scorer.score(IMAGES, ["one question"])


def test_generative_scorer_with_an_image_to_text_model(models):
    scorer = load_vqa_scorer(models["cap"])
    assert isinstance(scorer, GenerativeVQAScorer)
    p = scorer.score(IMAGES, ["is there a dog?", "a red apple?"])
    assert all(0.0 < v < 1.0 for v in p)
    bias = scorer.model.text_decoder.cls.predictions.bias
    with torch.no_grad():
        bias[scorer.yes_ids[0]] += 40
    assert scorer.score(IMAGES, ["is there a dog?", "a red apple?"]) == pytest.approx([1.0, 1.0], abs=1e-4)
    exact = GenerativeVQAScorer(scorer.model, scorer.processor, mode="exact")
    assert exact.score(IMAGES, ["is there a dog?", "a red apple?"]) == [1.0, 1.0]
    with pytest.raises(ValueError, match="question"):
        GenerativeVQAScorer(scorer.model, scorer.processor, template="no placeholder")


# -------------------------------------------------------------------------------------------------- detector
def test_detector_matches_detr_post_processing_by_hand(models):
    det = HFObjectDetector.from_pretrained(models["detr"], threshold=0.0)
    image = Image.new("RGB", (48, 40), (10, 120, 200))
    found = det.detect([image])[0]
    inputs = det.processor(images=[image], return_tensors="pt")
    with torch.no_grad():
        out = det.model(**inputs)
    probs = torch.softmax(out.logits[0], -1)[:, :-1]  # the last class is "no object"
    scores, labels = probs.max(-1)
    cx, cy, w, h = out.pred_boxes[0].unbind(-1)
    boxes = torch.stack([(cx - w / 2) * 48, (cy - h / 2) * 40, (cx + w / 2) * 48, (cy + h / 2) * 40], -1)
    order = scores.argsort(descending=True)
    assert len(found) == det.model.config.num_queries
    for d, k in zip(found, order.tolist()):
        assert d.score == pytest.approx(float(scores[k]), abs=1e-5)
        assert d.label == det.model.config.id2label[int(labels[k])]
        assert d.box == pytest.approx(boxes[k].tolist(), abs=1e-3)
    strict = HFObjectDetector(det.model, det.processor, threshold=float(scores.max()) + 1e-3)
    assert strict.detect([image]) == [[]]


# ------------------------------------------------------------------------------------------------- language
@pytest.mark.parametrize("parser", ["spacy", "rule"])
def test_noun_phrases_and_questions(parser):
    assert cb.noun_phrases("a red apple and a green leaf", parser) == ["a red apple", "a green leaf"]
    assert cb.attribute_questions("a round bagel and a rectangular pizza", parser) == ["a round bagel?",
                                                                                         "a rectangular pizza?"]


def test_rule_noun_phrases_cut_verbs():
    assert cb.noun_phrases("The fluffy cat was lying on the soft blanket.", "rule") == ["The fluffy cat",
                                                                                          "the soft blanket"]


@pytest.mark.parametrize("parser", ["spacy", "rule"])
def test_spatial_objects_and_relation(parser):
    assert cb.spatial_objects("a giraffe next to a lamp", parser=parser) == ("giraffe", "lamp")
    assert cb.find_relation("a girl on the top of a frog") == "on the top of"
    assert cb.find_relation("The red hat was on top of the brown coat rack.") == "on the top of"
    assert cb.find_relation("a red apple") is None
    assert cb.spatial_objects("The black chair was on the left of the white table.", True, parser) == ("chair",
                                                                                                        "table")


# ------------------------------------------------------------------------------------------------- geometry
def test_determine_position_by_hand():
    a, far_right = (0, 0, 100, 100), (300, 0, 400, 100)
    assert cb.determine_position("on the left of", a, far_right) == 1.0
    assert cb.determine_position("on the right of", a, far_right) == 0.0
    assert cb.determine_position("on the right of", far_right, a) == 1.0
    # overlapping: IoU = 40*100 / (2*100*100 - 4000) = 0.25 -> 0.1 / 0.25
    assert cb.determine_position("on the left of", a, (60, 0, 160, 100)) == pytest.approx(0.4)
    below = (0, 300, 100, 400)  # y grows downwards: box2 below box1 -> box1 is on the top
    assert cb.determine_position("on the top of", a, below) == 1.0
    assert cb.determine_position("on the bottom of", a, below) == 0.0
    assert cb.determine_position("on the bottom of", below, a) == 1.0
    # near: centres 400 and 300 apart, both over 150 -> 150 / 400
    assert cb.determine_position("near", a, (400, 300, 500, 400)) == pytest.approx(0.375)
    assert cb.determine_position("next to", a, (400, 50, 500, 150)) == 1.0  # dy = 50 < 150
    assert cb.determine_position(None, a, far_right) == 0.0
    # a vertical offset that dominates is not "left of"
    assert cb.determine_position("on the left of", a, (120, 400, 220, 500)) == 0.0


@pytest.mark.parametrize("parser", ["spacy", "rule"])
def test_spatial_score_by_hand(parser):
    dog = Detection("dog", 0.9, (0, 0, 100, 100))
    cat = Detection("cat", 0.8, (300, 0, 400, 100))
    prompt = "a dog on the left of a cat"
    assert cb.spatial_score([cat, dog], prompt, parser=parser) == pytest.approx(0.25 * 0.9 + 0.25 * 0.8 + 0.5)
    assert cb.spatial_score([dog], prompt, parser=parser) == 0.0  # 0.225 < 0.5 -> 0
    wrong = "a dog on the right of a cat"
    assert cb.spatial_score([dog, cat], wrong, parser=parser) == 0.0  # 0.425 < 0.5
    person = Detection("person", 1.0, (0, 0, 100, 100))
    table = Detection("dining table", 1.0, (300, 0, 400, 100))
    assert cb.spatial_score([person, table], "a girl on the left of a table", parser=parser) == pytest.approx(1.0)
    # the most confident detection of a label is the one used
    weak_dog = Detection("dog", 0.6, (350, 0, 450, 100))
    assert cb.spatial_score([dog, cat, weak_dog], prompt, parser=parser) == pytest.approx(0.925)


def test_attribute_scores_multiply_noun_phrase_answers():
    vqa = TableVQA({"a red apple?": 0.8, "a green leaf?": 0.5, "a blue dog?": 0.3})
    got = cb.attribute_scores(vqa, IMAGES, ["a red apple and a green leaf", "a blue dog"], parser="rule")
    assert got == pytest.approx([0.4, 0.3])
    assert vqa.calls == [["a red apple?", "a green leaf?", "a blue dog?"]]  # one batched call


def test_three_in_one_mix():
    prompts = ["The cat is on the left of the dog.", "The cat chased the dog.", "The cat sat and ran."]
    got = cb.three_in_one(prompts, [0.6, 0.6, 0.6], [0.2, 0.2, 0.2], [0.9, 0.9, 0.9],
                          spatial_prompts={"the cat is on the left of the dog."}, action_prompts={"The cat chased "
                                                                                                "the dog."})
    assert got == pytest.approx([0.4, 0.75, (0.6 + 0.2 + 0.9) / 3])


# ------------------------------------------------------------------------------------------------- runner
def _write_benchmark(root: Path, prompts_dir: Path, files: dict[str, list[str]], per_prompt: int = 2) -> None:
    prompts_dir.mkdir(parents=True, exist_ok=True)
    for name, prompts in files.items():
        (prompts_dir / f"{name}.txt").write_text("\n".join(prompts) + "\n")
        category = name.removesuffix("_val")
        if name.endswith("_val"):
            samples = root / category / "samples"
            samples.mkdir(parents=True, exist_ok=True)
            k = 0
            for p in prompts:
                for j in range(per_prompt):
                    Image.new("RGB", (32, 32), (40 * j, 100, 200)).save(samples / f"{p}_{k:06d}.png")
                    k += 1


def _answers(path: str) -> list[tuple[int, float]]:
    return [(r["question_id"], float(r["answer"])) for r in json.loads(Path(path).read_text())]


def test_run_compbench_with_known_scorers(tmp_path):
    root, prompts_dir = tmp_path / "out", tmp_path / "dataset"
    _write_benchmark(root, prompts_dir, {
        "color_val": ["a red apple and a green leaf", "a blue dog"],
        "spatial_val": ["a dog on the left of a cat", "a cat on the left of a dog"],
        "non_spatial_val": ["a dog chasing a cat"],
        "complex_val": ["The dog was on the left of the cat.", "The dog chased the cat."],
        "complex_val_spatial": ["The dog was on the left of the cat."],
        "complex_val_action": ["The dog chased the cat."],
    })
    vqa = TableVQA({"a red apple?": 0.8, "a green leaf?": 0.5, "a blue dog?": 0.3}, default=0.5)
    det = FixedDetector([Detection("dog", 1.0, (0, 0, 10, 10)), Detection("cat", 1.0, (200, 0, 210, 10))])
    scorers = cb.CompBenchScorers(vqa=vqa, detector=det, clip=lambda images, texts: [0.3] * len(images),
                                  names={"vqa": "table"})
    summary = cb.run_compbench(root, prompts_dir, scorers, categories=["color", "spatial", "non_spatial", "complex"],
                               parser="rule", progress=False)
    cats = summary["categories"]
    assert _answers(cats["color"]["result_files"]["attribute"]) == [(0, 0.4), (1, 0.4), (2, 0.3), (3, 0.3)]
    assert cats["color"]["score"] == pytest.approx(0.35)
    text = Path(root / "color" / "annotation_blip" / "blip_vqa_score.txt").read_text()
    assert text.startswith("BLIP-VQA score:") and float(text.split(":")[1]) == pytest.approx(0.35)
    # spatial: the dog is left of the cat -> 0.25 + 0.25 + 1 / 2; the reverse prompt: position 0 -> 0.5
    spatial = _answers(cats["spatial"]["result_files"]["spatial"])
    assert [i for i, _ in spatial] == [0, 1, 2, 3]
    assert [v for _, v in spatial] == pytest.approx([1.0, 1.0, 0.5, 0.5])
    assert (root / "spatial" / "labels" / "annotation_obj_detection_2d" / "mapping.json").is_file()
    assert cats["non_spatial"]["score"] == pytest.approx(0.3)
    # complex, spatial prompt: attribute 0.5 * 0.5 (two noun phrases), spatial 1.0 -> 0.625; action prompt: the rule
    # parser sees one phrase ("The dog chased the cat": no known verb to cut at) -> (0.5 + 0.3) / 2
    final = _answers(cats["complex"]["result_files"]["3_in_1"])
    assert [v for _, v in final] == pytest.approx([0.625, 0.625, 0.4, 0.4])
    saved = json.loads((root / "compbench_results.json").read_text())
    assert saved["categories"]["complex"]["num_images"] == 4 and saved["deviations"]
    # --limit keeps the first prompt of each file
    small = cb.run_compbench(root, prompts_dir, scorers, categories=["color"], limit=1, parser="rule", progress=False)
    assert small["categories"]["color"]["num_images"] == 2
    assert small["categories"]["color"]["score"] == pytest.approx(0.4)


def test_run_compbench_errors(tmp_path):
    root, prompts_dir = tmp_path / "out", tmp_path / "dataset"
    _write_benchmark(root, prompts_dir, {"color_val": ["a red apple"]})
    with pytest.raises(ValueError, match="Unknown categories"):
        cb.run_compbench(root, prompts_dir, cb.CompBenchScorers(), categories=["colour"])
    with pytest.raises(FileNotFoundError, match="shape_val.txt|samples"):
        cb.run_compbench(root, prompts_dir, cb.CompBenchScorers(), categories=["shape"])
    with pytest.raises(ValueError, match="vqa model"):
        cb.run_compbench(root, prompts_dir, cb.CompBenchScorers(), categories=["color"], progress=False)
    Image.new("RGB", (8, 8)).save(root / "color" / "samples" / "badname.png")
    with pytest.raises(ValueError, match="not named"):
        cb.sample_images(root / "color" / "samples")


def test_run_compbench_end_to_end_on_tiny_models(tmp_path, models):
    from llm4gen.scoring.metrics import ClipScorer

    root, prompts_dir = tmp_path / "out", tmp_path / "dataset"
    _write_benchmark(root, prompts_dir, {"color_val": ["a red apple and a green leaf"],
                                         "spatial_val": ["a dog on the left of a cat"],
                                         "non_spatial_val": ["a dog chasing a cat"]})
    clip = ClipScorer(models["clip"])
    scorers = cb.CompBenchScorers(factories={"vqa": lambda: load_vqa_scorer(models["vqa"]),
                                             "detector": lambda: HFObjectDetector.from_pretrained(models["detr"],
                                                                                                  threshold=0.0),
                                             "clip": lambda: clip})
    summary = cb.run_compbench(root, prompts_dir, scorers, categories=["color", "spatial", "non_spatial"],
                               progress=False)
    color = _answers(summary["categories"]["color"]["result_files"]["attribute"])
    assert [i for i, _ in color] == [0, 1] and all(0 < v < 1 for _, v in color)
    # the product of the two noun-phrase answers of the real scorer
    vqa = scorers.vqa
    image = Image.open(root / "color" / "samples" / "a red apple and a green leaf_000000.png").convert("RGB")
    p = vqa.score([image, image], ["a red apple?", "a green leaf?"])
    assert color[0][1] == pytest.approx(p[0] * p[1], abs=1e-4)
    spatial = _answers(summary["categories"]["spatial"]["result_files"]["spatial"])
    assert all(v == 0.0 or v >= 0.5 for _, v in spatial)
    # non-spatial: the raw cosine, checked through CLIPModel's logits (cos * exp(logit_scale))
    nonsp = _answers(summary["categories"]["non_spatial"]["result_files"]["clip"])
    image = Image.open(root / "non_spatial" / "samples" / "a dog chasing a cat_000000.png").convert("RGB")
    enc = clip.tokenizer(["a dog chasing a cat"], padding="max_length", max_length=77, truncation=True,
                         return_tensors="pt")
    pix = clip.image_processor(images=[image], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = clip.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], pixel_values=pix)
        cos = float(out.logits_per_image[0, 0] / clip.model.logit_scale.exp())
    assert nonsp[0][1] == pytest.approx(cos, abs=1e-4)


def test_cli_compbench(tmp_path, models):
    from typer.testing import CliRunner

    from llm4gen.cli import app

    root, prompts_dir = tmp_path / "out", tmp_path / "dataset"
    _write_benchmark(root, prompts_dir, {"color_val": ["a red apple", "a blue dog"],
                                         "spatial_val": ["a dog on the left of a cat"]}, per_prompt=1)
    args = ["eval", "compbench", str(root), "--prompts-dir", str(prompts_dir), "--categories", "color,spatial",
            "--vqa-model", models["vqa"], "--detector", models["detr"], "--detector-threshold", "0.0",
            "--parser", "rule", "--limit", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((root / "compbench_results.json").read_text())
    assert summary["categories"]["color"]["num_images"] == 1 and summary["scorers"]["vqa"] == models["vqa"]
    assert (root / "compbench.png").is_file() and "T2I-CompBench" in result.output
    bad = CliRunner().invoke(app, ["eval", "compbench", str(root), "--prompts-dir", str(tmp_path / "nope"),
                                   "--categories", "color"])
    assert bad.exit_code == 1 and "examples/dataset" in bad.output
