"""`llm4gen convert-official`, and the loading that `llm4gen generate --official` shares with it: the authors' SD1.5
release (base SD1.5, their fine-tuned ``unet/`` and ``projector.pth``, RankGen-T5-XL) through
:meth:`llm4gen.LLM4GenPipeline.from_official`, whose defaults name the hub ids."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer

from .common import app, console, parse_dtype

# Options shared by `generate --official` and `convert-official`; None keeps from_official's default (a hub id)
BASE_OPTION = typer.Option(
    None, "--official-base",
    help="With --official: the base SD1.5 folder or hub id (default sd-legacy/stable-diffusion-v1-5).")
RELEASE_OPTION = typer.Option(
    None, "--official-release",
    help="With --official: the folder or hub id holding the authors' unet/ and projector.pth (default "
         "Shui-VL/LLM4GEN-models).")
LLM_OPTION = typer.Option(
    None, "--official-llm", help="With --official: the RankGen-T5-XL folder or hub id (default "
                                 "kalpeshk2011/rankgen-t5-xl-all).")
LLM_TOKENIZER_OPTION = typer.Option(
    None, "--official-llm-tokenizer",
    help="With --official: the LLM's tokenizer folder or hub id (default google/t5-v1_1-xl, as the authors).")
DTYPE_OPTION = typer.Option(
    None, "--dtype",
    help="Weights dtype: fp32, fp16 or bf16 (default fp32). With --official and fp16 the T5 LLM runs in bf16, since T5 "
         "overflows in fp16.")

_PART_NAMES = {
    "base_model": "base model (SD1.5)",
    "unet": "fine-tuned UNet (unet/)",
    "projector": "projector (projector.pth)",
    "llm": "LLM (RankGen-T5-XL)",
    "llm_tokenizer": "LLM tokenizer",
}


def official_parts(base: str | None, release: str | None, llm: str | None, llm_tokenizer: str | None) -> dict[str, str]:
    """Where each part of the release comes from: the given folder or id, else ``from_official``'s default. Local
    paths are made absolute, so a converted folder's LLM reference works from anywhere."""
    import inspect

    from ..pipeline import LLM4GenPipeline

    defaults = {name: p.default for name, p in inspect.signature(LLM4GenPipeline.from_official).parameters.items()}
    given = {"base_model": base, "unet": release, "projector": release, "llm": llm, "llm_tokenizer": llm_tokenizer}
    parts = {}
    for name, ref in given.items():
        ref = os.fspath(ref) if ref is not None else os.fspath(defaults[name])
        parts[name] = os.path.abspath(os.path.expanduser(ref)) if os.path.exists(os.path.expanduser(ref)) else ref
    return parts


def where_looked(parts: dict[str, str]) -> str:
    """One line per part: what was looked for, and where (a local path, or the Hugging Face cache for a hub id)."""
    from huggingface_hub import constants

    from ..utils import hub_offline

    cache = constants.HF_HUB_CACHE
    lines = []
    for name, ref in parts.items():
        if os.path.exists(ref):
            where = "local path, present"
        elif os.path.isabs(ref) or ref.startswith((".", "~")) or ref.count("/") != 1:
            where = "local path: does not exist"
        else:
            cached = os.path.isdir(os.path.join(cache, "models--" + ref.replace("/", "--")))
            where = f"hub id, {'found' if cached else 'not found'} in the Hugging Face cache {cache}"
            if hub_offline():
                where += " (offline: HF_HUB_OFFLINE=1)"
        lines.append(f"  {_PART_NAMES[name]}: {ref!r} - {where}")
    return "\n".join(lines)


def load_official(
    base: str | None,
    release: str | None,
    llm: str | None,
    llm_tokenizer: str | None,
    trust_remote_code: bool,
    device: str,
    dtype: Any,
) -> Any:
    """The authors' release as an :class:`~llm4gen.LLM4GenPipeline` on ``device`` in ``dtype`` (a torch dtype, or None
    for the checkpoints' own; with float16 the T5 runs in bfloat16); a part that cannot be loaded raises an ``OSError``
    listing every part and where it was looked for."""
    import torch

    from ..pipeline import LLM4GenPipeline

    parts = official_parts(base, release, llm, llm_tokenizer)
    llm_dtype = torch.bfloat16 if dtype == torch.float16 else dtype
    try:
        pipe = LLM4GenPipeline.from_official(
            **parts, trust_remote_code=trust_remote_code, torch_dtype=dtype, llm_torch_dtype=llm_dtype
        )
    except OSError as err:
        raise OSError(f"{err}\nThe authors' release was looked for here:\n{where_looked(parts)}\nPass local folders "
                      "with --official-base/--official-release/--official-llm/--official-llm-tokenizer, or download "
                      "the hub ids on a connected machine.") from None
    return pipe.to(device)


@app.command("convert-official")
def convert_official(
    out: Path = typer.Argument(..., help="New folder for the converted pipeline."),
    base: str | None = BASE_OPTION,
    release: str | None = RELEASE_OPTION,
    llm: str | None = LLM_OPTION,
    llm_tokenizer: str | None = LLM_TOKENIZER_OPTION,
    dtype: str | None = DTYPE_OPTION,
    save_llm_weights: bool = typer.Option(
        False, "--save-llm-weights",
        help="Copy the LLM's encoder into OUT/llm_encoder (safetensors, a plain T5 encoder that needs no remote code; "
             "RankGen-T5-XL's is ~5 GB in fp32) instead of referencing it."),
    trust_remote_code: bool = typer.Option(
        False, "--trust-remote-code", help="Allow RankGen-T5-XL's own Python code (its hub model needs it)."),
) -> None:
    """Write the authors' SD1.5 release as a normal LLM4GEN pipeline folder (safetensors and JSON, no pickle) that
    `llm4gen generate --model OUT`, `llm4gen app --model OUT` and LLM4GenPipeline.from_pretrained load.

    The LLM is referenced (hub id or absolute path), not copied, unless --save-llm-weights is given.
    """
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        console.print(f"[red]Error:[/red] {out} exists and is not an empty folder; pick a new folder.")
        raise typer.Exit(2)
    try:
        pipe = load_official(base, release, llm, llm_tokenizer, trust_remote_code, "cpu", parse_dtype(dtype))
        pipe.save_pretrained(out, save_llm_weights=save_llm_weights)
    except (ValueError, TypeError, OSError) as err:
        console.print(f"[red]Error:[/red] {err}")
        raise typer.Exit(1) from None
    enc = pipe.llm_encoder.config
    if save_llm_weights:
        llm_note = "the LLM's encoder weights are in llm_encoder/"
    else:
        llm_note = f"the LLM is referenced as {enc.model_name_or_path!r}"
        if trust_remote_code:
            llm_note += " (loading it needs --trust-remote-code / trust_remote_code=True)"
    console.print(f"Wrote {out}: {llm_note}.", markup=False, highlight=False)
    typer.echo(str(out))
