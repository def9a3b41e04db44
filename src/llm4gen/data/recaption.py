"""Recaption an image set with a vision-language model, after resolution / aspect / aesthetic / CLIP filters.

The paper's LAION-refined set: 1M LAION images recaptioned by a VLM asked to "describe this image in more than 50
words, naming the main objects and their relations". :func:`recaption` does that for any input and any transformers
image-to-text model, and writes what the trainer reads (``data.type: imagefolder`` or ``webdataset``):

- **Inputs**: an image folder (``metadata.jsonl`` with ``file_name`` and optionally a caption column, or just image
  files, searched recursively), WebDataset tar shards (``"shards/{000..009}.tar"``, a glob or one tar; a ``.txt`` or
  ``.json`` member is the original caption), or a Hugging Face dataset (hub id, folder, or ``save_to_disk`` output).
- **Filters**, in order: a readable image file, ``min_resolution`` (shorter side, pixels), ``max_aspect_ratio``
  (long side / short side), ``min_aesthetic`` (any aesthetic scorer: the LAION predictor on CLIP ViT-L/14 by
  default), ``min_clip_similarity`` (cosine of the image and its original caption under a CLIP model, LAION's
  filter; images without an original caption skip it), then the new caption (at least ``min_caption_words`` words).
- **Captioner**: ``AutoProcessor`` + an image-text-to-text model (LLaVA, Qwen2-VL, BLIP-2, InstructBLIP, ...; BLIP
  captioners too). ``prompt_style="chat"`` puts the image and ``instruction`` in one user turn of the processor's
  chat template; ``"prefix"`` passes the instruction as the text prefix (BLIP-style conditional captioning); ``"none"``
  passes the image only. ``"auto"``: chat when the processor has a chat template, else none.
- **Outputs**: ``imagefolder`` -> ``images/{key}.{ext}`` (the original bytes when the input has them) plus
  ``metadata.jsonl`` (``file_name``, ``text`` = the new caption, ``original_text``, ``width``, ``height``,
  ``source``, and the aesthetic / CLIP scores when computed); ``webdataset`` -> ``shard-r{rank}-{n:05d}.tar`` with
  ``{key}.{ext}``, ``{key}.txt`` (the new caption) and ``{key}.json`` (the rest). Keys are the item's position in
  the input (``{index:09d}``), the same however many processes run.
- **Resumable and multi-process**: every process appends what it did to ``_recaption/rank-{r}.jsonl``; a restarted
  run skips items already in any ledger. ``accelerate launch --num_processes N -m llm4gen data recaption ...`` gives
  process ``r`` the items with ``index % N == r``. Process 0 then writes ``metadata.jsonl`` and the report:
  ``recaption_report.json`` with how many items reached and left each filter.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from ..scoring.metrics import ClipScorer, LaionAestheticPredictor, clip_score_from_embeddings
from ..scoring.vqa import load_image_text_model
from ..utils import decode_text, describe_load_error, read_jsonl
from .sources import expand_shards

__all__ = ["DEFAULT_INSTRUCTION", "FILTERS", "Captioner", "RecaptionConfig", "SourceItem", "filter_report",
           "read_source", "recaption"]

DEFAULT_INSTRUCTION = "Describe this image in more than 50 words, naming the main objects and their relations."
FILTERS = ("readable", "resolution", "aspect_ratio", "aesthetic", "clip_similarity", "caption")
_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


@dataclass
class RecaptionConfig:
    """See the module docs. Thresholds left at ``None`` (or 0) switch their filter off."""

    input: str
    output_dir: str
    captioner: str
    input_type: str = "auto"  # imagefolder | webdataset | hf
    output_format: str = "imagefolder"  # imagefolder | webdataset
    instruction: str = DEFAULT_INSTRUCTION
    prompt_style: str = "auto"  # auto | chat | prefix | none
    max_new_tokens: int = 160
    min_resolution: int = 0
    max_aspect_ratio: float | None = None
    min_aesthetic: float | None = None
    aesthetic_head: str | None = None  # the LAION predictor's head (e.g. sac+logos+ava1-l14-linearMSE.pth)
    aesthetic_clip: str = "openai/clip-vit-large-patch14"
    min_clip_similarity: float | None = None
    clip_model: str = "openai/clip-vit-base-patch32"
    min_caption_words: int = 1
    caption_column: str = "text"
    image_column: str = "image"
    split: str = "train"
    batch_size: int = 8
    shard_size: int = 1000
    limit: int | None = None
    device: str = "cpu"
    dtype: str = "float32"
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if self.input_type not in ("auto", "imagefolder", "webdataset", "hf"):
            raise ValueError(f"input_type must be auto, imagefolder, webdataset or hf, got {self.input_type!r}.")
        if self.output_format not in ("imagefolder", "webdataset"):
            raise ValueError(f"output_format must be imagefolder or webdataset, got {self.output_format!r}.")
        if self.prompt_style not in ("auto", "chat", "prefix", "none"):
            raise ValueError(f"prompt_style must be auto, chat, prefix or none, got {self.prompt_style!r}.")
        if self.max_aspect_ratio is not None and self.max_aspect_ratio < 1:
            raise ValueError(f"max_aspect_ratio is long side / short side, so >= 1; got {self.max_aspect_ratio}.")
        if self.min_aesthetic is not None and self.aesthetic_head is None:
            raise ValueError("min_aesthetic needs aesthetic_head: the LAION aesthetic predictor's weights file "
                             "(sac+logos+ava1-l14-linearMSE.pth from github.com/christophschuhmann/"
                             "improved-aesthetic-predictor).")
        if self.batch_size < 1 or self.shard_size < 1:
            raise ValueError("batch_size and shard_size must be >= 1.")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}.")


# ---------------------------------------------------------------------------------------------------------- input
@dataclass
class SourceItem:
    index: int
    source: str  # where it came from (path, shard/member, dataset row)
    caption: str | None  # the original caption, if any
    meta: dict[str, Any]
    _load: Callable[[], bytes | Image.Image]
    ext: str = ".png"

    def raw(self) -> bytes | Image.Image:
        return self._load()

    def open(self) -> Image.Image:
        raw = self._load()
        if isinstance(raw, Image.Image):
            return raw
        try:
            return Image.open(io.BytesIO(raw))
        except OSError as err:
            raise ValueError(f"{self.source} is not a readable image ({err}).") from err


def _detect_type(path: str) -> str:
    if path.endswith(".tar") or "{" in path or (any(c in path for c in "*?[") and ".tar" in path):
        return "webdataset"
    p = Path(path)
    if p.is_dir() and ((p / "state.json").is_file() or (p / "dataset_dict.json").is_file()):
        return "hf"
    if p.is_dir():
        return "imagefolder"
    return "hf"  # a hub id


def _file_loader(path: Path) -> Callable[[], bytes]:
    return lambda: path.read_bytes()


def _read_imagefolder(root: Path, caption_column: str) -> Iterator[SourceItem]:
    if not root.is_dir():
        raise FileNotFoundError(f"Image folder {root} does not exist.")
    meta = root / "metadata.jsonl"
    if meta.is_file():
        for i, (line_no, rec) in enumerate(read_jsonl(meta, required=("file_name",))):
            path = root / rec["file_name"]
            if not path.is_file():
                raise FileNotFoundError(f"{meta}:{line_no} lists {rec['file_name']!r}, which does not exist.")
            caption = rec.get(caption_column)
            extra = {k: v for k, v in rec.items() if k not in ("file_name", caption_column)}
            yield SourceItem(i, str(path), caption if isinstance(caption, str) else None, extra, _file_loader(path),
                             path.suffix.lower())
        return
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in _IMAGE_EXTS)
    for i, path in enumerate(files):
        yield SourceItem(i, str(path), None, {}, _file_loader(path), path.suffix.lower())


def _read_webdataset(pattern: str, caption_column: str) -> Iterator[SourceItem]:
    shards = expand_shards(pattern)
    missing = [s for s in shards if not os.path.isfile(s)]
    if not shards or missing:
        raise FileNotFoundError(f"WebDataset shard(s) not found: {missing or pattern}.")
    index = 0
    for shard in shards:
        try:
            with tarfile.open(shard) as tar:
                groups: dict[str, dict[str, tarfile.TarInfo]] = {}
                for member in tar.getmembers():
                    if member.isfile():
                        base = os.path.basename(member.name)
                        key = os.path.join(os.path.dirname(member.name), base.split(".", 1)[0])
                        ext = "." + base.split(".", 1)[1].lower() if "." in base else ""
                        groups.setdefault(key, {})[ext] = member
                for key, parts in sorted(groups.items()):
                    image_ext = next((e for e in _IMAGE_EXTS if e in parts), None)
                    if image_ext is None:
                        continue
                    caption, extra = None, {}
                    if ".json" in parts:
                        extra = json.loads(decode_text(tar.extractfile(parts[".json"]).read(), f"{shard}: {key}.json"))
                        caption = extra.pop(caption_column, None)
                    if ".txt" in parts:
                        caption = decode_text(tar.extractfile(parts[".txt"]).read(), f"{shard}: {key}.txt").strip()

                    def load(shard=shard, member=parts[image_ext]) -> bytes:
                        with tarfile.open(shard) as t:
                            return t.extractfile(member).read()

                    yield SourceItem(index, f"{shard}:{key}", caption if isinstance(caption, str) else None, extra,
                                     load, image_ext)
                    index += 1
        except tarfile.TarError as err:
            raise ValueError(f"{shard} is not a readable tar shard ({err}).") from err


def _read_hf(path: str, split: str, image_column: str, caption_column: str) -> Iterator[SourceItem]:
    try:
        import datasets
    except ImportError as err:
        raise ImportError("Reading a Hugging Face dataset needs `datasets`: pip install 'llm4gen[hf]'.") from err
    try:
        if os.path.isdir(path) and os.path.isfile(os.path.join(path, "state.json")):
            ds = datasets.load_from_disk(path)
        elif os.path.isdir(path) and os.path.isfile(os.path.join(path, "dataset_dict.json")):
            ds = datasets.load_from_disk(path)[split]
        else:
            ds = datasets.load_dataset(path, split=split)
    except (FileNotFoundError, KeyError, ValueError, ConnectionError) as err:
        raise ValueError(f"Could not load the dataset {path!r} (split {split!r}): {err}") from err
    if image_column not in ds.column_names:
        raise ValueError(f"The dataset {path!r} has no column {image_column!r} (columns: {ds.column_names}); pass "
                         "--image-column.")
    has_caption = caption_column in ds.column_names
    for i in range(len(ds)):
        def load(i=i) -> bytes | Image.Image:
            value = ds[i][image_column]
            if isinstance(value, dict) and value.get("bytes") is not None:
                return value["bytes"]
            if isinstance(value, str):
                return Path(value).read_bytes()
            if isinstance(value, Image.Image):
                return value
            raise ValueError(f"Row {i} of {path!r}: the image column holds {type(value).__name__}.")

        caption = ds[i][caption_column] if has_caption else None
        yield SourceItem(i, f"{path}[{i}]", caption if isinstance(caption, str) else None, {}, load)


def read_source(cfg: RecaptionConfig) -> list[SourceItem]:
    """The input items, in input order (images are read only when used)."""
    kind = cfg.input_type if cfg.input_type != "auto" else _detect_type(cfg.input)
    if kind == "imagefolder":
        items = list(_read_imagefolder(Path(cfg.input), cfg.caption_column))
    elif kind == "webdataset":
        items = list(_read_webdataset(cfg.input, cfg.caption_column))
    else:
        items = list(_read_hf(cfg.input, cfg.split, cfg.image_column, cfg.caption_column))
    if not items:
        raise ValueError(f"No images found in {cfg.input!r} (read as {kind}).")
    return items[: cfg.limit] if cfg.limit else items


# ------------------------------------------------------------------------------------------------------ captioner
class Captioner:
    """Captions images with any transformers image-to-text model (see the module docs for ``prompt_style``)."""

    def __init__(self, model, processor, instruction: str = DEFAULT_INSTRUCTION, prompt_style: str = "auto",
                 max_new_tokens: int = 160, device: str = "cpu", name: str = "captioner") -> None:
        if prompt_style == "auto":
            prompt_style = "chat" if getattr(processor, "chat_template", None) else "none"
        self.model, self.processor, self.instruction, self.style = model.eval(), processor, instruction, prompt_style
        self.max_new_tokens, self.device, self.name = max_new_tokens, device, name
        self.tokenizer = getattr(processor, "tokenizer", processor)

    @classmethod
    def from_pretrained(cls, ref: str, device: str = "cpu", dtype: str = "float32", trust_remote_code: bool = False,
                        **kwargs) -> Captioner:
        import torch
        from transformers import AutoProcessor

        try:
            processor = AutoProcessor.from_pretrained(ref, trust_remote_code=trust_remote_code)
            model = load_image_text_model(ref, getattr(torch, dtype), trust_remote_code).to(device)
        except (OSError, ValueError) as err:
            raise describe_load_error(err, "captioning model", ref) from err
        return cls(model, processor, device=device, name=ref, **kwargs)

    def __call__(self, images: Sequence[Image.Image]) -> list[str]:
        import torch

        images = [im.convert("RGB") for im in images]
        if self.style == "chat":
            text = self.processor.apply_chat_template(
                [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.instruction}]}],
                add_generation_prompt=True, tokenize=False)
            if hasattr(self.tokenizer, "padding_side"):
                self.tokenizer.padding_side = "left"
            inputs = self.processor(images=images, text=[text] * len(images), return_tensors="pt", padding=True)
        elif self.style == "prefix":
            inputs = self.processor(images=images, text=[self.instruction] * len(images), return_tensors="pt")
        else:
            inputs = self.processor(images=images, return_tensors="pt")
        inputs = inputs.to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        with torch.no_grad():
            gen = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                      output_scores=True, return_dict_in_generate=True)
        new_tokens = gen.sequences[:, gen.sequences.shape[1] - len(gen.scores):]  # the answer, not the prompt
        return [" ".join(t.split()) for t in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


# --------------------------------------------------------------------------------------------------------- output
class _ImageFolderWriter:
    def __init__(self, out: Path) -> None:
        self.out = out
        (out / "images").mkdir(parents=True, exist_ok=True)

    def write(self, key: str, item: SourceItem, raw: bytes | Image.Image, record: dict[str, Any]
              ) -> list[tuple[int, dict[str, Any]]]:
        """Writes the image; returns the (index, metadata record) pairs now safely on disk."""
        if isinstance(raw, Image.Image):
            name = f"images/{key}.png"
            raw.convert("RGB").save(self.out / name)
        else:
            name = f"images/{key}{item.ext}"
            tmp = self.out / (name + ".tmp")
            tmp.write_bytes(raw)
            os.replace(tmp, self.out / name)
        return [(item.index, {"file_name": name, **record})]

    def flush(self) -> list[tuple[int, dict[str, Any]]]:
        return []


class _WebDatasetWriter:
    def __init__(self, out: Path, rank: int, shard_size: int) -> None:
        self.out, self.rank, self.shard_size = out, rank, shard_size
        out.mkdir(parents=True, exist_ok=True)
        self.next_shard = len(list(out.glob(f"shard-r{rank:02d}-*.tar")))
        self.buffer: list[tuple[int, str, bytes, str, dict[str, Any]]] = []

    def write(self, key: str, item: SourceItem, raw: bytes | Image.Image, record: dict[str, Any]
              ) -> list[tuple[int, dict[str, Any]]]:
        """Buffers the sample; a full buffer becomes a shard, and its records are returned (then on disk)."""
        if isinstance(raw, Image.Image):
            buf = io.BytesIO()
            raw.convert("RGB").save(buf, format="PNG")
            data, ext = buf.getvalue(), ".png"
        else:
            data, ext = raw, item.ext
        self.buffer.append((item.index, key, data, ext, record))
        return self.flush() if len(self.buffer) >= self.shard_size else []

    def flush(self) -> list[tuple[int, dict[str, Any]]]:
        if not self.buffer:
            return []
        name = f"shard-r{self.rank:02d}-{self.next_shard:05d}.tar"
        tmp = self.out / (name + ".tmp")
        records = []
        with tarfile.open(tmp, "w") as tar:
            for index, key, data, ext, record in self.buffer:
                text = record["text"].encode("utf-8")
                meta = json.dumps({k: v for k, v in record.items() if k != "text"}, ensure_ascii=False).encode()
                for suffix, payload in ((ext, data), (".txt", text), (".json", meta)):
                    info = tarfile.TarInfo(key + suffix)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
                records.append((index, {"shard": name, "key": key, **record}))
        os.replace(tmp, self.out / name)
        self.next_shard += 1
        self.buffer = []
        return records


# --------------------------------------------------------------------------------------------------------- runner
def _ledger_dir(out: Path) -> Path:
    return out / "_recaption"


def _read_ledgers(out: Path) -> list[dict[str, Any]]:
    rows = []
    for path in sorted(_ledger_dir(out).glob("rank-*.jsonl")):
        rows.extend(rec for _, rec in read_jsonl(path))
    return rows


def filter_report(rows: Sequence[dict[str, Any]], total: int) -> list[dict[str, Any]]:
    """Per filter, in order: how many items reached it, were dropped by it, and went on."""
    dropped = Counter(r["reason"] for r in rows if r["status"] == "dropped")
    out, remaining = [], total
    for name in FILTERS:
        out.append({"filter": name, "in": remaining, "dropped": dropped.get(name, 0),
                    "kept": remaining - dropped.get(name, 0)})
        remaining -= dropped.get(name, 0)
    return out


def _words(text: str) -> int:
    return len(re.findall(r"\w+", text))


def recaption(
    cfg: RecaptionConfig,
    captioner: Callable[[list[Image.Image]], list[str]] | None = None,
    aesthetic: Callable[[list[Image.Image]], Any] | None = None,
    clip: Any = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Filter and recaption ``cfg.input`` into ``cfg.output_dir``; returns the report (process 0 also writes it).

    ``captioner`` / ``aesthetic`` / ``clip`` default to the models named in ``cfg`` (``clip`` is a
    :class:`~llm4gen.scoring.metrics.ClipScorer` or a callable ``(images, texts) -> cosines``).
    """
    from accelerate import PartialState
    from tqdm.auto import tqdm

    state = PartialState()
    out = Path(cfg.output_dir)
    _ledger_dir(out).mkdir(parents=True, exist_ok=True)
    items = read_source(cfg)
    done = {r["index"] for r in _read_ledgers(out)}
    mine = [it for it in items if it.index % state.num_processes == state.process_index and it.index not in done]
    if mine:
        if captioner is None:
            captioner = Captioner.from_pretrained(cfg.captioner, device=cfg.device, dtype=cfg.dtype,
                                                  trust_remote_code=cfg.trust_remote_code, instruction=cfg.instruction,
                                                  prompt_style=cfg.prompt_style, max_new_tokens=cfg.max_new_tokens)
        if aesthetic is None and cfg.min_aesthetic is not None:
            aesthetic = LaionAestheticPredictor(cfg.aesthetic_head, cfg.aesthetic_clip, device=cfg.device)
        if clip is None and cfg.min_clip_similarity is not None:
            clip = ClipScorer(cfg.clip_model, device=cfg.device)
    writer: _ImageFolderWriter | _WebDatasetWriter = (
        _ImageFolderWriter(out) if cfg.output_format == "imagefolder"
        else _WebDatasetWriter(out, state.process_index, cfg.shard_size))
    ledger_path = _ledger_dir(out) / f"rank-{state.process_index:03d}.jsonl"
    bar = tqdm(total=len(mine), desc="recaption", disable=not (progress and state.is_main_process))
    with open(ledger_path, "a", encoding="utf-8") as ledger:
        def log(entry: dict[str, Any]) -> None:
            ledger.write(json.dumps(entry, ensure_ascii=False) + "\n")
            ledger.flush()

        for start in range(0, len(mine), cfg.batch_size):
            batch = mine[start : start + cfg.batch_size]
            alive: list[tuple[SourceItem, bytes | Image.Image, Image.Image, dict[str, Any]]] = []
            for it in batch:
                raw = it.raw()
                try:
                    image = Image.open(io.BytesIO(raw)) if isinstance(raw, bytes) else raw
                    w, h = image.size
                except OSError:
                    log({"index": it.index, "source": it.source, "status": "dropped", "reason": "readable"})
                    continue
                rec = {"index": it.index, "source": it.source, "width": w, "height": h}
                if min(w, h) < cfg.min_resolution:
                    log({**rec, "status": "dropped", "reason": "resolution"})
                elif cfg.max_aspect_ratio is not None and max(w, h) / min(w, h) > cfg.max_aspect_ratio:
                    log({**rec, "status": "dropped", "reason": "aspect_ratio"})
                else:
                    alive.append((it, raw, image.convert("RGB"), rec))
            if alive and aesthetic is not None and cfg.min_aesthetic is not None:
                scores = [float(s) for s in aesthetic([a[2] for a in alive])]
                kept = []
                for a, s in zip(alive, scores):
                    a[3]["aesthetic"] = s
                    if s < cfg.min_aesthetic:
                        log({**a[3], "status": "dropped", "reason": "aesthetic"})
                    else:
                        kept.append(a)
                alive = kept
            if alive and clip is not None and cfg.min_clip_similarity is not None:
                with_caption = [a for a in alive if a[0].caption]
                sims = _cosines(clip, [a[2] for a in with_caption], [a[0].caption for a in with_caption])
                sim_of = {id(a): s for a, s in zip(with_caption, sims)}
                kept = []
                for a in alive:
                    s = sim_of.get(id(a))
                    if s is not None:
                        a[3]["clip_similarity"] = s
                    if s is not None and s < cfg.min_clip_similarity:
                        log({**a[3], "status": "dropped", "reason": "clip_similarity"})
                    else:
                        kept.append(a)
                alive = kept
            captions = captioner([a[2] for a in alive]) if alive else []
            for (it, raw, _, rec), caption in zip(alive, captions):
                if _words(caption) < cfg.min_caption_words:
                    log({**rec, "status": "dropped", "reason": "caption", "caption": caption})
                    continue
                key = f"{it.index:09d}"
                record = {"text": caption, "original_text": it.caption, **{k: v for k, v in rec.items()
                                                                           if k != "index"}, **it.meta}
                for index, written in writer.write(key, it, raw, record):
                    log({"index": index, "status": "kept", "record": written})
            bar.update(len(batch))
        for index, written in writer.flush():
            log({"index": index, "status": "kept", "record": written})
    bar.close()
    state.wait_for_everyone()
    rows = _read_ledgers(out)
    kept = sorted((r for r in rows if r["status"] == "kept"), key=lambda r: r["index"])
    report = {"input": cfg.input, "output": str(out), "format": cfg.output_format, "total": len(items),
              "processed": len({r["index"] for r in rows}), "kept": len(kept),
              "filters": filter_report(rows, len(items)), "captioner": cfg.captioner,
              "config": asdict(cfg)}
    if state.is_main_process:
        if cfg.output_format == "imagefolder":
            tmp = out / "metadata.jsonl.tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                for r in kept:
                    f.write(json.dumps(r["record"], ensure_ascii=False) + "\n")
            os.replace(tmp, out / "metadata.jsonl")
        (out / "recaption_report.json").write_text(json.dumps(report, indent=1, default=str))
    return report


def _cosines(clip: Any, images: list[Image.Image], texts: list[str]) -> list[float]:
    if not images:
        return []
    if hasattr(clip, "embed_images"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return clip_score_from_embeddings(clip.embed_images(images), clip.embed_texts(texts), scale=1.0,
                                              clamp_negative=False).tolist()
    return [float(v) for v in clip(images, texts)]
