"""End to end: serve the web app on a free localhost port and drive it in headless Chromium (Debian's chromium and
chromedriver through Selenium; `make test` installs them when it can). Skipped, with the reason, without them."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

pytest.importorskip("gradio", reason="the web app needs gradio (pip install 'llm4gen[app]')")

from browser import drive_browser, find_browser  # noqa: E402  (tests/browser.py)
from browser import main as screenshot_main  # noqa: E402
from llm4gen import app as webapp  # noqa: E402

_, _, REASON = find_browser()
pytestmark = pytest.mark.skipif(bool(REASON), reason=f"no headless browser to drive: {REASON}")

PROMPT = ("a small red circle in the upper left corner, a large blue square in the lower right, a green triangle "
          "below the centre pointing up, and a yellow star floating just above the triangle")


def _decode(blob: bytes) -> np.ndarray:
    from PIL import Image

    image = Image.open(io.BytesIO(blob))
    image.load()
    return np.asarray(image.convert("RGB"))


def test_browser_types_a_prompt_and_gets_both_images(tiny_sd_dir, tmp_path):
    loaded = webapp.load_model(tiny_sd_dir)
    demo, url = webapp.launch(loaded, block=False, default_steps=2)
    shot = tmp_path / "page.png"
    try:
        result = drive_browser(url, PROMPT, screenshot=shot, timeout=300)
    finally:
        demo.close()
    assert len(result["base"]) == len(result["llm4gen"]) == 1
    base, llm = _decode(result["base"][0]), _decode(result["llm4gen"][0])
    assert base.shape == llm.shape == (32, 32, 3)
    assert base.std() > 1 and llm.std() > 1  # not blank
    assert not np.array_equal(base, llm)  # the LLM tokens change the image
    # the page shows exactly what the pipeline renders for this prompt and seed (PNG is lossless)
    want = loaded.pipe(PROMPT, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
    assert np.array_equal(llm, np.asarray(want))
    assert "CLIP sees 77 of" in result["tokens"] and "are cut" in result["tokens"]
    assert "seed 0" in result["status"]
    assert result["images_fit"], "a result image is cut off by its gallery's frame"
    page = _decode(shot.read_bytes())
    assert page.shape[0] > 600 and page.shape[1] > 800 and page.std() > 5
    assert page.shape[0] >= result["page_height"]  # the whole page, down to the status line, not the first window


def test_screenshot_tool(tiny_sd_dir, tmp_path, capsys):
    """`python tests/browser.py --model DIR --out PNG` (how docs/app_screenshot.png is retaken) saves the page."""
    shot = tmp_path / "docs" / "app_screenshot.png"
    assert screenshot_main(["--model", tiny_sd_dir, "--steps", "2", "--out", str(shot)]) == 0
    assert f"screenshot: {shot}" in capsys.readouterr().out
    assert _decode(shot.read_bytes()).shape[1] == 1280
