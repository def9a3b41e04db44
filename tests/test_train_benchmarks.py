"""benchmarks/train_vs_diffusers.py and benchmarks/cache_format.py: their refusals, the torchvision shim and the
cache's bytes per item against a hand count."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from scripts import load_script, run_script


def test_train_vs_diffusers_refuses_politely_without_a_script(monkeypatch, capsys, tmp_path):
    for args in ([], ["--diffusers-script", str(tmp_path / "missing.py")]):
        with pytest.raises(SystemExit) as exit_info:
            run_script("benchmarks/train_vs_diffusers", monkeypatch, *args)
        assert exit_info.value.code == 2
        assert "--diffusers-script PATH/TO/diffusers/examples/text_to_image" in capsys.readouterr().out


def test_torchvision_shim_matches_the_trainers_preprocessing(tmp_path):
    """The shim's transforms, composed as diffusers' script composes them, give the pixels that llm4gen's
    preprocess_image gives (both center-crop and scale to [-1, 1]), and a hand-computed resize + crop."""
    import importlib.util

    from llm4gen.data.sources import preprocess_image

    bench = load_script("benchmarks/train_vs_diffusers")
    (tmp_path / "shim.py").write_text(bench.SHIM)
    spec = importlib.util.spec_from_file_location("shim", tmp_path / "shim.py")
    t = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(t)
    rng = np.random.default_rng(0)
    square = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    compose = t.Compose([t.Resize(16, interpolation=t.InterpolationMode.BICUBIC), t.CenterCrop(16),
                         t.Lambda(lambda x: x), t.ToTensor(), t.Normalize([0.5], [0.5])])
    torch.testing.assert_close(compose(square), preprocess_image(square, 16), rtol=0, atol=1e-6)
    wide = Image.fromarray(rng.integers(0, 256, (8, 20, 3), dtype=np.uint8))  # H 8, W 20: the width is cropped
    got = t.Compose([t.Resize(8), t.CenterCrop(8), t.ToTensor()])(wide)
    want = torch.from_numpy(np.asarray(wide)[:, 6:14].copy()).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(got, want)
    assert t.RandomHorizontalFlip(p=1.0)(wide).tobytes() == wide.transpose(Image.FLIP_LEFT_RIGHT).tobytes()


def test_cache_format_bytes_per_item_match_a_hand_count(monkeypatch, tmp_path):
    out = tmp_path / "cf.json"
    run_script("benchmarks/cache_format", monkeypatch, "--items", "6", "--reads", "2", "--batch", "3", "--no-train",
               "--json", str(out))
    report = json.loads(out.read_text())
    tokens = report["mean_llm_tokens"]
    paper = report["stacks"]["sd15-paper"]
    old, new = paper["old"]["bytes_per_item_by_part"], paper["new"]["bytes_per_item_by_part"]
    # old: 256 padded tokens x 2048 fp32 + an int64 mask; new: the real tokens x 2048 bf16 (headers aside)
    assert old["llm"] == pytest.approx(256 * 2048 * 4 + 256 * 8, rel=0.01)
    assert new["llm"] == pytest.approx(tokens * 2048 * 2, rel=0.02)
    assert old["clip"] == pytest.approx(77 * 768 * 4, rel=0.01) and new["clip"] == pytest.approx(77 * 768 * 2, rel=0.02)
    assert new["vae"] == pytest.approx(2 * 4 * 64 * 64 * 2, rel=0.02)
    assert paper["old"]["files"] == 3 * 6 and paper["new"]["files"] == 3  # a file per item and part vs a shard each
    assert report["stacks"]["shapesworld"]["new_vs_old_bytes"] < 0.6


@pytest.mark.slow
def test_train_vs_diffusers_quick(monkeypatch, tmp_path):
    """The --quick comparison end to end (minutes): needs diffusers' train_text_to_image.py in
    LLM4GEN_DIFFUSERS_SCRIPT."""
    script = os.environ.get("LLM4GEN_DIFFUSERS_SCRIPT")
    if not script or not Path(script).is_file():
        pytest.skip("set LLM4GEN_DIFFUSERS_SCRIPT to diffusers' examples/text_to_image/train_text_to_image.py")
    out = tmp_path / "vs.json"
    run_script("benchmarks/train_vs_diffusers", monkeypatch, "--quick", "--diffusers-script", script, "--json",
               str(out))
    modes = json.loads(out.read_text())["modes"]
    assert modes["diffusers"]["steps"] == 6 and modes["llm4gen LLM+CAM, warm cache"]["cache_misses"] == 0
    assert all(m["samples_per_s"] > 0 for m in modes.values() if "samples_per_s" in m)


def test_inference_overhead_reports_progress_and_writes_its_table(monkeypatch, capsys, tmp_path):
    """benchmarks/inference_overhead.py on the tiny model: a progress line per warm-up, timed call and UNet-step
    timing on stderr (an sd15 run is minutes between tables), a table on stdout, and a JSON report whose plain-SD
    row is the zero of the overheads and whose trimmed conditioning is shorter than the fixed 77 + 256 tokens."""
    target = tmp_path / "overhead.json"
    run_script("benchmarks/inference_overhead", monkeypatch, "--sizes", "tiny", "--steps", "1", "--repeats", "1",
               "--json", str(target))
    captured = capsys.readouterr()
    progress = [line for line in captured.err.splitlines() if line.startswith("[")]
    modes = ["plain SD", "llm4gen fixed-256", "llm4gen fixed-256, cached", "llm4gen trimmed",
             "llm4gen trimmed, cached"]
    assert progress[0].endswith("tiny: building the models ...")
    for name in modes:
        assert any(line.endswith(f"tiny: warm-up, {name} ...") for line in progress), name
        assert any(f"tiny: repeat 1/1, {name}: " in line for line in progress), name
    assert progress[-1].endswith("tiny: timing one UNet step per conditioning length ...")
    assert "plain SD" in captured.out and "overhead" in captured.out
    report = json.loads(target.read_text())
    table = report["sizes"]["tiny"]["modes"]
    assert list(table) == modes and table["plain SD"]["overhead_vs_plain"] == 0.0
    assert table["plain SD"]["cond_tokens"] == 77 and table["llm4gen fixed-256"]["cond_tokens"] == 77 + 256
    assert 77 < table["llm4gen trimmed"]["cond_tokens"] < 77 + 256
    for row in table.values():
        assert row["s_per_image"] > 0 and row["images_per_s"] == pytest.approx(1 / row["s_per_image"])


def test_train_throughput_profiles_each_mode(monkeypatch, capsys, tmp_path):
    """benchmarks/train_throughput.py, a short run: every mode's step is split into the timed calls (encoders, CAM,
    UNet, backward, optimizer) and the rest; the warm cache runs no encoder, so it spends far less in them than the
    run without a cache, where every call is timed; the split adds up to the measured step."""
    target = tmp_path / "throughput.json"
    run_script("benchmarks/train_throughput", monkeypatch, "--steps", "3", "--batch", "2", "--json", str(target))
    assert "Where a step's time goes" in capsys.readouterr().out
    modes = json.loads(target.read_text())["modes"]
    assert list(modes) == ["no cache", "cache (cold)", "cache (warm)", "warm + grad ckpt"]
    phases = ["VAE", "CLIP", "LLM", "CAM fwd", "UNet fwd", "backward", "optimizer", "other"]
    for m in modes.values():
        assert list(m["ms_per_step_split"]) == phases
        assert sum(m["ms_per_step_split"].values()) == pytest.approx(1000 * m["s_per_step"])
    cold, warm = modes["no cache"]["ms_per_step_split"], modes["cache (warm)"]["ms_per_step_split"]
    assert all(cold[p] > 0 for p in phases[:-1])
    assert modes["cache (warm)"]["cache_misses"] == 0 and modes["cache (warm)"]["cache_hits"] > 0
    for encoder in ("VAE", "CLIP", "LLM"):  # cache reads against the frozen models' forward passes
        assert warm[encoder] < cold[encoder] / 3, encoder
