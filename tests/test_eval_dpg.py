"""DPG-Bench-style runner: the dependency rule and averages by hand, question files, grids, a tiny BLIP end to end."""

from __future__ import annotations

import json
import warnings

import pytest
from PIL import Image

from llm4gen.eval import dpg
from llm4gen.eval.dpg import DenseItem, Question
from llm4gen.scoring.vqa import load_vqa_scorer
from tiny_eval_models import make_tiny_blip_vqa

RED, GREEN = (255, 0, 0), (0, 255, 0)


class ColourVQA:
    """A test double: says yes (P = 0.9) to a question naming the image's colour, no (P = 0.1) otherwise."""

    name = "colour"

    def score(self, images, questions):
        out = []
        for im, q in zip(images, questions):
            colour = {RED: "red", GREEN: "green"}.get(im.getpixel((0, 0)), "other")
            out.append(0.9 if colour in q else 0.1)
        return out


def _q(i, text, dep=(0,), cat="entity - whole"):
    return Question(i, text, list(dep), cat)


def test_apply_dependencies_propagates_in_order():
    qs = [_q(1, "a"), _q(2, "b", [1]), _q(3, "c", [2]), _q(4, "d", [1, 3]), _q(5, "e")]
    got = dpg.apply_dependencies({1: 1.0, 2: 0.0, 3: 1.0, 4: 1.0, 5: 1.0}, qs)
    assert got == {1: 1.0, 2: 0.0, 3: 0.0, 4: 0.0, 5: 1.0}  # 3 loses its parent 2, then 4 loses 3
    assert dpg.apply_dependencies({1: 0.0, 2: 1.0, 3: 1.0, 4: 1.0, 5: 0.0}, qs) == {1: 0.0, 2: 0.0, 3: 0.0, 4: 0.0,
                                                                                     5: 0.0}


def test_score_item_by_hand():
    item = DenseItem("x", "a red thing", [_q(1, "is it red?"), _q(2, "is the red thing shiny red?", [1]),
                                           _q(3, "is it green?"), _q(4, "is the part red?", [3])])
    images = [Image.new("RGB", (8, 8), RED), Image.new("RGB", (8, 8), GREEN)]
    res = dpg.score_item(ColourVQA(), images, item)
    # red image: yes, yes, no, yes (zeroed: its parent 3 is no) -> 2/4; green image: no, no, yes, no -> 1/4
    assert res["image_scores"] == pytest.approx([0.5, 0.25])
    assert res["score"] == pytest.approx(0.375)
    assert res["answers"][0] == {1: 1.0, 2: 1.0, 3: 0.0, 4: 1.0}  # before the dependency rule
    soft = dpg.score_item(ColourVQA(), images[:1], item, soft=True)
    # soft: a child counts its P(yes) times its parent's: q2 0.9 * 0.9, q4 0.9 * 0.1
    assert soft["image_scores"] == pytest.approx([(0.9 + 0.81 + 0.1 + 0.09) / 4])


