from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from llm4gen.images import make_grid


def test_grid_layout_and_pixels():
    red = Image.new("RGB", (8, 8), (255, 0, 0))
    blue = Image.new("RGB", (8, 8), (0, 0, 255))
    grid = make_grid([red, blue, red], cols=2, cell=16)
    assert grid.size == (32, 32)
    a = np.asarray(grid)
    assert tuple(a[0, 0]) == (255, 0, 0) and tuple(a[0, 16]) == (0, 0, 255) and tuple(a[16, 0]) == (255, 0, 0)
    assert tuple(a[16, 16]) == (255, 255, 255)  # empty cell stays background


def test_grid_captions_add_text_below():
    img = Image.new("RGB", (8, 8), (0, 128, 0))
    grid = make_grid([img], captions=["a green square " * 20], cell=64, caption_lines=3)
    assert grid.size == (64, 64 + 3 * 12 + 8)
    below = np.asarray(grid)[64:]
    assert (below < 128).any()  # some dark caption pixels were drawn


def test_grid_errors():
    with pytest.raises(ValueError, match="at least one"):
        make_grid([])
    with pytest.raises(ValueError, match="captions"):
        make_grid([Image.new("RGB", (4, 4))], captions=["a", "b"])
