"""ShapesWorld generator: determinism, caption/graph agreement, the held-out split, the image folder round trip."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from llm4gen.shapesworld.scorer import clip_token_count
from llm4gen.shapesworld.world import (
    BACKGROUNDS,
    COLOURS,
    HELD_OUT_PAIRS,
    POSITION_CELLS,
    SHAPES,
    Scene,
    SceneObject,
    ShapesWorld,
    ShapesWorldConfig,
    corrupt_scene,
    drop_count_sentence,
    drop_relation_sentences,
    place_phrase,
    position_region,
    read_dataset,
    relations_from_positions,
    render_scene,
    write_dataset,
)


@pytest.fixture(scope="module")
def train_items():
    return [ShapesWorld("train", seed=5)[k] for k in range(300)]


def test_deterministic_by_seed_and_index():
    a, b = ShapesWorld("train", seed=1), ShapesWorld("train", seed=1)
    for k in (0, 7, 123):
        x, y = a[k], b[k]
        assert x.caption == y.caption and x.scene.to_dict() == y.scene.to_dict()
        assert np.array_equal(np.asarray(x.image), np.asarray(y.image))
    assert a[3].scene.to_dict() != ShapesWorld("train", seed=2)[3].scene.to_dict()
    streamed = [it.scene.to_dict() for it, _ in zip(ShapesWorld("train", seed=1), range(5))]
    assert streamed == [a[k].scene.to_dict() for k in range(5)]


def test_scene_properties(train_items):
    counts = set()
    for it in train_items:
        objs = it.scene.objects
        counts.add(len(objs))
        assert 1 <= len(objs) <= 4
        assert len({(o.colour, o.shape) for o in objs}) == len(objs)  # each object is named uniquely
        for i, o in enumerate(objs):  # bounding circles inside the image and apart from each other
            assert o.radius <= o.x <= 1 - o.radius and o.radius <= o.y <= 1 - o.radius
            for p in objs[i + 1 :]:
                assert np.hypot(o.x - p.x, o.y - p.y) >= o.radius + p.radius
        assert it.image.size == (64, 64)
    assert counts == {1, 2, 3, 4}
    colours = {o.colour for it in train_items for o in it.scene.objects}
    shapes = {o.shape for it in train_items for o in it.scene.objects}
    assert colours == set(COLOURS) and shapes == set(SHAPES)
    assert {it.scene.background for it in train_items} == set(BACKGROUNDS)


def test_position_region_cells_and_captions():
    assert position_region(0.2, 0.2) == ("left", "top")
    assert position_region(0.36, 0.64) == ("centre", "middle")  # the edges belong to the middle cells
    assert position_region(0.7, 0.5) == ("right", "middle") and position_region(0.5, 0.9) == ("centre", "bottom")
    # a dense caption names, for each object, the cell position_region gives
    words = {("left", "top"): "upper left corner", ("right", "top"): "upper right corner",
             ("left", "bottom"): "lower left corner", ("right", "bottom"): "lower right corner",
             ("left", "middle"): "left side, halfway down", ("right", "middle"): "right side, halfway down",
             ("centre", "top"): "top edge, horizontally centred", ("centre", "bottom"): "bottom edge, horizontally "
             "centred", ("centre", "middle"): "right in the centre of the image"}
    assert set(POSITION_CELLS) == set(words) and len(POSITION_CELLS) == 9
    assert all(phrase in place_phrase(cell) for cell, phrase in words.items())
    for k in range(40):
        item = ShapesWorld("train", seed=5, config=ShapesWorldConfig(caption_style="dense"))[k]
        for o in item.scene.objects:
            assert words[position_region(o.x, o.y)] in item.caption.lower(), (o, item.caption)


def test_relations_follow_positions():
    a, b = SceneObject("red", "circle", "small", 0.2, 0.5), SceneObject("blue", "square", "small", 0.8, 0.52)
    assert relations_from_positions([a, b]) == [(0, "left of", 1)]
    c = SceneObject("green", "star", "small", 0.5, 0.9)
    assert (0, "above", 1) in relations_from_positions([SceneObject("red", "ring", "small", 0.5, 0.2), c])
    d = SceneObject("green", "star", "small", 0.3, 0.3)  # diagonal: no clear relation
    assert relations_from_positions([SceneObject("red", "ring", "small", 0.5, 0.5), d]) == []


def test_held_out_split(train_items):
    assert all((o.colour, o.shape) not in HELD_OUT_PAIRS for it in train_items for o in it.scene.objects)
    test_items = [ShapesWorld("test", seed=5)[k] for k in range(200)]
    assert all(any((o.colour, o.shape) in HELD_OUT_PAIRS for o in it.scene.objects) for it in test_items)
    # every colour and every shape still occurs in training; only their held-out combinations do not
    assert {c for c, _ in HELD_OUT_PAIRS} == set(COLOURS) and {s for _, s in HELD_OUT_PAIRS} <= set(SHAPES)


def test_captions_agree_with_the_graph(train_items):
    dense_lengths = []
    for it in train_items:
        short, rel, dense = it.captions["short"], it.captions["relational"], it.captions["dense"]
        for o in it.scene.objects:
            assert f"{o.size} {o.colour} {o.shape}" in short
            assert o.colour in dense
        for c in COLOURS:  # no colour is mentioned that the scene does not have (background names are not colours)
            if c not in {o.colour for o in it.scene.objects}:
                assert not re.search(rf"\b{c}\b", short + " " + rel + " " + dense)
        for a, r, b in it.scene.relations[:3]:
            name_a, name_b = it.scene.objects[a].name(), it.scene.objects[b].name()
            word = {"left of": "to the left of", "right of": "to the right of"}.get(r, r)
            assert f"the {name_a} {word} the {name_b}" in rel
        n = len(dense.split())
        dense_lengths.append(n)
        assert 40 <= n <= 140, dense
        assert it.caption == it.captions[it.style]
    tokens = clip_token_count([it.captions["dense"] for it in train_items])
    assert 0.3 < np.mean([t > 77 for t in tokens]) < 0.9  # many, not all, dense prompts overflow CLIP's window
    traps = 0
    for it in train_items:  # binding traps: colours and shapes recur crossed between objects
        objs = it.scene.objects
        traps += any(p.colour == q.colour and p.shape != q.shape for p in objs for q in objs) and any(
            p.shape == q.shape and p.colour != q.colour for p in objs for q in objs
        )
    assert traps / len(train_items) > 0.2


def test_drop_relation_sentences_removes_exactly_the_relations(train_items):
    """Each dropped sentence states one of the scene's relations between two of its objects; what is kept is the
    caption's other sentences verbatim and in order, and still names every object; no relation wording is left."""
    rel_words = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}
    some = 0
    for it in train_items:
        dense = it.captions["dense"]
        kept, dropped = drop_relation_sentences(dense)
        sentences = re.split(r"(?<=\.) ", dense)
        assert [x for x in sentences if x not in dropped] == re.split(r"(?<=\.) ", kept)
        stated = {f"the {it.scene.objects[a].name()} {rel_words[r]} the {it.scene.objects[b].name()}"
                  for a, r, b in it.scene.relations}
        for sentence in dropped:
            # "Looking closely, the red circle is positioned above the blue star." -> "the red circle above the ..."
            core = re.sub(r" (is positioned|appears|is) ", " ", sentence.rstrip(".")).lower()
            assert any(core.endswith(s) for s in stated), sentence
        assert not any(w in kept for w in ("to the left of", "to the right of", " above the ", " below the "))
        assert len(dropped) <= 3 and len(kept.split()) >= len(dense.split()) - 15 * len(dropped)
        for o in it.scene.objects:
            assert o.colour in kept
        some += bool(dropped)
    assert some > 50  # most multi-object dense captions have relation sentences
    assert drop_relation_sentences(train_items[0].captions["short"]) == (train_items[0].captions["short"], [])
    with pytest.raises(TypeError, match="string"):
        drop_relation_sentences(None)


