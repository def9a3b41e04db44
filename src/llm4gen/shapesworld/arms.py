"""The arms a ShapesWorld benchmark compares: loading a model folder, its base arm, and their schedules.

The bundled model folder holds the llm4gen arm (an :class:`~llm4gen.LLM4GenPipeline`) and, in ``base_unet/``, the
base arm's UNet: the same recipe trained on CLIP alone. :func:`clip_only_pipeline` runs such a UNet (or the llm4gen
UNet on CLIP tokens only) as a plain diffusers ``StableDiffusionPipeline`` with the model's VAE, CLIP and scheduler.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..denoiser import Denoiser
from ..pipeline import LLM4GenPipeline
from ..unet import load_unet

__all__ = ["TRAINING_SCHEDULE_DEFAULTS", "base_schedule_differences", "base_unet_dir", "clip_only_pipeline",
           "denoiser_arms", "load_arm", "load_with_tokenizers", "set_scheduler", "training_schedule"]


def clip_only_pipeline(pipe: Any, unet: Any = None) -> Any:
    """A plain diffusers ``StableDiffusionPipeline`` from an LLM4GEN pipeline's VAE, CLIP, tokenizer and scheduler.

    ``unet`` replaces the UNet (a UNet module or folder): pass the base arm's UNet to get the model trained on CLIP
    alone. Without it the LLM4GEN UNet runs on CLIP tokens only, which shows the CLIP path of that model, not a
    trained base.
    """
    from diffusers import StableDiffusionPipeline

    if isinstance(unet, (str, os.PathLike)):
        folder = Path(unet)
        if not (folder / "config.json").is_file() and (folder / "unet" / "config.json").is_file():
            folder = folder / "unet"
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{unet} is not a UNet folder (no config.json) nor a pipeline folder with unet/.")
        unet = load_unet(folder)
    unet = unet if unet is not None else pipe.unet
    if unet.config.cross_attention_dim != pipe.text_encoder.config.hidden_size:
        raise ValueError(
            f"The UNet's cross_attention_dim ({unet.config.cross_attention_dim}) does not match the CLIP text "
            f"encoder's width ({pipe.text_encoder.config.hidden_size}): it was trained for another text encoder."
        )
    base = StableDiffusionPipeline(
        vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=unet,
        scheduler=type(pipe.scheduler).from_config(pipe.scheduler.config),  # its own copy: schedulers keep state
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    return base.to(pipe.device)


def base_unet_dir(model: str | os.PathLike) -> Path | None:
    """``model/base_unet`` (the base arm's UNet that ``llm4gen shapes package`` puts beside the model), if present."""
    folder = Path(model) / "base_unet"
    return folder if (folder / "config.json").is_file() else None


# The scheduler settings that fix what a UNet learnt to predict at which noise level. A UNet sampled with other values
# than those it was trained with is off its schedule (the solver, step count and spacing are sampling choices).
TRAINING_SCHEDULE_DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
    "trained_betas": None, "prediction_type": "epsilon", "rescale_betas_zero_snr": False,
}


