"""Recaptioning: readers, filters with known answers, both writers read back by the trainer's readers, resume, a tiny
captioner end to end."""

from __future__ import annotations

import io
import json
import tarfile
import warnings

import pytest
import torch
from PIL import Image

from llm4gen.data import recaption as rc
from llm4gen.data.sources import DataConfig, ImageFolderSource, WebDatasetSource
from tiny_eval_models import make_tiny_blip_captioner, make_tiny_clip

SIZES = [(64, 64), (16, 16), (200, 40), (64, 48), (48, 64), (80, 80)]  # (w, h)


def _input_folder(root, with_meta=True):
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (w, h) in enumerate(SIZES):
        Image.new("RGB", (w, h), (40 * i, 100, 200)).save(root / f"img{i}.png")
        lines.append({"file_name": f"img{i}.png", "text": f"caption {i}", "extra": i})
    (root / "broken.png").write_bytes(b"not an image")
    lines.append({"file_name": "broken.png", "text": "broken"})
    if with_meta:
        (root / "metadata.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    return root


class FakeCaptioner:
    """A test double: a caption from the image size (words = width // 8)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, images):
        self.calls += 1
        return [" ".join(["word"] * (im.width // 8)) for im in images]


def aesthetic_by_colour(images):
    return [im.getpixel((0, 0))[0] / 40 for im in images]  # image i scores i


def test_filters_counts_and_imagefolder_output(tmp_path):
    src = _input_folder(tmp_path / "in")
    cfg = rc.RecaptionConfig(input=str(src), output_dir=str(tmp_path / "out"), captioner="fake", min_resolution=32,
                             max_aspect_ratio=2.0, min_aesthetic=3.5, aesthetic_head="unused", min_caption_words=7,
                             batch_size=3)
    report = rc.recaption(cfg, captioner=FakeCaptioner(), aesthetic=aesthetic_by_colour, progress=False)
    # broken: unreadable; img1: 16 px; img2: aspect 5; img0 (0), img3 (3) below aesthetic 3.5; img4: 48/8 = 6 words
    by = {f["filter"]: f for f in report["filters"]}
    assert [by[n]["dropped"] for n in rc.FILTERS] == [1, 1, 1, 2, 0, 1]
    assert by["readable"]["in"] == 7 and by["caption"]["kept"] == 1 == report["kept"]
    meta = [json.loads(line) for line in (tmp_path / "out" / "metadata.jsonl").read_text().splitlines()]
    assert len(meta) == 1 and meta[0]["file_name"] == "images/000000005.png"
    assert meta[0]["text"] == " ".join(["word"] * 10) and meta[0]["original_text"] == "caption 5"
    assert meta[0]["aesthetic"] == 5 and meta[0]["extra"] == 5 and (meta[0]["width"], meta[0]["height"]) == (80, 80)
    # the trainer reads it back
    source = ImageFolderSource(DataConfig(type="imagefolder", path=str(tmp_path / "out")))
    assert len(source) == 1 and source[0].caption == meta[0]["text"] and source[0].load_image().size == (80, 80)
    assert json.loads((tmp_path / "out" / "recaption_report.json").read_text())["kept"] == 1


def test_resume_skips_done_items(tmp_path):
    src = _input_folder(tmp_path / "in", with_meta=False)  # no metadata: images found recursively, no captions
    cfg = rc.RecaptionConfig(input=str(src), output_dir=str(tmp_path / "out"), captioner="fake", limit=3)
    first = FakeCaptioner()
    report = rc.recaption(cfg, captioner=first, progress=False)
    assert report["processed"] == 3 and report["kept"] == 2  # broken.png is item 0 (sorted), unreadable
    cfg.limit = None
    second = FakeCaptioner()
    report = rc.recaption(cfg, captioner=second, progress=False)
    assert report["processed"] == 7 and report["kept"] == 6 and report["total"] == 7
    lines = (tmp_path / "out" / "metadata.jsonl").read_text().splitlines()
    assert len(lines) == 6 and json.loads(lines[0])["original_text"] is None
    again = FakeCaptioner()
    rc.recaption(cfg, captioner=again, progress=False)
    assert again.calls == 0


def test_clip_filter_and_webdataset_output(tmp_path):
    src = _input_folder(tmp_path / "in")
    sims = {f"caption {i}": 0.1 * i for i in range(6)}
    cfg = rc.RecaptionConfig(input=str(src), output_dir=str(tmp_path / "wds"), captioner="fake",
                             output_format="webdataset", min_clip_similarity=0.25, shard_size=2, batch_size=4)
    report = rc.recaption(cfg, captioner=FakeCaptioner(), clip=lambda ims, texts: [sims[t] for t in texts],
                          progress=False)
    assert {f["filter"]: f["dropped"] for f in report["filters"]}["clip_similarity"] == 3  # captions 0, 1, 2
    shards = sorted((tmp_path / "wds").glob("shard-*.tar"))
    assert [s.name for s in shards] == ["shard-r00-00000.tar", "shard-r00-00001.tar"]
    source = WebDatasetSource(DataConfig(type="webdataset", path=str(tmp_path / "wds" / "shard-*.tar")))
    assert len(source) == 3
    assert sorted(source[i].caption for i in range(3)) == sorted(" ".join(["word"] * (w // 8)) for w, _ in SIZES[3:])
    with tarfile.open(shards[0]) as tar:
        meta = json.loads(tar.extractfile("000000003.json").read())
    assert meta["clip_similarity"] == pytest.approx(0.3) and meta["original_text"] == "caption 3"
    # the webdataset output is itself a valid input (captions from .txt)
    items = rc.read_source(rc.RecaptionConfig(input=str(tmp_path / "wds" / "shard-*.tar"), output_dir="x",
                                              captioner="fake"))
    assert len(items) == 3 and items[0].caption.startswith("word") and items[0].open().size == (64, 48)


def test_hf_dataset_input(tmp_path):
    import datasets

    ims = [Image.new("RGB", (40, 30), (i * 60, 0, 0)) for i in range(3)]
    ds = datasets.Dataset.from_dict({"image": ims, "text": ["a", "b", "c"]}, features=datasets.Features(
        {"image": datasets.Image(), "text": datasets.Value("string")}))
    ds.save_to_disk(str(tmp_path / "hf"))
    cfg = rc.RecaptionConfig(input=str(tmp_path / "hf"), output_dir=str(tmp_path / "out"), captioner="fake")
    items = rc.read_source(cfg)
    assert [it.caption for it in items] == ["a", "b", "c"] and items[2].open().getpixel((0, 0)) == (120, 0, 0)
    report = rc.recaption(cfg, captioner=FakeCaptioner(), progress=False)
    assert report["kept"] == 3


def test_config_errors():
    with pytest.raises(ValueError, match="aesthetic_head"):
        rc.RecaptionConfig(input="x", output_dir="y", captioner="c", min_aesthetic=5)
    with pytest.raises(ValueError, match="output_format"):
        rc.RecaptionConfig(input="x", output_dir="y", captioner="c", output_format="zip")
    with pytest.raises(ValueError, match="aspect"):
        rc.RecaptionConfig(input="x", output_dir="y", captioner="c", max_aspect_ratio=0.5)


def test_tiny_models_end_to_end(tmp_path):
    """A real captioner, the LAION aesthetic head (a known constant head) and a CLIP model, all built from configs."""
    from safetensors.torch import save_file

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cap = make_tiny_blip_captioner(tmp_path / "cap")
        clip = make_tiny_clip(tmp_path / "clip")
    dims = [(16, 1024), (1024, 128), (128, 64), (64, 16), (16, 1)]
    head = {}
    for k, (i, o) in zip((0, 2, 4, 6, 7), dims):
        head[f"layers.{k}.weight"] = torch.zeros(o, i)
        head[f"layers.{k}.bias"] = torch.full((o,), 5.0) if k == 7 else torch.zeros(o)
    save_file(head, str(tmp_path / "head.safetensors"))  # predicts exactly 5.0 for every image
    src = _input_folder(tmp_path / "in")
    for threshold, expected in ((4.0, 6), (6.0, 0)):
        out = tmp_path / f"out{threshold}"
        cfg = rc.RecaptionConfig(input=str(src), output_dir=str(out), captioner=cap, max_new_tokens=6,
                                 min_aesthetic=threshold, aesthetic_head=str(tmp_path / "head.safetensors"),
                                 aesthetic_clip=clip, min_clip_similarity=-1.0, clip_model=clip, batch_size=4)
        report = rc.recaption(cfg, progress=False)
        by = {f["filter"]: f for f in report["filters"]}
        assert by["aesthetic"]["kept"] == expected
        assert report["kept"] + by["caption"]["dropped"] == expected
    meta = [json.loads(line) for line in (tmp_path / "out4.0" / "metadata.jsonl").read_text().splitlines()]
    assert meta and all(m["aesthetic"] == pytest.approx(5.0) and -1 <= m["clip_similarity"] <= 1 for m in meta)
    # the captions are the model's greedy continuation: check one against generate() by hand
    captioner = rc.Captioner.from_pretrained(cap, max_new_tokens=6)
    image = Image.open(io.BytesIO((src / "img0.png").read_bytes())).convert("RGB")
    inputs = captioner.processor(images=[image], return_tensors="pt")
    seq = captioner.model.generate(**inputs, max_new_tokens=6, do_sample=False)
    full = captioner.tokenizer.decode(seq[0], skip_special_tokens=True)
    assert " ".join(full.split()).endswith(captioner([image])[0])


def test_cli_recaption(tmp_path):
    from typer.testing import CliRunner

    from llm4gen.cli import app

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cap = make_tiny_blip_captioner(tmp_path / "cap")
    src = _input_folder(tmp_path / "in")
    args = ["data", "recaption", str(src), "--out", str(tmp_path / "out"), "--captioner", cap, "--min-resolution",
            "32", "--max-new-tokens", "4", "--format", "webdataset", "--limit", "3"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "recaption_report.json").read_text())
    assert report["total"] == 3 and {f["filter"]: f["dropped"] for f in report["filters"]}["resolution"] == 1
    assert "recaption" in result.output and list((tmp_path / "out").glob("shard-r00-*.tar"))
