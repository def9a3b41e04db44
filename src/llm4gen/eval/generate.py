"""The generation runner: N images per prompt of a prompt file with any diffusers text-to-image pipeline.

- **Seeds.** Image ``i`` of prompt ``p`` (0-based, in file order) is drawn with a CPU ``torch.Generator`` seeded with
  :func:`image_seed` ``(seed, p, i)``: a 63-bit integer from ``numpy.random.SeedSequence([seed, p, i])``. Each image
  has its own generator, so it does not depend on the batch size, on which process drew it, or on resuming.
- **Batches** run across prompts and seeds (one list of prompts and generators per pipeline call).
- **Resumable**: an image whose file exists and is a valid PNG is skipped; files are written atomically (temp file +
  rename), so an interrupted run leaves no half-written PNG. A folder written with other settings, a model or
  prompts is refused (``run_config.json`` and ``manifest.jsonl`` are compared) instead of being mixed.
- **Several processes / GPUs**: ``accelerate launch --num_processes N -m llm4gen eval generate ...`` splits the
  missing images between processes (accelerate's ``split_between_processes``); process 0 writes the manifest.
- **File names**: ``llm4gen`` -> ``{prompt_index:05d}_{image_index:02d}.png``; ``compbench`` (T2I-CompBench) ->
  ``{prompt}_{index:06d}.png`` with the running index ``prompt_index * num_images + image_index``. In the prompt
  ``/``, ``\\``, NUL and ``_`` (the original evaluators cut the name at its first ``_``) become ``-`` and
  newlines/tabs spaces; a name over 255 bytes (the usual file-name limit) keeps
  the prompt's start and ends ``~{first 8 hex of sha1(prompt)}`` before ``_{index}.png``. The original evaluators read
  the prompt back from the file name, so two different prompts that give the same name (``a red/blue ball``, ``a
  red-blue ball``) are refused.
- **manifest.jsonl**: one line per image: file, prompt, prompt_index, image_index, seed, model, settings, the prompt
  file's other fields (``meta``) and ``nsfw`` when the pipeline's safety checker flagged the image. With ``llm4gen``
  naming it and ``run_config.json`` sit in the image folder; with ``compbench`` naming the folder (``samples/``) must
  hold only the images, as the original evaluators parse every file in it, so they sit beside it as
  ``{folder}.manifest.jsonl`` and ``{folder}.run_config.json`` (:func:`manifest_path`), and temporary files are
  written beside it too.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..pipeline import LLM4GenPipeline, LLM4GenXLPipeline
from ..utils import describe_load_error, read_jsonl, validate_prompts

__all__ = [
    "MANIFEST_NAME",
    "NAMINGS",
    "GenerationResult",
    "GenerationSettings",
    "WorkItem",
    "generate_images",
    "image_filename",
    "image_seed",
    "is_valid_png",
    "compbench_stems",
    "load_text_to_image_pipeline",
    "manifest_path",
    "plan_generation",
    "read_manifest",
]

MANIFEST_NAME = "manifest.jsonl"
RUN_CONFIG_NAME = "run_config.json"
NAMINGS = ("llm4gen", "compbench")
MAX_NAME_BYTES = 255
# settings that change the images: a resumed run must match them
_IMAGE_SETTINGS = ("num_images", "seed", "steps", "guidance", "height", "width", "negative_prompt", "naming")


@dataclass
class GenerationSettings:
    """What to generate: ``num_images`` per prompt, seeds from ``seed``, ``steps`` denoising steps, ``guidance``
    scale, size (the model's default when None), a ``negative_prompt`` for all, the file ``naming`` (``llm4gen`` or
    ``compbench``), ``batch_size`` images per pipeline call and ``limit`` (the first N prompts only)."""

    num_images: int = 1
    seed: int = 0
    steps: int = 50
    guidance: float = 7.5
    height: int | None = None
    width: int | None = None
    negative_prompt: str | None = None
    naming: str = "llm4gen"
    batch_size: int = 4
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.naming not in NAMINGS:
            raise ValueError(f"naming must be one of {NAMINGS}, got {self.naming!r}.")
        for name in ("num_images", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}.")


@dataclass
class WorkItem:
    prompt: str
    prompt_index: int
    image_index: int
    seed: int
    file: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class GenerationResult:
    out_dir: Path
    manifest: Path
    planned: int  # images the prompt file and settings ask for
    skipped: int  # already there before this run
    generated: int  # written by this process
    seconds: float  # generation time of this process (pipeline loading excluded)
    is_main_process: bool = True


def image_seed(base_seed: int, prompt_index: int, image_index: int) -> int:
    """The seed of image ``image_index`` of prompt ``prompt_index``: 63 bits of ``SeedSequence([base, p, i])``."""
    if min(base_seed, prompt_index, image_index) < 0:
        raise ValueError("Seeds and indices must be non-negative.")
    state = np.random.SeedSequence([base_seed, prompt_index, image_index]).generate_state(2, dtype=np.uint32)
    return int(((int(state[0]) << 32) | int(state[1])) & (2**63 - 1))


def _truncate_utf8(text: str, max_bytes: int) -> str:
    data = text.encode("utf-8")[:max_bytes]
    return data.decode("utf-8", errors="ignore")


def _sanitize(prompt: str) -> str:
    for char in ("/", "\\", "\0", "_"):  # "_": the original evaluators split the name at its first "_"
        prompt = prompt.replace(char, "-")
    for char in ("\t", "\r", "\n"):
        prompt = prompt.replace(char, " ")
    return prompt.strip() or "prompt"


def image_filename(prompt: str, prompt_index: int, image_index: int, num_images: int, naming: str = "llm4gen") -> str:
    """The file name of one image under a naming convention (see the module docstring)."""
    if naming == "llm4gen":
        return f"{prompt_index:05d}_{image_index:02d}.png"
    if naming != "compbench":
        raise ValueError(f"naming must be one of {NAMINGS}, got {naming!r}.")
    suffix = f"_{prompt_index * num_images + image_index:06d}.png"
    stem = _sanitize(prompt)
    if len((stem + suffix).encode("utf-8")) > MAX_NAME_BYTES:
        digest = hashlib.sha1(prompt.encode("utf-8")).hexdigest()[:8]
        stem = _truncate_utf8(stem, MAX_NAME_BYTES - len(suffix) - 9).rstrip() + "~" + digest
    return stem + suffix


def is_valid_png(path: str | os.PathLike) -> bool:
    """Whether ``path`` exists and is a complete, readable PNG."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.format != "PNG":
                return False
            im.verify()
        return True
    except (OSError, SyntaxError, ValueError):
        return False


