"""A plain (non-editable) install of the checkout carries the bundled model and uses it from any folder.

The test builds the wheel offline from the checkout's build inputs (pyproject.toml, setup.py, MANIFEST.in, README.md,
src/, models/default), installs it with no dependencies into a fresh virtual environment whose only other packages
are the running environment's (a ``.pth`` line: llm4gen itself, installed editable there, is not visible), and runs
the installed ``llm4gen`` from a folder outside the checkout with no PYTHONPATH. About half a minute here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD_INPUTS = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "src/llm4gen", "models/default")
PROMPT = "On a plain grey backdrop there is a large yellow star in the upper right corner."


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{cmd} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path, dict[str, str]]:
    """(the fresh venv, its wheel, the environment to run it with)."""
    work = tmp_path_factory.mktemp("install")
    source = work / "checkout"
    for name in BUILD_INPUTS:
        src, dst = ROOT / name, source / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, dst)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LLM4GEN_DEFAULT_MODEL")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", str(work / "dist"), str(source)], cwd=work, env=env)
    (wheel,) = (work / "dist").glob("llm4gen-*.whl")
    venv = work / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=work, env=env)
    python = venv / "bin" / "python"
    purelib = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        cwd=work, env=env).stdout.strip())
    here = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (purelib / "dependencies.pth").write_text("".join(f"{p}\n" for p in here))  # torch, diffusers, ... not llm4gen
    _run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], cwd=work, env=env)
    return venv, wheel, env


def test_the_wheel_carries_the_bundled_model_once(installed):
    import zipfile

    _, wheel, _ = installed
    names = zipfile.ZipFile(wheel).namelist()
    model = ROOT / "models" / "default"
    want = sorted(f"llm4gen/models/default/{p.relative_to(model).as_posix()}" for p in model.rglob("*") if p.is_file())
    assert sorted(n for n in names if n.startswith("llm4gen/models/")) == want
    size = wheel.stat().st_size
    assert 30 * 2**20 < size < 60 * 2**20, f"{size / 2**20:.1f} MiB"  # the model once, compressed


def test_a_plain_install_generates_with_the_bundled_model_from_any_folder(installed, tmp_path):
    from PIL import Image

    from llm4gen.cli.common import read_png_parameters
    from llm4gen.shapesworld.scorer import score_image

    venv, _, env = installed
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = _run([str(venv / "bin" / "python"), "-c", "import llm4gen.cli.common as c; print(c.__file__); "
                  "print(c.bundled_model_dir())"], cwd=elsewhere, env=env).stdout.split()
    site = Path(where[0]).resolve().parents[2]  # the venv's site-packages holds llm4gen, not the checkout
    assert str(venv.resolve()) in str(site) and Path(where[1]).resolve() == site / "llm4gen" / "models" / "default"
    done = _run([str(venv / "bin" / "llm4gen"), "generate", PROMPT, "--steps", "15", "--device", "cpu"],
                cwd=elsewhere, env=env)
    assert "This model knows 64 px ShapesWorld" in done.stderr  # said once, with an example prompt
    assert "requires torchvision" not in done.stderr  # transformers' notices are silenced
    (png,) = (elsewhere / "outputs").glob("*.png")
    fields = read_png_parameters(png)
    # the bundled model's own guidance (its llm4gen_sampling.json), not diffusers' 7.5
    assert fields["prompt"] == PROMPT and fields["cfg scale"] == "5" and fields["steps"] == "15"
    assert Path(fields["model"]).resolve() == site / "llm4gen" / "models" / "default"
    # a trained model, not noise: the exact scorer finds the grey background and a yellow object where asked
    from llm4gen.shapesworld.world import Scene

    scene = Scene.from_dict({"background": "grey", "relations": [], "objects": [
        {"colour": "yellow", "shape": "star", "size": "large", "x": 0.78, "y": 0.22}]})
    scores = score_image(Image.open(png).convert("RGB"), scene)
    assert scores["background"] and scores["colour"] >= 1.0, scores


def test_a_plain_install_runs_the_demo_and_serves_the_app_from_any_folder(installed, tmp_path):
    """The other two first commands of a newcomer, from the same plain install: `llm4gen demo` renders with the
    installed bundled model, and `llm4gen app` (gradio comes from the running environment, as the app extra would
    install it) serves its page on that model."""
    import socket
    import time
    import urllib.request

    venv, _, env = installed
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    model = venv.resolve()  # the installed copy of the model lives under the venv, not in the checkout
    done = _run([str(venv / "bin" / "llm4gen"), "demo", "--out", "demo", "--steps", "4", "--device", "cpu"],
                cwd=elsewhere, env=env)
    said = " ".join((done.stdout + done.stderr).split())
    assert "Using the bundled model at" in said and str(model) in said and "random" not in said, said
    assert (elsewhere / "demo" / "grid.png").is_file() and len(list((elsewhere / "demo").glob("*.png"))) > 3

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([str(venv / "bin" / "llm4gen"), "app", "--port", str(port), "--device", "cpu"],
                              cwd=elsewhere, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        page = None
        for _ in range(240):  # loading the model and starting gradio: a few seconds here
            if server.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                    page = response.read().decode("utf-8", "replace")
                break
            except OSError:
                time.sleep(0.5)
        assert page is not None, server.communicate(timeout=10)[0] if server.poll() is not None else "no page"
        assert "gradio" in page.lower()
    finally:
        server.terminate()
        output = server.communicate(timeout=30)[0]
    assert "This model knows 64 px ShapesWorld" in " ".join(output.split()) and str(model) in output, output
