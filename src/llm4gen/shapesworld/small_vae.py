"""A small KL autoencoder for ShapesWorld: the latent space of the bundled model's diffusion UNet.

Stable Diffusion denoises in the latent space of a KL-regularised autoencoder. This recipe trains a small
``diffusers.AutoencoderKL`` (3 resolution levels: 64 px images -> 16 x 16 x 4 latents) on ShapesWorld renders with

    loss = MSE(x, decode(z)) + l1_weight * |x - decode(z)| + kl_weight * KL(q(z|x) || N(0, I)),  z ~ q(z|x)

saves it as ``OUT/vae`` (loadable by ``AutoencoderKL.from_pretrained``), sets its ``scaling_factor`` to 1 / std of the
latents on held-out images (as SD does, so the UNet sees unit-variance latents), and reports reconstruction PSNR and
the ShapesWorld scorer's accuracy on reconstructed held-out images (a VAE that loses the shapes would cap every
model built on it). A reconstruction grid is written as ``OUT/reconstructions.png``.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..images import images_from_pixels, make_grid, pixels_from_uint8, uint8_tensor
from ..utils import loss_progress
from .scorer import ShapesScorer
from .world import ShapesWorld, ShapesWorldConfig

__all__ = ["SmallVaeConfig", "build_small_vae", "train_small_vae", "vae_round_trip"]


@dataclass
class SmallVaeConfig:
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    latent_channels: int = 4
    image_size: int = 64
    steps: int = 1500
    batch_size: int = 32
    lr: float = 1e-3
    kl_weight: float = 1e-6
    l1_weight: float = 0.5
    train_items: int = 8000
    eval_items: int = 200
    seed: int = 0
    data_seed: int = 0


def build_small_vae(cfg: SmallVaeConfig):
    from diffusers import AutoencoderKL

    torch.manual_seed(cfg.seed)
    n = len(cfg.block_out_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=cfg.latent_channels,
        block_out_channels=tuple(cfg.block_out_channels), layers_per_block=1, norm_num_groups=16,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        sample_size=cfg.image_size,
    )


def _images(split: str, n: int, cfg: SmallVaeConfig, progress: bool) -> tuple[torch.Tensor, list]:
    items = ShapesWorld(split, seed=cfg.data_seed, config=ShapesWorldConfig(size=cfg.image_size)).take(n, progress)
    return uint8_tensor([it.image for it in items]), [it.scene for it in items]


@torch.no_grad()
def vae_round_trip(vae, pixels: torch.Tensor, batch_size: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode ``pixels [N, 3, H, W]`` in [-1, 1] to their latent means and decode those back, ``batch_size`` at a time.

    Returns ``(means, reconstructions)``, the reconstructions clamped to [-1, 1].
    """
    means = torch.cat([vae.encode(pixels[i : i + batch_size]).latent_dist.mean
                       for i in range(0, len(pixels), batch_size)])
    rec = torch.cat([vae.decode(means[i : i + batch_size]).sample for i in range(0, len(means), batch_size)])
    return means, rec.clamp(-1, 1)


def train_small_vae(out_dir: str | os.PathLike, config: SmallVaeConfig | None = None,
                    progress: bool = True) -> dict[str, Any]:
    """Train the ShapesWorld VAE and save it under ``out_dir`` (see the module docs). Returns the metrics."""
    cfg = config or SmallVaeConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    rng = np.random.default_rng(cfg.seed)
    train_x, _ = _images("train", cfg.train_items, cfg, progress)
    eval_x, eval_scenes = _images("test", cfg.eval_items, cfg, progress)
    vae = build_small_vae(cfg)
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps))
    )
    g = torch.Generator().manual_seed(cfg.seed)
    losses = []
    bar = None
    if progress:
        bar, task = loss_progress("small VAE", cfg.steps)
    try:
        for step in range(cfg.steps):
            idx = torch.from_numpy(rng.choice(len(train_x), size=min(cfg.batch_size, len(train_x)), replace=False))
            x = pixels_from_uint8(train_x[idx])
            dist = vae.encode(x).latent_dist
            z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=g)
            rec = vae.decode(z).sample
            kl = dist.kl().mean() / (x.shape[1] * x.shape[2] * x.shape[3])  # per pixel-channel
            loss = F.mse_loss(rec, x) + cfg.l1_weight * F.l1_loss(rec, x) + cfg.kl_weight * kl
            if not torch.isfinite(loss):
                raise FloatingPointError(f"The VAE loss became {loss.item()} at step {step + 1}; lower the lr.")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(loss.item())
            if bar is not None:
                bar.update(task, advance=1, loss=float(np.mean(losses[-20:])))
    finally:
        if bar is not None:
            bar.stop()

    vae.eval()
    x = pixels_from_uint8(eval_x)
    means, rec = vae_round_trip(vae, x)
    scaling = float(1.0 / means.std())
    mse = F.mse_loss(rec, x).item()
    psnr = 10 * math.log10(4.0 / max(mse, 1e-12))  # pixel range [-1, 1] has peak-to-peak 2
    vae.register_to_config(scaling_factor=scaling)
    vae.save_pretrained(out / "vae", safe_serialization=True)
    scorer = ShapesScorer()
    recon_images = images_from_pixels(rec)
    for image, scene in zip(recon_images, eval_scenes):
        scorer.add(image, scene)
    score = {m: v["mean"] for m, v in scorer.summary().items()}
    originals = images_from_pixels(x[:8])
    make_grid([im for pair in zip(originals, recon_images[:8]) for im in pair], cols=8, cell=96).save(
        out / "reconstructions.png"
    )
    result = {
        "psnr_db_heldout": round(psnr, 2),
        "scorer_on_reconstructions": score,
        "scaling_factor": scaling,
        "first_loss": losses[0] if losses else None,
        "final_loss": float(np.mean(losses[-50:])) if losses else None,
        "wall_time_s": round(time.time() - start, 1),
        "config": asdict(cfg),
    }
    (out / "vae_metrics.json").write_text(json.dumps(result, indent=2))
    return result