def _grid(tiles, res=16):
    grid = Image.new("RGB", (2 * res, 2 * res))
    for k, colour in enumerate(tiles):
        grid.paste(Image.new("RGB", (res, res), colour), ((k % 2) * res, (k // 2) * res))
    return grid


def test_item_images_grid_and_files(tmp_path):
    _grid([RED, GREEN, GREEN, RED]).save(tmp_path / "p1.png")
    tiles = dpg.item_images(tmp_path, "p1", pic_num=4)
    assert [t.getpixel((0, 0)) for t in tiles] == [RED, GREEN, GREEN, RED] and tiles[0].size == (16, 16)
    assert len(dpg.item_images(tmp_path, "p1", pic_num=2)) == 2
    for k, colour in enumerate([GREEN, RED]):
        Image.new("RGB", (8, 8), colour).save(tmp_path / f"p2_{k:06d}.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "p2_grid.png")  # not an index: ignored
    assert [t.getpixel((0, 0)) for t in dpg.item_images(tmp_path, "p2")] == [GREEN, RED]
    assert dpg.item_images(tmp_path, "nothing") == []
    with pytest.raises(ValueError, match="too small"):
        dpg.item_images(tmp_path, "p1", pic_num=4, resolution=32)


CSV = """item_id,text,keywords,proposition_id,dependency,category_broad,category_detailed,tuple,\
question_natural_language
p1,a red scene,k,1,0,entity,whole,entity - whole (scene),is it red?
p1,a red scene,k,2,1,attribute,color,attribute - color (scene red),is the scene red?
p1,a red scene,k,3,0,entity,whole,entity - whole (grass),is it green?
p2,a green scene,k,1,0,entity,whole,entity - whole (grass),is it green?
p2,a green scene,k,2,"1,0",relation,spatial,relation - spatial (grass; sky),is the red sky above?
"""


def test_read_questions_csv_and_jsonl(tmp_path):
    (tmp_path / "q.csv").write_text(CSV)
    items = dpg.read_questions(tmp_path / "q.csv")
    assert [i.item_id for i in items] == ["p1", "p2"]
    assert items[0].questions[1] == Question(2, "is the scene red?", [1], "attribute - color")
    assert items[1].questions[1].dependency == [1, 0]
    lines = [{"item_id": "a", "prompt": "p", "questions": [{"id": 1, "question": "q1"},
                                                           {"id": 2, "question": "q2", "dependency": [1]}]}]
    (tmp_path / "q.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    (item,) = dpg.read_questions(tmp_path / "q.jsonl")
    assert item.questions[0].dependency == [0] and item.questions[1].dependency == [1]
    lines[0]["questions"][1]["dependency"] = [7]
    (tmp_path / "bad.jsonl").write_text(json.dumps(lines[0]))
    with pytest.raises(ValueError, match="unknown question"):
        dpg.read_questions(tmp_path / "bad.jsonl")
    with pytest.raises(FileNotFoundError):
        dpg.read_questions(tmp_path / "missing.csv")


def test_run_dpg_summary_by_hand(tmp_path):
    (tmp_path / "q.csv").write_text(CSV)
    images = tmp_path / "images"
    images.mkdir()
    _grid([RED, RED, GREEN, GREEN]).save(images / "p1.png")
    _grid([GREEN, GREEN, GREEN, GREEN]).save(images / "p2.png")
    summary = dpg.run_dpg(images, tmp_path / "q.csv", ColourVQA(), pic_num=4, progress=False)
    # p1: red tiles answer (1, 1, 0) -> 2/3; green tiles (0, 0 by dependency, 1) -> 1/3; mean 0.5
    # p2: green tiles answer (1, 0) -> 1/2 each
    assert summary["dpg_score"] == pytest.approx(50.0)
    # level 2 (before the dependency rule): entity - whole: p1 q1 (1,1,0,0) q3 (0,0,1,1), p2 q1 (1,1,1,1) -> 8/12
    assert summary["level2"]["entity - whole"] == pytest.approx(100 * 8 / 12)
    assert summary["level2"]["attribute - color"] == pytest.approx(50.0)
    assert summary["level1"]["relation"] == pytest.approx(0.0)
    assert json.loads((images / "dpg_results.json").read_text())["num_prompts"] == 2
    details = [json.loads(line) for line in (images / "dpg_details.jsonl").read_text().splitlines()]
    assert details[0]["image_scores"] == pytest.approx([2 / 3, 2 / 3, 1 / 3, 1 / 3])
    limited = dpg.run_dpg(images, tmp_path / "q.csv", ColourVQA(), limit=1, out_dir=tmp_path / "o", progress=False)
    assert limited["num_prompts"] == 1 and limited["dpg_score"] == pytest.approx(50.0)
    with pytest.raises(ValueError, match="No prompt"):
        dpg.run_dpg(tmp_path, tmp_path / "q.csv", ColourVQA(), progress=False)


def test_run_dpg_with_a_tiny_blip(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vqa = load_vqa_scorer(make_tiny_blip_vqa(tmp_path / "vqa"))
    (tmp_path / "q.csv").write_text(CSV)
    images = tmp_path / "images"
    images.mkdir()
    _grid([RED, GREEN, RED, GREEN]).save(images / "p1.png")
    summary = dpg.run_dpg(images, tmp_path / "q.csv", vqa, pic_num=2, soft=True, progress=False)
    assert summary["num_prompts"] == 1 and summary["prompts_without_images"] == ["p2"]
    # soft answers are P(yes) of the real scorer; recompute the first tile's score from them by hand
    tiles = dpg.item_images(images, "p1", pic_num=2)
    p = vqa.score([tiles[0]] * 3, ["is it red?", "is the scene red?", "is it green?"])
    details = json.loads((images / "dpg_details.jsonl").read_text().splitlines()[0])
    assert details["image_scores"][0] == pytest.approx((p[0] + p[1] * p[0] + p[2]) / 3, abs=1e-5)  # q2 gated by q1


def test_prompt_file_and_generation_manifest(tmp_path):
    from llm4gen.eval.prompts import read_prompt_records

    (tmp_path / "q.csv").write_text(CSV)
    path = dpg.write_prompt_file(tmp_path / "q.csv", tmp_path / "prompts.jsonl")
    records = read_prompt_records(path)
    assert [(r["prompt"], r["meta"]["item_id"]) for r in records] == [("a red scene", "p1"), ("a green scene", "p2")]
    images = tmp_path / "images"
    images.mkdir()
    manifest = []
    for p, (item, colour) in enumerate([("p1", RED), ("p2", GREEN)]):
        for k in range(2):
            name = f"{p:05d}_{k:02d}.png"
            Image.new("RGB", (8, 8), colour).save(images / name)
            manifest.append({"file": name, "prompt": "x", "meta": {"item_id": item}})
    (images / "manifest.jsonl").write_text("\n".join(json.dumps(m) for m in manifest))
    assert [t.getpixel((0, 0)) for t in dpg.item_images(images, "p2")] == [GREEN, GREEN]
    summary = dpg.run_dpg(images, tmp_path / "q.csv", ColourVQA(), progress=False)
    assert summary["num_prompts"] == 2 and summary["dpg_score"] == pytest.approx(100 * (2 / 3 + 1 / 2) / 2)


def test_cli_dpg(tmp_path):
    from typer.testing import CliRunner

    from llm4gen.cli import app

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vqa = make_tiny_blip_vqa(tmp_path / "vqa")
    (tmp_path / "q.csv").write_text(CSV)
    prompts = tmp_path / "prompts.jsonl"
    result = CliRunner().invoke(app, ["eval", "dpg", str(tmp_path), "--questions", str(tmp_path / "q.csv"),
                                      "--export-prompts", str(prompts)])
    assert result.exit_code == 0, result.output
    assert [json.loads(x)["item_id"] for x in prompts.read_text().splitlines()] == ["p1", "p2"]
    images = tmp_path / "images"
    images.mkdir()
    _grid([RED, GREEN, RED, GREEN]).save(images / "p1.png")
    result = CliRunner().invoke(app, ["eval", "dpg", str(images), "--questions", str(tmp_path / "q.csv"),
                                      "--vqa-model", vqa, "--pic-num", "2", "--out", str(tmp_path / "res")])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "res" / "dpg_results.json").read_text())
    assert summary["num_prompts"] == 1 and 0 <= summary["dpg_score"] <= 100 and (tmp_path / "res" / "dpg.png").is_file()
