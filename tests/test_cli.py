"""The `llm4gen` command: help, generate with a saved tiny pipeline, the demo, and its errors."""

from __future__ import annotations

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


def test_generate_errors_are_messages(tmp_path, monkeypatch):
    result = runner.invoke(app, ["generate", "a cat", "--model", str(tmp_path)])
    assert result.exit_code == 1
    assert "model_index.json" in result.output
    monkeypatch.setattr("llm4gen.cli.bundled_model_dir", lambda: None)
    result = runner.invoke(app, ["generate", "a cat"])
    assert result.exit_code == 2 and "--model" in result.output


def test_demo_writes_images_and_grid(tmp_path, monkeypatch):
    monkeypatch.setattr("llm4gen.cli.bundled_model_dir", lambda: None)
    result = runner.invoke(app, ["demo", "--out", str(tmp_path), "--steps", "2"])
    assert result.exit_code == 0, result.output
    assert "RANDOMLY INITIALISED" in result.output
    assert (tmp_path / "grid.png").is_file() and len(list(tmp_path.glob("demo_*.png"))) == 2
