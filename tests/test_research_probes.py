"""Tests of the research probes (research/shapesworld/*.py): opt-in with ``pytest -m research`` (``make
test-research``); ``make test`` covers the product.

text_use.py --pipeline: which text source (CLIP or LLM tokens) a trained UNet relies on;
vae_ceiling.py: what the VAE alone lets the scorer see;
count_relations.py: whether relation sentences make an arm draw extra objects;
adapter_scale.py: the llm4gen arm at several values of the CAM's balance factor λ;
attention_separation.py: whether different objects' words attend to different places;
binding_probe.py: whether the text features say which colour goes with which shape;
unet_position.py: whether the UNet's features say where in the image each location is;
place_words.py: whether the place words of one-object prompts move the object;
noise_leak.py: whether the model reads an object's place off the noised image or off the words.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from scripts import ROOT, load_script, run_script

pytestmark = pytest.mark.research


def _run_text_use(monkeypatch, *args: str) -> None:
    _run_script("text_use", monkeypatch, *args)


def _load_script(name: str):
    return load_script(f"research/shapesworld/{name}")


def _run_script(name: str, monkeypatch, *args: str) -> None:
    run_script(f"research/shapesworld/{name}", monkeypatch, *args)


@pytest.fixture
def bundled_model() -> Path:
    model = ROOT / "models" / "default"
    if not (model / "base_unet" / "config.json").is_file():
        pytest.skip("models/default is missing")
    return model


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from llm4gen.tiny import build_tiny_pipeline

    root = tmp_path_factory.mktemp("text-use")
    # fixed-length LLM padding without a mask: every prompt gives the UNet the same number of LLM tokens
    pipe = build_tiny_pipeline(llm_max_length=256, llm_padding="max_length", work_dir=root / "work")
    pipe.save_pretrained(root / "model")
    return root / "model"


def _rows(path: Path) -> dict[str, dict[int, dict]]:
    out: dict[str, dict[int, dict]] = {}
    for row in json.loads(path.read_text())["rows"]:
        out.setdefault(row["arm"], {})[row["timestep"]] = row
    return out


def test_a_silenced_llm_branch_makes_the_llm_tokens_irrelevant(tiny_folder, tmp_path, monkeypatch):
    """With the CAM's balance factor at 0 its output is all zeros whatever the LLM says, so swapping in another
    scene's LLM tokens cannot change the prediction; with the branch on it must."""
    silenced = tmp_path / "silenced"
    shutil.copytree(tiny_folder, silenced)
    cfg_path = silenced / "adapter" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["scale"] = 0.0
    cfg_path.write_text(json.dumps(cfg))

    args = ("--scenes", "3", "--timesteps", "500,950")
    _run_text_use(monkeypatch, "--pipeline", str(silenced), *args, "--out", str(tmp_path / "off.json"))
    _run_text_use(monkeypatch, "--pipeline", str(tiny_folder), *args, "--out", str(tmp_path / "on.json"))
    off, on = _rows(tmp_path / "off.json"), _rows(tmp_path / "on.json")
    assert set(off) == {"llm4gen"}  # no base_unet/ in the folder: no base arm
    for t in (500, 950):
        assert off["llm4gen"][t]["llm shuffled"] == off["llm4gen"][t]["true"]
        assert off["llm4gen"][t]["clip shuffled"] == off["llm4gen"][t]["shuffled"]
        assert off["llm4gen"][t]["llm_gain"] == 0.0
        assert on["llm4gen"][t]["llm shuffled"] != on["llm4gen"][t]["true"]
        assert on["llm4gen"][t]["true"] > 0


def test_the_base_arm_is_measured_when_the_folder_has_one(tiny_folder, tmp_path, monkeypatch):
    folder = tmp_path / "with-base"
    shutil.copytree(tiny_folder, folder)
    shutil.copytree(folder / "unet", folder / "base_unet")
    _run_text_use(monkeypatch, "--pipeline", str(folder), "--scenes", "2", "--timesteps", "700",
                  "--out", str(tmp_path / "r.json"))
    rows = _rows(tmp_path / "r.json")
    base = rows["base (CLIP only)"][700]
    assert {"true", "shuffled", "empty"} <= set(base) and "llm shuffled" not in base
    assert base["gain_vs_empty"] == pytest.approx(1 - base["true"] / base["empty"])


def test_it_asks_for_one_kind_of_input(monkeypatch, tmp_path):
    with pytest.raises(SystemExit):
        _run_text_use(monkeypatch, "--base", str(tmp_path))  # --checkpoint missing
    with pytest.raises(SystemExit):
        _run_text_use(monkeypatch, "--pipeline", str(tmp_path), "--base", str(tmp_path))


def test_vae_ceiling_scores_true_renders_perfectly_and_round_trips_below(tmp_path, monkeypatch):
    model = ROOT / "models" / "default"
    if not (model / "vae" / "config.json").is_file():
        pytest.skip("models/default is missing")
    out = tmp_path / "ceiling.json"
    _run_script("vae_ceiling", monkeypatch, "--model", str(model), "--images", "12", "--out", str(out))
    report = json.loads(out.read_text())
    original, back = report["summary"]["original"], report["summary"]["round_trip"]
    # the scorer on its own renders (position_chance is the odds of a random layout, not a score)
    assert all(v["mean"] == 1.0 for m, v in original.items() if v["mean"] is not None and m != "position_chance")
    assert 0.05 < original["position_chance"]["mean"] < 0.5
    assert back["background"]["mean"] == 1.0 and back["colour"]["mean"] >= 0.9  # the VAE keeps flat colours
    assert 0.5 <= back["all_correct"]["mean"] <= 1.0
    assert out.with_suffix(".png").is_file()


def test_vae_ceiling_names_a_folder_without_a_vae(tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match="vae"):
        _run_script("vae_ceiling", monkeypatch, "--model", str(tmp_path), "--out", str(tmp_path / "x.json"))


