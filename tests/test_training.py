"""The trainer: config errors, data order, losses, cache, every mode end to end, resume, NaN, two processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from llm4gen.feature_cache import FeatureCache, model_fingerprint
from llm4gen.prompt_words import parse_entities, token_at_span, token_bindings, token_pairs
from llm4gen.shapesworld.mentions import mention_words, scene_mentions
from llm4gen.training.config import load_config
from llm4gen.training.data import batch_indices, epoch_items
from llm4gen.training.losses import diffusion_loss, entity_loss, timestep_weights
from llm4gen.training.trainer import TrainingDivergedError, train


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_llm_dirs):
    """A tiny SD-style base model folder (tokenizer, text_encoder, vae, unet, scheduler) at 32 px."""
    from llm4gen.tiny import build_tiny_pipeline

    root = tmp_path_factory.mktemp("train-base")
    pipe = build_tiny_pipeline(llm=tiny_llm_dirs["bert"], work_dir=root / "parts")
    pipe.save_pretrained(root / "base")
    return str(root / "base")


def _cfg(base, llm, out, **kw):
    data = kw.pop("data", {"type": "shapesworld", "num_items": 64})
    cfg = {"output_dir": str(out), "base_model": base, "llm": llm, "llm_max_length": 160, "data": data,
           "resolution": 32, "train_batch_size": 4, "max_train_steps": 3, "checkpointing_steps": 100, "log_every": 1,
           "learning_rate": 1e-3}
    cfg.update(kw)
    return load_config(cfg)


# ---------------------------------------------------------------------- config
def test_set_overrides_any_key_nested_ones_too(tmp_path):
    from llm4gen.training.config import parse_set

    path = tmp_path / "c.yaml"
    path.write_text("output_dir: o\nbase_model: b\nadapter: {num_heads: 8}\n"
                    "data:\n  type: shapesworld\n  num_items: 10\n")
    sets = parse_set(["prediction_type=epsilon", "data.num_items=5", "adapter.scale=0.5", "lr_warmup_steps=0"])
    assert sets == {"prediction_type": "epsilon", "data.num_items": 5, "adapter.scale": 0.5, "lr_warmup_steps": 0}
    cfg = load_config(path, sets, max_train_steps=9)
    assert (cfg.prediction_type, cfg.data.num_items, cfg.data.type) == ("epsilon", 5, "shapesworld")
    assert cfg.adapter == {"num_heads": 8, "scale": 0.5} and cfg.max_train_steps == 9 and cfg.lr_warmup_steps == 0
    for bad in ["prediction_type", "=3", "data..num_items=1"]:
        with pytest.raises(ValueError, match="KEY=VALUE"):
            parse_set([bad])
    with pytest.raises(ValueError, match=r"data.num_itmes \(did you mean 'num_items'\?\)"):
        load_config(path, parse_set(["data.num_itmes=3"]))
    with pytest.raises(ValueError, match="output_dir is 'o', not a mapping"):
        load_config(path, parse_set(["output_dir.x=1"]))


def test_train_command_reports_a_bad_set(tmp_path):
    from typer.testing import CliRunner

    from llm4gen.cli import app

    path = tmp_path / "c.yaml"
    path.write_text("output_dir: o\nbase_model: b\n")
    result = CliRunner().invoke(app, ["train", str(path), "--set", "learning_rte=1"])
    assert result.exit_code == 1 and "did you mean 'learning_rate'" in result.output
    result = CliRunner().invoke(app, ["train", str(path), "--set", "learning_rate"])
    assert result.exit_code == 1 and "KEY=VALUE" in result.output


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"learning_rte \(did you mean 'learning_rate'\?\)"):
        load_config({"output_dir": "o", "base_model": "b", "learning_rte": 1e-4})
    with pytest.raises(ValueError, match=r"data.captoin_column \(did you mean 'caption_column'\?\)"):
        load_config({"output_dir": "o", "base_model": "b", "data": {"captoin_column": "x"}})
    with pytest.raises(ValueError, match="Missing required config key.*base_model"):
        load_config({"output_dir": "o"})
    with pytest.raises(ValueError, match="train_unet"):
        load_config({"output_dir": "o", "base_model": "b", "train_unet": "half"})
    with pytest.raises(ValueError, match="data.path"):
        load_config({"output_dir": "o", "base_model": "b", "data": {"type": "imagefolder"}})
    path = tmp_path / "c.yaml"
    path.write_text("output_dir: o\nbase_model: b\nresolution: 64\ndata:\n  type: shapesworld\n  num_items: 10\n")
    cfg = load_config(path, max_train_steps=7)
    assert cfg.resolution == 64 and cfg.data.num_items == 10 and cfg.max_train_steps == 7
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "none.yaml")


# ---------------------------------------------------------------------- data order and parsing
def test_batch_order_is_a_pure_function():
    n, b = 20, 4
    epoch0 = [i for k in range(5) for i in batch_indices(k, n, b, 1, 0, seed=3)]
    assert sorted(epoch0) == list(range(n))  # every item once per epoch
    assert epoch0 != [i for k in range(5, 10) for i in batch_indices(k, n, b, 1, 0, seed=3)]  # reshuffled
    assert batch_indices(7, n, b, 1, 0, seed=3) == batch_indices(7, n, b, 1, 0, seed=3)
    two = batch_indices(2, n, 2, 2, 0, seed=3) + batch_indices(2, n, 2, 2, 1, seed=3)
    assert two == batch_indices(2, n, 4, 1, 0, seed=3)  # two processes of 2 == one process of 4
    with pytest.raises(ValueError, match="global batch"):
        batch_indices(0, 3, 4, 1, 0, seed=0)


def test_entity_parser():
    text = "A small red circle and a blue square, while the star is green."
    words = [(text[a[0]:a[1]], text[e[0]:e[1]]) for a, e in parse_entities(text)]
    assert words == [("small", "circle"), ("red", "circle"), ("blue", "square")]
    from transformers import AutoTokenizer

    from llm4gen.encoders import resolve_model_reference
    from llm4gen.tiny import MINILM_REF

    tok = AutoTokenizer.from_pretrained(resolve_model_reference(MINILM_REF))
    enc = tok("pre " + text, return_offsets_mapping=True)
    pairs = token_pairs(text, enc["offset_mapping"], prefix_len=4)
    names = [(tok.convert_ids_to_tokens(enc["input_ids"][a]), tok.convert_ids_to_tokens(enc["input_ids"][e]))
             for a, e in pairs]
    assert names == [("small", "circle"), ("red", "circle"), ("blue", "square")]


def test_token_bindings_negatives_join_mentions_of_different_colours():
    from transformers import AutoTokenizer

    from llm4gen.encoders import resolve_model_reference
    from llm4gen.tiny import MINILM_REF

    tok = AutoTokenizer.from_pretrained(resolve_model_reference(MINILM_REF))

    def words(text):
        enc = tok(text, return_offsets_mapping=True)
        pairs, negatives = token_bindings(text, enc["offset_mapping"])
        name = tok.convert_ids_to_tokens(enc["input_ids"])
        return [(name[a], name[b]) for a, b in pairs], {(name[a], name[b]) for a, b in negatives}, negatives

    text = "pre a five-pointed star"
    offsets = tok(text, return_offsets_mapping=True)["offset_mapping"]  # [CLS] pre a five - pointed star [SEP]
    assert token_at_span(offsets, (2, 13), prefix_len=4) == 3  # "five-pointed": its first token
    assert token_at_span(offsets, (14, 18), prefix_len=4) == 6 and token_at_span(offsets, (30, 34)) is None
    pairs, neg, raw = words("A small red circle and a blue square, while the star is green.")
    assert pairs == [("small", "circle"), ("red", "circle"), ("blue", "square")]
    # every token of the red circle's mention against every token of the blue square's; the star names no colour
    assert neg == {(x, y) for x in ("circle", "small", "red") for y in ("square", "blue")} and len(raw) == 6
    # a second mention sharing a colour may be the same object: no negatives between the two red-circle mentions
    _, neg, _ = words("A small red circle is left of a blue square. The red circle is above a grey line.")
    red_mentions = {"small", "red", "circle"}
    assert not any(x in red_mentions and y in red_mentions for x, y in neg)
    assert ("red", "blue") in neg and ("red", "grey") in neg and ("blue", "grey") in neg
    # mentions without colours, or with the same colour, give none; "gray" and "grey" are one colour
    assert words("a small circle and a large square")[1] == set()
    assert words("a red circle and a red square")[1] == set()
    assert words("a gray circle and a grey square")[1] == set()


def test_scene_mentions_match_colour_and_noun_to_one_object():
    from transformers import AutoTokenizer

    from llm4gen.encoders import resolve_model_reference
    from llm4gen.shapesworld.world import Scene, SceneObject
    from llm4gen.tiny import MINILM_REF

    tok = AutoTokenizer.from_pretrained(resolve_model_reference(MINILM_REF))
    scene = Scene([SceneObject("red", "circle", "small", 0.2, 0.5), SceneObject("blue", "square", "large", 0.7, 0.5),
                   SceneObject("blue", "cross", "small", 0.5, 0.2)])
    text = "A small red round disc sits on the left. The blue square is right of the red circle. A cross is blue."
    enc = tok(text, return_offsets_mapping=True)
    names = tok.convert_ids_to_tokens(enc["input_ids"])
    offsets = enc["offset_mapping"]
    found = [([names[t] for t in tokens], k) for tokens, k in scene_mentions(text, scene, offsets, 0, 512)]
    # "a cross is blue" names no colour for the rule parser's noun: no mention matched
    assert found == [(["round", "small", "red"], 0), (["square", "blue"], 1), (["circle", "red"], 0)]
    # tokens beyond the window are dropped, mentions without tokens left out
    assert [k for _, k in scene_mentions(text, scene, offsets, 0, 14)] == [0, 1]
    # "gray" names ShapesWorld's grey, as in token_bindings
    grey = Scene([SceneObject("grey", "star", "small", 0.5, 0.5), SceneObject("red", "star", "small", 0.2, 0.2)])
    for text in ("A small gray star.", "A small grey star."):
        enc = tok(text, return_offsets_mapping=True)
        assert [k for _, k in scene_mentions(text, grey, enc["offset_mapping"])] == [0]


def test_mention_words_give_each_mentions_noun_and_colour_token():
    from transformers import AutoTokenizer

    from llm4gen.encoders import resolve_model_reference
    from llm4gen.shapesworld.world import Scene, SceneObject
    from llm4gen.tiny import MINILM_REF

    tok = AutoTokenizer.from_pretrained(resolve_model_reference(MINILM_REF))
    scene = Scene([SceneObject("red", "circle", "small", 0.2, 0.5), SceneObject("blue", "square", "large", 0.7, 0.5),
                   SceneObject("grey", "star", "small", 0.5, 0.2)])
    text = "A small red round disc sits on the left. The large blue square is right of the red circle. A gray star."
    enc = tok("llm: " + text, return_offsets_mapping=True)  # a prefix shifts the offsets
    names = tok.convert_ids_to_tokens(enc["input_ids"])
    found = mention_words(text, scene, enc["offset_mapping"], prefix_len=5)
    assert [(names[n], names[c], k) for n, c, k in found] == [("round", "red", 0), ("square", "blue", 1),
                                                               ("circle", "red", 0), ("star", "gray", 2)]
    # a word at or beyond the window has no token; its mention stays, so its other word is still read
    limit = names.index("square")
    cut = mention_words(text, scene, enc["offset_mapping"], prefix_len=5, limit=limit)
    assert [(n is None, c is None, k) for n, c, k in cut] == [(False, False, 0), (True, False, 1), (True, True, 0),
                                                               (True, True, 2)]


def test_entity_parser_precision_on_shapesworld():
    from llm4gen.shapesworld.world import ShapesWorld

    world = ShapesWorld("train", seed=0)
    for k in range(100):
        item = world[k]
        truth = {(o.colour, o.shape) for o in item.scene.objects}
        short = item.captions["short"]
        found = {(short[a[0]:a[1]], short[e[0]:e[1]]) for a, e in parse_entities(short)}
        assert {p for p in found if p[0] in {c for c, _ in truth}} == truth


# ---------------------------------------------------------------------- losses
def test_entity_loss_values():
    m = torch.tensor([[[0.2, 0.8, 0.0], [0.8, 0.2, 0.0]]])  # [B=1, HW=2, T=3]
    # token 0 map (0.2, 0.8), token 1 map (0.8, 0.2): total variation 0.6
    assert entity_loss([m], [[(0, 1)]]).item() == pytest.approx(0.6)
    assert entity_loss([m], [[(0, 0)]]).item() == 0.0  # coinciding maps
    assert entity_loss([m], [[]]).item() == 0.0  # nothing to bind
    same = torch.rand(2, 16, 5)
    same[:, :, 3] = same[:, :, 1] * 3  # proportional maps are the same distribution
    assert entity_loss([same], [[(1, 3)], [(3, 1)]]).item() == pytest.approx(0.0, abs=1e-6)


def test_entity_loss_decreases_when_optimised_alone():
    torch.manual_seed(0)
    logits = torch.randn(2, 16, 6, requires_grad=True)
    pairs = [[(0, 3), (1, 3)], [(2, 5)]]
    opt = torch.optim.SGD([logits], lr=5.0)
    values = []
    for _ in range(60):
        loss = entity_loss([logits.softmax(-1)], pairs)
        values.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert values[-1] < 0.3 * values[0]


def test_entity_loss_negatives_values():
    m = torch.tensor([[[0.2, 0.8, 0.2, 0.5], [0.8, 0.2, 0.8, 0.5]]])  # [B=1, HW=2, T=4]; token 2 == token 0
    # push term 1 - TV: tokens 0 and 1 differ by TV 0.6 -> 0.4; tokens 0 and 2 coincide -> 1
    assert entity_loss([m], [[]], [[(0, 1)]]).item() == pytest.approx(0.4)
    assert entity_loss([m], [[]], [[(0, 2)]]).item() == pytest.approx(1.0)
    assert entity_loss([m], [[(0, 1)]], [[(0, 2)]]).item() == pytest.approx(0.6 + 1.0)  # pull + push
    assert entity_loss([m], [[(0, 1)]], [[]]).item() == pytest.approx(entity_loss([m], [[(0, 1)]]).item())
    # maps that are all alike satisfy the pull term alone but not the push term
    alike = torch.full((2, 9, 5), 0.2)
    assert entity_loss([alike], [[(0, 1)], [(2, 3)]]).item() == pytest.approx(0.0, abs=1e-6)
    assert entity_loss([alike], [[(0, 1)], [(2, 3)]], [[(0, 4)], []]).item() == pytest.approx(1.0)
    # the mean over layers, each layer pull mean + push mean
    assert entity_loss([m, alike[:1, :2]], [[(0, 1)]], [[(0, 1)]]).item() == pytest.approx(((0.6 + 0.4) + 1.0) / 2)


def test_entity_loss_with_negatives_separates_objects_when_optimised():
    torch.manual_seed(0)
    logits = torch.zeros(1, 16, 4, requires_grad=True)  # every token attends everywhere alike at the start
    with torch.no_grad():
        logits += 0.01 * torch.randn_like(logits)
    pairs = [[(0, 1), (2, 3)]]  # (red, circle), (blue, square)
    negatives = [[(0, 2), (0, 3), (1, 2), (1, 3)]]
    opt = torch.optim.Adam([logits], lr=0.1)
    for _ in range(300):
        loss = entity_loss([logits.softmax(1)], pairs, negatives)  # each token's map over the 16 positions
        opt.zero_grad()
        loss.backward()
        opt.step()
    p = logits.detach().softmax(1)[0].T  # [T, HW]
    tv = lambda i, j: 0.5 * (p[i] - p[j]).abs().sum().item()  # noqa: E731
    assert tv(0, 1) < 0.1 and tv(2, 3) < 0.1  # each attribute with its entity
    assert min(tv(0, 2), tv(0, 3), tv(1, 2), tv(1, 3)) > 0.9  # the two objects apart


def test_token_tv_and_cover_share_hand_values():
    from llm4gen.attention import cover_share, grid_side
    from llm4gen.training.losses import token_tv

    m = torch.tensor([[[0.2, 0.8, 1.0], [0.8, 0.2, 3.0]]])  # [B=1, HW=2, T=3]
    # token maps (0.2, 0.8), (0.8, 0.2), (0.25, 0.75) once normalised over space
    assert token_tv(m, [(0, 0, 1), (0, 0, 2), (0, 2, 2)]).tolist() == pytest.approx([0.6, 0.05, 0.0])
    assert token_tv(m, []).shape == (0,)
    covers = torch.tensor([[1.0, 0.0], [0.5, 1.0]])
    assert cover_share(m, [(0, 0), (0, 2)], covers).tolist() == pytest.approx([0.2, 0.125 + 0.75])
    with pytest.raises(ValueError, match="covers must be"):
        cover_share(m, [(0, 0)], covers)
    assert grid_side(torch.zeros(1, 16, 3)) == 4
    with pytest.raises(ValueError, match="square attention grids"):
        grid_side(torch.zeros(1, 6, 3))


def test_snr_weighting_matches_hand_computation():
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(num_train_timesteps=1000)
    pred, target = torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2)
    t = torch.tensor([10, 900])
    alpha_bar = sched.alphas_cumprod[t]
    snr = alpha_bar / (1 - alpha_bar)
    want = (torch.clamp(snr, max=5.0) / snr).mean()  # per-sample MSE is 1
    assert diffusion_loss(pred, target, t, sched, snr_gamma=5.0).item() == pytest.approx(want.item(), rel=1e-5)
    assert diffusion_loss(pred, target, t, sched).item() == 1.0


def test_timestep_weights_hand_values():
    torch.testing.assert_close(timestep_weights(4), torch.full((4,), 0.25, dtype=torch.float64))
    # earlier, a quarter of 8 favoured three times: [3, 3, 1, 1, 1, 1, 1, 1] / 12
    want = torch.tensor([3, 3, 1, 1, 1, 1, 1, 1], dtype=torch.float64) / 12
    torch.testing.assert_close(timestep_weights(8, "earlier", 3.0, 0.25), want)
    torch.testing.assert_close(timestep_weights(8, "later", 3.0, 0.25), want.flip(0))
    # range [2, 5) of 6, twice as often: [1, 1, 2, 2, 2, 1] / 9
    want = torch.tensor([1, 1, 2, 2, 2, 1], dtype=torch.float64) / 9
    torch.testing.assert_close(timestep_weights(6, "range", 2.0, begin_end=[2, 5]), want)
    # diffusers-sized: the last quarter four times as often holds 4 * 250 / (750 + 4 * 250) of the draws
    w = timestep_weights(1000, "later", 4.0, 0.25)
    assert float(w[750:].sum()) == pytest.approx(1000 / 1750) and float(w[749]) == pytest.approx(1 / 1750)
    for kw, match in [({"strategy": "range", "begin_end": [5, 1001]}, "0 <= begin < end <= 1000"),
                      ({"strategy": "later", "portion": 0.0001}, "leaves some on both sides"),
                      ({"strategy": "sideways"}, "none, later, earlier or range"),
                      ({"strategy": "later", "multiplier": 0.0}, "positive")]:
        with pytest.raises(ValueError, match=match):
            timestep_weights(1000, **kw)


@pytest.mark.parametrize("kw, match", [
    ({"timestep_bias": "late"}, "timestep_bias must be one of"),
    ({"timestep_bias_multiplier": 3.0}, "does nothing with timestep_bias: none"),
    ({"timestep_bias": "later", "timestep_bias_multiplier": -1.0}, "positive number"),
    ({"timestep_bias": "later", "timestep_bias_portion": 1.0}, r"portion must be in \(0, 1\)"),
    ({"timestep_bias": "range"}, "needs timestep_bias_range"),
    ({"timestep_bias": "later", "timestep_bias_range": [0, 10]}, "needs timestep_bias_range"),
    ({"timestep_bias": "range", "timestep_bias_range": [10, 10]}, "0 <= begin < end"),
])
def test_timestep_bias_bad_config(kw, match):
    with pytest.raises(ValueError, match=match):
        load_config({"output_dir": "o", "base_model": "b", **kw})


def test_timestep_bias_reaches_the_training_draws(base, tiny_llm_dirs, tmp_path, monkeypatch):
    import llm4gen.training.trainer as trainer
    from llm4gen.training.data import step_generator

    seen = []
    real = trainer.diffusion_loss

    def spy(pred, target, timesteps, *args, **kwargs):
        seen.append(timesteps.clone())
        return real(pred, target, timesteps, *args, **kwargs)

    monkeypatch.setattr(trainer, "diffusion_loss", spy)
    train(_cfg(base, tiny_llm_dirs["bert"], tmp_path / "u"), progress=False)
    # no bias: the uniform draws that runs made before the option existed, batch by batch
    want = [torch.randint(0, 1000, (4,), generator=step_generator(0, b, "timesteps")) for b in range(3)]
    assert all(torch.equal(s.cpu(), w) for s, w in zip(seen, want, strict=True))
    seen.clear()
    train(_cfg(base, tiny_llm_dirs["bert"], tmp_path / "b", max_train_steps=20, timestep_bias="range",
               timestep_bias_range=[990, 1000], timestep_bias_multiplier=1e9), progress=False)
    drawn = torch.cat(seen)
    assert len(drawn) == 80 and bool((drawn >= 990).all())  # uniform draws would land there 1% of the time
    with pytest.raises(ValueError, match="within the scheduler's 1000 timesteps"):
        train(_cfg(base, tiny_llm_dirs["bert"], tmp_path / "x", timestep_bias="range",
                   timestep_bias_range=[900, 1200], timestep_bias_multiplier=2.0), progress=False)


# ---------------------------------------------------------------------- cache
def test_feature_cache(tmp_path):
    cache = FeatureCache(tmp_path, dtype=torch.float32)
    x = {"clip": torch.randn(3, 4)}
    cache.put("ns1", "a red cube", x)
    torch.testing.assert_close(cache.get("ns1", "a red cube")["clip"], x["clip"])  # pending entries are served too
    cache.flush()
    torch.testing.assert_close(FeatureCache(tmp_path, dtype=torch.float32).get("ns1", "a red cube")["clip"], x["clip"])
    assert cache.get("ns1", "a red cube.") is None  # a changed caption is a different entry
    assert cache.get("ns2", "a red cube") is None  # another model / settings
    assert FeatureCache(tmp_path).get("ns1", "a red cube") is None  # another storage dtype
    shard = next(p for p in tmp_path.rglob("shard-*.safetensors"))
    shard.write_bytes(b"broken")
    with pytest.warns(UserWarning, match="damaged cache shard"):
        assert FeatureCache(tmp_path, dtype=torch.float32).get("ns1", "a red cube") is None  # recomputed, not trusted
    lin = torch.nn.Linear(3, 3)
    before = model_fingerprint(lin, "m", max_length=8)
    assert before == model_fingerprint(lin, "m", max_length=8) != model_fingerprint(lin, "m", max_length=9)
    with torch.no_grad():
        lin.weight[0, 0] += 1
    assert model_fingerprint(lin, "m", max_length=8) != before


def test_feature_cache_shards_are_few_shared_and_survive_an_interrupted_build(tmp_path):
    row = {"llm": torch.randn(5, 8), "ids": torch.arange(3)}
    writer = FeatureCache(tmp_path, shard_bytes=400)  # bf16: 80 bytes of features + 24 of ids per entry
    stored = [writer.put("ns", f"caption {i}", row) for i in range(10)]
    assert stored[0]["llm"].dtype == torch.bfloat16 and stored[0]["ids"].dtype == torch.int64
    torch.testing.assert_close(stored[0]["llm"], row["llm"].to(torch.bfloat16))  # put returns what get will give
    shards = sorted(tmp_path.rglob("shard-*.safetensors"))
    assert len(shards) == 2  # 4 entries per shard; the last 2 entries are still in memory
    # a second process sees the finished shards at once, not the unflushed entries: an interrupted build keeps 8
    reader = FeatureCache(tmp_path)
    got = [reader.get("ns", f"caption {i}") for i in range(10)]
    assert [g is not None for g in got] == [True] * 8 + [False] * 2
    assert torch.equal(got[3]["llm"], stored[3]["llm"]) and torch.equal(got[3]["ids"], row["ids"])
    writer.flush()
    time.sleep(1.1)  # a miss looks for new shards at most once a second
    assert torch.equal(reader.get("ns", "caption 9")["llm"], stored[9]["llm"])
    assert reader.size() == (10, sum(p.stat().st_size for p in tmp_path.rglob("shard-*.safetensors")))
    assert not list(tmp_path.rglob("*.tmp"))  # shards are renamed into place whole


def test_old_cache_format_is_named_and_rebuilt(tmp_path):
    from safetensors.torch import save_file

    old = tmp_path / "clip-0123456789abcdef0123" / "ab"
    old.mkdir(parents=True)
    save_file({"clip": torch.zeros(2)}, old / ("ab" + "0" * 62 + ".safetensors"))
    with pytest.warns(UserWarning, match=r"1 cache entries .* old one-file-per-item format .* computed again"):
        cache = FeatureCache(tmp_path)
    assert cache.get("clip-0123456789abcdef0123", "x") is None


@pytest.mark.parametrize("padding", ["longest", "max_length"])
def test_llm_rows_from_the_cache_equal_the_encoder_output(tiny_llm_dirs, tmp_path, padding):
    from llm4gen import LLMEncoder
    from llm4gen.feature_cache import llm_batch, llm_entry

    enc = LLMEncoder.from_pretrained(tiny_llm_dirs["bert"], max_length=24, padding=padding)
    prompts = ["a red circle", "a small blue square to the left of a large green star on grey", ""]
    with torch.no_grad():
        out = enc.encode(prompts)
    cache = FeatureCache(tmp_path)  # bf16
    for keep in (False, True):
        for p, f, m in zip(prompts, out.embeds, out.attention_mask):
            cache.put(f"ns-{keep}", p, llm_entry(f, m, keep_padding=keep))
        cache.flush()
        entries = [FeatureCache(tmp_path).get(f"ns-{keep}", p) for p in prompts]
        if not keep:  # real tokens only: each entry is as long as its prompt
            assert [e["llm"].shape[0] for e in entries] == out.attention_mask.sum(1).tolist()
        feats, mask = llm_batch(entries, pad_to=24 if padding == "max_length" else None)
        assert feats.shape == out.embeds.shape and torch.equal(mask, out.attention_mask.long())
        real = mask.bool()
        torch.testing.assert_close(feats[real], out.embeds[real], rtol=1e-2, atol=1e-2)  # bf16 storage
        if keep:  # padded features kept for a UNet that reads them
            torch.testing.assert_close(feats, out.embeds, rtol=1e-2, atol=1e-2)
        else:  # padding comes back as zeros, which the masked UNet never reads
            assert not feats[~real].any()
    with pytest.raises(ValueError, match="right padding"):
        llm_entry(torch.zeros(3, 2), torch.tensor([0, 1, 1]))


# ---------------------------------------------------------------------- end to end
def test_full_mode_with_everything(base, tiny_llm_dirs, tmp_path):
    from llm4gen import LLM4GenPipeline

    cfg = _cfg(base, tiny_llm_dirs["bert"], tmp_path / "run", max_train_steps=4, use_ema=True, ema_decay=0.9,
               entity_loss_weight=0.5, cache_dir=str(tmp_path / "cache"), snr_gamma=5.0, noise_offset=0.05,
               gradient_accumulation_steps=2, checkpointing_steps=2, checkpoints_total_limit=1,
               validation_prompts=["a red circle", "a blue star"], validation_steps=4,
               validation_num_inference_steps=2)
    result = train(cfg, progress=False)
    assert len(result.losses) == 4 and all(np.isfinite(result.losses))
    out = tmp_path / "run"
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["checkpoint-00000004"]  # only the last kept
    assert (out / "validation" / "step-00000004.png").is_file()
    logs = [json.loads(line) for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs] == [1, 2, 3, 4] and logs[-1]["loss_entity"] > 0
    pipe = LLM4GenPipeline.from_pretrained(out)
    assert pipe("a red circle", num_inference_steps=2, output_type="np").images.shape == (1, 32, 32, 3)


def test_the_push_term_reaches_the_training_loss(base, tiny_llm_dirs, tmp_path):
    term, flag = "negatives", "entity_loss_negatives"
    logged = {}
    for on in (False, True):
        out = tmp_path / f"{term}-{on}"
        train(_cfg(base, tiny_llm_dirs["bert"], out, max_train_steps=1, caption_dropout=0.0, entity_loss_weight=0.5,
                   **{flag: on}), progress=False)
        logged[on] = json.loads((out / "logs" / "metrics.jsonl").read_text().splitlines()[0])
    # same batch, noise and weights at step 1: the two runs differ by the term alone, in (0, 1]; for a tiny untrained
    # UNet the maps are nearly alike (push term near 1)
    assert logged[True]["loss_diffusion"] == pytest.approx(logged[False]["loss_diffusion"])
    assert 0.5 < logged[True]["loss_entity"] - logged[False]["loss_entity"] <= 1.0
    with pytest.raises(ValueError, match=f"{flag} needs entity_loss_weight"):
        _cfg(base, tiny_llm_dirs["bert"], tmp_path / "x", **{flag: True})
    # the grounding term (ShapesWorld only) left in 0.2: a config that still names it is told which keys exist
    with pytest.raises(ValueError, match=r"Unknown config key\(s\): entity_loss_grounding"):
        _cfg(base, tiny_llm_dirs["bert"], tmp_path / "x", entity_loss_grounding=True, entity_loss_weight=0.1)


def test_entity_targets_point_at_the_words_in_each_token_space(base):
    """Positions from both token spaces, read back in the fused (CLIP window + LLM) sequence, spell the words."""
    from transformers import AutoTokenizer, CLIPTokenizerFast

    from llm4gen.encoders import resolve_model_reference
    from llm4gen.tiny import MINILM_REF
    from llm4gen.training.trainer import TokenSpace, entity_targets

    clip_tok = CLIPTokenizerFast.from_pretrained(base, subfolder="tokenizer")
    llm_tok = AutoTokenizer.from_pretrained(resolve_model_reference(MINILM_REF))
    text = "a red circle and a blue square"
    window, prefix = clip_tok.model_max_length, "pre "

    def word_at(offsets, shift=0):  # the caption's word each token starts in ("" for special / padding tokens)
        return [text[:s - shift].split(" ")[-1] + text[s - shift:].split(" ")[0] if e > s else "" for s, e in offsets]

    clip_offsets = clip_tok(text, padding="max_length", max_length=window, return_offsets_mapping=True)
    llm_offsets = llm_tok(prefix + text, return_offsets_mapping=True)["offset_mapping"]
    fused = word_at(clip_offsets["offset_mapping"]) + word_at(llm_offsets, len(prefix))
    assert len(fused) == window + len(llm_offsets) and "circle" in fused[:window] and "circle" in fused[window:]
    spaces = [TokenSpace(clip_tok, "", 0, window), TokenSpace(llm_tok, prefix, window, len(llm_offsets))]
    pairs, negatives = entity_targets([text], spaces, negatives=True)
    words = sorted((fused[a], fused[e], a < window) for a, e in pairs[0])
    assert words == [("blue", "square", False), ("blue", "square", True), ("red", "circle", False),
                     ("red", "circle", True)]
    # push pairs join the two mentions within each space, never across spaces
    assert {frozenset((fused[x], fused[y])) for x, y in negatives[0]} == {
        frozenset(p) for p in [("red", "blue"), ("red", "square"), ("circle", "blue"), ("circle", "square")]}
    assert all((x < window) == (y < window) for x, y in negatives[0])
    # a short window keeps only the words inside it (its last slot is the end token, as the encoder truncates);
    # no negatives asked, none given
    short = [TokenSpace(clip_tok, "", 0, fused.index("circle") + 2)]
    pairs, negatives = entity_targets([text], short)
    assert [(fused[a], fused[e]) for a, e in pairs[0]] == [("red", "circle")] and negatives is None
    assert entity_targets([text], [TokenSpace(clip_tok, "", 0, fused.index("circle") + 1)])[0] == [[]]


@pytest.mark.parametrize("tokens", ["clip", "both"])
def test_entity_loss_tokens_choose_the_maps(base, tiny_llm_dirs, tmp_path, tokens):
    logged = {}
    for which in ("auto", tokens):
        out = tmp_path / which
        train(_cfg(base, tiny_llm_dirs["bert"], out, max_train_steps=1, caption_dropout=0.0, entity_loss_weight=0.5,
                   entity_loss_tokens=which), progress=False)
        logged[which] = json.loads((out / "logs" / "metrics.jsonl").read_text().splitlines()[0])
    # same batch and weights: only the token positions the loss reads differ
    assert logged[tokens]["loss_diffusion"] == pytest.approx(logged["auto"]["loss_diffusion"])
    assert 0 < logged[tokens]["loss_entity"] <= 1 and logged[tokens]["loss_entity"] != logged["auto"]["loss_entity"]
    with pytest.raises(ValueError, match="entity_loss_tokens: both needs an LLM"):
        _cfg(base, None, tmp_path / "x", entity_loss_tokens="both")
    with pytest.raises(ValueError, match="entity_loss_tokens must be one of"):
        _cfg(base, None, tmp_path / "x", entity_loss_tokens="t5")


def test_entity_loss_on_the_base_arm_keeps_to_the_clip_window(base, tmp_path):
    """Without an LLM the loss reads CLIP tokens; ShapesWorld's dense captions run past the tiny CLIP's window, and
    words beyond it have no token to attend to, so they must be left out rather than indexed."""
    from transformers import CLIPTokenizer

    from llm4gen.data.sources import make_source

    tok = CLIPTokenizer.from_pretrained(base, subfolder="tokenizer")
    out = tmp_path / "base-arm"
    cfg = _cfg(base, None, out, max_train_steps=2, caption_dropout=0.0, entity_loss_weight=0.5,
               entity_loss_negatives=True, data={"type": "shapesworld", "num_items": 64, "caption_style": "dense"})
    captions = [make_source(cfg.data, cfg.resolution)[i].caption for i in range(8)]
    assert max(len(tok(c).input_ids) for c in captions) > tok.model_max_length  # the case this test is about
    train(cfg, progress=False)
    logs = [json.loads(line) for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert all(0 < r["loss_entity"] <= 2 for r in logs)


@pytest.mark.parametrize("mode", ["lora", "frozen"])
def test_unet_modes(base, tiny_llm_dirs, tmp_path, mode):
    from diffusers import UNet2DConditionModel

    from llm4gen import LLM4GenPipeline

    before = UNet2DConditionModel.from_pretrained(base, subfolder="unet").state_dict()
    train(_cfg(base, tiny_llm_dirs["bert"], tmp_path / mode, train_unet=mode), progress=False)
    after = LLM4GenPipeline.from_pretrained(tmp_path / mode).unet.state_dict()
    assert set(after) == set(before)  # LoRA is merged into the saved UNet
    changed = any(not torch.equal(before[k], after[k]) for k in before)
    assert changed == (mode == "lora")
    if mode == "lora":
        assert (tmp_path / mode / "lora" / "pytorch_lora_weights.safetensors").is_file()


def test_base_arm_without_llm(base, tmp_path):
    from diffusers import StableDiffusionPipeline

    train(_cfg(base, None, tmp_path / "base-arm", caption_dropout=0.0), progress=False)
    index = json.loads((tmp_path / "base-arm" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline" and "adapter" not in index
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "base-arm")
    assert pipe("a red circle", num_inference_steps=2, output_type="np").images.shape == (1, 32, 32, 3)


def test_fresh_unet_from_config_and_v_prediction(base, tiny_llm_dirs, tmp_path):
    unet_cfg = {"sample_size": 16, "in_channels": 4, "out_channels": 4, "layers_per_block": 1,
                "block_out_channels": [16, 32], "norm_num_groups": 8, "cross_attention_dim": 32,
                "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
                "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "attention_head_dim": 4}
    train(_cfg(base, tiny_llm_dirs["bert"], tmp_path / "fresh", unet=unet_cfg, prediction_type="v_prediction"),
          progress=False)
    sched = json.loads((tmp_path / "fresh" / "scheduler" / "scheduler_config.json").read_text())
    assert sched["prediction_type"] == "v_prediction"
    with pytest.raises(ValueError, match="cross_attention_dim"):
        train(_cfg(base, tiny_llm_dirs["bert"], tmp_path / "bad", unet={**unet_cfg, "cross_attention_dim": 16}),
              progress=False)


def test_zero_terminal_snr_rescales_the_schedule_and_samples_from_the_last_step(base, tiny_llm_dirs, tmp_path):
    from diffusers import DDIMScheduler, DDPMScheduler

    from llm4gen import LLM4GenPipeline
    from llm4gen.training.trainer import _load_frozen

    with pytest.raises(ValueError, match="use prediction_type: v_prediction"):
        _cfg(base, tiny_llm_dirs["bert"], tmp_path / "x", zero_terminal_snr=True, prediction_type="epsilon")
    orig = DDPMScheduler.from_pretrained(base, subfolder="scheduler")
    assert orig.config.prediction_type == "epsilon"  # the tiny base's: the flag alone is refused at load
    with pytest.raises(ValueError, match="predicts epsilon"):
        _load_frozen(_cfg(base, tiny_llm_dirs["bert"], tmp_path / "x", zero_terminal_snr=True))
    cfg = _cfg(base, tiny_llm_dirs["bert"], tmp_path / "z", zero_terminal_snr=True, prediction_type="v_prediction")
    sched = _load_frozen(cfg)[2]
    # Lin et al. 2024, algorithm 1 by hand: shift sqrt(alpha_bar) so the last is 0, scale so the first is kept
    ab = orig.alphas_cumprod.double().sqrt()
    want = ((ab - ab[-1]) * ab[0] / (ab[0] - ab[-1])) ** 2
    torch.testing.assert_close(sched.alphas_cumprod.double(), want, rtol=1e-5, atol=1e-9)
    assert sched.alphas_cumprod[-1] == 0 and sched.config.prediction_type == "v_prediction"
    result = train(cfg, progress=False)
    assert all(np.isfinite(result.losses))
    saved = LLM4GenPipeline.from_pretrained(tmp_path / "z").scheduler
    assert isinstance(saved, DDIMScheduler) and saved.config.rescale_betas_zero_snr
    saved.set_timesteps(4)
    assert saved.alphas_cumprod[-1] == 0 and int(saved.timesteps[0]) == orig.config.num_train_timesteps - 1


def test_adapter_init_takes_matching_settings_and_refuses_the_rest(base, tiny_llm_dirs, tmp_path):
    from safetensors.torch import load_file

    train(_cfg(base, tiny_llm_dirs["bert"], tmp_path / "first", max_train_steps=1), progress=False)
    init = str(tmp_path / "first" / "adapter")
    first = json.loads((tmp_path / "first" / "adapter" / "config.json").read_text())
    out = tmp_path / "again"
    train(_cfg(base, tiny_llm_dirs["bert"], out, max_train_steps=1, adapter_init=init,
               adapter={"num_heads": first["num_heads"], "scale": 0.5}), progress=False)
    saved = json.loads((out / "adapter" / "config.json").read_text())
    assert saved["scale"] == 0.5  # scale (λ) is a setting, not a weight: it may change
    assert {k: v for k, v in saved.items() if k not in ("scale", "_name_or_path")} == {
        k: v for k, v in first.items() if k not in ("scale", "_name_or_path")}
    with pytest.raises(ValueError, match=r"adapter.ffn_mult=3 but adapter_init .* was trained with ffn_mult=4"):
        train(_cfg(base, tiny_llm_dirs["bert"], tmp_path / "x", adapter_init=init, adapter={"ffn_mult": 3}),
              progress=False)
    with pytest.raises(ValueError, match=r"Unknown config key\(s\): adapter.heads \(did you mean 'num_heads'\?\)"):
        _cfg(base, tiny_llm_dirs["bert"], tmp_path / "y", adapter={"heads": 2})  # refused with the config
    with pytest.raises(ValueError, match=r"Unknown config key\(s\): adapter.gated"):  # the gated CAM left in 0.2
        _cfg(base, tiny_llm_dirs["bert"], tmp_path / "z", adapter={"gated": True})
    # the authors' projector.pth holds no head count: the config's is used, and then kept
    from llm4gen.adapter import _OFFICIAL_TO_OURS

    ours = load_file(tmp_path / "first" / "adapter" / "diffusion_pytorch_model.safetensors")
    torch.save({old: ours["layers.0." + new] for old, new in _OFFICIAL_TO_OURS.items()}, tmp_path / "projector.pth")
    heads = 1 if first["num_heads"] != 1 else 2
    train(_cfg(base, tiny_llm_dirs["bert"], tmp_path / "official", max_train_steps=1,
               adapter_init=str(tmp_path / "projector.pth"), adapter={"num_heads": heads}), progress=False)
    assert json.loads((tmp_path / "official" / "adapter" / "config.json").read_text())["num_heads"] == heads


def test_resume_matches_uninterrupted_run(base, tiny_llm_dirs, tmp_path):
    common = dict(max_train_steps=6, checkpointing_steps=3, use_ema=True, caption_dropout=0.3)
    full = train(_cfg(base, tiny_llm_dirs["bert"], tmp_path / "full", **common), progress=False)

    def crash(step, loss):
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_cfg(base, tiny_llm_dirs["bert"], tmp_path / "cut", **common), progress=False, on_step=crash)
    resumed = train(_cfg(base, tiny_llm_dirs["bert"], tmp_path / "cut", **common), resume="latest", progress=False)
    np.testing.assert_allclose(resumed.losses, full.losses, rtol=1e-5, atol=1e-7)
    from safetensors.torch import load_file

    a = load_file(tmp_path / "full" / "adapter" / "diffusion_pytorch_model.safetensors")
    b = load_file(tmp_path / "cut" / "adapter" / "diffusion_pytorch_model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_resume_with_another_prediction_type_restarts_the_ema(base, tiny_llm_dirs, tmp_path):
    """EMA after one step: continued run -> d * ema3 + (1 - d) * w4 with the warm-up d of step 3 (4 / 13); a run
    switched to v-prediction -> the average restarts from w3, so 0.1 * w3 + 0.9 * w4 (warm-up from zero)."""
    from safetensors.torch import load_file

    first = _cfg(base, tiny_llm_dirs["bert"], tmp_path / "eps", max_train_steps=3, checkpointing_steps=3,
                 use_ema=True, ema_decay=0.999)
    train(first, progress=False)
    ckpt = tmp_path / "eps" / "checkpoints" / "checkpoint-00000003"
    w3, ema3 = load_file(ckpt / "trained.safetensors"), load_file(ckpt / "ema.safetensors")
    assert json.loads((ckpt / "trainer_state.json").read_text())["prediction_type"] == "epsilon"
    for name, kw, expect in [("same", {}, lambda w4, k: 4 / 13 * ema3[k] + 9 / 13 * w4[k]),
                             ("v", {"prediction_type": "v_prediction"}, lambda w4, k: 0.1 * w3[k] + 0.9 * w4[k])]:
        cfg = _cfg(base, tiny_llm_dirs["bert"], tmp_path / name, max_train_steps=4, checkpointing_steps=4,
                   use_ema=True, ema_decay=0.999, **kw)
        train(cfg, resume=str(ckpt), progress=False)
        out = tmp_path / name / "checkpoints" / "checkpoint-00000004"
        w4, ema4 = load_file(out / "trained.safetensors"), load_file(out / "ema.safetensors")
        state = json.loads((out / "trainer_state.json").read_text())
        assert state["ema_start"] == (3 if name == "v" else 0)
        assert any(not torch.equal(w4[k], w3[k]) for k in w4)
        for k in ema4:
            torch.testing.assert_close(ema4[k], expect(w4, k), rtol=1e-5, atol=1e-7)


def test_config_changes_names_each_changed_setting_nested_too():
    from llm4gen.training.trainer import config_changes

    then = {"timestep_bias": "none", "learning_rate": 1e-3, "log_every": 10, "output_dir": "a",
            "data": {"type": "shapesworld", "max_objects": 4, "log_every": 1}, "old_key": 1}
    now = {"timestep_bias": "range", "learning_rate": 1e-3, "log_every": 50, "output_dir": "b",
           "data": {"type": "shapesworld", "max_objects": 1, "log_every": 2}}
    assert config_changes(then, now) == ["data.log_every: 1 -> 2", "data.max_objects: 4 -> 1",
                                         "old_key: 1 -> '<missing>'", "timestep_bias: 'none' -> 'range'"]
    assert config_changes(then, then) == []


def test_resume_with_changed_settings_says_which(base, tiny_llm_dirs, tmp_path, capsys):
    first = _cfg(base, tiny_llm_dirs["bert"], tmp_path / "a", max_train_steps=2, checkpointing_steps=2)
    train(first, progress=False)
    ckpt = tmp_path / "a" / "checkpoints" / "checkpoint-00000002"
    capsys.readouterr()
    train(_cfg(base, tiny_llm_dirs["bert"], tmp_path / "a", max_train_steps=3, checkpointing_steps=2),
          resume="latest", progress=False)
    out = capsys.readouterr().out
    assert f"resumed from {ckpt}" in out and "Settings changed since checkpoint-00000002" in out
    assert "max_train_steps: 2 -> 3" in out and "timestep_bias" not in out and "checkpointing_steps" not in out
    train(_cfg(base, tiny_llm_dirs["bert"], tmp_path / "b", max_train_steps=3, checkpointing_steps=5, log_every=2,
               timestep_bias="later", data={"type": "shapesworld", "num_items": 64, "max_objects": 2}),
          resume=str(ckpt), progress=False)
    out = capsys.readouterr().out
    assert "timestep_bias: 'none' -> 'later'" in out and "data.max_objects: 4 -> 2" in out
    assert "output_dir" not in out and "log_every" not in out and "checkpointing_steps" not in out


def test_cache_gives_the_same_training(base, tiny_llm_dirs, tmp_path):
    plain = train(_cfg(base, tiny_llm_dirs["bert"], tmp_path / "plain"), progress=False)
    fp32 = train(_cfg(base, tiny_llm_dirs["bert"], tmp_path / "fp32", cache_dir=str(tmp_path / "c32"),
                      cache_dtype="float32"), progress=False)
    cold = train(_cfg(base, tiny_llm_dirs["bert"], tmp_path / "cold", cache_dir=str(tmp_path / "c")), progress=False)
    warm = train(_cfg(base, tiny_llm_dirs["bert"], tmp_path / "warm", cache_dir=str(tmp_path / "c")), progress=False)
    assert cold.cache_hits < cold.cache_misses and warm.cache_misses == 0 and warm.cache_hits > 0
    np.testing.assert_allclose(fp32.losses, plain.losses, rtol=1e-5)  # float32 storage: the features themselves
    assert warm.losses == cold.losses  # the run that fills the cache computes with the stored (bf16) features
    np.testing.assert_allclose(cold.losses, plain.losses, rtol=2e-2)  # bf16 features: close to float32
    with pytest.raises(ValueError, match="cache_dtype must be one of"):
        _cfg(base, tiny_llm_dirs["bert"], tmp_path / "x", cache_dtype="int8")


def test_resume_with_a_cache_is_bit_identical(base, tiny_llm_dirs, tmp_path):
    """The interrupted run leaves part of the features in the cache: the resumed run reads those and computes the
    rest, and ends with exactly the weights of an uninterrupted run that computed them all."""
    from safetensors.torch import load_file

    common = dict(max_train_steps=4, checkpointing_steps=2, caption_dropout=0.3)
    train(_cfg(base, tiny_llm_dirs["bert"], tmp_path / "full", cache_dir=str(tmp_path / "c1"), **common),
          progress=False)

    def crash(step, loss):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_cfg(base, tiny_llm_dirs["bert"], tmp_path / "cut", cache_dir=str(tmp_path / "c2"), **common),
              progress=False, on_step=crash)
    resumed = train(_cfg(base, tiny_llm_dirs["bert"], tmp_path / "cut", cache_dir=str(tmp_path / "c2"), **common),
                    resume="latest", progress=False)
    assert resumed.cache_hits > 0 and resumed.cache_misses > 0  # step 3's features came back, step 4's were new
    for part in ("adapter", "unet"):
        a = load_file(tmp_path / "full" / part / "diffusion_pytorch_model.safetensors")
        b = load_file(tmp_path / "cut" / part / "diffusion_pytorch_model.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_nan_loss_stops_and_keeps_checkpoint(base, tiny_llm_dirs, tmp_path, monkeypatch):
    import llm4gen.training.trainer as trainer

    calls = {"n": 0}
    real = trainer.diffusion_loss

    def flaky(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(trainer, "diffusion_loss", flaky)
    with pytest.raises(TrainingDivergedError, match="step 3 "):
        train(_cfg(base, tiny_llm_dirs["bert"], tmp_path / "nan", max_train_steps=5, checkpointing_steps=1),
              progress=False)
    assert sorted(p.name for p in (tmp_path / "nan" / "checkpoints").iterdir() if not p.name.startswith(".")) == [
        "checkpoint-00000001", "checkpoint-00000002"]


def test_bad_data_and_models(base, tiny_llm_dirs, tmp_path):
    from llm4gen.shapesworld.world import write_dataset

    folder = write_dataset(tmp_path / "imgs", 8, progress=False)
    cfg = _cfg(base, tiny_llm_dirs["bert"], tmp_path / "o",
               data={"type": "imagefolder", "path": str(folder), "caption_column": "caption"})
    with pytest.raises(ValueError, match="no 'caption' field.*data.caption_column"):
        train(cfg, progress=False)
    lines = (folder / "metadata.jsonl").read_text().splitlines()
    rec = json.loads(lines[0])
    rec["text"] = "  "
    (folder / "metadata.jsonl").write_text("\n".join([json.dumps(rec)] + lines[1:]) + "\n")
    cfg = _cfg(base, tiny_llm_dirs["bert"], tmp_path / "o", data={"type": "imagefolder", "path": str(folder)})
    with pytest.raises(ValueError, match="caption of '000000.png' is empty"):
        train(cfg, progress=False)
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "000001.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="000001.png"):
        train(_cfg(base, tiny_llm_dirs["bert"], tmp_path / "o", train_batch_size=8,
                   data={"type": "imagefolder", "path": str(folder)}), progress=False)
    with pytest.raises(OSError, match="does not exist|base model"):
        train(_cfg(str(tmp_path / "missing" / "base"), tiny_llm_dirs["bert"], tmp_path / "o"), progress=False)


def test_imagefolder_training_and_cli(base, tiny_llm_dirs, tmp_path):
    from typer.testing import CliRunner

    from llm4gen.cli import app
    from llm4gen.shapesworld.world import ShapesWorldConfig, write_dataset

    folder = write_dataset(tmp_path / "imgs", 8, config=ShapesWorldConfig(size=32), progress=False)
    cfg = {"output_dir": str(tmp_path / "cli"), "base_model": base, "llm": tiny_llm_dirs["bert"],
           "llm_max_length": 160, "resolution": 32, "train_batch_size": 4, "max_train_steps": 2,
           "data": {"type": "imagefolder", "path": str(folder)}}
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    res = CliRunner().invoke(app, ["train", str(path)])
    assert res.exit_code == 0, res.output
    assert "trained 2 steps" in res.output and (tmp_path / "cli" / "model_index.json").is_file()
    res = CliRunner().invoke(app, ["train", str(path), "--resume", "latest", "--max-train-steps", "3"])
    assert res.exit_code == 0, res.output
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**cfg, "batch_size": 4}))
    res = CliRunner().invoke(app, ["train", str(bad)])
    assert res.exit_code == 1 and "batch_size" in res.output and "train_batch_size" in res.output


def test_two_processes_match_one(base, tiny_llm_dirs, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` on CPU (gloo): the same losses as one process with 2x batch."""
    def cfg_file(name, batch):
        cfg = {"output_dir": str(tmp_path / name), "base_model": base, "llm": tiny_llm_dirs["bert"],
               "llm_max_length": 160, "resolution": 32, "train_batch_size": batch, "max_train_steps": 2,
               "caption_dropout": 0.0, "data": {"type": "shapesworld", "num_items": 32}, "log_every": 1}
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(cfg))
        return path

    one = train(load_config(cfg_file("one", 4)), progress=False)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "llm4gen", "train", str(cfg_file("two", 2))]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("trained 2 steps") == 1  # one run across two processes, reported by the main one
    assert "training on 2 processes, DDP (cpu)" in proc.stdout
    logs = [json.loads(line) for line in (tmp_path / "two" / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs] == [1, 2]
    np.testing.assert_allclose([r["loss"] for r in logs], one.losses, rtol=1e-4)
    assert Path(tmp_path / "two" / "model_index.json").is_file()


def test_epoch_items_follow_the_training_split_and_cover_the_dataset_once():
    n, per_process, world, seed = 23, 3, 2, 5
    parts = [epoch_items(n, per_process, world, r, seed) for r in range(world)]
    assert sorted(parts[0] + parts[1]) == list(range(n))
    for r in range(world):  # the whole global batches first, exactly as training takes them
        trained = [i for b in range(n // (per_process * world)) for i in batch_indices(b, n, per_process, world, r,
                                                                                       seed)]
        assert parts[r][: len(trained)] == trained


def test_cache_build_across_two_processes_leaves_training_nothing_to_compute(base, tiny_llm_dirs, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2 -m llm4gen cache build` on CPU (gloo), then a warm run."""
    from typer.testing import CliRunner

    from llm4gen.cli import app
    from llm4gen.shapesworld.world import ShapesWorldConfig, write_dataset

    folder = write_dataset(tmp_path / "imgs", 18, config=ShapesWorldConfig(size=32), progress=False)
    cfg = {"output_dir": str(tmp_path / "run"), "base_model": base, "llm": tiny_llm_dirs["bert"],
           "llm_max_length": 160, "resolution": 32, "train_batch_size": 4, "max_train_steps": 3,
           "caption_dropout": 0.5, "cache_dir": str(tmp_path / "cache"),
           "data": {"type": "imagefolder", "path": str(folder), "random_flip": True}, "log_every": 1}
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "llm4gen", "cache",
           "build", str(path), "--batch-size", "3"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("items: 18 ") == 1  # one summary, from the main process
    # 18 captions + "" through CLIP and the LLM, 18 images x 2 flips through the VAE
    assert "entries: " not in proc.stdout and " 19 " in proc.stdout and " 36 " in proc.stdout
    shards = sorted(p.name for p in (tmp_path / "cache").rglob("shard-*.safetensors"))
    warm = train(load_config(path), progress=False)
    assert warm.cache_misses == 0 and warm.cache_hits > 0
    res = CliRunner().invoke(app, ["cache", "build", str(path)])  # resumable: nothing left to compute
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "cache").rglob("shard-*.safetensors")) == shards
    res = CliRunner().invoke(app, ["cache", "build", str(path), "--set", "cache_dir=null"])
    assert res.exit_code == 1 and "set cache_dir" in res.output


# ---------------------------------------------------------------------- FSDP and DeepSpeed on two CPU processes
FINAL = "checkpoints/checkpoint-00000004/"


def _split_cfg(tmp_path, base, llm, name, batch, steps=4, **kw) -> Path:
    """A run for the FSDP / DeepSpeed comparisons: checkpoints at steps 2 and 4, EMA on, some captions dropped."""
    cfg = {"output_dir": str(tmp_path / name), "base_model": base, "llm": llm, "llm_max_length": 160,
           "resolution": 32, "train_batch_size": batch, "max_train_steps": steps, "checkpointing_steps": 2,
           "caption_dropout": 0.2, "use_ema": True, "data": {"type": "shapesworld", "num_items": 32}, "log_every": 1,
           **kw}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(cfg))
    return path


def _launch_two(accelerate_config: str, *args, script: str | None = None) -> str:
    """``accelerate launch --config_file configs/accelerate/NAME.yaml --num_processes 2`` of ``llm4gen train ARGS``
    (or of ``SCRIPT train ARGS``) on the CPU; its stdout."""
    root = Path(__file__).resolve().parents[1]
    program = [str(root / script)] if script else ["-m", "llm4gen"]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(root / "configs" / "accelerate" / f"{accelerate_config}.yaml"), "--num_processes", "2", *program,
           "train", *map(str, args)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _logged_losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()]


def _assert_matches_one_process(one: Path, other: Path, one_losses: list[float]) -> None:
    """``other`` (two processes) trained as ``one`` (one process, twice the batch) did: losses, the weights and EMA
    of the last checkpoint and of the final pipeline, and the whole AdamW state, up to float summation order."""
    from safetensors.torch import load_file

    np.testing.assert_allclose(_logged_losses(other), one_losses, rtol=1e-5)
    for rel in (FINAL + "trained.safetensors", FINAL + "ema.safetensors", "unet/diffusion_pytorch_model.safetensors",
                "adapter/diffusion_pytorch_model.safetensors"):
        a, b = load_file(one / rel), load_file(other / rel)
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(b[k], a[k], atol=1e-4, rtol=0, msg=f"{rel} {k}")
    optim = [torch.load(run / FINAL / "optimizer.pt", weights_only=True) for run in (one, other)]
    assert len(optim[0]["param_groups"]) == 2  # the UNet's and the CAM's
    assert [g["params"] for g in optim[1]["param_groups"]] == [g["params"] for g in optim[0]["param_groups"]]
    assert optim[0]["state"].keys() == optim[1]["state"].keys()
    torch.testing.assert_close(optim[1]["state"], optim[0]["state"], atol=1e-6, rtol=1e-3)


def _assert_identical(a: Path, b: Path) -> None:
    """Bit-identical fp32 weights and EMA in the last checkpoint and the final pipeline, and the same losses."""
    from safetensors.torch import load_file

    assert _logged_losses(a) == _logged_losses(b)
    for rel in (FINAL + "trained.safetensors", FINAL + "ema.safetensors", "unet/diffusion_pytorch_model.safetensors"):
        x, y = load_file(a / rel), load_file(b / rel)
        assert x.keys() == y.keys() and all(x[k].dtype == torch.float32 and torch.equal(x[k], y[k]) for k in x), rel


def _resume_step_2_in_one_process(tmp_path, base, llm, source: Path, **kw) -> list[float]:
    (tmp_path / "cross" / "checkpoints").mkdir(parents=True)
    shutil.copytree(source / "checkpoints" / "checkpoint-00000002",
                    tmp_path / "cross" / "checkpoints" / "checkpoint-00000002")
    return train(load_config(_split_cfg(tmp_path, base, llm, "cross", 4, **kw)), resume="latest",
                 progress=False).losses


def test_fsdp_across_two_processes_matches_one_and_resumes_in_either_mode(base, tiny_llm_dirs, tmp_path):
    """configs/accelerate/fsdp.yaml on two CPU processes (gloo; tests/fsdp_on_cpu.py lets accelerate's FSDP run on
    CPUs), with gradient accumulation: every trained parameter is split in two; losses, weights, EMA and optimizer
    state match one process with twice the batch; an FSDP checkpoint resumes in one process; validation samples and
    the final pipeline come from the gathered weights; with bf16 compute a run resumed under FSDP is bit-identical to
    an uninterrupted one."""
    llm = tiny_llm_dirs["bert"]

    def fsdp(*args):
        return _launch_two("fsdp", *args, script="tests/fsdp_on_cpu.py")  # the shipped config as it is

    accumulate = {"gradient_accumulation_steps": 2}
    one = train(load_config(_split_cfg(tmp_path, base, llm, "one", 4, **accumulate)), progress=False)
    out = fsdp(_split_cfg(tmp_path, base, llm, "whole", 2, validation_prompts=["a red circle"], validation_steps=4,
                          validation_num_inference_steps=2, **accumulate))
    assert "training on 2 processes, FSDP (cpu)" in out
    # conv_in's weight [32, 4, 3, 3] of the tiny UNet: 16 rows on each process
    assert out.count("DTensor (32, 4, 3, 3) local (16, 4, 3, 3)") == 2, out
    _assert_matches_one_process(tmp_path / "one", tmp_path / "whole", one.losses)
    assert (tmp_path / "whole" / "validation" / "step-00000004.png").is_file()

    cross = _resume_step_2_in_one_process(tmp_path, base, llm, tmp_path / "whole", **accumulate)
    np.testing.assert_allclose(cross, one.losses, rtol=1e-5)

    bf16 = {"mixed_precision": "bf16", **accumulate}  # bf16 compute, fp32 shards
    fsdp(_split_cfg(tmp_path, base, llm, "bf16", 2, **bf16))
    fsdp(_split_cfg(tmp_path, base, llm, "resumed", 2, steps=2, **bf16))  # stops at 2, goes on from there
    fsdp(_split_cfg(tmp_path, base, llm, "resumed", 2, **bf16), "--resume", "latest")
    _assert_identical(tmp_path / "bf16", tmp_path / "resumed")
    assert _logged_losses(tmp_path / "bf16") != _logged_losses(tmp_path / "whole")  # bf16 did compute in bf16


def test_deepspeed_zero2_across_two_processes_matches_one_and_resumes_in_either_mode(base, tiny_llm_dirs, tmp_path):
    """configs/accelerate/deepspeed_zero2.yaml on two CPU processes (DeepSpeed's CPU accelerator over gloo): fp32
    losses, weights, EMA and the AdamW state of both parameter groups (UNet, CAM), assembled whole from the two
    partitions, match one process with twice the batch, and its checkpoint resumes in one process; with bf16 (the
    config's precision: bf16 weights, fp32 masters) a resumed run is bit-identical to an uninterrupted one, the saved
    weights are the fp32 masters, and validation samples come from them."""
    pytest.importorskip("deepspeed")
    from safetensors.torch import load_file

    llm = tiny_llm_dirs["bert"]

    def deepspeed(*args):
        out = _launch_two("deepspeed_zero2", *args)
        assert "training on 2 processes, DeepSpeed ZeRO-2 (cpu)" in out
        return out

    one = train(load_config(_split_cfg(tmp_path, base, llm, "one", 4)), progress=False)
    deepspeed(_split_cfg(tmp_path, base, llm, "fp32", 2))
    _assert_matches_one_process(tmp_path / "one", tmp_path / "fp32", one.losses)
    cross = _resume_step_2_in_one_process(tmp_path, base, llm, tmp_path / "fp32")
    np.testing.assert_allclose(cross, one.losses, rtol=1e-5)

    bf16 = {"mixed_precision": "bf16"}
    deepspeed(_split_cfg(tmp_path, base, llm, "bf16", 2, validation_prompts=["a red circle"], validation_steps=4,
                         validation_num_inference_steps=2, **bf16))
    deepspeed(_split_cfg(tmp_path, base, llm, "resumed", 2, steps=2, **bf16))
    deepspeed(_split_cfg(tmp_path, base, llm, "resumed", 2, **bf16), "--resume", "latest")
    _assert_identical(tmp_path / "bf16", tmp_path / "resumed")
    # the fp32 masters, not the bf16 weights: some saved values lie between two bf16 numbers
    trained = load_file(tmp_path / "bf16" / FINAL / "trained.safetensors")
    assert any(not torch.equal(t, t.bfloat16().float()) for t in trained.values())
    assert (tmp_path / "bf16" / "validation" / "step-00000004.png").is_file()


@pytest.mark.parametrize("name", ["multi_gpu", "multi_node", "deepspeed_zero2", "fsdp"])
def test_shipped_accelerate_configs_load_and_pass_the_trainers_check(name, tmp_path):
    """Each config in configs/accelerate/ is read by accelerate; the trainer's check takes DeepSpeed's micro-batch,
    clipping and global batch from the llm4gen config, and refuses what would break the EMA and checkpoints."""
    from types import SimpleNamespace

    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    from llm4gen.training.distributed import check_distributed

    root = Path(__file__).resolve().parents[1]
    cluster = load_config_from_file(str(root / "configs" / "accelerate" / f"{name}.yaml"))
    ds = {"zero_optimization": {"stage": cluster.deepspeed_config.get("zero_stage", 0)}} if name.startswith("deep") \
        else {}
    fake = SimpleNamespace(distributed_type=cluster.distributed_type, num_processes=cluster.num_processes,
                           is_fsdp2=str(cluster.fsdp_config.get("fsdp_version")) == "2",
                           state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(deepspeed_config=ds)))
    cfg = load_config({"output_dir": str(tmp_path), "base_model": "x", "train_batch_size": 6, "max_grad_norm": 0.5})
    check_distributed(fake, cfg)
    if cluster.distributed_type == DistributedType.DEEPSPEED:
        assert ds["train_micro_batch_size_per_gpu"] == 6 and ds["train_batch_size"] == 6 * cluster.num_processes
        assert ds["gradient_clipping"] == 0.5 and ds["gradient_accumulation_steps"] == 1
        with pytest.raises(NotImplementedError, match="gradient_accumulation_steps: 1"):
            check_distributed(fake, load_config({"output_dir": str(tmp_path), "base_model": "x",
                                                 "gradient_accumulation_steps": 2}))
        ds["zero_optimization"]["stage"] = 3
        with pytest.raises(NotImplementedError, match="ZeRO-3 shards the parameters.*fsdp.yaml"):
            check_distributed(fake, cfg)
        ds["zero_optimization"]["stage"] = 0
        with pytest.raises(NotImplementedError, match="without ZeRO.*zero_stage: 2"):
            check_distributed(fake, cfg)
    if cluster.distributed_type == DistributedType.FSDP:
        assert fake.is_fsdp2 and cluster.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"
        fake.is_fsdp2 = False
        with pytest.raises(NotImplementedError, match="FSDP version 2 only.*fsdp_version: 2"):
            check_distributed(fake, cfg)


# ---------------------------------------------------------------------- more data sources, parsers, precision, logs
def _shapes_items(n):
    from llm4gen.shapesworld.world import ShapesWorld, ShapesWorldConfig

    world = ShapesWorld("train", seed=1, config=ShapesWorldConfig(size=32))
    return [world[k] for k in range(n)]


def test_hf_dataset_source(base, tiny_llm_dirs, tmp_path):
    datasets = pytest.importorskip("datasets")
    items = _shapes_items(8)
    ds = datasets.Dataset.from_dict({"image": [it.image for it in items], "caption": [it.caption for it in items]},
                                    features=datasets.Features({"image": datasets.Image(),
                                                                "caption": datasets.Value("string")}))
    ds.save_to_disk(str(tmp_path / "ds"))
    from llm4gen.data.sources import DataConfig, make_source

    src = make_source(DataConfig(type="hf", path=str(tmp_path / "ds"), caption_column="caption"), 32)
    assert len(src) == 8 and src[3].caption == items[3].caption
    assert np.array_equal(np.asarray(src[3].load_image()), np.asarray(items[3].image))
    train(_cfg(base, tiny_llm_dirs["bert"], tmp_path / "run", max_train_steps=2,
               data={"type": "hf", "path": str(tmp_path / "ds"), "caption_column": "caption"}), progress=False)
    assert (tmp_path / "run" / "model_index.json").is_file()
    with pytest.raises(ValueError, match="no column"):
        make_source(DataConfig(type="hf", path=str(tmp_path / "ds"), caption_column="text"), 32)


def test_webdataset_source(base, tiny_llm_dirs, tmp_path):
    import io
    import tarfile

    from llm4gen.data.sources import DataConfig, expand_shards, make_source

    items = _shapes_items(8)
    for shard in range(2):
        with tarfile.open(tmp_path / f"train-{shard:03d}.tar", "w") as tar:
            for k in range(4):
                it = items[shard * 4 + k]
                buf = io.BytesIO()
                it.image.save(buf, format="PNG")
                payloads = {f"s{shard}{k}.png": buf.getvalue()}
                if k % 2:
                    payloads[f"s{shard}{k}.txt"] = it.caption.encode()
                else:
                    payloads[f"s{shard}{k}.json"] = json.dumps({"text": it.caption}).encode()
                for name, data in payloads.items():
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    pattern = str(tmp_path / "train-{000..001}.tar")
    assert expand_shards(pattern) == [str(tmp_path / "train-000.tar"), str(tmp_path / "train-001.tar")]
    assert expand_shards(str(tmp_path / "train-*.tar")) == expand_shards(pattern)
    src = make_source(DataConfig(type="webdataset", path=pattern), 32)
    assert len(src) == 8
    captions = sorted(src[i].caption for i in range(8))
    assert captions == sorted(it.caption for it in items)
    first = next(i for i in range(8) if src[i].caption == items[0].caption)
    assert np.array_equal(np.asarray(src[first].load_image()), np.asarray(items[0].image))
    train(_cfg(base, tiny_llm_dirs["bert"], tmp_path / "run", max_train_steps=2,
               data={"type": "webdataset", "path": pattern}), progress=False)
    with pytest.raises(FileNotFoundError, match="shard"):
        make_source(DataConfig(type="webdataset", path=str(tmp_path / "nope-{0..1}.tar")), 32)


def test_spacy_parser():
    pytest.importorskip("spacy")
    from llm4gen.prompt_words import parse_entities_spacy

    text = "A small red circle is left of the square, which is blue. The big table has a green cup."
    words = sorted((text[a[0]:a[1]], text[e[0]:e[1]]) for a, e in parse_entities_spacy(text))
    assert words == [("big", "table"), ("blue", "square"), ("green", "cup"), ("red", "circle"), ("small", "circle")]


def test_bf16_and_spacy_entity_loss_run(base, tiny_llm_dirs, tmp_path):
    pytest.importorskip("spacy")
    result = train(_cfg(base, tiny_llm_dirs["bert"], tmp_path / "bf16", mixed_precision="bf16", max_train_steps=2,
                        entity_loss_weight=0.5, entity_parser="spacy"), progress=False)
    assert all(np.isfinite(result.losses))
    logs = [json.loads(line) for line in (tmp_path / "bf16" / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert logs[-1]["loss_entity"] > 0


def test_tensorboard_logging(base, tiny_llm_dirs, tmp_path, monkeypatch):
    import types

    written = []

    class FakeWriter:
        def __init__(self, log_dir):
            written.append(("dir", log_dir))

        def add_scalar(self, name, value, step):
            written.append((name, step))

        def close(self):
            written.append(("closed", None))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=FakeWriter))
    train(_cfg(base, tiny_llm_dirs["bert"], tmp_path / "tb", max_train_steps=2, report_to="tensorboard"),
          progress=False)
    assert ("train/loss", 1) in written and ("train/loss", 2) in written and written[-1] == ("closed", None)
    assert written[0][1].endswith(os.path.join("logs", "tensorboard"))


@pytest.fixture(scope="module")
def xl_base(tmp_path_factory, tiny_llm_dirs):
    from llm4gen.tiny import build_tiny_pipeline

    root = tmp_path_factory.mktemp("train-xl-base")
    build_tiny_pipeline(xl=True, llm=tiny_llm_dirs["bert"], work_dir=root / "parts").save_pretrained(root / "base")
    return str(root / "base")


def test_sdxl_training(xl_base, tiny_llm_dirs, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    from llm4gen import LLM4GenXLPipeline

    result = train(_cfg(xl_base, tiny_llm_dirs["bert"], tmp_path / "xl", max_train_steps=3, caption_dropout=0.5,
                        cache_dir=str(tmp_path / "cache"), entity_loss_weight=0.1,
                        validation_prompts=["a red circle"], validation_steps=3, validation_num_inference_steps=2),
                   progress=False)
    assert all(np.isfinite(result.losses)) and (tmp_path / "xl" / "validation" / "step-00000003.png").is_file()
    pipe = LLM4GenXLPipeline.from_pretrained(tmp_path / "xl")
    assert pipe.adapter.config.clip_dim == 32  # both tiny CLIP encoders, 16 + 16
    assert pipe("a red circle", num_inference_steps=2, output_type="np").images.shape == (1, 32, 32, 3)
    train(_cfg(xl_base, None, tmp_path / "xl-base-arm", max_train_steps=2), progress=False)
    base_arm = StableDiffusionXLPipeline.from_pretrained(tmp_path / "xl-base-arm")
    assert base_arm("a red circle", num_inference_steps=2, output_type="np").images.shape == (1, 32, 32, 3)


def test_sdxl_text_encoding_matches_the_pipeline(xl_base):
    """The trainer's CLIP features are what StableDiffusionXLPipeline.encode_prompt gives (SDXL conditioning)."""
    from diffusers import StableDiffusionXLPipeline

    from llm4gen.training.trainer import _load_frozen

    cfg = load_config({"output_dir": "o", "base_model": xl_base})
    text, _, _ = _load_frozen(cfg)
    hidden, pooled = text(["a red circle on a grey floor"])
    pipe = StableDiffusionXLPipeline.from_pretrained(xl_base)
    want, _, want_pooled, _ = pipe.encode_prompt("a red circle on a grey floor", device="cpu",
                                                  do_classifier_free_guidance=False)
    torch.testing.assert_close(hidden, want)
    torch.testing.assert_close(pooled, want_pooled)


def test_preprocess_image_against_hand_computation():
    from PIL import Image

    from llm4gen.data.sources import preprocess_image

    img = Image.new("RGB", (8, 4), (0, 0, 0))
    img.paste((255, 0, 0), (0, 0, 4, 4))  # left half red, right half black
    out = preprocess_image(img, 4, center_crop=False)  # already 4 px high: short side 4 -> crop the left 4x4
    assert out.shape == (3, 4, 4)
    assert torch.allclose(out[0], torch.ones(4, 4)) and torch.allclose(out[1], -torch.ones(4, 4))
    centre = preprocess_image(img, 4, center_crop=True)  # columns 2..5: half red, half black
    assert torch.allclose(centre[0, :, :2], torch.ones(4, 2)) and torch.allclose(centre[0, :, 2:], -torch.ones(4, 2))
    flipped = preprocess_image(img, 4, center_crop=True, flip=True)
    assert torch.equal(flipped, centre.flip(-1))
    big = preprocess_image(Image.new("RGB", (16, 16), (255, 255, 255)), 8)
    assert big.shape == (3, 8, 8) and torch.allclose(big, torch.ones_like(big))


def test_shapes_source_drop_count_sentence():
    from llm4gen.data.sources import DataConfig, make_source
    from llm4gen.shapesworld.world import ShapesWorld, ShapesWorldConfig

    n = 400
    world = ShapesWorld("train", 3, n, ShapesWorldConfig(size=32, caption_style="mixed"))
    plain = make_source(DataConfig(seed=3, num_items=n), 32)
    half = make_source(DataConfig(seed=3, num_items=n, drop_count_sentence=0.5), 32)
    stated = ("In total there are", "There is only one figure")
    dropped = 0
    for i in range(n):
        caption, _ = world.caption_of(i)
        a, b = plain[i], half[i]
        assert a.caption == caption and a.key == b.key  # same image, same latent-cache key
        if half.drops_count(i):
            dropped += 1
            assert not any(s in b.caption for s in stated)
            # exactly the stated-count sentence is gone, every other sentence stays in order
            sentences = [s for s in caption.split(". ") if not any(s.startswith(t) for t in stated)]
            assert b.caption.rstrip(".") == ". ".join(sentences).rstrip(".")
        else:
            assert b.caption == caption
    # a fixed share of items, drawn per item: 200 +- 3 sd of Binomial(400, 0.5)
    assert 170 <= dropped <= 230
    again = make_source(DataConfig(seed=3, num_items=n, drop_count_sentence=0.5), 32)
    other = make_source(DataConfig(seed=4, num_items=n, drop_count_sentence=0.5), 32)
    chosen = [half.drops_count(i) for i in range(n)]
    assert chosen == [again.drops_count(i) for i in range(n)]  # fixed by (seed, split, index)
    assert chosen != [other.drops_count(i) for i in range(n)]
    every = make_source(DataConfig(seed=3, num_items=n, drop_count_sentence=1.0), 32)
    assert not any(s in every[i].caption for i in range(n) for s in stated)
    assert sum(any(s in plain[i].caption for s in stated) for i in range(n)) > n // 2  # dense captions state it


def test_shapes_source_object_counts():
    from llm4gen.data.sources import DataConfig, make_source
    from llm4gen.shapesworld.source import ShapesSource
    from llm4gen.shapesworld.world import BACKGROUNDS, ShapesWorld, ShapesWorldConfig

    n = 60
    one = make_source(DataConfig(seed=3, num_items=n, caption_style="dense", min_objects=1, max_objects=1), 32)
    plain = make_source(DataConfig(seed=3, num_items=n, caption_style="dense"), 32)
    assert isinstance(one, ShapesSource)  # data.type: shapesworld, found through its entry point
    world = ShapesWorld("train", 3, n, ShapesWorldConfig(size=32, min_objects=1, max_objects=1, caption_style="dense"))
    for i in range(n):
        ex = one[i]
        caption, scene = world.caption_of(i)
        assert ex.caption == caption and len(scene.objects) == 1
        assert "There is only one figure in the scene." in ex.caption
        # the image drawn is that one object, at its scene's place
        img = np.asarray(ex.load_image(), dtype=np.float32)
        ys, xs = np.nonzero(np.abs(img - np.array(BACKGROUNDS[scene.background], np.float32)).sum(-1) > 30)
        o = scene.objects[0]
        assert abs((xs.mean() + 0.5) / 32 - o.x) < 0.08 and abs((ys.mean() + 0.5) / 32 - o.y) < 0.08
    counts = {len(plain.world.caption_of(i)[1].objects) for i in range(n)}
    assert counts == {1, 2, 3, 4}  # the default keeps ShapesWorld's 1-4 objects
    # another scene per index needs another latent-cache key; the default's keys stay those of earlier caches
    assert plain[0].key == "shapesworld|train|3|0|32|dense"
    assert one[0].key == "shapesworld|train|3|0|32|dense|objects=1-1"
    few = make_source(DataConfig(seed=3, num_items=n, min_objects=2, max_objects=3), 32)
    assert {len(few.world.caption_of(i)[1].objects) for i in range(n)} == {2, 3}


@pytest.mark.parametrize("kw, match", [({"min_objects": 0}, "1 <= min_objects <= max_objects <= 4"),
                                      ({"min_objects": 3, "max_objects": 2}, "got 3 and 2"),
                                      ({"max_objects": 5}, "1 <= min_objects"),
                                      ({"type": "imagefolder", "path": "x", "max_objects": 1},
                                       "leave them at 1 and 4")])
def test_object_counts_bad_config(kw, match):
    from llm4gen.data.sources import DataConfig

    with pytest.raises(ValueError, match=match):
        DataConfig(**kw)


@pytest.mark.parametrize("kw, match", [({"drop_count_sentence": 1.5}, "share of items"),
                                      ({"type": "imagefolder", "path": "x", "drop_count_sentence": 0.5},
                                       "ShapesWorld captions only")])
def test_drop_count_sentence_bad_config(kw, match):
    from llm4gen.data.sources import DataConfig

    with pytest.raises(ValueError, match=match):
        DataConfig(**kw)
