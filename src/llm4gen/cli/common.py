"""What every `llm4gen` command shares: the root command, the console, the bundled model and how a model is
loaded."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console

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
# Guidance for the bundled model when none is given: its benchmark's setting, better than 7.5 there on colour, shape,
# binding and all-correct (research/shapesworld/sampling.md); other models keep diffusers' usual 7.5
BUNDLED_GUIDANCE = 5.0


def bundled_model_dir() -> Path | None:
    """The bundled default model, if this checkout or installation has one (``models/default``)."""
    for candidate in (
        Path(os.environ["LLM4GEN_DEFAULT_MODEL"]) if os.environ.get("LLM4GEN_DEFAULT_MODEL") else None,
        Path(__file__).resolve().parents[3] / "models" / "default",  # src/llm4gen/cli/common.py -> the checkout
    ):
        if candidate is not None and (candidate / "model_index.json").is_file():
            return candidate
    return None


def guidance_or_default(guidance: float | None, model: str | None) -> float:
    """``guidance`` if given, else the bundled model's (no ``--model``) or diffusers' usual 7.5 for any other."""
    if guidance is not None:
        return guidance
    return BUNDLED_GUIDANCE if model is None else 7.5


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


def load_pipeline(model: str, xl: bool | None, device: str, trust_remote_code: bool):
    import json

    from ..pipeline import LLM4GenPipeline, LLM4GenXLPipeline

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
    pipe = cls.from_pretrained(model, **kwargs)
    return pipe.to(device)


SEED_MAX = 2**64 - 1  # torch.Generator.manual_seed takes 0 .. 2**64 - 1


def check_seed(seed: int, flag: str = "--seed") -> int:
    if not 0 <= seed <= SEED_MAX:
        raise ValueError(f"{flag} must be in 0 .. 2**64-1 ({SEED_MAX}), got {seed}.")
    return seed


def check_device(device: str, flag: str = "--device") -> str:
    """``device`` if torch knows it and this machine has it; else a ValueError that says which to use. Checked before
    any model loads. ``auto`` is passed through (the caller picks)."""
    import torch

    if device == "auto":
        return device
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


def save_images(images, out: Path, stem: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        path = out / f"{stem}_{i:04d}.png"
        image.save(path)
        paths.append(path)
    return paths


DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def parse_dtype(name: str | None):
    import torch

    if name is None:
        return None
    if name not in DTYPES:
        raise typer.BadParameter(f"--dtype must be one of {sorted(DTYPES)}, got {name!r}.")
    return getattr(torch, DTYPES[name])