def _as_records(prompts: Sequence[str] | Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    if prompts and all(isinstance(p, dict) for p in prompts):
        records = [{"prompt": p["prompt"], "meta": dict(p.get("meta", {}))} for p in prompts]
        validate_prompts([r["prompt"] for r in records])
        return records
    return [{"prompt": p, "meta": {}} for p in validate_prompts(list(prompts) if not isinstance(prompts, str)
                                                                else prompts)]


def compbench_stems(prompts: Sequence[str]) -> dict[str, str]:
    """The prompt part of each prompt's ``compbench`` file names -> the prompt. Two different prompts with the same
    part raise a ``ValueError``: T2I-CompBench's evaluators take the prompt from the file name, so they could not tell
    the two apart."""
    stems: dict[str, str] = {}
    for prompt in prompts:
        stem = image_filename(prompt, 0, 0, 1, naming="compbench")[: -len("_000000.png")]
        other = stems.setdefault(stem, prompt)
        if other != prompt:
            raise ValueError(f"The prompts {other!r} and {prompt!r} both get the file name {stem!r}_{{index}}.png "
                             "(/, \\, NUL and _ become -), and T2I-CompBench's evaluators read the prompt back "
                             "from the file name. Reword one of them, or use --naming llm4gen.")
    return stems


def plan_generation(prompts: Sequence[str] | Sequence[dict[str, Any]], settings: GenerationSettings) -> list[WorkItem]:
    """Every image the prompts and settings ask for, in (prompt, image) order (file names are unique: both namings
    contain the prompt index or the running image index; ``compbench`` names are also checked with
    :func:`compbench_stems`)."""
    records = _as_records(prompts)
    if settings.limit is not None:
        records = records[: settings.limit]
    if settings.naming == "compbench":
        compbench_stems([r["prompt"] for r in records])
    return [
        WorkItem(prompt=r["prompt"], prompt_index=p, image_index=i, seed=image_seed(settings.seed, p, i),
                 file=image_filename(r["prompt"], p, i, settings.num_images, settings.naming), meta=r["meta"])
        for p, r in enumerate(records)
        for i in range(settings.num_images)
    ]


def _beside(images_dir: Path, name: str) -> Path:
    return images_dir.parent / f"{images_dir.name}.{name}"


def manifest_path(images_dir: str | os.PathLike, naming: str | None = None) -> Path:
    """The manifest of an image folder: ``{images_dir}/manifest.jsonl`` (``llm4gen`` naming) or, beside the folder,
    ``{images_dir}.manifest.jsonl`` (``compbench`` naming). Without ``naming``: the one that exists (inside first)."""
    root = Path(images_dir)
    inside, beside = root / MANIFEST_NAME, _beside(root, MANIFEST_NAME)
    if naming is not None:
        return beside if naming == "compbench" else inside
    return beside if beside.is_file() and not inside.is_file() else inside


def read_manifest(images_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of the folder's manifest (:func:`manifest_path`; each has at least ``file`` and ``prompt``)."""
    path = manifest_path(images_dir)
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} does not exist (nor {str(_beside(Path(images_dir), MANIFEST_NAME))!r}"
                                f"): {images_dir} was not written by `llm4gen eval generate` (or the run did not "
                                "finish; run it again to resume).")
    return [rec for _, rec in read_jsonl(path, required=("file", "prompt"))]


# ------------------------------------------------------------------------------------------------------ pipelines
def load_text_to_image_pipeline(
    model: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    trust_remote_code: bool = False,
):
    """Any diffusers text-to-image pipeline (folder or hub id): LLM4GEN pipelines with our classes (named in their
    ``model_index.json``), everything else with ``DiffusionPipeline.from_pretrained``."""
    from diffusers import DiffusionPipeline

    ref = os.fspath(model)
    try:
        index = DiffusionPipeline.load_config(ref)
    except (OSError, ValueError) as err:
        raise describe_load_error(err, "pipeline (model_index.json)", ref) from err
    class_name = index.get("_class_name", "")
    kwargs: dict[str, Any] = {"trust_remote_code": True} if trust_remote_code else {}
    if dtype is not None:
        kwargs["torch_dtype"] = dtype
    cls = DiffusionPipeline
    if class_name in ("LLM4GenPipeline", "LLM4GenXLPipeline"):
        cls = LLM4GenXLPipeline if class_name == "LLM4GenXLPipeline" else LLM4GenPipeline
    try:
        pipe = cls.from_pretrained(ref, **kwargs)
    except (OSError, ValueError) as err:
        raise describe_load_error(err, "pipeline", ref) from err
    pipe = pipe.to(device)
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    return pipe


def _accepts(fn: Any, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return True
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _run_config(model: str, settings: GenerationSettings) -> dict[str, Any]:
    return {"model": model, "settings": {k: getattr(settings, k) for k in _IMAGE_SETTINGS}}


def _run_config_path(out_dir: Path, naming: str) -> Path:
    return _beside(out_dir, RUN_CONFIG_NAME) if naming == "compbench" else out_dir / RUN_CONFIG_NAME


def _move_metadata_out(out_dir: Path) -> None:
    """A ``compbench`` folder written before the manifest moved beside it: move the two files out of ``samples/``."""
    for name in (MANIFEST_NAME, RUN_CONFIG_NAME):
        if (out_dir / name).is_file() and not _beside(out_dir, name).exists():
            os.replace(out_dir / name, _beside(out_dir, name))


def _check_resume(out_dir: Path, model: str, settings: GenerationSettings, items: list[WorkItem]) -> None:
    config_path = _run_config_path(out_dir, settings.naming)
    if config_path.is_file():
        old = json.loads(config_path.read_text(encoding="utf-8"))
        new = _run_config(model, settings)
        diffs = [f"{k}: {old['settings'].get(k)!r} -> {v!r}" for k, v in new["settings"].items()
                 if old.get("settings", {}).get(k) != v]
        if old.get("model") != model:
            diffs.insert(0, f"model: {old.get('model')!r} -> {model!r}")
        if diffs:
            raise ValueError(f"{out_dir} holds images generated with other settings ({'; '.join(diffs)}). Use a new "
                             "--out folder, or --overwrite to regenerate every image.")
    manifest = manifest_path(out_dir, settings.naming)
    if manifest.is_file():
        old_prompts = {rec["file"]: rec.get("prompt") for _, rec in read_jsonl(manifest, required=("file", "prompt"))}
        changed = [it.file for it in items if it.file in old_prompts and old_prompts[it.file] != it.prompt]
        if changed:
            raise ValueError(f"{len(changed)} images in {out_dir} were generated for other prompts (e.g. "
                             f"{changed[0]}); the prompt file changed. Use a new --out folder or --overwrite.")


def generate_images(
    model: str | os.PathLike | Any,
    prompts: Sequence[str] | Sequence[dict[str, Any]],
    out_dir: str | os.PathLike,
    settings: GenerationSettings | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
    progress: bool = True,
    trust_remote_code: bool = False,
    model_name: str | None = None,
) -> GenerationResult:
    """Generate ``settings.num_images`` images for each prompt into ``out_dir`` and write ``manifest.jsonl``.

    ``model`` is a pipeline folder / hub id, or a loaded pipeline (then name it with ``model_name`` for the
    manifest). ``prompts`` are strings or ``{"prompt", "meta"}`` records (:func:`~llm4gen.eval.prompts.
    read_prompt_records`). ``device`` defaults to this process's accelerate device. Safe to re-run: existing images
    are skipped. Under ``accelerate launch`` every process calls this and the work is split between them.
    """
    from accelerate import PartialState

    settings = settings or GenerationSettings()
    state = PartialState()
    out = Path(out_dir)
    items = plan_generation(prompts, settings)
    if isinstance(model, (str, os.PathLike)):
        name = model_name or os.fspath(model)
    else:
        name = model_name or getattr(getattr(model, "config", {}), "_name_or_path", None) or type(model).__name__
    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        if settings.naming == "compbench":
            _move_metadata_out(out)
        if not overwrite:
            _check_resume(out, name, settings, items)
    state.wait_for_everyone()
    todo = [it for it in items if overwrite or not is_valid_png(out / it.file)]
    skipped = len(items) - len(todo)
    state.wait_for_everyone()  # every process has the same list before anyone writes
    if state.is_main_process:
        _run_config_path(out, settings.naming).write_text(json.dumps(_run_config(name, settings), indent=1) + "\n",
                                                          encoding="utf-8")

    seconds = 0.0
    generated = 0
    flagged: dict[str, bool] = {}
    with state.split_between_processes(todo) as local:
        if local:
            pipe = (load_text_to_image_pipeline(model, device or state.device, dtype, trust_remote_code)
                    if isinstance(model, (str, os.PathLike)) else model)
            if not isinstance(model, (str, os.PathLike)) and hasattr(pipe, "set_progress_bar_config"):
                pipe.set_progress_bar_config(disable=True)
            start = time.perf_counter()
            generated, flagged = _generate_local(pipe, local, out, settings, progress and state.is_main_process)
            seconds = time.perf_counter() - start
    flagged_all = _gather_flags(state, flagged)
    state.wait_for_everyone()
    manifest = manifest_path(out, settings.naming)
    if state.is_main_process:
        _write_manifest(manifest, items, out, name, settings, flagged_all)
    state.wait_for_everyone()
    return GenerationResult(out_dir=out, manifest=manifest, planned=len(items), skipped=skipped, generated=generated,
                            seconds=seconds, is_main_process=state.is_main_process)


def _generate_local(pipe: Any, items: list[WorkItem], out: Path, settings: GenerationSettings,
                    progress: bool) -> tuple[int, dict[str, bool]]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    call = pipe.__call__
    kwargs: dict[str, Any] = {"num_inference_steps": settings.steps, "guidance_scale": settings.guidance}
    for key in ("height", "width"):
        if getattr(settings, key) is not None:
            kwargs[key] = getattr(settings, key)
    if settings.negative_prompt is not None:
        if not _accepts(call, "negative_prompt"):
            raise ValueError(f"{type(pipe).__name__} takes no negative_prompt; leave --negative out.")
    flagged: dict[str, bool] = {}
    done = 0
    tmp_dir = out.parent if settings.naming == "compbench" else out  # samples/ holds nothing but finished images
    bar = Progress(TextColumn("generating"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   disable=not progress, transient=True)
    with bar:
        task = bar.add_task("generating", total=len(items))
        for start in range(0, len(items), settings.batch_size):
            batch = items[start : start + settings.batch_size]
            call_kwargs = dict(kwargs)
            if settings.negative_prompt is not None:
                call_kwargs["negative_prompt"] = [settings.negative_prompt] * len(batch)
            generators = [torch.Generator(device="cpu").manual_seed(it.seed) for it in batch]
            result = pipe(prompt=[it.prompt for it in batch], generator=generators, num_images_per_prompt=1,
                          output_type="pil", **call_kwargs)
            images = result.images if hasattr(result, "images") else result[0]
            if len(images) != len(batch):
                raise RuntimeError(f"The pipeline returned {len(images)} images for {len(batch)} prompts.")
            nsfw = getattr(result, "nsfw_content_detected", None) or [None] * len(batch)
            for it, image, flag in zip(batch, images, nsfw):
                target = out / it.file
                tmp = tmp_dir / f".{target.stem[:200]}.{os.getpid()}.tmp"
                image.save(tmp, format="PNG")
                os.replace(tmp, target)
                flagged[it.file] = bool(flag)
            done += len(batch)
            bar.update(task, completed=done)
    return done, flagged


def _gather_flags(state: Any, flagged: dict[str, bool]) -> dict[str, bool]:
    if state.num_processes == 1:
        return flagged
    from accelerate.utils import gather_object

    merged: dict[str, bool] = {}
    for part in gather_object([flagged]):
        merged.update(part)
    return merged


def _write_manifest(path: Path, items: list[WorkItem], out: Path, model: str, settings: GenerationSettings,
                    flagged: dict[str, bool]) -> None:
    old: dict[str, dict[str, Any]] = {}
    if path.is_file():
        old = {rec["file"]: rec for _, rec in read_jsonl(path, required=("file", "prompt"))}
    record_settings = {k: v for k, v in asdict(settings).items() if k not in ("batch_size", "limit")}
    tmp = path.with_suffix(".jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for it in items:
            if not (out / it.file).is_file():
                continue
            rec: dict[str, Any] = {"file": it.file, "prompt": it.prompt, "prompt_index": it.prompt_index,
                                   "image_index": it.image_index, "seed": it.seed, "model": model,
                                   "settings": record_settings}
            if it.meta:
                rec["meta"] = it.meta
            if flagged.get(it.file) or (it.file not in flagged and old.get(it.file, {}).get("nsfw")):
                rec["nsfw"] = True
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
