"""Training data sources: (image, caption) pairs from an image folder, a Hugging Face dataset, WebDataset shards or
a registered generator, and the image preprocessing the trainer applies.

A source is a sequence of :class:`Example` (``len`` and indexing), built from a :class:`DataConfig` and the training
resolution by :func:`make_source`. The built-in types are ``imagefolder``, ``hf`` and ``webdataset``; more come from
:func:`register_source` or from packages that declare an ``llm4gen.data_sources`` entry point (this package declares
``shapesworld``, :class:`llm4gen.shapesworld.source.ShapesSource`, that way).
"""

from __future__ import annotations

import glob
import io
import json
import os
import re
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..utils import MissingFieldError, decode_text, read_jsonl

__all__ = ["DataConfig", "Example", "HFSource", "ImageFolderSource", "WebDatasetSource", "expand_shards",
           "file_fingerprint", "make_source", "preprocess_image", "register_source", "source_types"]

ENTRY_POINT_GROUP = "llm4gen.data_sources"
# data.type -> a callable (DataConfig, resolution) -> source; filled below and by register_source
_SOURCES: dict[str, Callable[[Any, int], Any]] = {}


def register_source(name: str, factory: Callable[[Any, int], Any]) -> None:
    """Make ``data.type: name`` build its source with ``factory(data_config, resolution)``."""
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"A data source type is a plain name (letters, digits, - and _), got {name!r}.")
    _SOURCES[name] = factory


def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def source_types() -> tuple[str, ...]:
    """Every ``data.type`` this installation can build: the built-in ones, registered ones and entry points."""
    return tuple(dict.fromkeys([*_SOURCES, *sorted(_entry_points())]))


def make_source(cfg: DataConfig, resolution: int) -> Any:
    """The source ``cfg.type`` names, built for ``resolution``-pixel training."""
    if cfg.type not in _SOURCES:
        entry = _entry_points().get(cfg.type)
        if entry is None:
            raise ValueError(f"data.type must be one of {source_types()}, got {cfg.type!r}.")
        register_source(cfg.type, entry.load())
    return _SOURCES[cfg.type](cfg, resolution)


@dataclass
class DataConfig:
    """Where the (image, caption) pairs come from.

    - ``imagefolder``: ``path`` holds images and ``metadata.jsonl`` (``file_name`` + ``caption_column``), the
      diffusers / HF datasets convention (what `llm4gen shapes make-data` writes).
    - ``shapesworld``: generated on the fly from ``split`` / ``seed``; ``num_items`` items make an epoch.
    - ``hf``: a Hugging Face dataset (``path`` = hub id, a local dataset folder, or one written by ``save_to_disk``;
      ``split``; ``image_column`` / ``caption_column``). Needs ``pip install llm4gen[hf]``.
    - ``webdataset``: tar shards (``path`` = ``"shards/train-{000000..000009}.tar"``, a glob, or one tar) whose
      members share a key: ``KEY.jpg|jpeg|png|webp`` and ``KEY.txt`` (or ``KEY.json`` with ``caption_column``).

    ``drop_count_sentence`` (ShapesWorld only): the share of items whose caption loses the sentence that states the
    number of objects ("In total there are three figures in the scene."), so the model has to count the objects the
    caption describes instead of reading one number. The choice is fixed per item (seeded by ``seed`` and the index).
    ``min_objects`` / ``max_objects`` (ShapesWorld only, 1-4): how many objects a scene holds, e.g. 1 and 1 for
    scenes of one object, where a caption's place words and colour need no binding to their object.
    """

    type: str = "shapesworld"
    path: str | None = None
    caption_column: str = "text"
    image_column: str = "image"
    split: str = "train"
    seed: int = 0
    num_items: int = 100_000
    caption_style: str = "mixed"
    center_crop: bool = True
    random_flip: bool = False
    drop_count_sentence: float = 0.0
    min_objects: int = 1
    max_objects: int = 4

    def __post_init__(self) -> None:
        if self.type not in _SOURCES and self.type not in _entry_points():  # entry points read only when needed
            raise ValueError(f"data.type must be one of {source_types()}, got {self.type!r} (a package can add a "
                             "type with register_source or an 'llm4gen.data_sources' entry point).")
        if self.type in ("imagefolder", "hf", "webdataset") and not self.path:
            raise ValueError(f"data.path is required for data.type: {self.type}.")
        if self.random_flip and self.type == "shapesworld":
            raise ValueError("data.random_flip would contradict ShapesWorld's left/right captions; leave it off.")
        if not 0.0 <= self.drop_count_sentence <= 1.0:
            raise ValueError(f"data.drop_count_sentence is a share of items in [0, 1], got {self.drop_count_sentence}.")
        if not 1 <= self.min_objects <= self.max_objects <= 4:
            raise ValueError(
                f"data.min_objects and data.max_objects need 1 <= min_objects <= max_objects <= 4 (ShapesWorld draws "
                f"1 to 4 objects), got {self.min_objects} and {self.max_objects}."
            )
        if (self.min_objects, self.max_objects) != (1, 4) and self.type != "shapesworld":
            raise ValueError(
                "data.min_objects / data.max_objects choose ShapesWorld's scenes; leave them at 1 and 4 for "
                f"data.type: {self.type}."
            )
        if self.drop_count_sentence and self.type != "shapesworld":
            raise ValueError(
                "data.drop_count_sentence edits ShapesWorld captions only; set it to 0 for "
                f"data.type: {self.type} (edit those captions in the dataset itself)."
            )



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
        except MissingFieldError as err:
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

        return Example(load, rec[self.cfg.caption_column], file_fingerprint(path))


