"""Image helpers: captioned grids for looking at results side by side."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

__all__ = ["images_from_pixels", "make_grid", "pixels_from_uint8", "uint8_tensor"]


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
