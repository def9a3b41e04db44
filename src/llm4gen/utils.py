"""Small helpers shared by the library: input validation and readable loading errors."""

from __future__ import annotations

import math
import numbers
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def validate_prompts(prompts: Any, name: str = "prompt", allow_empty: bool = False) -> list[str]:
    """Return ``prompts`` as a list of strings, or raise a ``TypeError``/``ValueError`` that says what is wrong."""
    if isinstance(prompts, str):
        items = [prompts]
    elif isinstance(prompts, Sequence) and not isinstance(prompts, (bytes, bytearray)):
        items = list(prompts)
        if not items:
            raise ValueError(f"`{name}` is an empty list; pass at least one string.")
    else:
        raise TypeError(f"`{name}` must be a string or a list of strings, got {type(prompts).__name__}.")
    for i, p in enumerate(items):
        if not isinstance(p, str):
            raise TypeError(f"`{name}[{i}]` must be a string, got {type(p).__name__} ({p!r:.60}).")
        if not allow_empty and not p.strip():
            raise ValueError(f"`{name}[{i}]` is empty; describe the image to generate.")
        try:
            p.encode("utf-8")
        except UnicodeEncodeError as err:  # a lone surrogate: text read from bytes that were not valid UTF-8
            raise ValueError(
                f"`{name}[{i}]` is not valid text: character {err.start} ({p[err.start]!r}) is a lone surrogate, as "
                "left by decoding bytes that are not UTF-8 (e.g. a Latin-1 file or terminal); save or pass the prompt "
                "as UTF-8."
            ) from None
    return items


# the largest image side generation accepts: far beyond what any Stable Diffusion model was trained for, and about
# where a single attention map of the UNet stops fitting in any accelerator's memory
MAX_IMAGE_SIDE = 8192


def check_generation_args(
    height: Any = None,
    width: Any = None,
    num_inference_steps: Any = None,
    guidance_scale: Any = None,
    num_images_per_prompt: Any = None,
    vae_scale_factor: int = 8,
    default_size: tuple[int, int] | None = None,
    names: dict[str, str] | None = None,
) -> tuple[int | None, int | None]:
    """Check sampling arguments before any work; returns ``(height, width)`` with a missing one taken from
    ``default_size`` (the model's ``(height, width)``) when only the other is given. ``None`` means "the default".

    Height and width must be positive multiples of 8 and of the VAE's factor (at most ``MAX_IMAGE_SIDE``), the step
    and image counts integers >= 1, and the guidance scale a finite number. ``names`` renames the arguments in the
    messages (e.g. ``{"height": "--height"}`` for a command line)."""
    names = names or {}

    def name(key: str) -> str:
        return names.get(key, f"`{key}`")

    def is_int(v: Any) -> bool:  # numpy integers too, but not True / False
        return isinstance(v, numbers.Integral) and not isinstance(v, bool)

    multiple = math.lcm(8, int(vae_scale_factor))
    for key, value in (("height", height), ("width", width)):
        if value is None:
            continue
        if not is_int(value) or value <= 0 or value % multiple or value > MAX_IMAGE_SIDE:
            near = max(multiple, round(value / multiple) * multiple) if is_int(value) and value > 0 else 512
            raise ValueError(f"{name(key)} must be a positive multiple of {multiple} (the VAE downsamples by "
                             f"{vae_scale_factor}) up to {MAX_IMAGE_SIDE}, got {value!r}; e.g. "
                             f"{min(near, MAX_IMAGE_SIDE)}.")
    for key, value in (("num_inference_steps", num_inference_steps), ("num_images_per_prompt", num_images_per_prompt)):
        if value is not None and (not is_int(value) or value < 1):
            raise ValueError(f"{name(key)} must be an integer >= 1, got {value!r}.")
    if guidance_scale is not None and (
            isinstance(guidance_scale, bool) or not isinstance(guidance_scale, numbers.Real)
            or not math.isfinite(guidance_scale)):
        raise ValueError(f"{name('guidance_scale')} must be a finite number (<= 1 turns guidance off), got "
                         f"{guidance_scale!r}.")
    if default_size is not None and (height is None) != (width is None):
        height = default_size[0] if height is None else height
        width = default_size[1] if width is None else width
    return height, width