class HFSource:
    """A Hugging Face ``datasets`` dataset with an image column and a caption column."""

    def __init__(self, cfg: DataConfig) -> None:
        try:
            import datasets
        except ImportError as err:
            raise ImportError("data.type: hf needs the `datasets` package: pip install 'llm4gen[hf]'.") from err
        path = cfg.path
        try:
            if os.path.isdir(path) and os.path.isfile(os.path.join(path, "state.json")):
                ds = datasets.load_from_disk(path)  # one split written by save_to_disk
            elif os.path.isdir(path) and os.path.isfile(os.path.join(path, "dataset_dict.json")):
                ds = datasets.load_from_disk(path)[cfg.split]
            else:
                ds = datasets.load_dataset(path, split=cfg.split)
        except (FileNotFoundError, KeyError, ValueError, ConnectionError) as err:
            raise ValueError(f"Could not load the dataset {path!r} (split {cfg.split!r}): {err}") from err
        missing = [c for c in (cfg.image_column, cfg.caption_column) if c not in ds.column_names]
        if missing:
            raise ValueError(
                f"The dataset {path!r} has no column(s) {missing} (columns: {ds.column_names}); set "
                "data.image_column / data.caption_column."
            )
        self.ds, self.cfg = ds, cfg
        self.fingerprint = getattr(ds, "_fingerprint", path)
        captions = ds[cfg.caption_column]
        empty = [i for i, c in enumerate(captions) if not isinstance(c, str) or not c.strip()]
        if empty:
            raise ValueError(f"The dataset {path!r} has {len(empty)} empty caption(s), e.g. row {empty[0]}.")
        self.captions = captions

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index: int) -> Example:
        def load() -> Image.Image:
            value = self.ds[index][self.cfg.image_column]
            if isinstance(value, dict) and value.get("bytes") is not None:
                value = Image.open(io.BytesIO(value["bytes"]))
            elif isinstance(value, str):
                value = Image.open(value)
            if not isinstance(value, Image.Image):
                raise ValueError(f"Row {index} of {self.cfg.path!r}: the image column holds {type(value).__name__}.")
            return value.convert("RGB")

        return Example(load, self.captions[index], f"hf|{self.cfg.path}|{self.cfg.split}|{self.fingerprint}|{index}")