def training_schedule(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The noise-schedule settings (:data:`TRAINING_SCHEDULE_DEFAULTS`' keys, missing ones at diffusers' defaults) of
    the pipeline or run folder ``folder``, read from ``folder/scheduler/scheduler_config.json``; None without one."""
    path = Path(folder) / "scheduler" / "scheduler_config.json"
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); restore the scheduler config of {folder}.") from None
    return {key: config.get(key, default) for key, default in TRAINING_SCHEDULE_DEFAULTS.items()}


def base_schedule_differences(model: str | os.PathLike, base_unet: str | os.PathLike) -> dict[str, tuple[Any, Any]]:
    """The noise-schedule settings in which the base arm's UNet was trained otherwise than ``model``, whose
    scheduler :func:`clip_only_pipeline` samples it with: ``{key: (model's value, base UNet's value)}``.

    The base UNet's schedule is that of the pipeline folder holding it: ``X`` for ``X/base_unet`` (``llm4gen shapes
    package`` trains and ships it with ``X``'s scheduler) and ``X/unet``, ``X`` itself for a training run's output
    folder. Empty when the two agree or when either schedule is unknown (no ``scheduler/`` found).
    """
    folder = Path(base_unet)
    owner = folder if (folder / "scheduler").is_dir() else folder.parent
    mine, theirs = training_schedule(model), training_schedule(owner)
    if mine is None or theirs is None:
        return {}
    return {key: (mine[key], theirs[key]) for key in mine if mine[key] != theirs[key]}


def load_with_tokenizers(folder: str | os.PathLike) -> tuple[Any, Any, Any]:
    """An LLM4GEN pipeline folder with its CLIP and LLM tokenizers, both fast (their offset mappings tie words to
    tokens), for the diagnostics that read particular words' tokens: ``(pipeline, clip_tokenizer, llm_tokenizer)``."""
    from transformers import AutoTokenizer

    src = Path(folder)
    if not (src / "model_index.json").is_file():
        raise FileNotFoundError(f"{src} is not a pipeline folder (no model_index.json); give an LLM4GEN pipeline.")
    pipe = LLM4GenPipeline.from_pretrained(src)
    clip_tok = AutoTokenizer.from_pretrained(src / "tokenizer")
    llm_tok = pipe.llm_encoder.tokenizer
    if not (clip_tok.is_fast and llm_tok.is_fast):
        raise ValueError("Both tokenizers must be fast tokenizers (offset mappings) to map words to tokens.")
    return pipe, clip_tok, llm_tok


def denoiser_arms(folder: str | os.PathLike) -> tuple[Any, dict[str, tuple[Any, bool]]]:
    """For the diagnostics that call the UNet directly: the pipeline of ``folder`` (as :func:`load_with_tokenizers`
    loads it) and its arms as the trainer's ``Denoiser``s in eval mode, ``{name: (denoiser, reads_llm_tokens)}``:
    ``llm4gen`` (UNet + CAM) and, where the folder holds the benchmark's base arm (``base_unet/``), ``base (CLIP
    only)``."""
    src = Path(folder)
    pipe = load_with_tokenizers(src)[0]
    arms = {"llm4gen": (Denoiser(pipe.unet, pipe.adapter, bool(pipe.config.get("use_llm_attention_mask", False))),
                        True)}
    if (src / "base_unet" / "config.json").is_file():
        arms["base (CLIP only)"] = (Denoiser(load_unet(src / "base_unet"), None, False), False)
    for model, _ in arms.values():
        model.eval()
    return pipe, arms


def load_arm(model: str | os.PathLike, unet: str | os.PathLike | None = None, device: str = "cpu") -> Any:
    """Load an arm: an LLM4GEN or plain Stable Diffusion pipeline folder; with ``unet``, the CLIP-only pipeline made
    of ``model``'s VAE / CLIP / scheduler and that UNet (see :func:`clip_only_pipeline`)."""
    from diffusers import StableDiffusionPipeline

    folder = Path(model)
    index = folder / "model_index.json"
    if not index.is_file():
        raise FileNotFoundError(f"{model} is not a pipeline folder (no model_index.json).")
    cls_name = json.loads(index.read_text(encoding="utf-8")).get("_class_name")
    if cls_name not in ("LLM4GenPipeline", "StableDiffusionPipeline"):
        raise ValueError(f"{model} holds a {cls_name}; the ShapesWorld benchmark compares SD1.x-style pipelines "
                         "(LLM4GenPipeline or StableDiffusionPipeline).")
    cls = LLM4GenPipeline if cls_name == "LLM4GenPipeline" else StableDiffusionPipeline
    pipe = cls.from_pretrained(folder).to(device)
    pipe.set_progress_bar_config(disable=True)
    if unet is not None:
        pipe = clip_only_pipeline(pipe, unet)
        pipe.set_progress_bar_config(disable=True)
    return pipe


def set_scheduler(pipe: Any, name: str) -> None:
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    if name == "dpm":
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    elif name == "ddim":
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