def singular(word: str) -> str:
    """A plural English noun's singular by suffix rules, lower-case ("berries" -> "berry", "boxes" -> "box", "cats" ->
    "cat"); other words lower-cased as they are ("glass", "bus")."""
    w = word.lower()
    if w.endswith("ies") and len(w) > 4:
        return w[:-3] + "y"
    if w.endswith(("ches", "shes", "sses", "xes")):
        return w[:-2]
    if w.endswith("s") and not w.endswith("ss") and len(w) > 3:
        return w[:-1]
    return w


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def describe_load_error(err: Exception, what: str, ref: str, path: str | None = None) -> Exception:
    """Wrap an error from a ``from_pretrained`` call in one that names what was looked for and where."""
    path = path or ref
    if os.path.isdir(path):
        return OSError(f"Could not load the {what} from the folder {path!r}: {type(err).__name__}: {err}")
    looks_local = os.path.isabs(path) or path.startswith((".", "~")) or path.count("/") > 1
    if looks_local and not os.path.exists(path):
        return OSError(f"Could not load the {what}: the path {path!r} does not exist.")
    if hub_offline():
        return OSError(
            f"Could not load the {what} {ref!r}: it is not a local folder, and the Hugging Face Hub is offline "
            f"(HF_HUB_OFFLINE=1) with no cached copy. Download it on a connected machine or pass a local path."
        )
    return OSError(
        f"Could not load the {what} {ref!r} (not a local folder; hub lookup failed: {type(err).__name__}: {err}). "
        "Check the id, your network, or pass a local path."
    )


class MissingFieldError(ValueError):
    """A JSON Lines record lacks a required field (see :func:`read_jsonl`)."""


def decode_text(data: bytes, source: str) -> str:
    """UTF-8 ``data`` as text, without a leading byte-order mark (as pandas and Excel-written files have it); other
    encodings raise a ``ValueError`` that names ``source`` and the first bad byte."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"{source} is not UTF-8 text (byte {err.start}: {data[err.start:err.start + 1]!r}); save it "
                         "as UTF-8 (e.g. `iconv -f latin1 -t utf-8`).") from None


def read_text(path: str | os.PathLike) -> str:
    """The text of a UTF-8 file, byte-order mark removed; every reader of prompt, caption and question files uses
    this (see :func:`decode_text`)."""
    return decode_text(Path(path).read_bytes(), str(path))


def text_lines(text: str) -> list[str]:
    """The lines of ``text`` split as Python's text mode reads a file: at ``\\n``, ``\\r\\n`` and ``\\r`` only (not at
    the other characters ``str.splitlines`` breaks at, which may sit inside a JSON string)."""
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def read_jsonl(path: str | os.PathLike, required: Sequence[str] = (), objects_only: bool = True
               ) -> list[tuple[int, Any]]:
    """``(line number, record)`` for each non-blank line of a UTF-8 JSON Lines file (a byte-order mark is allowed);
    a line that is not UTF-8, not valid JSON, not a JSON object (unless ``objects_only=False``) or lacks one of
    ``required`` (:class:`MissingFieldError`) raises a ``ValueError`` naming the file and line."""
    import json

    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:  # name the line and column, as an editor would show them
        line_start = max(data.rfind(b"\n", 0, err.start), data.rfind(b"\r", 0, err.start)) + 1
        line_no = len(text_lines(data[:line_start].decode("utf-8-sig", errors="replace")))
        raise ValueError(
            f"{path}:{line_no} is not UTF-8 text (byte {data[err.start]:#04x} at column {err.start - line_start + 1}); "
            "save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)."
        ) from None
    out = []
    for line_no, line in enumerate(text_lines(text), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{line_no} is not valid JSON ({err}).") from err
        if not isinstance(rec, dict):
            if objects_only:
                raise ValueError(f"{path}:{line_no} is not a JSON object.")
            out.append((line_no, rec))
            continue
        for key in required:
            if key not in rec:
                raise MissingFieldError(f"{path}:{line_no} has no {key!r} field (fields: {sorted(rec)}).")
        out.append((line_no, rec))
    return out


def strip_records(report: Any, max_items: int = 50) -> Any:
    """A result report without its per-item records, for committing: every list longer than ``max_items`` (per-prompt
    rows, per-image scores) becomes ``{"omitted_items": N}``; everything else (settings, summaries, intervals) is
    kept as it is. The full report stays in the run's output folder."""
    if isinstance(report, dict):
        return {k: strip_records(v, max_items) for k, v in report.items()}
    if isinstance(report, (list, tuple)):
        if len(report) > max_items:
            return {"omitted_items": len(report)}
        return [strip_records(v, max_items) for v in report]
    return report


