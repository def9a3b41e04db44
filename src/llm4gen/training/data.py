"""Training data: (image, caption) sources, preprocessing, and the deterministic order of batches.

The order is a pure function of (seed, batch number): batch ``b`` of the whole run takes the slice
``[w * G, (w + 1) * G)`` of the permutation of epoch ``b // W`` (``G`` = global batch = per-process batch x processes,
``W`` = batches per epoch), and process ``r`` takes its ``r``-th part of that slice. Resuming at any step therefore
continues with exactly the batches an uninterrupted run would have used, and one process with batch ``2B`` sees the
same samples as two processes with batch ``B``.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..data.shapes import ShapesWorld, ShapesWorldConfig, render_scene
from ..utils import read_jsonl
from .config import DataConfig

__all__ = ["Example", "ImageFolderSource", "ShapesSource", "batch_indices", "make_source", "parse_entities",
           "preprocess_image"]


@dataclass
class Example:
    load_image: Callable[[], Image.Image]  # called only when the latent is not cached
    caption: str
    key: str  # identifies the image content for the latent cache


class ImageFolderSource:
    """Images listed in ``metadata.jsonl`` with a caption column (the diffusers / HF imagefolder layout)."""

    def __init__(self, cfg: DataConfig) -> None:
        root = Path(cfg.path)
        meta = root / "metadata.jsonl"
        if not meta.is_file():
            raise FileNotFoundError(
                f"{root} has no metadata.jsonl. An image folder needs one JSON line per image with 'file_name' and "
                f"'{cfg.caption_column}'."
            )
        self.root, self.cfg = root, cfg
        self.records: list[dict[str, Any]] = []
        try:
            rows = read_jsonl(meta, required=("file_name", cfg.caption_column))
        except ValueError as err:
            raise ValueError(f"{err} Set data.caption_column to the column that holds the captions.") from err
        for line_no, rec in rows:
            caption = rec[cfg.caption_column]
            if not isinstance(caption, str) or not caption.strip():
                raise ValueError(f"{meta}:{line_no}: the caption of {rec['file_name']!r} is empty.")
            if not (root / rec["file_name"]).is_file():
                raise FileNotFoundError(f"{meta}:{line_no} lists {rec['file_name']!r}, which does not exist.")
            self.records.append(rec)
        if not self.records:
            raise ValueError(f"{meta} lists no images.")

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Example:
        rec = self.records[index]
        path = self.root / rec["file_name"]

        def load() -> Image.Image:
            try:
                with Image.open(path) as im:
                    return im.convert("RGB")
            except OSError as err:
                raise ValueError(f"Could not read the training image {path} ({err}).") from err

        stat = path.stat()
        return Example(load, rec[self.cfg.caption_column], f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}")


class ShapesSource:
    """ShapesWorld items generated on the fly; ``num_items`` of them make an epoch."""

    def __init__(self, cfg: DataConfig, resolution: int) -> None:

        self.cfg = cfg
        self.world = ShapesWorld(cfg.split, cfg.seed, cfg.num_items,
                                 ShapesWorldConfig(size=resolution, caption_style=cfg.caption_style))

    def __len__(self) -> int:
        return self.cfg.num_items

    def __getitem__(self, index: int) -> Example:
        caption, scene = self.world.caption_of(index)
        c = self.world.config
        key = f"shapesworld|{self.cfg.split}|{self.cfg.seed}|{index}|{c.size}|{c.caption_style}"
        return Example(lambda: render_scene(scene, c.size), caption, key)


def make_source(cfg: DataConfig, resolution: int) -> ImageFolderSource | ShapesSource:
    if cfg.type == "imagefolder":
        return ImageFolderSource(cfg)
    return ShapesSource(cfg, resolution)


def preprocess_image(image: Image.Image, resolution: int, center_crop: bool = True, flip: bool = False) -> torch.Tensor:
    """Resize the short side to ``resolution``, crop to a square, scale to [-1, 1]: a [3, H, W] tensor."""
    w, h = image.size
    if (w, h) != (resolution, resolution):
        scale = resolution / min(w, h)
        image = image.resize((max(resolution, round(w * scale)), max(resolution, round(h * scale))), Image.BICUBIC)
        w, h = image.size
        left = (w - resolution) // 2 if center_crop else 0
        top = (h - resolution) // 2 if center_crop else 0
        image = image.crop((left, top, left + resolution, top + resolution))
    if flip:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    arr = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float()
    return arr / 127.5 - 1.0


def _stable_seed(*parts: Any) -> int:
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def batch_indices(batch_number: int, num_items: int, per_process: int, num_processes: int, rank: int,
                  seed: int) -> list[int]:
    """Indices of this process's examples for global batch ``batch_number`` (see the module docs)."""
    global_batch = per_process * num_processes
    if num_items < global_batch:
        raise ValueError(
            f"The dataset has {num_items} items but one global batch needs {global_batch} "
            f"({per_process} per process x {num_processes} processes); lower train_batch_size or add data."
        )
    per_epoch = num_items // global_batch
    epoch, within = divmod(batch_number, per_epoch)
    g = torch.Generator().manual_seed(_stable_seed("epoch", seed, epoch))
    perm = torch.randperm(num_items, generator=g)
    start = within * global_batch + rank * per_process
    return perm[start : start + per_process].tolist()


