"""Where does the model take an object's place from at high noise: from the noised image, or from the words?

A noise schedule whose last timestep keeps a little of the image (Stable Diffusion's ``scaled_linear`` betas leave
``alphas_cumprod[999]`` = 0.0047) lets a denoiser read the layout off the noised latent even at t = 999; then it
never needs the caption's place words during training, and at inference, starting from pure noise, it finds a
"layout" in the noise instead. This script measures both sides on the held-out one-object prompts of the headline
benchmark. For each timestep ``t`` it noises the true image's latent, asks the model for its clean-image estimate
(x0) with the true caption, and with the place phrase moved to the farthest corner cell, decodes it, and takes the
centroid of its colour deviation from the image's median colour (where the object is drawn):

- **dist (true caption)**: mean distance of that centroid from the object's true centre (fractions of the image);
  **dist (other scene)**: the same centroids against another prompt's object, the no-information level.
- **moved by words**: mean distance between the centroids with the true and with the moved place phrase. Words that
  set the layout would move it by up to ~0.5; 0 means they are ignored.
- **from pure noise**: the distance when the model starts from pure noise (as sampling does) with the true caption.
- **words alone** (in the title): the distance a model would reach that put each object at the centre of the cell
  its caption names and read nothing off the noise.
- **x0-MSE** (true caption, scaled latents), against two optima from the data alone (in the title): the best a model
  can do knowing all but the place (the mean latent of ``--renders`` renders of the same object and background at
  uniformly drawn places) and knowing the named cell too (the mean of those renders in that cell). Where the noise
  holds nothing (zero terminal SNR, t = 999) the gap between the two is what the place words are worth to the loss.

    python research/shapesworld/noise_leak.py --model models/default

Prints a table (with the scheduler's first sampling step and its SNR) and writes JSON (default
runs/research/noise_leak.json).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch


def x0_from_prediction(pred: torch.Tensor, noisy: torch.Tensor, alpha_cumprod: float | torch.Tensor,
                       prediction_type: str) -> torch.Tensor:
    """The clean-latent estimate implied by a denoiser's output at a timestep with ``alpha_cumprod``."""
    a = torch.as_tensor(alpha_cumprod, dtype=noisy.dtype)
    if prediction_type == "v_prediction":
        return a.sqrt() * noisy - (1 - a).sqrt() * pred
    if prediction_type == "epsilon":
        return (noisy - (1 - a).sqrt() * pred) / a.sqrt()
    if prediction_type == "sample":
        return pred
    raise ValueError(f"Unknown prediction_type {prediction_type!r}; expected v_prediction, epsilon or sample.")