def test_count_relations_renders_both_versions_of_the_same_prompts(tmp_path, monkeypatch, bundled_model):
    model = bundled_model
    out = tmp_path / "count.json"
    _run_script("count_relations", monkeypatch, "--model", str(model), "--prompts", "6", "--steps", "4",
                "--bootstrap", "200", "--out", str(out))
    report = json.loads(out.read_text())
    assert report["prompts"] == 6 and set(report["summary"]) == {"base", "llm4gen"}
    rows = report["per_prompt"]
    for row in rows:
        assert row["dropped"] and all(s in row["text"] for s in row["dropped"])
        assert row["without_relations"] != row["text"] and " above the " not in row["without_relations"]
    for arm, versions in report["summary"].items():
        for version, s in versions.items():
            # every prompt has exactly one of: right count, too many, too few
            assert s["count"] + s["too_many"] + s["too_few"] == pytest.approx(1.0)
            found = [r[f"{arm}/{version}/num_found"] - r["num_asked"] for r in rows]
            assert s["surplus"] == pytest.approx(sum(found) / len(found))
        d = report["differences"][arm]["too_many"]
        assert d["n"] == 6
        without, with_ = versions["without relations"]["too_many"], versions["with relations"]["too_many"]
        assert d["mean"] == pytest.approx(without - with_)
    assert out.with_suffix(".png").is_file()


def test_count_relations_can_drop_the_count_sentence_instead(tmp_path, monkeypatch, bundled_model):
    out = tmp_path / "sentence.json"
    _run_script("count_relations", monkeypatch, "--model", str(bundled_model), "--drop", "count", "--prompts", "3",
                "--steps", "3", "--bootstrap", "200", "--out", str(out))
    report = json.loads(out.read_text())
    assert report["dropped"] == "a count sentence" and report["prompts"] == 3
    for row in report["per_prompt"]:
        # exactly the sentence that states the total is gone; the relation sentences stay
        assert len(row["dropped"]) == 1 and "figure" in row["dropped"][0]
        assert row["without_count"] == row["text"].replace(row["dropped"][0] + " ", "")
    assert set(report["summary"]["llm4gen"]) == {"with count", "without count"}
    for version, split in report["by_objects"]["llm4gen"].items():
        # the split by objects asked for partitions the prompts and averages back to the overall count
        rows = report["per_prompt"]
        assert sum(c["prompts"] for c in split.values()) == len(rows)
        right = sum(r[f"llm4gen/{version}/num_found"] == r["num_asked"] for r in rows)
        assert sum(c["prompts"] * c["count"] for c in split.values()) == pytest.approx(right)
        for n, c in split.items():
            found = [r[f"llm4gen/{version}/num_found"] - r["num_asked"] for r in rows if r["num_asked"] == int(n)]
            assert c["surplus"] == pytest.approx(sum(found) / len(found))


def test_count_relations_names_a_folder_that_is_not_a_pipeline(tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match="model_index.json"):
        _run_script("count_relations", monkeypatch, "--model", str(tmp_path), "--out", str(tmp_path / "x.json"))


def test_adapter_scale_renders_each_scale_and_compares_it_to_one(tmp_path, monkeypatch, bundled_model):
    model = bundled_model
    out = tmp_path / "scale.json"
    _run_script("adapter_scale", monkeypatch, "--model", str(model), "--prompts", "3", "--steps", "3",
                "--scales", "1,0", "--bootstrap", "200", "--out", str(out))
    report = json.loads(out.read_text())
    assert report["scales"] == [0.0, 1.0] and report["trained_scale"] == 1.0 and report["prompts"] == 3
    assert report["prompt_seed"] == 1007  # other held-out scenes than the headline benchmark's
    rows = report["per_prompt"]
    for arm in ("base", "0.0", "1.0"):
        s = report["base"] if arm == "base" else report["summary"][arm]
        assert s["count"]["mean"] + s["too_many"]["mean"] + s["too_few"]["mean"] == pytest.approx(1.0)
        assert s["too_many"]["mean"] == pytest.approx(
            sum(r[f"{arm}/num_found"] > r["num_asked"] for r in rows) / len(rows))
        assert s["binding"]["mean"] == pytest.approx(sum(r[f"{arm}/binding"] for r in rows) / len(rows))
    for m, d in report["differences_to_1"]["0.0"].items():
        assert d["mean"] == pytest.approx(report["summary"]["0.0"][m]["mean"] - report["summary"]["1.0"][m]["mean"])
    assert all(d["mean"] == 0 for d in report["differences_to_1"]["1.0"].values())
    assert out.with_suffix(".png").is_file() and (tmp_path / "scale_samples.png").is_file()


@pytest.mark.parametrize("scales,match", [("0,0.5", "must include 1"), ("1,1", "distinct"), ("1,-1", "distinct"),
                                          ("1,x", "comma-separated numbers")])
def test_adapter_scale_refuses_bad_scales(scales, match):
    module = _load_script("adapter_scale")
    assert module.parse_scales(" 1.5, 0,1") == [0.0, 1.0, 1.5]
    with pytest.raises(SystemExit, match=match):
        module.parse_scales(scales)


def test_adapter_scale_names_a_folder_that_is_not_a_pipeline(tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match="model_index.json"):
        _run_script("adapter_scale", monkeypatch, "--model", str(tmp_path), "--out", str(tmp_path / "x.json"))


# ---------------------------------------------------------------------- attention separation
def test_attention_tv_matches_hand_values():
    import torch

    tv = _load_script("attention_separation")._tv
    m = torch.tensor([[[0.2, 0.8, 1.0], [0.8, 0.2, 3.0]]])  # [B=1, HW=2, T=3]
    # token maps (0.2, 0.8), (0.8, 0.2), (0.25, 0.75) once normalised over space
    assert tv([m], [[(0, 1), (0, 2)]]) == pytest.approx([0.6, 0.05])
    assert tv([m, m], [[(1, 0)]]) == pytest.approx([0.6, 0.6])  # one value per layer and pair


def test_on_objects_tells_a_words_own_object_from_the_others():
    import torch

    from llm4gen.shapesworld.world import Scene, SceneObject, object_cover

    on_objects = _load_script("attention_separation")._on_objects
    scene = Scene([SceneObject("red", "circle", "small", 0.25, 0.25),
                   SceneObject("blue", "square", "small", 0.75, 0.75),
                   SceneObject("green", "star", "small", 0.25, 0.75)])
    side = 16
    covers = [torch.from_numpy(object_cover(o, side)) for o in scene.objects]
    inside0 = (covers[0] == 1).float()  # cells wholly inside object 0 (the objects are far apart)
    both = ((covers[0] == 1) | (covers[1] == 1)).float()
    # token 0: only inside object 0; token 1: object 0 and 1 alike; token 2: even over the image
    m = torch.stack([inside0, both, torch.ones(side * side)], -1)[None]
    out = on_objects([m], [[([0, 1, 2], scene.objects[0])]], [scene])
    assert out["own"] == pytest.approx([1.0, 0.5, float(covers[0].mean())])
    assert out["others"] == pytest.approx([0.0, 0.5, float(torch.maximum(covers[1], covers[2]).mean())])
    assert out["own_chance"] == pytest.approx([float(covers[0].mean())] * 3)
    assert out["others_chance"] == pytest.approx([float(torch.maximum(covers[1], covers[2]).mean())] * 3)
    # a scene of one object has no others
    single = on_objects([m], [[([0], scene.objects[0])]], [Scene(scene.objects[:1])])
    assert single["others"] == [0.0] and single["others_chance"] == [0.0]