def step_generator(seed: int, batch_number: int, rank: int, purpose: str) -> torch.Generator:
    """A generator seeded by (seed, batch, process, purpose): the noise, timesteps and dropout of a batch are a pure
    function of its position in the run, so a resumed run draws exactly what an uninterrupted one would."""
    return torch.Generator().manual_seed(_stable_seed(purpose, seed, batch_number, rank))


# ---------------------------------------------------------------------- entity-attribute parsing
COLOUR_WORDS = {
    "red", "green", "blue", "yellow", "purple", "orange", "cyan", "pink", "black", "white", "grey", "gray", "brown",
    "violet", "magenta", "teal", "golden", "silver", "beige", "turquoise",
}
SIZE_WORDS = {"small", "little", "tiny", "large", "big", "huge", "giant", "tall", "short", "long", "thin", "wide"}
MATERIAL_WORDS = {"wooden", "metal", "metallic", "glass", "plastic", "leather", "fluffy", "furry", "rubber", "stone",
                  "hollow", "striped", "spotted", "shiny", "matte", "five-pointed"}
ATTRIBUTE_WORDS = COLOUR_WORDS | SIZE_WORDS | MATERIAL_WORDS
_STOP = {"a", "an", "the", "and", "or", "of", "with", "in", "on", "at", "to", "is", "are", "it", "its", "one", "two",
         "three", "four", "very", "quite", "rather", "light", "dark", "bright", "pale", "deep", "coloured", "colored"}
_WORD = re.compile(r"[A-Za-z][A-Za-z-]*")


def parse_entities(text: str) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Attribute -> entity pairs as character spans, by a documented rule (no model needed).

    Rule: inside a clause (split at punctuation and "and"/"with"), each attribute word from the lexicon (colours,
    sizes, materials) binds to the first following word that is neither an attribute, a stop word nor a number:
    "a small red circle" gives (small, circle) and (red, circle). Attributes with no noun before the clause ends bind
    to nothing ("the square is red" gives none: precision over recall).
    """
    pairs = []
    pending: list[tuple[int, int]] = []
    clause_break = re.compile(r"[,.;:!?()]")
    last_end = 0
    for m in _WORD.finditer(text):
        if clause_break.search(text[last_end : m.start()]):
            pending = []
        last_end = m.end()
        word = m.group().lower()
        if word in ("and", "with", "while", "but", "which", "that"):
            pending = []
        elif word in ATTRIBUTE_WORDS:
            pending.append((m.start(), m.end()))
        elif word in _STOP:
            continue
        else:
            pairs.extend((a, (m.start(), m.end())) for a in pending)
            pending = []
    return pairs


def token_pairs(text: str, offsets: list[tuple[int, int]], prefix_len: int = 0) -> list[tuple[int, int]]:
    """Map :func:`parse_entities` pairs to token positions using a fast tokenizer's ``offset_mapping``.

    ``prefix_len`` is the number of characters prepended to ``text`` before tokenizing (e.g. RankGen's "pre ").
    """

    def token_at(span: tuple[int, int]) -> int | None:
        s, e = span[0] + prefix_len, span[1] + prefix_len
        for i, (a, b) in enumerate(offsets):
            if b > a and a < e and b > s:
                return i
        return None

    out = []
    for attr, ent in parse_entities(text):
        ta, te = token_at(attr), token_at(ent)
        if ta is not None and te is not None and ta != te:
            out.append((ta, te))
    return out


def file_fingerprint(path: str | os.PathLike) -> str:
    p = Path(path)
    stat = p.stat()
    return f"{p.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