def deviation_centroid(images: torch.Tensor) -> np.ndarray:
    """Per image of ``images`` ([B, 3, H, W]), the centroid ``(x, y)`` (fractions of the width and height, y down) of
    the squared colour distance from the image's per-channel median: where whatever stands out from the background
    is drawn. A uniform image has no centroid (NaN)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}.")
    a = images.detach().float().cpu().numpy()
    median = np.median(a.reshape(a.shape[0], 3, -1), axis=-1)[:, :, None, None]
    w = ((a - median) ** 2).sum(axis=1)  # [B, H, W]
    total = w.sum(axis=(1, 2))
    gx = (np.arange(a.shape[3]) + 0.5) / a.shape[3]
    gy = (np.arange(a.shape[2]) + 0.5) / a.shape[2]
    with np.errstate(invalid="ignore", divide="ignore"):
        x = (w.sum(axis=1) * gx).sum(axis=-1) / total
        y = (w.sum(axis=2) * gy).sum(axis=-1) / total
    return np.stack([x, y], axis=-1)


def x0_optima(target: torch.Tensor, renders: torch.Tensor, same_cell: torch.Tensor) -> tuple[float, float]:
    """MSE of ``target`` ([C, H, W]) against the mean of ``renders`` ([N, C, H, W], the same scene at other places)
    and against the mean of those of them in ``target``'s cell (``same_cell``, [N] bool): the best constant
    predictions without and with the place."""
    if not bool(same_cell.any()):
        raise ValueError("No render lies in the target's cell; draw more renders.")
    blind = float(((target - renders.mean(0)) ** 2).mean())
    return blind, float(((target - renders[same_cell].mean(0)) ** 2).mean())


def cell_centre(cell: tuple[str, str]) -> tuple[float, float]:
    """The centre ``(x, y)`` of ``cell`` of the 3x3 grid that :data:`llm4gen.shapesworld.world.REGION_EDGES` cut."""
    from llm4gen.shapesworld.world import REGION_EDGES

    lo, hi = REGION_EDGES
    mid = {"left": lo / 2, "top": lo / 2, "centre": 0.5, "middle": 0.5, "right": (1 + hi) / 2, "bottom": (1 + hi) / 2}
    return mid[cell[0]], mid[cell[1]]


def far_cell(x: float, y: float) -> tuple[str, str]:
    """The corner cell of the 3x3 grid farthest from ``(x, y)``: the place a caption names when it moves the object
    as far as it can."""
    return ("right" if x < 0.5 else "left"), ("bottom" if y < 0.5 else "top")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/default", help="an LLM4GEN pipeline folder (ShapesWorld)")
    ap.add_argument("--prompts", type=int, default=48, help="one-object held-out prompts")
    ap.add_argument("--timesteps", default="999,961,921,881,801,701,501")
    ap.add_argument("--steps", type=int, default=25, help="sampling steps, for the first step's timestep")
    ap.add_argument("--renders", type=int, default=300, help="renders per prompt for the x0-MSE optima (0: skip)")
    ap.add_argument("--out", default="runs/research/noise_leak.json")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.renders < 0:
        raise SystemExit("--renders must be at least 0.")
    if args.prompts < 2:
        raise SystemExit("--prompts must be at least 2 (the no-information level pairs each prompt with another).")

    from diffusers import DDPMScheduler
    from rich.console import Console
    from rich.table import Table

    from llm4gen.denoiser import ClipText
    from llm4gen.images import pixels_from_uint8, uint8_tensor
    from llm4gen.shapesworld.arms import denoiser_arms
    from llm4gen.shapesworld.bench import QualityConfig, benchmark_prompts
    from llm4gen.shapesworld.world import SIZES, Scene, SceneObject, position_region, render_scene, with_place
    from llm4gen.utils import write_report

    src = Path(args.model)
    try:
        pipe, arms = denoiser_arms(src)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"--model: {err}") from None
    items = [(t, s) for t, s in benchmark_prompts(QualityConfig(num_prompts=max(500, 5 * args.prompts)))
             if len(s.objects) == 1][: args.prompts]
    if len(items) < 2:
        raise SystemExit("Fewer than 2 one-object prompts among the held-out prompts.")
    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    timesteps = [int(v) for v in args.timesteps.split(",")]
    if any(not 0 <= t < sched.config.num_train_timesteps for t in timesteps):
        raise SystemExit(f"--timesteps must lie in [0, {sched.config.num_train_timesteps}), got {args.timesteps}.")
    sampler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    sampler.set_timesteps(args.steps)
    first = int(sampler.timesteps[0])
    ac = sched.alphas_cumprod
    true_caps = [t for t, _ in items]
    moved_caps = [with_place(t, s.objects[0], far_cell(s.objects[0].x, s.objects[0].y)) for t, s in items]
    true_xy = np.array([[s.objects[0].x, s.objects[0].y] for _, s in items])
    named_xy = np.array([cell_centre(position_region(x, y)) for x, y in true_xy])
    words_alone = float(np.linalg.norm(named_xy - true_xy, axis=1).mean())
    text = ClipText([pipe.tokenizer], [pipe.text_encoder.eval()])

    def inputs(caps: list[str], llm: bool) -> dict[str, Any]:
        with torch.no_grad():
            out: dict[str, Any] = {"clip": text(caps)[0]}
            if llm:
                enc = pipe.llm_encoder.encode(caps)
                out.update(llm=enc.embeds.float(), llm_mask=enc.attention_mask)
        return out

    size = pipe.unet.config.sample_size * 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    pixels = pixels_from_uint8(uint8_tensor([render_scene(scene, size) for _, scene in items]))
    factor = pipe.vae.config.scaling_factor
    rows = []
    optima = []
    with torch.no_grad():
        z0 = pipe.vae.encode(pixels).latent_dist.mean * factor
        for k, (_, scene) in enumerate(items[: len(items) if args.renders else 0]):
            o, rng = scene.objects[0], np.random.default_rng(k)
            r = SIZES[o.size]
            places = rng.uniform(r + 2 / size, 1 - r - 2 / size, size=(args.renders, 2))
            others = [Scene([SceneObject(o.colour, o.shape, o.size, float(x), float(y))], scene.background, [])
                      for x, y in places]
            renders = torch.cat([pipe.vae.encode(pixels_from_uint8(uint8_tensor(
                [render_scene(v, size) for v in others[i: i + 100]]))).latent_dist.mean
                for i in range(0, len(others), 100)]) * factor
            same = torch.tensor([position_region(x, y) == position_region(o.x, o.y) for x, y in places])
            if bool(same.any()):
                optima.append(x0_optima(z0[k], renders, same))
        for arm, (model, llm) in arms.items():
            right, moved = inputs(true_caps, llm), inputs(moved_caps, llm)
            for t in timesteps:
                g = torch.Generator().manual_seed(t)
                steps = torch.full((len(items),), t)
                noisy = sched.add_noise(z0, torch.randn(z0.shape, generator=g), steps)
                pure = torch.randn(z0.shape, generator=g)
                centres, mse = {}, 0.0
                for name, x, inp in (("true", noisy, right), ("moved", noisy, moved), ("noise", pure, right)):
                    x0 = x0_from_prediction(model(x, steps, **inp), x, ac[t], sched.config.prediction_type)
                    if name == "true":
                        mse = float(((x0 - z0) ** 2).mean())
                    centres[name] = deviation_centroid(pipe.vae.decode(x0 / factor).sample.clamp(-1, 1))

                def dist(p: np.ndarray, q: np.ndarray) -> float:
                    return float(np.nanmean(np.linalg.norm(p - q, axis=1)))

                rows.append({"arm": arm, "timestep": t, "snr": float(ac[t] / (1 - ac[t])),
                             "dist_true_caption": dist(centres["true"], true_xy),
                             "dist_moved_caption": dist(centres["moved"], true_xy),
                             "dist_other_scene": dist(centres["true"], np.roll(true_xy, 1, axis=0)),
                             "moved_by_words": dist(centres["true"], centres["moved"]),
                             "dist_from_pure_noise": dist(centres["noise"], true_xy), "x0_mse": mse})
    blind, with_cell = (float(np.mean([b for b, _ in optima])), float(np.mean([c for _, c in optima]))) if optima \
        else (None, None)
    best = "" if blind is None else f"; best x0-MSE without the place {blind:.3f}, with the cell {with_cell:.3f}"

    table = Table(title=f"Where the x0 estimate puts the object, {src}: {len(items)} one-object held-out prompts; "
                        f"distances in fractions of the image (sampling with {args.steps} steps starts at t = {first}, "
                        f"SNR {float(ac[first] / (1 - ac[first])):.4f}); words alone: {words_alone:.3f}{best}")
    cols = ("arm", "t", "SNR", "dist (true caption)", "dist (other scene)", "moved by words", "from pure noise",
            "x0-MSE")
    for col in cols:
        table.add_column(col, justify="left" if col == "arm" else "right")
    for r in rows:
        table.add_row(r["arm"], str(r["timestep"]), f"{r['snr']:.4f}", f"{r['dist_true_caption']:.3f}",
                      f"{r['dist_other_scene']:.3f}", f"{r['moved_by_words']:.3f}", f"{r['dist_from_pure_noise']:.3f}",
                      f"{r['x0_mse']:.3f}")
    Console(width=max(Console().width, 130)).print(table)
    out = Path(args.out)
    write_report(out, {"model": str(src), "prompts": len(items), "first_sampling_timestep": first,
                       "first_sampling_snr": float(ac[first] / (1 - ac[first])),
                       "zero_terminal_snr": float(ac[-1]) == 0.0, "dist_words_alone": words_alone,
                       "x0_mse_place_blind": blind, "x0_mse_with_cell": with_cell,
                       "optima_prompts": len(optima), "config": vars(args), "rows": rows})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