def test_attention_separation_is_zero_when_keys_cannot_tell_tokens_apart(tiny_folder, tmp_path, monkeypatch):
    """With every cross-attention key projection zeroed, each position attends to all tokens alike, so every
    token's spatial map is the same and both distances are exactly 0; the trained weights give positive ones."""
    from diffusers import UNet2DConditionModel

    folder = tmp_path / "model"
    shutil.copytree(tiny_folder, folder)
    args = ("--prompts", "12", "--timesteps", "300,800")
    _run_script("attention_separation", monkeypatch, "--model", str(folder), *args, "--out", str(tmp_path / "a.json"))
    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    for name, module in unet.named_modules():
        if name.endswith("attn2.to_k"):
            module.weight.data.zero_()
    unet.save_pretrained(folder / "unet")
    shutil.copytree(folder / "unet", folder / "base_unet")
    _run_script("attention_separation", monkeypatch, "--model", str(folder), *args, "--out", str(tmp_path / "z.json"))
    before, zeroed = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "z.json"))
    assert {(r["arm"], r["tokens"]) for r in before["rows"]} == {("llm4gen", "CLIP"), ("llm4gen", "LLM")}
    assert {(r["arm"], r["tokens"]) for r in zeroed["rows"]} == {("llm4gen", "CLIP"), ("llm4gen", "LLM"),
                                                                  ("base (CLIP only)", "CLIP")}
    # the tiny CLIP's window is short: its rows may have no pairs to compare (null), the LLM rows have many
    assert all(r["negative_pairs"] > 10 and r["attribute_pairs"] > 10 for r in zeroed["rows"] if r["tokens"] == "LLM")
    for r in zeroed["rows"]:
        for key, n in (("separation", "negative_pairs"), ("cohesion_gap", "attribute_pairs")):
            assert (r[key] is None) == (r[n] == 0)
            assert r[key] is None or r[key] == pytest.approx(0, abs=1e-6)
        # an even map puts on each object exactly its share of the area
        assert (r["on_object"] is None) == (r["chance"] is None)
        assert r["on_object"] is None or r["on_object"] == pytest.approx(r["chance"], abs=1e-6)
        assert (r["on_other_objects"] is None) == (r["on_object"] is None)
        assert r["on_other_objects"] is None or r["on_other_objects"] == pytest.approx(r["other_chance"], abs=1e-6)
    assert all(r["separation"] > 1e-3 for r in before["rows"] if r["tokens"] == "LLM")


def test_attention_separation_names_a_folder_without_a_pipeline(tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match="model_index.json"):
        _run_script("attention_separation", monkeypatch, "--model", str(tmp_path), "--out", str(tmp_path / "x.json"))


# ---------------------------------------------------------------------- binding probe
def test_probe_separates_classes_a_feature_carries_and_not_those_it_lacks():
    import torch

    module = _load_script("binding_probe")
    g = torch.Generator().manual_seed(0)
    n, classes = 600, 4
    y = torch.randint(0, classes, (n,), generator=g)
    signal = torch.nn.functional.one_hot(y, classes).float() * 3 + torch.randn(n, classes, generator=g)
    noise = torch.randn(n, 8, generator=g)
    carries = module.fit_probe(torch.cat([signal, noise], 1)[:400], y[:400], classes)
    acc = (carries(torch.cat([signal, noise], 1)[400:]).argmax(1) == y[400:]).float().mean()
    assert acc > 0.9
    lacks = module.fit_probe(noise[:400], y[:400], classes)
    acc = (lacks(noise[400:]).argmax(1) == y[400:]).float().mean()
    assert 0.1 < acc < 0.45  # chance is 0.25
    with pytest.raises(ValueError, match=r"rows \[N, D\]"):
        module.fit_probe(torch.zeros(3), torch.zeros(3, dtype=torch.long), 2)


def test_pick_among_only_considers_the_scenes_values():
    import torch

    pick = _load_script("binding_probe").pick_among
    logits = torch.tensor([[0.0, 5.0, 1.0, 2.0], [9.0, 0.0, 1.0, -1.0]])
    assert pick(logits, [[0, 2, 3], [1, 3]]) == [3, 1]  # the best overall (1, 0) is not in the scene
    with pytest.raises(ValueError, match="allowed classes per row"):
        pick(logits, [[0], []])


def test_score_probe_splits_accuracy_by_held_out_pairs():
    """Class = sign of the feature on seen pairs; the held-out rows carry the opposite sign for their class, as a
    pairing never seen in training would: all seen right, all held-out wrong."""
    import torch

    score = _load_script("binding_probe").score_probe
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (300,), generator=g)
    x = (2.0 * y - 1)[:, None] * (1 + torch.rand(300, 1, generator=g))
    held = [k >= 200 for k in range(300)]
    x[200:] = -x[200:]
    rows = {"x": list(x), "y": y.tolist(), "allowed": [[0, 1]] * 250 + [[0, 1, 2]] * 50, "held_out": held,
            "prompt": list(range(300))}
    train = {k: v[:200] for k, v in rows.items()}
    got = score(train, rows, 3)
    assert got["accuracy_seen_pairs"] == 100.0 and got["accuracy_held_out_pairs"] == 0.0
    assert got["accuracy"] == pytest.approx(100 * 200 / 300) and got["train_accuracy"] == 100.0
    assert got["chance"] == pytest.approx(100 * (250 / 2 + 50 / 3) / 300)
    assert (got["train_rows"], got["test_rows"], got["test_rows_held_out"]) == (200, 300, 100)


