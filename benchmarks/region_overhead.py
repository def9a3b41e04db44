"""What regions cost at sampling: one LLM4GenPipeline unguided, with region guidance, with the masked
cross-attention, and with both (the pipeline's default for ``regions=``), on the same prompt, boxes and seeds.

Models: ``--sizes tiny sd15`` builds them as benchmarks/inference_overhead.py does (``sd15``: UNet, VAE and CLIP
ViT-L/14 text encoder from Stable Diffusion 1.5's configs with random weights; speed does not depend on the weights),
or ``--model PATH`` times a pipeline folder (e.g. models/default). The regions are the ones
``llm4gen.layout.plan_regions`` reads from the prompt (four places, four boxes). Modes:

    unguided      regions=None
    guide         regions, region_mask=False: region guidance alone (an extra UNet pass with gradients per guided
                  step, the first ``--guide-steps``)
    mask          regions, region_guidance_scale=0: masked cross-attention alone (no extra pass)
    both          regions (guidance and mask: the default)

Each mode is warmed up once, then timed in turn (interleaved, ``--repeats`` rounds) per batch size (images per
call). On CUDA the peak memory of each call is read too (``torch.cuda.max_memory_allocated``). Every image must be
finite. The tiny model's character-level CLIP reads only the prompt's first 77 characters (the LLM reads it all): its
warnings about that are silenced. Prints a table with ratios against unguided measured in the same run, and writes JSON.

    python benchmarks/region_overhead.py --quick                     # tiny model, under a minute on a 2-core CPU
    python benchmarks/region_overhead.py --model models/default --batch 1 8
    python benchmarks/region_overhead.py --sizes sd15 --device cuda --dtype fp16 --resolution 512 --steps 25 \
        --batch 1 4 --llm /path/to/a/saved/llm      # a GPU without the MiniLM package: a folder from make_tiny_llm
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

PROMPT = ("A small red circle sits in the upper left corner of a plain grey canvas, a large blue square sits in the "
          "lower right corner, a green triangle is at the bottom, horizontally centred, and a thin yellow ring floats "
          "near the top edge.")
MODES = ("unguided", "guide", "mask", "both")


def _overhead_module():
    spec = importlib.util.spec_from_file_location("inference_overhead", Path(__file__).with_name(
        "inference_overhead.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build(size: str, work: Path, llm: str | None = None):
    """An LLM4GenPipeline: ``size`` tiny / sd15 as inference_overhead.py builds it (``llm``: the LLM folder or
    reference, default MiniLM), or a pipeline folder when ``size`` is a path."""
    from llm4gen import LLM4GenPipeline

    if size not in ("tiny", "sd15"):
        if not (Path(size) / "model_index.json").is_file():
            raise SystemExit(f"{size} is not a pipeline folder (no model_index.json); give an LLM4GEN pipeline.")
        return LLM4GenPipeline.from_pretrained(size)
    if llm is not None and not Path(llm).exists() and not llm.startswith("package:"):
        raise SystemExit(f"--llm {llm}: no such folder (give a saved transformers model, e.g. one that "
                         "llm4gen.tiny.make_tiny_llm wrote, or package:NAME).")
    _, ours = _overhead_module().build(size, work, llm)
    ours.llm_encoder.register_to_config(padding="longest")  # what a user's pipeline does: real tokens + UNet mask
    ours.register_to_config(use_llm_attention_mask=True)
    return ours


def mode_kwargs(mode: str, regions, guide_steps: int) -> dict:
    """The pipeline call's keyword arguments for one mode."""
    if mode == "unguided":
        return {}
    kw = dict(regions=regions, region_guidance_steps=guide_steps)
    if mode == "guide":
        kw["region_mask"] = False
    elif mode == "mask":
        kw["region_guidance_scale"] = 0.0
    elif mode != "both":
        raise ValueError(f"unknown mode {mode!r}; one of {MODES}")
    return kw


def timed_call(pipe, prompt: str, kwargs: dict, seed: int, device: str, common: dict
               ) -> tuple[np.ndarray, float, float | None]:
    """(images, seconds, peak CUDA GiB or None) of one pipeline call, the device synchronised around it."""
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    generator = torch.Generator(device).manual_seed(seed)
    start = time.perf_counter()
    images = pipe(prompt, generator=generator, **common, **kwargs).images
    if cuda:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return images, elapsed, torch.cuda.max_memory_allocated() / 2**30 if cuda else None


