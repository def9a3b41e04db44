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


def test_draw_regions_outlines_each_box_where_its_fractions_say():
    from llm4gen.images import REGION_COLOURS, draw_regions

    image = Image.new("RGB", (50, 100), (255, 255, 255))  # scaled to 128 x 256: the longer side to 256
    out = draw_regions(image, [("red cube", (0.0, 0.0, 0.5, 0.25)), ("blue ball", (0.5, 0.5, 1.0, 1.0))],
                       width=2)
    assert out.size == (128, 256) and image.getpixel((0, 0)) == (255, 255, 255)  # a copy
    px = np.asarray(out)
    first, second = REGION_COLOURS[0], REGION_COLOURS[1]
    # box 1 spans x 0..63, y 0..63 (by hand: 0.5 * 128 = 64, 0.25 * 256 = 64); its outline is 2 px inside
    assert tuple(px[40, 0]) == tuple(px[40, 63]) == tuple(px[0, 40]) == tuple(px[63, 40]) == first
    assert tuple(px[40, 1]) == first and tuple(px[40, 2]) == (255, 255, 255)
    assert tuple(px[64, 40]) == (255, 255, 255) and tuple(px[40, 64]) == (255, 255, 255)  # just outside
    # box 2 spans x 64..127, y 128..255
    assert tuple(px[200, 64]) == tuple(px[200, 127]) == tuple(px[128, 100]) == tuple(px[255, 100]) == second
    assert tuple(px[127, 100]) == (255, 255, 255) and tuple(px[200, 63]) == (255, 255, 255)
    # the labels: black text on a tag of the box's colour inside the box's upper left corner (the text anti-aliased
    # between the two, so a channel that is 0 in the colour stays 0)
    for area, colour in ((px[2:14, 2:40], first), (px[130:142, 66:110], second)):
        pixels = area.reshape(-1, 3).astype(int)
        tag = (pixels == colour).all(axis=1)
        text = pixels.sum(axis=1) < sum(colour) - 150
        assert tag.sum() > 100 and text.sum() > 20
        assert (pixels[:, np.array(colour) == 0] == 0).all()
    # a label at the right edge moves left to stay in the image
    edge = np.asarray(draw_regions(image, [("a long label here", (0.9, 0.0, 1.0, 0.5))]))
    assert (edge[4:12, 80:127] == REGION_COLOURS[0]).all(axis=-1).sum() > 100
    # size=None keeps the image's own size
    assert draw_regions(image, [("a", (0, 0, 1, 1))], size=None).size == (50, 100)
    with pytest.raises(ValueError, match="for 'bad'.*0 <= x0 < x1 <= 1"):
        draw_regions(image, [("bad", (0.5, 0, 0.4, 1))])