def test_colour_swap_trades_two_colours_in_caption_and_scene():
    from transformers import AutoTokenizer

    from llm4gen.encoders import resolve_model_reference
    from llm4gen.shapesworld.mentions import mention_words
    from llm4gen.shapesworld.world import Scene, SceneObject, ShapesWorld
    from llm4gen.tiny import MINILM_REF

    swap = _load_script("binding_probe").colour_swap
    scene = Scene([SceneObject("orange", "circle", "small", 0.2, 0.5), SceneObject("red", "square", "large", 0.7, 0.5),
                   SceneObject("blue", "star", "small", 0.5, 0.2)], background="grey", relations=[(0, "left of", 1)])
    text = "An orange circle sits left. The red square, coloured red, is right of the orange circle. A blue star."
    got, swapped = swap(text, scene)
    assert got == "A red circle sits left. The orange square, coloured orange, is right of the red circle. A blue star."
    assert [o.colour for o in swapped.objects] == ["red", "orange", "blue"]
    assert [(o.shape, o.x) for o in swapped.objects] == [(o.shape, o.x) for o in scene.objects]
    assert swapped.background == "grey" and swapped.relations == scene.relations
    assert [o.colour for o in scene.objects] == ["orange", "red", "blue"]  # the original is untouched
    assert swap("A red circle and a red square.", Scene([SceneObject("red", "circle", "small", 0.2, 0.5),
                                                        SceneObject("red", "square", "small", 0.7, 0.5)])) is None
    # on generated dense captions the twin parses to the same objects, recoloured (a colour may take more or fewer
    # word pieces, so token positions can move)
    tok = AutoTokenizer.from_pretrained(resolve_model_reference(MINILM_REF))
    world, matched = ShapesWorld("train", seed=3), 0
    for k in range(40):
        text, scene = world.caption_of(k)
        twin = swap(text, scene)
        if twin is None:
            continue
        found = []
        for t, sc in ((text, scene), twin):
            enc = tok(t, return_offsets_mapping=True)
            names = tok.convert_ids_to_tokens(enc["input_ids"])
            found.append([(names[n], k) for n, _, k in mention_words(t, sc, enc["offset_mapping"])])
        assert found[0] == found[1]  # the same nouns matched to the same (recoloured) objects
        matched += len(found[0])
    assert matched > 40


def test_probe_rows_read_each_mentions_words_at_their_tokens():
    """An encoder whose feature is the token's position shows which token each row was read at."""
    import numpy as np
    import torch
    from transformers import AutoTokenizer

    from llm4gen.encoders import resolve_model_reference
    from llm4gen.shapesworld.world import COLOURS, SHAPES, Scene, SceneObject
    from llm4gen.tiny import MINILM_REF

    module = _load_script("binding_probe")
    tok = AutoTokenizer.from_pretrained(resolve_model_reference(MINILM_REF))
    obj = SceneObject
    scenes = [Scene([obj("red", "circle", "small", 0.2, 0.5), obj("blue", "square", "large", 0.7, 0.5)]),
              Scene([obj("red", "star", "small", 0.5, 0.5), obj("red", "ring", "small", 0.2, 0.2)])]
    captions = ["A red circle and a blue square.", "A red star beside a red ring."]

    def positions(batch):
        return torch.arange(20.0)[None, :, None].expand(len(batch), 20, 1)  # feature = position, window of 20

    rows = module.probe_rows(captions, scenes, {"LLM": (tok, "x: ", positions)})
    names = [tok.convert_ids_to_tokens(tok("x: " + c)["input_ids"]) for c in captions]
    nc = rows[("LLM", "noun -> colour")]
    assert [names[0][int(x)] for x in nc["x"]] == ["circle", "square"]  # scene 2 has one colour: no rows
    assert nc["y"] == [list(COLOURS).index("red"), list(COLOURS).index("blue")]
    assert nc["allowed"] == [sorted([list(COLOURS).index("red"), list(COLOURS).index("blue")])] * 2
    cs = rows[("LLM", "colour -> shape")]
    assert [names[b][int(x)] for b, x in zip([0, 0, 1, 1], cs["x"])] == ["red", "blue", "red", "red"]
    assert cs["y"] == [SHAPES.index(s) for s in ("circle", "square", "star", "ring")]
    # the noun's place: its object's cell of the 3x3 grid, among the cells the scene's objects occupy
    place, cells = rows[("LLM", "noun -> place")], module.role_values()["place"]
    assert [names[b][int(x)] for b, x in zip([0, 0, 1, 1], place["x"])] == ["circle", "square", "star", "ring"]
    assert [cells[y] for y in place["y"]] == [("left", "middle"), ("right", "middle"), ("centre", "middle"),
                                              ("left", "top")]
    assert [len(a) for a in place["allowed"]] == [2, 2, 2, 2]
    # the caption mean: one feature per caption (the mean position of its own tokens), a row per mention and role
    mean = rows[("caption mean", "colour -> shape")]
    words = [[t for t, (a, b) in enumerate(tok("x: " + c, return_offsets_mapping=True)["offset_mapping"])
              if b > a and a >= 3] for c in captions]
    assert [float(x) for x in mean["x"]] == pytest.approx([np.mean(words[0])] * 2 + [np.mean(words[1])] * 2)
    assert "held_out" in nc and len(nc["held_out"]) == 2


def test_binding_probe_runs_on_a_pipeline_and_reports_every_space(tiny_folder, tmp_path, monkeypatch):
    out = tmp_path / "probe.json"
    _run_script("binding_probe", monkeypatch, "--model", str(tiny_folder), "--train-prompts", "80", "--prompts",
                "30", "--out", str(out))
    report = json.loads(out.read_text())
    got = {(r["fit"], r["tokens"], r["role"]) for r in report["rows"]}
    for fit in ("train captions", "train captions + colour swaps"):
        for role in ("noun -> colour", "colour -> shape", "noun -> place"):
            assert {(fit, "LLM", role), (fit, "CAM", role), (fit, "caption mean", role)} <= got
    assert 0 < report["swapped"]["train"] <= 80 and 0 < report["swapped"]["test"] <= 30
    for r in report["rows"]:
        assert 25.0 <= r["chance"] <= 50.0  # two to four objects: 1/4 .. 1/2
        assert r["test_rows"] > 0 and r["train_rows"] > 0
        assert 0.0 <= r["accuracy"] <= 100.0
    plain = {(r["tokens"], r["role"]): r for r in report["rows"] if r["fit"] == "train captions"}
    twins = {(r["tokens"], r["role"]): r for r in report["rows"] if r["fit"] != "train captions"}
    for key, r in twins.items():  # originals that have a twin, and the twins: more rows than the originals alone
        assert plain[key]["train_rows"] < r["train_rows"] <= 2 * plain[key]["train_rows"]
    assert out.with_suffix(".png").stat().st_size > 1000