_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp")


def expand_shards(pattern: str) -> list[str]:
    """``"a-{000..002}.tar"`` -> ``["a-000.tar", "a-001.tar", "a-002.tar"]``; globs and plain paths work too."""
    m = re.search(r"\{(\d+)\.\.(\d+)\}", pattern)
    if m:
        width = len(m.group(1))
        out = []
        for k in range(int(m.group(1)), int(m.group(2)) + 1):
            out.extend(expand_shards(pattern[: m.start()] + str(k).zfill(width) + pattern[m.end() :]))
        return out
    if any(ch in pattern for ch in "*?["):
        return sorted(glob.glob(pattern))
    return [pattern]


class WebDatasetSource:
    """WebDataset-style tar shards, read with the standard library (members indexed once, then random access)."""

    def __init__(self, cfg: DataConfig) -> None:
        shards = expand_shards(cfg.path)
        missing = [s for s in shards if not os.path.isfile(s)]
        if not shards or missing:
            raise FileNotFoundError(f"WebDataset shard(s) not found: {missing or cfg.path}.")
        self.cfg = cfg
        self.items: list[tuple[str, Any, str, str]] = []  # shard, image member, caption, cache key
        for shard in shards:
            try:
                with tarfile.open(shard) as tar:
                    groups: dict[str, dict[str, Any]] = {}
                    for member in tar.getmembers():
                        if not member.isfile():
                            continue
                        base = os.path.basename(member.name)
                        key = os.path.join(os.path.dirname(member.name), base.split(".", 1)[0])
                        ext = "." + base.split(".", 1)[1].lower() if "." in base else ""
                        groups.setdefault(key, {})[ext] = member
                    for key, parts in sorted(groups.items()):
                        image = next((parts[e] for e in _IMAGE_EXTS if e in parts), None)
                        if image is None:
                            continue
                        caption = self._caption(tar, parts, shard, key)
                        stat = os.stat(shard)
                        cache_key = f"wds|{shard}|{stat.st_size}|{stat.st_mtime_ns}|{key}"
                        self.items.append((shard, image, caption, cache_key))
            except tarfile.TarError as err:
                raise ValueError(f"{shard} is not a readable tar shard ({err}).") from err
        if not self.items:
            raise ValueError(f"No (image, caption) samples found in {cfg.path!r}.")

    def _caption(self, tar, parts: dict[str, Any], shard: str, key: str) -> str:
        if ".txt" in parts:
            caption = decode_text(tar.extractfile(parts[".txt"]).read(), f"{shard}: {key}.txt")
        elif ".json" in parts:
            data = json.loads(decode_text(tar.extractfile(parts[".json"]).read(), f"{shard}: {key}.json"))
            if self.cfg.caption_column not in data:
                raise ValueError(f"{shard}: {key}.json has no {self.cfg.caption_column!r} field (data.caption_column).")
            caption = data[self.cfg.caption_column]
        else:
            raise ValueError(f"{shard}: sample {key!r} has an image but no .txt or .json caption.")
        if not isinstance(caption, str) or not caption.strip():
            raise ValueError(f"{shard}: the caption of sample {key!r} is empty.")
        return caption.strip()

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Example:
        shard, member, caption, key = self.items[index]

        def load() -> Image.Image:
            try:
                with tarfile.open(shard) as tar, Image.open(io.BytesIO(tar.extractfile(member).read())) as im:
                    return im.convert("RGB")
            except (OSError, tarfile.TarError) as err:
                raise ValueError(f"Could not read {member.name} from {shard} ({err}).") from err

        return Example(load, caption, key)


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


def file_fingerprint(path: str | os.PathLike) -> str:
    p = Path(path)
    stat = p.stat()
    return f"{p.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


register_source("imagefolder", lambda cfg, resolution: ImageFolderSource(cfg))
register_source("hf", lambda cfg, resolution: HFSource(cfg))
register_source("webdataset", lambda cfg, resolution: WebDatasetSource(cfg))
