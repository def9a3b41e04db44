"""Image helpers: captioned grids for looking at results side by side."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

__all__ = ["draw_regions", "images_from_pixels", "make_grid", "pixels_from_uint8", "uint8_tensor"]

# outline colours for draw_regions, one per region in turn (chosen to stand out from one another)
REGION_COLOURS = ((255, 0, 255), (0, 200, 255), (255, 140, 0), (0, 220, 0), (255, 255, 0), (160, 80, 255))


def make_grid(
    images: Sequence[Image.Image],
    captions: Sequence[str] | None = None,
    cols: int | None = None,
    cell: int = 256,
    caption_lines: int | None = 6,
    background: tuple[int, int, int] = (255, 255, 255),
) -> Image.Image:
    """Lay ``images`` out in a grid of ``cell``-pixel squares, each with its wrapped caption underneath.

    ``cols`` defaults to all images in one row (up to 4). Captions longer than ``caption_lines`` lines end in "...";
    ``caption_lines=None`` makes room for the longest caption whole.
    """
    if not images:
        raise ValueError("make_grid needs at least one image.")
    if captions is not None and len(captions) != len(images):
        raise ValueError(f"Got {len(images)} images but {len(captions)} captions.")
    cols = cols or min(len(images), 4)
    rows = (len(images) + cols - 1) // cols
    font = ImageFont.load_default()
    line_h = 12
    chars = max(10, cell // 6)
    if captions is not None and caption_lines is None:
        caption_lines = max(len(textwrap.wrap(c, chars) or [""]) for c in captions)
    text_h = (caption_lines * line_h + 8) if captions is not None else 0
    grid = Image.new("RGB", (cols * cell, rows * (cell + text_h)), background)
    draw = ImageDraw.Draw(grid)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        x, y = c * cell, r * (cell + text_h)
        grid.paste(image.convert("RGB").resize((cell, cell), Image.NEAREST), (x, y))
        if captions is not None:
            lines = textwrap.wrap(captions[i], chars) or [""]
            if len(lines) > caption_lines:
                lines = lines[:caption_lines]
                lines[-1] = lines[-1][: chars - 3] + "..."
            for j, line in enumerate(lines):
                draw.text((x + 4, y + cell + 4 + j * line_h), line, fill=(0, 0, 0), font=font)
    return grid


def uint8_tensor(images: Sequence[Image.Image]) -> torch.Tensor:
    """RGB images of one size as a ``uint8`` tensor ``[N, 3, H, W]`` (compact storage for training sets)."""
    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.uint8) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def pixels_from_uint8(x: torch.Tensor) -> torch.Tensor:
    """``uint8`` images to float pixels in [-1, 1], the range diffusers' VAEs and our CLIP take."""
    return x.float() / 127.5 - 1.0


def images_from_pixels(x: torch.Tensor) -> list[Image.Image]:
    """Float pixels ``[N, 3, H, W]`` in [-1, 1] (clamped) back to RGB images, the inverse of ``pixels_from_uint8``."""
    arr = ((x.detach().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]


def draw_regions(image: Image.Image, regions: Sequence[tuple[str, Sequence[float]]], size: int | None = 256,
                 width: int = 2) -> Image.Image:
    """A copy of ``image`` with each region's box outlined and labelled, to see what region guidance asked for.

    ``regions`` are ``(label, (x0, y0, x1, y1))`` pairs, the box in fractions of the image with y down (as
    :class:`llm4gen.regions.Region` holds it; :func:`llm4gen.layout.region_words` gives a label). The image is first
    scaled (nearest neighbour) so that its longer side is ``size`` pixels (``None``: as it is), so that small images
    still show legible labels. Outlines take :data:`REGION_COLOURS` in turn, ``width`` pixels inside the box; each
label is written in black on a tag of its box's colour in the box's upper left corner.
    """
    out = image.convert("RGB")
    if size is not None:
        scale = size / max(out.size)
        out = out.resize((max(1, round(out.width * scale)), max(1, round(out.height * scale))), Image.NEAREST)
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default()
    for k, (label, box) in enumerate(regions):
        x0, y0, x1, y1 = (float(v) for v in box)
        if not (0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0):
            raise ValueError(f"Region box {tuple(box)} for {label!r} must satisfy 0 <= x0 < x1 <= 1 and "
                             "0 <= y0 < y1 <= 1 (fractions of the image, y down).")
        colour = REGION_COLOURS[k % len(REGION_COLOURS)]
        left, top = round(x0 * out.width), round(y0 * out.height)
        right, bottom = round(x1 * out.width) - 1, round(y1 * out.height) - 1
        draw.rectangle((left, top, right, bottom), outline=colour, width=width)
        # the label: black on a tag of the box's colour, inside the box's upper left corner (moved left to stay in
        # the image)
        x0_text, y0_text, x1_text, y1_text = draw.textbbox((0, 0), label, font=font)
        tag_w, tag_h = x1_text - x0_text + 4, y1_text - y0_text + 4
        x = max(0, min(left + width, out.width - tag_w))
        y = top + width
        draw.rectangle((x, y, x + tag_w - 1, y + tag_h - 1), fill=colour)
        draw.text((x + 2 - x0_text, y + 2 - y0_text), label, fill=(0, 0, 0), font=font)
    return out
