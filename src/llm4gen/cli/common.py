"""What every `llm4gen` command shares: the root command, the console, the bundled model and how a model is
loaded."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from ..sampling import SamplingDefaults

app = typer.Typer(
    name="llm4gen",
    help=(
        "LLM4GEN: text-to-image generation that follows long, dense prompts by feeding Stable Diffusion (1.x, SDXL) "
        "the features of a large language model through a Cross-Adapter Module."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
# The bundled model's guidance (its folder's llm4gen_sampling.json says so too): its benchmark's setting, better than
# 7.5 there on colour, shape, binding and all-correct (research/shapesworld/sampling.md)
BUNDLED_GUIDANCE = 5.0


def bundled_model_dir() -> Path | None:
    """The bundled default model, if this installation or checkout has one: ``$LLM4GEN_DEFAULT_MODEL``, else the copy
    a (non-editable) install carries as package data (``llm4gen/models/default``), else the checkout's
    ``models/default`` (an editable install, or ``PYTHONPATH=src``)."""
    package = Path(__file__).resolve().parents[1]  # src/llm4gen, or site-packages/llm4gen
    checkout = package.parents[1]  # the checkout holding src/llm4gen (where pyproject.toml is)
    for candidate in (
        Path(os.environ["LLM4GEN_DEFAULT_MODEL"]) if os.environ.get("LLM4GEN_DEFAULT_MODEL") else None,
        package / "models" / "default",
        checkout / "models" / "default" if (checkout / "pyproject.toml").is_file() else None,
    ):
        if candidate is not None and (candidate / "model_index.json").is_file():
            return candidate
    return None


def sampling_settings(model: str, guidance: float | None, steps: int | None) -> tuple[float, int, SamplingDefaults]:
    """The guidance and steps to sample ``model`` with: the explicit values, else what its folder recommends
    (``llm4gen_sampling.json``), else diffusers' guidance 7.5 and the library's one default number of steps. A bad
    settings file stops the command with its message."""
    try:
        defaults = SamplingDefaults.from_folder(model if os.path.isdir(model) else None)
    except ValueError as err:
        console.print(f"[red]Error:[/red] {err}", highlight=False)
        raise typer.Exit(1) from None
    kwargs = defaults.call_kwargs(guidance_scale=guidance, num_inference_steps=steps)
    return kwargs["guidance_scale"], kwargs["num_inference_steps"], defaults


def say_domain(defaults: SamplingDefaults) -> None:
    """Once per command: what the model can draw and a prompt it draws well, when its folder says so."""
    if defaults.domain:
        console.print(f"This model knows {defaults.domain}", style="cyan", markup=False, highlight=False,
                      soft_wrap=True)
    if defaults.example_prompt:
        console.print(f"Try: llm4gen generate {defaults.example_prompt!r}", markup=False, highlight=False,
                      soft_wrap=True)


def model_or_bundled(model: str | None, hint: str = "") -> str:
    """``model``, or the bundled model's folder; without either, say so and exit with status 2."""
    if model is not None:
        return model
    bundled = bundled_model_dir()
    if bundled is None:
        console.print("[red]No --model given and no bundled default model (models/default) is installed.[/red] Pass "
                      f"--model with an LLM4GEN pipeline folder or hub id{hint}.")
        raise typer.Exit(2)
    return str(bundled)


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` if torch sees a CUDA GPU, else ``mps`` (Apple GPU) if available, else ``cpu``; any other
    name is returned as given."""
    if name != "auto":
        return name
    import torch

    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def resolve_dtype(name: str | None, device: str):
    """``--dtype``: ``auto`` -> float16 on CUDA, float32 elsewhere (CPU half precision is slow, MPS's is not always
    supported); ``fp32``, ``fp16``, ``bf16`` as named; None -> None (the checkpoint's own)."""
    if name == "auto":
        name = "fp16" if device.startswith("cuda") else "fp32"
    return parse_dtype(name)


DEVICE_HELP = "torch device: auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps."
DTYPE_HELP = "Weights' precision: auto (fp16 on CUDA, fp32 elsewhere), fp32, fp16, bf16."


def load_pipeline(model: str, xl: bool | None, device: str, trust_remote_code: bool, dtype: Any = None,
                  sampling: SamplingDefaults | None = None):
    """Load the LLM4GEN pipeline ``model`` on ``device`` (``dtype``: a torch dtype, or None for the checkpoint's),
    with the scheduler its folder recommends (``sampling``, read from the folder when None)."""
    import json

    from ..pipeline import LLM4GenPipeline, LLM4GenXLPipeline
    from ..utils import quiet_loading_progress, to_device

    cls = LLM4GenPipeline
    index = Path(model) / "model_index.json"
    if xl is None and index.is_file():
        try:
            info = json.loads(index.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{index} is not valid JSON ({err}); restore it from the model's source.") from None
        xl = info.get("_class_name") == "LLM4GenXLPipeline" or "text_encoder_2" in info
    if xl:
        cls = LLM4GenXLPipeline
    kwargs = {"trust_remote_code": True} if trust_remote_code else {}
    with quiet_loading_progress():
        pipe = cls.from_pretrained(model, **kwargs)
    (sampling or pipe.sampling_defaults).apply_scheduler(pipe)
    return to_device(pipe, device, dtype)


SEED_MAX = 2**64 - 1  # torch.Generator.manual_seed takes 0 .. 2**64 - 1


def check_seed(seed: int, flag: str = "--seed") -> int:
    if not 0 <= seed <= SEED_MAX:
        raise ValueError(f"{flag} must be in 0 .. 2**64-1 ({SEED_MAX}), got {seed}.")
    return seed


def pick_device(name: str, flag: str = "--device") -> str:
    """A command's ``--device``: ``auto`` resolved (:func:`resolve_device`), then checked (:func:`check_device`)."""
    return check_device(resolve_device(name), flag)


def check_device(device: str, flag: str = "--device") -> str:
    """``device`` (already resolved from ``auto``, see :func:`pick_device`) if torch knows it and this machine has it;
    else a ValueError that says which to use. Checked before any model loads."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"{flag} {device!r} is not a torch device ({err}); use cpu, cuda, cuda:N or mps.") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{flag} {device}: this machine has no CUDA GPU that torch can use "
                             "(torch.cuda.is_available() is False); use --device cpu.")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"{flag} {device}: there are {torch.cuda.device_count()} CUDA GPU(s), numbered from 0.")
    elif parsed.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError(f"{flag} {device}: MPS (Apple GPU) is not available here; use --device cpu.")
    elif parsed.type not in ("cpu", "cuda", "mps", "xpu"):
        raise ValueError(f"{flag} {device}: llm4gen runs on cpu, cuda or mps.")
    return device


def check_output_folder(out: Path, flag: str = "--out") -> Path:
    """Make ``out`` (a folder) and make sure a file can be written there, before any work whose result would go
    there is done; else a ValueError naming it."""
    import tempfile

    if out.exists() and not out.is_dir():
        raise ValueError(f"{flag} {out} is a file, not a folder; give a folder for the images.")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as err:
        raise ValueError(f"{flag} {out} cannot be written to ({err.strerror or err}); choose a folder you can write.") \
            from None
    return out


def png_parameters(prompt: str, negative: str | None, seed: int, steps: int, guidance: float, size: tuple[int, int],
                   model: str, sampler: str | None = None) -> str:
    """How an image was made, as the ``parameters`` PNG text chunk that AUTOMATIC1111's web UI writes and other
    Stable Diffusion tools (ComfyUI, InvokeAI, image viewers, civitai) read: the prompt, a ``Negative prompt:``
    line, then ``Key: value`` pairs."""
    from .. import __version__

    lines = [prompt.replace("\n", " ")]
    if negative:
        lines.append("Negative prompt: " + negative.replace("\n", " "))
    pairs = [("Steps", steps), ("Sampler", sampler), ("CFG scale", f"{guidance:g}"), ("Seed", seed),
             ("Size", f"{size[0]}x{size[1]}"), ("Model", model.replace(",", " ")),
             ("Version", f"llm4gen {__version__}")]
    lines.append(", ".join(f"{k}: {v}" for k, v in pairs if v is not None))
    return "\n".join(lines)


def read_png_parameters(path: str | os.PathLike) -> dict[str, str]:
    """The fields of a PNG's ``parameters`` chunk (:func:`png_parameters`): ``prompt``, ``negative prompt`` (if
    any), and each ``Key: value`` pair under its lower-case key."""
    from PIL import Image

    with Image.open(path) as image:
        text = image.text.get("parameters")  # type: ignore[attr-defined]
    if text is None:
        raise ValueError(f"{path} has no 'parameters' text chunk.")
    *head, pairs = text.split("\n")
    fields = {"prompt": head[0] if head else ""}
    for line in head[1:]:
        if line.startswith("Negative prompt: "):
            fields["negative prompt"] = line[len("Negative prompt: "):]
    for item in pairs.split(", "):
        key, _, value = item.partition(": ")
        fields[key.lower()] = value
    return fields


def save_images(images, out: Path, stem: str, overwrite: bool = False,
                parameters: str | list[str] | None = None) -> list[Path]:
    """Write ``images`` as ``out/STEM_NNNN.png``. Existing files are kept: numbering goes on after the highest
    ``STEM_NNNN`` already there, unless ``overwrite`` starts again at 0000. ``parameters`` (one for all, or one per
    image) goes into each PNG's ``parameters`` text chunk (:func:`png_parameters`)."""
    import re

    from PIL.PngImagePlugin import PngInfo

    out.mkdir(parents=True, exist_ok=True)
    start = 0
    if not overwrite:
        pattern = re.compile(re.escape(stem) + r"_(\d{4,})(_.*)?\.png")
        taken = [int(m.group(1)) for p in out.iterdir() if (m := pattern.fullmatch(p.name))]
        start = max(taken, default=-1) + 1
    if isinstance(parameters, list) and len(parameters) != len(images):
        raise ValueError(f"save_images: {len(parameters)} parameters for {len(images)} images.")
    paths = []
    for i, image in enumerate(images):
        text = parameters[i] if isinstance(parameters, list) else parameters
        info = None
        if text is not None:
            info = PngInfo()
            info.add_text("parameters", text)
        path = out / f"{stem}_{start + i:04d}.png"
        image.save(path, pnginfo=info)
        paths.append(path)
    return paths


DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def parse_dtype(name: str | None):
    import torch

    if name is None:
        return None
    if name not in DTYPES:
        raise typer.BadParameter(f"--dtype must be one of {sorted(DTYPES)} or auto, got {name!r}.")
    return getattr(torch, DTYPES[name])