def test_binding_probe_names_a_folder_without_a_pipeline_and_bad_settings(tiny_folder, tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match="model_index.json"):
        _run_script("binding_probe", monkeypatch, "--model", str(tmp_path), "--out", str(tmp_path / "x.json"))
    with pytest.raises(SystemExit, match="--l2 at least 0"):
        _run_script("binding_probe", monkeypatch, "--model", str(tiny_folder), "--l2", "-1", "--out",
                    str(tmp_path / "x.json"))


def test_unet_position_probe_reads_coordinates_only_where_features_hold_them():
    import torch

    module = _load_script("unet_position")
    # location_rows: one row per location, its centre as (x, y) fractions, its image's index
    feat = torch.arange(2 * 3 * 2 * 4, dtype=torch.float32).reshape(2, 3, 2, 4)
    x, coords, image = module.location_rows(feat)
    assert x.shape == (16, 3) and image.tolist() == [0] * 8 + [1] * 8
    assert coords[5].tolist() == [pytest.approx(1.5 / 4), pytest.approx(1.5 / 2)]  # row 1, column 1
    assert x[5].tolist() == feat[0, :, 1, 1].tolist()
    # ridge_r2: a feature map that holds x (not y) in a channel, beside noise, gives R² 1 for x and ~0 for y;
    # pure noise gives ~0 for both
    g = torch.Generator().manual_seed(0)
    b, h, w = 40, 8, 8
    xs = ((torch.arange(w) + 0.5) / w).expand(b, 1, h, w)
    with_x = torch.cat([xs, torch.randn(b, 5, h, w, generator=g)], dim=1)
    rows, coords, image = module.location_rows(with_x)
    r2 = module.ridge_r2(rows, coords, image < b // 2, l2=1e-6)
    assert r2[0] == pytest.approx(1.0, abs=1e-3) and abs(r2[1]) < 0.02
    rows, coords, image = module.location_rows(torch.randn(b, 6, h, w, generator=g))
    assert all(abs(v) < 0.02 for v in module.ridge_r2(rows, coords, image < b // 2))
    with pytest.raises(ValueError, match="train and test"):
        module.ridge_r2(rows, coords, torch.ones(len(rows), dtype=torch.bool))


def test_unet_position_runs_on_a_pipeline(tiny_folder, tmp_path, monkeypatch):
    out = tmp_path / "where.json"
    _run_script("unet_position", monkeypatch, "--model", str(tiny_folder), "--prompts", "8", "--timesteps", "900",
                "--out", str(out))
    report = json.loads(out.read_text())
    names = [r["features"] for r in report["rows"]]
    assert names[0] == "input (noised latents)" and "mid" in names and any(n.startswith("up ") for n in names)
    assert any(n.startswith("down ") for n in names) and report["fit_images"] == 4
    for r in report["rows"]:
        assert r["r2_x"] <= 1.0 and r["r2_y"] <= 1.0 and r["channels"] > 0
    with pytest.raises(SystemExit, match="--prompts"):
        _run_script("unet_position", monkeypatch, "--model", str(tiny_folder), "--prompts", "1", "--out",
                    str(out))


def test_place_words_swaps_only_the_place_phrase_and_measures_the_shift():
    from llm4gen.shapesworld.world import (
        POSITION_CELLS,
        SceneObject,
        ShapesWorld,
        ShapesWorldConfig,
        place_phrase,
        position_region,
        with_place,
    )

    module = _load_script("place_words")
    world = ShapesWorld("test", seed=1, config=ShapesWorldConfig(caption_style="dense", min_objects=1,
                                                                  max_objects=1))
    for k in range(12):
        text, scene = world.caption_of(k)
        obj = scene.objects[0]
        for cell in POSITION_CELLS:
            new = with_place(text, obj, cell)
            phrase = place_phrase(cell)
            assert phrase in new.lower()
            # the cell's own phrase is the one the generator writes for an object in that cell
            h = {"left": 0.2, "centre": 0.5, "right": 0.8}[cell[0]]
            v = {"top": 0.2, "middle": 0.5, "bottom": 0.8}[cell[1]]
            assert position_region(h, v) == cell
            if cell == position_region(obj.x, obj.y):
                assert new == text  # its own cell: unchanged
            else:
                assert new.replace(phrase[0].upper() + phrase[1:], phrase).count(phrase) == 1
                assert len(new.split()) - len(text.split()) == len(phrase.split()) - len(
                    place_phrase(position_region(obj.x, obj.y)).split())
    with pytest.raises(ValueError, match="place phrase"):
        with_place("A red circle.", SceneObject("red", "circle", "small", 0.2, 0.2), ("right", "top"))
    # place_effect: objects that follow the words shift by the cells' distance, objects that ignore them by 0
    follow = [{"prompt": p, "cell": list(c), "x": module._AT[c[0]], "y": module._AT[c[1]], "in_cell": 1.0,
               "chance": 0.2} for p in range(5) for c in POSITION_CELLS]
    eff = module.place_effect(follow, n_boot=200)
    assert eff["x_shift"]["mean"] == pytest.approx(0.6) and eff["y_shift"]["mean"] == pytest.approx(0.6)
    assert eff["x_shift"]["prompts"] == 5 and eff["in_cell"] == 1.0 and eff["drawn"] == 45
    ignore = [dict(r, x=0.3 + 0.1 * r["prompt"], y=0.5, in_cell=0.0) for r in follow]
    ignore[0]["x"] = None  # prompt 0 drew nothing for one phrasing: left out of the contrasts
    eff = module.place_effect(ignore, n_boot=200)
    assert eff["x_shift"]["mean"] == pytest.approx(0.0) and eff["x_shift"]["prompts"] == 4
    assert eff["y_shift"]["ci95"] == [pytest.approx(0.0), pytest.approx(0.0)] and eff["drawn"] == 44


def test_place_words_runs_on_a_pipeline(tiny_folder, tmp_path, monkeypatch):
    out = tmp_path / "place.json"
    _run_script("place_words", monkeypatch, "--model", str(tiny_folder), "--prompts", "2", "--steps", "2",
                "--bootstrap", "100", "--out", str(out))
    report = json.loads(out.read_text())
    rows = report["arms"]["llm4gen"]["rows"]
    from llm4gen.shapesworld.world import POSITION_CELLS

    assert report["prompts"] == 2 and len(rows) == 18 and {tuple(r["cell"]) for r in rows} == set(POSITION_CELLS)
    assert out.with_suffix(".png").is_file()


def test_noise_leak_x0_centroid_and_far_cell():
    import numpy as np
    import torch
    from diffusers import DDPMScheduler

    module = _load_script("noise_leak")
    # x0_from_prediction inverts diffusers' own forward process for each target
    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    g = torch.Generator().manual_seed(0)
    z0, eps = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    for t in (0, 500, 999):
        steps = torch.full((3,), t)
        noisy = sched.add_noise(z0, eps, steps)
        a = sched.alphas_cumprod[t]
        v = sched.get_velocity(z0, eps, steps)
        assert torch.allclose(module.x0_from_prediction(v, noisy, a, "v_prediction"), z0, atol=1e-4)
        assert torch.allclose(module.x0_from_prediction(eps, noisy, a, "epsilon"), z0, atol=2e-2 if t == 999 else 1e-4)
        assert module.x0_from_prediction(z0, noisy, a, "sample") is z0
    with pytest.raises(ValueError, match="prediction_type"):
        module.x0_from_prediction(v, noisy, 0.5, "flow")
    # deviation_centroid: a square on a plain background -> the square's centre; a plain image -> no centroid
    img = torch.full((2, 3, 20, 40), 0.25)
    img[0, :, 2:6, 30:38] = torch.tensor([1.0, -1.0, 0.0])[:, None, None]  # rows 2-5, columns 30-37
    c = module.deviation_centroid(img)
    assert c[0].tolist() == [pytest.approx(34 / 40), pytest.approx(4 / 20)]
    assert np.isnan(c[1]).all()
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        module.deviation_centroid(torch.zeros(3, 8, 8))
    # x0_optima: MSE against the mean of all renders and of those in the target's cell, by hand
    target = torch.ones(1, 1, 2)
    renders = torch.tensor([0.0, 2.0, 4.0]).reshape(3, 1, 1, 1).expand(3, 1, 1, 2)
    blind, cell = module.x0_optima(target, renders, torch.tensor([True, True, False]))
    assert blind == pytest.approx((1 - 2) ** 2) and cell == pytest.approx((1 - 1) ** 2)
    with pytest.raises(ValueError, match="more renders"):
        module.x0_optima(target, renders, torch.zeros(3, dtype=torch.bool))
    # cell_centre: the middle of each cell the region edges cut
    assert module.cell_centre(("left", "top")) == (pytest.approx(0.18), pytest.approx(0.18))
    assert module.cell_centre(("centre", "bottom")) == (0.5, pytest.approx(0.82))
    # far_cell: the farthest corner
    assert module.far_cell(0.1, 0.9) == ("right", "top") and module.far_cell(0.5, 0.5) == ("left", "top")
    assert module.far_cell(0.7, 0.2) == ("left", "bottom")


def test_noise_leak_runs_on_a_pipeline(tiny_folder, tmp_path, monkeypatch):
    out = tmp_path / "leak.json"
    _run_script("noise_leak", monkeypatch, "--model", str(tiny_folder), "--prompts", "3", "--timesteps", "999,500",
                "--renders", "60", "--out", str(out))
    report = json.loads(out.read_text())
    # knowing the cell can only help the best constant prediction of the latent, on average
    assert report["optima_prompts"] >= 1 and 0 < report["x0_mse_with_cell"] <= report["x0_mse_place_blind"]
    assert all(r["x0_mse"] > 0 for r in report["rows"])
    assert report["prompts"] == 3 and [r["timestep"] for r in report["rows"]] == [999, 500]
    assert report["first_sampling_timestep"] > 900 and report["zero_terminal_snr"] is False
    assert 0 < report["dist_words_alone"] < 0.25  # within a cell: at most half its diagonal
    for r in report["rows"]:
        assert r["snr"] > 0 and all(0 <= r[k] <= 1.5 for k in ("dist_true_caption", "dist_other_scene",
                                                                 "moved_by_words", "dist_from_pure_noise"))
    with pytest.raises(SystemExit, match="--prompts"):
        _run_script("noise_leak", monkeypatch, "--model", str(tiny_folder), "--prompts", "1", "--out", str(out))
    with pytest.raises(SystemExit, match="--renders"):
        _run_script("noise_leak", monkeypatch, "--model", str(tiny_folder), "--renders", "-1", "--out", str(out))
    with pytest.raises(SystemExit, match="--timesteps"):
        _run_script("noise_leak", monkeypatch, "--model", str(tiny_folder), "--timesteps", "1000", "--out", str(out))


def test_sampling_compares_settings_by_hand_and_resumes(tiny_folder, tmp_path, monkeypatch, capsys):
    args = ["--model", str(tiny_folder), "--prompts", "3", "--batch-size", "3", "--bootstrap", "100",
            "--setting", "5,0,2", "--setting", "5,1,2", "--setting", "2,0,1",
            "--work", str(tmp_path / "work"), "--out", str(tmp_path / "s.json")]
    _run_script("sampling", monkeypatch, *args)
    report = json.loads((tmp_path / "s.json").read_text())
    assert [r["name"] for r in report["settings"]] == ["g5_r0_s2", "g5_r1_s2", "g2_r0_s1"]
    assert report["reference"] == "g5_r0_s2" and (tmp_path / "s.png").stat().st_size > 0
    runs = [json.loads((tmp_path / "work" / r["name"] / "results.json").read_text()) for r in report["settings"]]
    assert [(r["config"]["guidance_scale"], r["config"]["guidance_rescale"], r["config"]["num_inference_steps"])
            for r in runs] == [(5.0, 0.0, 2), (5.0, 1.0, 2), (2.0, 0.0, 1)]
    # the difference to the reference, by hand from the two runs' per-prompt scores
    for row, run in zip(report["settings"], runs):
        for metric in ("colour", "count", "all_correct"):
            want = sum(b[metric] - a[metric] for a, b in zip(runs[0]["results"]["llm4gen"],
                                                             run["results"]["llm4gen"])) / 3
            assert row["difference"]["all"][metric]["mean"] == pytest.approx(want), (row["name"], metric)
    # the same prompts and noise in every setting; the sampler settings changed the images
    assert all(r["results"]["llm4gen"][i]["text"] == runs[0]["results"]["llm4gen"][i]["text"]
               for r in runs for i in range(3))
    assert (tmp_path / "work" / "g5_r0_s2" / "llm4gen" / "00000.png").read_bytes() != \
        (tmp_path / "work" / "g2_r0_s1" / "llm4gen" / "00000.png").read_bytes()
    capsys.readouterr()
    _run_script("sampling", monkeypatch, *args)  # a second run renders nothing
    assert capsys.readouterr().out.count("reusing") == 3


@pytest.mark.parametrize("setting, match", [("5,0", "GUIDANCE,RESCALE,STEPS"), ("5,0,2,1", "GUIDANCE,RESCALE,STEPS"),
                                            ("5,1.5,2", "rescale must lie"), ("5,0,0", "steps be >= 1")])
def test_sampling_refuses_bad_settings(setting, match):
    with pytest.raises(SystemExit, match=match):
        _load_script("sampling").parse_setting(setting)


def test_sampling_needs_two_settings_and_a_pipeline(tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match="at least two different"):
        _run_script("sampling", monkeypatch, "--setting", "5,0,25", "--model", str(tmp_path))
    with pytest.raises(SystemExit, match="no model_index.json"):
        _run_script("sampling", monkeypatch, "--model", str(tmp_path))


# ---------------------------------------------------------------------- scorer_audit.py
def test_scorer_audit_agreement_and_recall_by_hand():
    """Precision per sheet is the share of crops a reader labelled as the scorer's shape; recall per shape the reader
    saw scales each sheet's labels to all of that shape's detections (a stratified estimate), worked out by hand."""
    audit_mod = _load_script("scorer_audit")
    audit = {"detections": {"star": 10, "cross": 20, "ring": 0},
             "sheets": {"star": [{}] * 4, "cross": [{}] * 2}}
    labels = {"star": ["star", "Star ", "cross", "ring"], "cross": ["cross", "star"]}
    result = audit_mod.agreement(audit, labels)
    assert result["star"] == {"crops": 4, "same": 2, "precision": 0.5, "labels": {"cross": 1, "ring": 1, "star": 2}}
    assert result["cross"]["precision"] == 0.5
    recall = audit_mod.estimated_recall(audit, result)
    # stars: 10 * 2/4 on the star sheet + 20 * 1/2 on the cross sheet = 15 in the images; named star: 10 * 0.5 = 5
    assert recall["star"] == pytest.approx({"estimated_objects": 15.0, "estimated_named_so": 5.0, "recall": 1 / 3})
    # crosses: 10 * 1/4 + 20 * 1/2 = 12.5; named cross: 20 * 0.5 = 10
    assert recall["cross"]["recall"] == pytest.approx(0.8)
    assert recall["ring"] == pytest.approx({"estimated_objects": 2.5, "estimated_named_so": 0.0, "recall": 0.0})
    # re-classified from features: the clean star and cross prototypes themselves, both labelled star, and a cross
    # labelled other (left out); star sheet crops weigh 10 / 2 = 5 each
    from llm4gen.shapesworld.scorer import _prototypes

    protos, _ = _prototypes(64, False)
    star, cross = (list(map(float, protos[(s, "large")])) for s in ("star", "cross"))
    sets = audit_mod.prototype_agreement(
        {"detections": {"star": 10, "cross": 5}, "sheets": {"star": [{"features": star}, {"features": cross}],
                                                            "cross": [{"features": cross}]}},
        {"star": ["star", "star"], "cross": ["other"]})
    assert sets["clean"] == {"accuracy": 0.5, "recall": {"star": 0.5}}
    assert set(sets["smooth"]["recall"]) == {"star"}
    for bad, match in [({"star": labels["star"]}, "no entry for the 'cross' sheet"),
                       ({**labels, "cross": ["cross"]}, "has 2 crops but the labels give 1"),
                       ({**labels, "cross": ["cross", "blob"]}, "Unknown labels")]:
        with pytest.raises(SystemExit, match=match):
            audit_mod.agreement(audit, bad)


def test_scorer_audit_writes_numbered_sheets_of_the_scorers_detections(bundled_model, tmp_path, monkeypatch,
                                                                        capsys):
    out = tmp_path / "audit"
    _run_script("scorer_audit", monkeypatch, "--model", str(bundled_model), "--prompts", "4", "--per-shape", "2",
                "--out-dir", str(out))
    audit = json.loads((out / "audit.json").read_text())
    assert audit["sheets"] and sum(audit["detections"].values()) >= sum(len(v) for v in audit["sheets"].values())
    for shape, crops in audit["sheets"].items():
        assert 1 <= len(crops) <= min(2, audit["detections"][shape])
        assert [c["number"] for c in crops] == list(range(len(crops)))
        assert all(0 <= c["prompt"] < 4 for c in crops)
        assert (out / f"sheet_{shape}.png").is_file()
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({s: [s] * len(c) for s, c in audit["sheets"].items()}))
    _run_script("scorer_audit", monkeypatch, "--out-dir", str(out), "--labels", str(labels))
    report = json.loads((out / "agreement.json").read_text())
    assert all(r["precision"] == 1.0 for r in report["agreement"].values())
    assert all(r["recall"] == pytest.approx(1.0) for r in report["estimated_recall"].values())
    # the bundled model's images have no pixel noise, so the scorer used the clean prototypes: re-classifying the
    # stored features with them gives back every verdict the labels above copied
    assert report["prototype_sets"]["clean"]["accuracy"] == pytest.approx(1.0)
    assert set(report["prototype_sets"]) == {"clean", "smooth"}
    assert "reader agrees" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="audit.json is missing"):
        _run_script("scorer_audit", monkeypatch, "--out-dir", str(tmp_path / "none"), "--labels", str(labels))


def test_region_guidance_benchmark_reports_differences_by_hand(tmp_path, monkeypatch, capsys):
    import numpy as np

    import llm4gen.regions
    from llm4gen.tiny import build_tiny_pipeline

    model = tmp_path / "model"
    build_tiny_pipeline(llm_max_length=256, work_dir=tmp_path / "parts").save_pretrained(model)
    shutil.copytree(model / "unet", model / "base_unet")  # stands in for the base arm's UNet
    out = tmp_path / "rg.json"
    mask_steps = []

    class Recorded(llm4gen.regions.RegionMask):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            mask_steps.append(self.steps)

    monkeypatch.setattr(llm4gen.regions, "RegionMask", Recorded)
    _run_script("region_guidance", monkeypatch, "--model", str(model), "--prompts", "3", "--batch-size", "3",
                "--bootstrap", "100", "--steps", "2", "--scale", "0.5", "--work", str(tmp_path / "work"),
                "--out", str(out), "--boxes", "scene", "planned", "--methods", "guide", "mask", "--mask-steps", "3")
    report = json.loads(out.read_text())
    assert report["mask_steps"] == 3 and mask_steps == [3] * 4  # the four mask arms, one batch each
    run = json.loads((tmp_path / "work" / "results.json").read_text())
    assert report["arms"] == ["base", "base + regions", "base + regions (mask)", "base + planned regions",
                              "base + planned regions (mask)", "llm4gen", "llm4gen + regions",
                              "llm4gen + regions (mask)", "llm4gen + planned regions",
                              "llm4gen + planned regions (mask)"]
    assert out.with_suffix(".png").stat().st_size > 0 and "llm4gen + regions - llm4gen" in capsys.readouterr().out
    for name, (before, after) in {"llm4gen + regions - llm4gen": ("llm4gen", "llm4gen + regions"),
                                  "base + regions - base": ("base", "base + regions"),
                                  "llm4gen + regions - base + regions": ("base + regions", "llm4gen + regions"),
                                  "llm4gen + planned regions - llm4gen": ("llm4gen", "llm4gen + planned regions"),
                                  "llm4gen + planned regions - llm4gen + regions": ("llm4gen + regions",
                                                                                    "llm4gen + planned regions"),
                                  "llm4gen + regions (mask) - llm4gen": ("llm4gen", "llm4gen + regions (mask)"),
                                  "llm4gen + planned regions (mask) - llm4gen + planned regions": (
                                      "llm4gen + planned regions", "llm4gen + planned regions (mask)"),
                                  "llm4gen + planned regions (mask) - llm4gen + regions (mask)": (
                                      "llm4gen + regions (mask)", "llm4gen + planned regions (mask)"),
                                  }.items():
        for metric in ("colour", "count", "all_correct"):
            want = np.mean([b[metric] - a[metric] for a, b in zip(run["results"][before], run["results"][after])])
            assert report["differences"][name]["all"][metric]["mean"] == pytest.approx(want), (name, metric)
    # the guidance changed the llm4gen arm's images (the tiny CLIP reads characters: its 77-token window ends before
    # these dense captions name their objects, so the base arm has nothing to guide)
    for arm in ("llm4gen + regions", "llm4gen + regions (mask)"):
        assert (tmp_path / "work" / "llm4gen" / "00000.png").read_bytes() != \
            (tmp_path / "work" / arm / "00000.png").read_bytes()
    # the planner's regions (words alone) cover at least the scene's: every object these captions name
    assert report["regions"]["planned"] >= report["regions"]["scene"] > 0
    with pytest.raises(SystemExit, match="--mask-steps must be >= 0"):
        _run_script("region_guidance", monkeypatch, "--model", str(model), "--mask-steps", "-1")
    with pytest.raises(SystemExit, match="no base arm"):
        shutil.rmtree(model / "base_unet")
        _run_script("region_guidance", monkeypatch, "--model", str(model), "--out", str(out))


def test_wilson_interval_matches_known_values():

    wilson = _load_script("demo_seeds").wilson
    # textbook values of the 95% Wilson score interval
    assert wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson(0, 20) == pytest.approx((0.0, 0.1611), abs=1e-4)
    assert wilson(20, 20) == pytest.approx((0.8389, 1.0), abs=1e-4)


def test_demo_seeds_scores_every_seed_as_its_own_call_would(tmp_path, monkeypatch, capsys):
    """demo_seeds.py on the bundled model (2 seeds, 4 steps): a row per prompt, arm and seed; the summary
    counts them; and seed 1's regions image scores what a call for seed 1 alone scores (one generator per image)."""
    import torch

    from llm4gen import LLM4GenPipeline
    from llm4gen.examples import DEMO_PROMPTS, DEMO_SCENES
    from llm4gen.shapesworld.bench import planned_regions
    from llm4gen.shapesworld.scorer import score_image
    if not (ROOT / "models" / "default" / "base_unet" / "config.json").is_file():
        pytest.skip("models/default is missing")
    out = tmp_path / "ds.json"
    _run_script("demo_seeds", monkeypatch, "--seeds", "2", "--steps", "4", "--grid-seeds", "2", "--out", str(out))
    report = json.loads(out.read_text())
    arms = ["base", "llm4gen", "llm4gen + regions"]
    assert list(report["summary"]) == ["0", "1", "2"] and out.with_suffix(".png").stat().st_size > 0
    for i, per_arm in report["results"].items():
        assert list(per_arm) == arms
        for name, rows in per_arm.items():
            assert [r["seed"] for r in rows] == [0, 1]
            s = report["summary"][i][name]
            assert s["all_correct_seeds"] == sum(int(r["all_correct"]) for r in rows) and s["seeds"] == 2
            assert s["binding"] == pytest.approx(sum(r["binding"] for r in rows) / 2)
    pipe = LLM4GenPipeline.from_pretrained(ROOT / "models" / "default")
    pipe.set_progress_bar_config(disable=True)
    prompt = DEMO_PROMPTS[2]
    alone = pipe(prompt, num_inference_steps=4, guidance_scale=report["guidance"], regions=planned_regions(prompt),
                 generator=torch.Generator().manual_seed(1)).images[0]
    row = report["results"]["2"]["llm4gen + regions"][1]
    found = score_image(alone, DEMO_SCENES[2])["found"]  # batched vs alone: BLAS may move a pixel, not an object
    assert [(d["colour"], d["shape"], d["size"]) for d in found] == [(d["colour"], d["shape"], d["size"])
                                                                      for d in row["found"]]
    assert [v for d in found for v in (d["x"], d["y"])] == pytest.approx(
        [v for d in row["found"] for v in (d["x"], d["y"])], abs=0.02)
    assert "all-correct" in capsys.readouterr().out