def test_drop_count_sentence_removes_exactly_the_stated_number(train_items):
    """Every dense caption states its number of objects once; dropping it keeps every other sentence verbatim and
    in order, and leaves no statement of the total behind."""
    words = ["one", "two", "three", "four"]
    for it in train_items:
        dense = it.captions["dense"]
        kept, dropped = drop_count_sentence(dense)
        assert len(dropped) == 1
        n = len(it.scene.objects)
        assert re.search(rf"\b{words[n - 1]} figures?\b", dropped[0]), (n, dropped)
        assert [x for x in re.split(r"(?<=\.) ", dense) if x != dropped[0]] == re.split(r"(?<=\.) ", kept)
        assert "in the scene." not in kept and "In total" not in kept
    short = train_items[0].captions["short"]
    assert drop_count_sentence(short) == (short, [])
    with pytest.raises(TypeError, match="string"):
        drop_count_sentence(3)


def test_render_colours_and_positions():
    objs = [SceneObject("red", "square", "large", 0.25, 0.25), SceneObject("blue", "circle", "small", 0.75, 0.75)]
    scene = Scene(objs, "white")
    a = np.asarray(render_scene(scene, 64)).astype(int)
    assert tuple(a[16, 16]) == COLOURS["red"] and tuple(a[48, 48]) == COLOURS["blue"]
    assert tuple(a[2, 60]) == BACKGROUNDS["white"]
    ring = np.asarray(render_scene(Scene([SceneObject("green", "ring", "large", 0.5, 0.5)], "black"), 64)).astype(int)
    assert tuple(ring[32, 32]) == BACKGROUNDS["black"] and tuple(ring[32, 32 + 9]) == COLOURS["green"]