def write_report(path: str | os.PathLike, report: Any) -> list[Path]:
    """Write a result report as JSON at ``path``, and, when it holds per-item records, its summary beside it
    (``NAME.summary.json``, :func:`strip_records`): the full report stays with the run, the summary is what gets
    committed. Returns the paths written."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    written = [path]
    summary = strip_records(report)
    if summary != report:
        written.append(path.with_name(path.name.removesuffix(".json") + ".summary.json"))
        written[-1].write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return written


def progress_iter(items: Iterable[Any], description: str, total: int | None = None,
                  refresh_every: float = 0.1) -> Iterator[Any]:
    """Yield ``items`` with a transient rich progress bar that this thread alone draws (at most every
    ``refresh_every`` seconds). Unlike ``rich.progress.track``, no helper thread updates or refreshes the bar: one
    such thread deadlocked against the live display's lock in the test suite, so the library's item loops use this."""
    from rich.progress import Progress

    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    bar = Progress(auto_refresh=False, transient=True)
    task = bar.add_task(description, total=total)
    last = time.monotonic()
    with bar:
        for item in items:
            yield item
            bar.advance(task)
            if time.monotonic() - last >= refresh_every:
                bar.refresh()
                last = time.monotonic()


def loss_progress(
    label: str,
    total: int,
    *,
    completed: int = 0,
    loss_digits: int = 4,
    samples_per_s: bool = False,
    transient: bool = True,
):
    """A started rich progress bar for a training loop (steps, loss, optionally samples/s, ETA): ``(bar, task)``.
    Update with ``bar.update(task, completed=..., loss=..., sps=...)`` and ``bar.stop()`` at the end."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    columns = [TextColumn(label), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn(f"loss {{task.fields[loss]:.{loss_digits}f}}")]
    fields: dict[str, float] = {"loss": float("nan")}
    if samples_per_s:
        columns.append(TextColumn("{task.fields[sps]:.1f} samples/s"))
        fields["sps"] = 0.0
    columns.append(TimeRemainingColumn())
    bar = Progress(*columns, transient=transient)
    task = bar.add_task(label, total=total, completed=completed, **fields)
    bar.start()
    return bar, task


@contextmanager
def quiet_library_notices() -> Iterator[None]:
    """Silence diffusers' and transformers' log notices (errors only) inside the block, then restore their levels.
    For runs that measure prompts past CLIP's window on purpose, where the truncation notice repeats per call."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    levels = diffusers_logging.get_verbosity(), transformers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(levels[0])
        transformers_logging.set_verbosity(levels[1])


# Library notices about optional backends, which change nothing for llm4gen: without torchvision transformers falls
# back to the PIL image processors (the safety checker's feature extractor), and says so on every run; where
# DeepSpeed is installed, saving any transformers model imports it, and on a machine without a GPU it says that it
# picked the CPU (llm4gen picks its device itself)
_IRRELEVANT_NOTICES = {"transformers.utils.import_utils": ("requires torchvision (not installed); falling back to",),
                       "DeepSpeed": ("Setting accelerator to CPU. If you have GPU or other accelerator",)}


class _DropNotices:
    def __init__(self, fragments: tuple[str, ...]) -> None:
        self.fragments = fragments

    def filter(self, record: Any) -> bool:
        message = record.getMessage()
        return not any(f in message for f in self.fragments)


def silence_irrelevant_notices() -> None:
    """Drop library log notices that are not the user's business (transformers' "X requires torchvision; falling back
    to XPil", DeepSpeed's "Setting accelerator to CPU"); warnings a user can act on (truncated prompts, missing
    weights) stay. Cheap: imports no library, and installing it twice adds nothing."""
    import logging

    for name, fragments in _IRRELEVANT_NOTICES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNotices) for f in logger.filters):
            logger.addFilter(_DropNotices(fragments))


@contextmanager
def quiet_loading_progress() -> Iterator[None]:
    """Hide diffusers' "Loading pipeline components" and transformers' "Loading weights" bars inside the block (a
    second each; the denoising bar stays), then restore them."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    was = diffusers_logging.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled()
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was[0]:
            diffusers_logging.enable_progress_bar()
        if was[1]:
            transformers_logging.enable_progress_bar()


def to_device(pipe: Any, device: str | Any, dtype: Any = None) -> Any:
    """``pipe`` on ``device``, cast to ``dtype`` when that differs from its UNet's (without diffusers' per-module
    "should be kept in float32: []" notices, which name no module). ``dtype`` None keeps the weights' own."""
    if dtype is None or dtype == pipe.unet.dtype:
        return pipe.to(device)
    with quiet_library_notices():
        return pipe.to(device, dtype)
