"""Does the UNet know where in the image it is? A linear probe of absolute position on its feature maps.

The bundled model draws objects anywhere, whatever cell of the image the caption names (``position`` in the headline
benchmark). A cross-attention layer can send "in the upper left corner" to the upper left only if its queries, which
are linear in the UNet's features at each location, say where that location is. Convolutions and attention carry
no position embedding; only the zero padding at the borders breaks their translation symmetry. This script encodes
the true images of held-out scenes, noises them to step t, runs the UNet (with the CAM and the true caption, as in
training) and records the output of every down block, the mid block and every up block. A ridge regression
(features standardised) then predicts each location's coordinates (x and y, fractions of the width and height,
from the cell centre) from its feature vector, fitted on the locations of half of the images and scored (R²) on the
other half. R² near 1: the block's features say where they are; near 0: they do not. The noised latents themselves
are the control (their content is where the objects happen to be). With a ``base_unet/``, both arms.

    python research/shapesworld/unet_position.py --model models/default

Prints a table and writes JSON (default runs/research/unet_position.json, and its summary
``unet_position.summary.json`` where the report holds per-item records).
"""

from __future__ import annotations

import argparse
import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def location_rows(feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A feature map ``[B, C, H, W]`` as one row per location: features ``[B*H*W, C]``, the location's centre
    ``[B*H*W, 2]`` (x, y as fractions of the width and height) and its image's index ``[B*H*W]``."""
    b, c, h, w = feat.shape
    ys, xs = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij")
    coords = torch.stack([xs, ys], dim=-1).reshape(1, h * w, 2).expand(b, -1, -1).reshape(-1, 2)
    rows = feat.float().permute(0, 2, 3, 1).reshape(-1, c)
    image = torch.arange(b).repeat_interleave(h * w)
    return rows, coords, image


def ridge_r2(x: torch.Tensor, y: torch.Tensor, train: torch.Tensor, l2: float = 1e-3) -> list[float]:
    """Fit ``y ~ x`` by ridge regression on the rows where ``train`` is true (features standardised with the train
    rows' statistics, penalty ``l2`` per row) and return, per column of ``y``, R² on the other rows."""
    x, y = x.double(), y.double()
    if not train.any() or train.all():
        raise ValueError("ridge_r2 needs both train and test rows.")
    mean, std = x[train].mean(0), x[train].std(0).clamp_min(1e-8)
    z = (x - mean) / std
    y_mean = y[train].mean(0)
    a = z[train]
    weights = torch.linalg.solve(a.T @ a + l2 * len(a) * torch.eye(a.shape[1], dtype=a.dtype),
                                 a.T @ (y[train] - y_mean))
    pred = z[~train] @ weights + y_mean
    truth = y[~train]
    sse = ((truth - pred) ** 2).sum(0)
    sst = ((truth - truth.mean(0)) ** 2).sum(0).clamp_min(1e-12)
    return [float(v) for v in 1 - sse / sst]


def block_outputs(unet: torch.nn.Module, run: Callable[[], Any]) -> dict[str, torch.Tensor]:
    """Call ``run`` (one UNet forward) and return the feature map each down block, the mid block and each up block
    output (``down 0``, ..., ``mid``, ``up 0``, ...)."""
    blocks = [(f"down {k}", b) for k, b in enumerate(unet.down_blocks)] + [("mid", unet.mid_block)]
    blocks += [(f"up {k}", b) for k, b in enumerate(unet.up_blocks)]
    out: dict[str, torch.Tensor] = {}

    def keep(name: str) -> Callable:
        def hook(_module, _args, output) -> None:
            out[name] = (output[0] if isinstance(output, tuple) else output).detach()
        return hook

    handles = [block.register_forward_hook(keep(name)) for name, block in blocks if block is not None]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/default", help="an LLM4GEN pipeline folder (ShapesWorld)")
    ap.add_argument("--prompts", type=int, default=64, help="held-out prompts (half fit the probe, half score it)")
    ap.add_argument("--timesteps", default="500,900")
    ap.add_argument("--l2", type=float, default=1e-3, help="the ridge penalty (features standardised)")
    ap.add_argument("--out", default="runs/research/unet_position.json")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.prompts < 2 or args.l2 < 0:
        raise SystemExit("--prompts must be at least 2 (half fit, half score) and --l2 at least 0.")

    from diffusers import DDPMScheduler
    from rich.console import Console
    from rich.table import Table

    from llm4gen.denoiser import ClipText
    from llm4gen.images import pixels_from_uint8, uint8_tensor
    from llm4gen.shapesworld.arms import denoiser_arms
    from llm4gen.shapesworld.bench import QualityConfig, benchmark_prompts
    from llm4gen.shapesworld.world import render_scene
    from llm4gen.utils import write_report

    src = Path(args.model)
    try:
        pipe, models = denoiser_arms(src)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"--model: {err}") from None
    items = benchmark_prompts(QualityConfig(num_prompts=args.prompts))
    captions = [text for text, _ in items]
    text = ClipText([pipe.tokenizer], [pipe.text_encoder.eval()])
    with torch.no_grad():
        clip = text(captions)[0]
        enc = pipe.llm_encoder.encode(captions)
    llm_inputs = dict(llm=enc.embeds.float(), llm_mask=enc.attention_mask)
    arms = {name: (model, dict(clip=clip, **(llm_inputs if reads_llm else {})))
            for name, (model, reads_llm) in models.items()}
    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    size = pipe.unet.config.sample_size * factor
    pixels = pixels_from_uint8(uint8_tensor([render_scene(scene, size) for _, scene in items]))
    half = len(items) // 2
    rows = []
    with torch.no_grad():
        z0 = pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor
        for arm, (model, inputs) in arms.items():
            g = torch.Generator().manual_seed(0)
            for t in [int(v) for v in args.timesteps.split(",")]:
                steps = torch.full((len(items),), t)
                noisy = sched.add_noise(z0, torch.randn(z0.shape, generator=g), steps)
                maps = {"input (noised latents)": noisy}
                maps.update(block_outputs(model.unet, functools.partial(model, noisy, steps, **inputs)))
                for name, feat in maps.items():
                    x, coords, image = location_rows(feat)
                    r2 = ridge_r2(x, coords, image < half, args.l2)
                    rows.append({"arm": arm, "timestep": t, "features": name, "grid": list(feat.shape[2:]),
                                 "channels": int(feat.shape[1]), "r2_x": r2[0], "r2_y": r2[1]})

    table = Table(title=f"Does the UNet know where it is? {src}: R² of a linear probe of each location's (x, y) from "
                        f"its features ({half} images fit, {len(items) - half} scored)")
    for col in ("arm", "t", "features", "grid", "channels", "R² x", "R² y"):
        table.add_column(col, justify="left" if col in ("arm", "features") else "right")
    for r in rows:
        table.add_row(r["arm"], str(r["timestep"]), r["features"], "x".join(map(str, r["grid"])), str(r["channels"]),
                      f"{r['r2_x']:.3f}", f"{r['r2_y']:.3f}")
    Console(width=max(Console().width, 120)).print(table)
    out = Path(args.out)
    write_report(out, {"model": str(src), "prompts": len(items), "fit_images": half, "l2": args.l2,
                       "rows": rows})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
