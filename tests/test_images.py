from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from llm4gen.images import images_from_pixels, make_grid, pixels_from_uint8, uint8_tensor


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


def test_grid_fits_whole_captions_when_asked():
    img = Image.new("RGB", (8, 8), (0, 128, 0))
    long = " ".join(f"word{k}" for k in range(50))  # 339 characters: 9 lines of at most 42 (cell 256)
    grid = make_grid([img, img], captions=[long, "short"], cell=256, caption_lines=None)
    assert grid.size == (512, 256 + 9 * 12 + 8)
    text = np.asarray(grid)[256:, :256] < 128
    rows = np.flatnonzero(text.any(axis=(1, 2)))
    assert rows.max() > 8 * 12  # the ninth line was drawn, not cut
    assert make_grid([img], captions=["a"], cell=256, caption_lines=None).size == (256, 256 + 12 + 8)


def test_grid_errors():
    with pytest.raises(ValueError, match="at least one"):
        make_grid([])
    with pytest.raises(ValueError, match="captions"):
        make_grid([Image.new("RGB", (4, 4))], captions=["a", "b"])


def test_images_from_pixels_inverts_pixels_from_uint8_and_clamps():
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)) for _ in range(3)]
    back = images_from_pixels(pixels_from_uint8(uint8_tensor(images)))
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(images, back))
    import torch

    out = images_from_pixels(torch.tensor([-3.0, 0.0, 2.0]).view(1, 3, 1, 1))[0]
    assert np.asarray(out)[0, 0].tolist() == [0, 128, 255]  # out of range clamps; 0 is mid-grey (127.5 rounds to 128)