def test_corruptions():
    scene = Scene([SceneObject("red", "square", "large", 0.25, 0.3), SceneObject("blue", "circle", "small", 0.75, 0.3)],
                  "grey", relations_from_positions([SceneObject("red", "square", "large", 0.25, 0.3),
                                                    SceneObject("blue", "circle", "small", 0.75, 0.3)]))
    swapped, ok = corrupt_scene(scene, "swap-colours")
    assert ok and [o.colour for o in swapped.objects] == ["blue", "red"]
    dropped, ok = corrupt_scene(scene, "drop-object")
    assert ok and len(dropped.objects) == 1
    mirrored, ok = corrupt_scene(scene, "mirror")
    assert ok and mirrored.relations == [(0, "right of", 1)]
    with pytest.raises(ValueError, match="Unknown corruption"):
        corrupt_scene(scene, "blur")


def test_write_and_read_back(tmp_path):
    path = write_dataset(tmp_path / "d", 12, split="test", seed=3, progress=False)
    records = read_dataset(path)
    world = ShapesWorld("test", seed=3)
    assert len(records) == 12
    for k, rec in enumerate(records):
        assert rec["file_name"] == f"{k:06d}.png" and rec["text"] == world[k].caption
        assert rec["scene"].to_dict() == world[k].scene.to_dict()
        assert np.array_equal(np.asarray(Image.open(rec["path"])), np.asarray(world[k].image))
    line = json.loads((path / "metadata.jsonl").read_text().splitlines()[0])
    assert {"file_name", "text", "scene", "captions", "style"} <= set(line)


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match="split"):
        ShapesWorld("validation")
    with pytest.raises(ValueError, match="max_objects"):
        ShapesWorldConfig(max_objects=5)
    with pytest.raises(ValueError, match="caption_style"):
        ShapesWorldConfig(caption_style="poem")
    with pytest.raises(FileNotFoundError, match="metadata.jsonl"):
        read_dataset(tmp_path)
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.png"}\n')
    with pytest.raises(ValueError, match="scene"):
        read_dataset(tmp_path)
    with pytest.raises(ValueError, match="Unknown attribute"):
        Scene.from_dict({"objects": [{"colour": "mauve", "shape": "circle", "size": "small", "x": 0.5, "y": 0.5}]})
    with pytest.raises(IndexError):
        ShapesWorld("train", num_items=3)[3]


def test_object_cover_is_the_disc_area():
    import math

    from llm4gen.shapesworld.world import SceneObject, object_cover

    large = SceneObject("red", "circle", "large", 0.5, 0.25)  # radius 0.2, centred in the upper half
    for side in (8, 16):
        c = object_cover(large, side, supersample=8).reshape(side, side)
        assert float(c.sum()) / side**2 == pytest.approx(math.pi * 0.2**2, rel=0.03)  # the disc's area share
        assert c[side // 4, side // 2] == 1.0 and c[-1, 0] == 0.0  # inside at its centre; the far corner empty
        assert c[: side // 2].sum() > c[side // 2:].sum()  # rows run top to bottom (y down)