def run(pipe, *, device: str, dtype: torch.dtype, resolution: int, steps: int, guide_steps: int,
        batches: list[int], repeats: int, prompt: str = PROMPT) -> dict:
    """Seconds per image (and peak CUDA memory) per mode and batch size, interleaved rounds after a warm-up."""
    from llm4gen.layout import plan_regions

    regions = plan_regions(prompt)
    if len(regions) < 2:
        raise SystemExit(f"The prompt places {len(regions)} thing(s); the mask needs two regions or more.")
    pipe.to(device)
    if dtype != torch.float32:
        pipe.to(dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    cuda = device.startswith("cuda")
    out: dict = {"regions": len(regions), "batches": {}}
    for batch in batches:
        common = dict(num_inference_steps=steps, guidance_scale=7.5, height=resolution, width=resolution,
                      output_type="np", num_images_per_prompt=batch)
        stats = {m: {"seconds": 0.0, "images": 0, "peak_gib": 0.0} for m in MODES}

        first: dict[str, np.ndarray] = {}
        for r in range(repeats + 1):  # round 0 warms up (seed 0 in every mode); then interleaved timed rounds
            for mode in MODES:
                images, elapsed, peak = timed_call(pipe, prompt, mode_kwargs(mode, regions, guide_steps), r, device,
                                                   common)
                if not np.isfinite(images).all():
                    raise RuntimeError(f"{mode}, batch {batch}: the images are not finite ({dtype}, {device}).")
                if peak is not None:
                    stats[mode]["peak_gib"] = max(stats[mode]["peak_gib"], peak)
                if r == 0:
                    first[mode] = images
                else:
                    stats[mode]["seconds"] += elapsed
                    stats[mode]["images"] += batch
        base = stats["unguided"]["seconds"] / stats["unguided"]["images"]
        table = {}
        for mode, s in stats.items():
            per_image = s["seconds"] / s["images"]
            table[mode] = {"s_per_image": per_image, "vs_unguided": per_image / base,
                           "peak_gib": s["peak_gib"] if cuda else None,
                           # how far the mode moved the image from the unguided one (same seed): > 0 = it acted
                           "mean_abs_change_vs_unguided": float(np.abs(first[mode] - first["unguided"]).mean())}
        out["batches"][str(batch)] = table
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the tiny model, 32 px, 4 steps, batch 1, one round")
    ap.add_argument("--sizes", nargs="+", default=["tiny"], choices=["tiny", "sd15"])
    ap.add_argument("--model", help="time this pipeline folder instead of --sizes")
    ap.add_argument("--llm", help="tiny / sd15: the LLM to load instead of MiniLM's package (a saved model folder)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--resolution", type=int, default=None, help="image size (default: 512 for sd15, else the model's)")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--guide-steps", type=int, default=10, help="region guidance's guided steps (the first ones)")
    ap.add_argument("--batch", type=int, nargs="+", default=[1], help="images per call")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default="runs/benchmarks/region_overhead.json")
    args = ap.parse_args()
    if args.quick:
        args.sizes, args.model, args.resolution, args.steps, args.guide_steps = ["tiny"], None, 32, 4, 2
        args.batch, args.repeats = [1], 1
    if args.model and args.llm:
        raise SystemExit("--llm is for the built --sizes; a --model folder brings its own LLM.")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: torch sees no CUDA device here; use --device cpu.")
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    if dtype != torch.float32 and not args.device.startswith("cuda"):
        raise SystemExit(f"--dtype {args.dtype} is for CUDA; on the CPU use fp32.")
    if min(args.batch) < 1 or args.repeats < 1 or args.steps < 1 or args.guide_steps < 0:
        raise SystemExit("--batch, --repeats and --steps must be >= 1, --guide-steps >= 0.")

    from rich.console import Console
    from rich.table import Table

    report = {"benchmark": "region_overhead", "machine": platform.platform(), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "device": args.device, "dtype": args.dtype,
              "gpu": torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else None,
              "prompt": PROMPT, "models": {}}
    console = Console(width=140)
    from llm4gen.utils import quiet_library_notices, write_report

    for size in [args.model] if args.model else args.sizes:
        with tempfile.TemporaryDirectory(prefix="llm4gen-regions-") as tmp:
            pipe = build(size, Path(tmp), args.llm)
            resolution = args.resolution or (512 if size == "sd15" else
                                             pipe.unet.config.sample_size * pipe.vae_scale_factor)
            with quiet_library_notices():  # CLIP's window notices, once per call: the timing is what is measured
                result = run(pipe, device=args.device, dtype=dtype, resolution=resolution, steps=args.steps,
                             guide_steps=args.guide_steps, batches=args.batch, repeats=args.repeats)
        result.update(resolution=resolution, steps=args.steps, guide_steps=args.guide_steps, repeats=args.repeats)
        report["models"][size] = result
        table = Table(title=f"{size}: {resolution} px, {args.steps} steps ({args.guide_steps} guided), CFG, "
                            f"{result['regions']} regions, {args.device} {args.dtype}, {args.repeats} round(s)")
        for col in ("batch", "mode", "s/image", "vs unguided", "peak GiB", "mean |change|"):
            table.add_column(col, justify="left" if col == "mode" else "right")
        for batch, modes in result["batches"].items():
            for mode, m in modes.items():
                peak = "-" if m["peak_gib"] is None else f"{m['peak_gib']:.2f}"
                table.add_row(batch, mode, f"{m['s_per_image']:.3f}", f"{m['vs_unguided']:.2f}x", peak,
                              f"{m['mean_abs_change_vs_unguided']:.4f}")
        console.print(table)
    write_report(args.json, report)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
