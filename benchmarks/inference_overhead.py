"""What LLM4GEN adds at inference: LLM4GenPipeline vs the plain StableDiffusionPipeline on the same UNet, VAE,
CLIP, scheduler and steps.

Sizes: ``tiny`` (the test model) and ``sd15`` (UNet, VAE and CLIP ViT-L/14 text encoder built from Stable
Diffusion 1.5's configs with random weights; speed does not depend on the weights). The LLM is all-MiniLM-L6-v2.
Modes:

    plain SD                     StableDiffusionPipeline, 77 CLIP tokens
    llm4gen fixed-256            the authors' setting: LLM padded to 256 tokens, no mask (77 + 256 tokens)
    llm4gen fixed-256, cached    the same with the prompt cache warm (no LLM run)
    llm4gen trimmed              padding="longest" + UNet mask: 77 + the prompt's real tokens
    llm4gen trimmed, cached      the same with the prompt cache warm: the configuration the overhead goal is about

Each mode is warmed up once, then the modes are timed in turn (interleaved, ``--repeats`` rounds); the split (LLM,
CLIP, CAM, UNet loop, VAE decode) comes from timers around those modules. Whole-image timings on a small shared CPU
are noisy, so a second table times one UNet step (CFG batch of 2) alone at 77, 77 + real and 77 + 256 conditioning
tokens, interleaved, and reports medians: the structural cost of the longer conditioning. Prints the tables with
ratios against plain SD measured in the same run, and writes JSON.

    python benchmarks/inference_overhead.py --quick      # under 2 minutes on a 2-core CPU
    python benchmarks/inference_overhead.py --sizes sd15 --steps 10 --resolution 512 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

PROMPT = ("A small red circle sits in the upper left corner of a plain grey canvas, while a large blue square fills "
          "the lower right; between them, slightly below the centre, a green triangle points upwards, and a thin "
          "yellow ring floats near the top edge.")

SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
)
SD15_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512,
)
SD15_CLIP = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407,
    pad_token_id=49407,
)


def build(size: str, work: Path, llm_ref: str | None = None):
    """(plain StableDiffusionPipeline, LLM4GenPipeline) sharing UNet, VAE, CLIP and scheduler; ``llm_ref``: the LLM
    (a saved model folder or ``package:NAME``), MiniLM by default."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from llm4gen import CrossAdapter, LLM4GenPipeline, LLMEncoder
    from llm4gen.clip_tokenizer import load_clip_tokenizer
    from llm4gen.tiny import MINILM_REF, build_tiny_pipeline

    llm = LLMEncoder.from_pretrained(llm_ref or MINILM_REF, max_length=256, padding="max_length")
    torch.manual_seed(0)
    if size == "tiny":
        tiny = build_tiny_pipeline(llm=llm, work_dir=work / "tiny")
        parts = dict(vae=tiny.vae, text_encoder=tiny.text_encoder, tokenizer=tiny.tokenizer, unet=tiny.unet,
                     scheduler=tiny.scheduler)
        adapter = tiny.adapter
    else:
        parts = dict(vae=AutoencoderKL(**SD15_VAE), text_encoder=CLIPTextModel(CLIPTextConfig(**SD15_CLIP)),
                     tokenizer=load_clip_tokenizer(), unet=UNet2DConditionModel(**SD15_UNET),
                     scheduler=DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                             clip_sample=False, set_alpha_to_one=False, steps_offset=1))
        adapter = CrossAdapter(clip_dim=768, llm_dim=llm.hidden_size, num_heads=8)
    for m in (parts["vae"], parts["text_encoder"], parts["unet"], adapter):
        m.eval()
    common = dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    plain = StableDiffusionPipeline(**parts, **common)
    ours = LLM4GenPipeline(**parts, **common, llm_encoder=llm, adapter=adapter, use_llm_attention_mask=False)
    for p in (plain, ours):
        p.set_progress_bar_config(disable=True)
    return plain, ours


class Split:
    """Accumulate wall time spent inside chosen module methods."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def watch(self, pipe):
        targets = [("CLIP", pipe.text_encoder, "forward"), ("UNet loop", pipe.unet, "forward"),
                   ("VAE decode", pipe.vae, "decode")]
        if hasattr(pipe, "llm_encoder"):
            targets += [("LLM", pipe.llm_encoder, "forward"), ("CAM", pipe.adapter, "forward")]
        originals = []
        for name, obj, attr in targets:
            original = getattr(obj, attr)

            def timed(*args, _original=original, _name=name, **kwargs):
                start = time.perf_counter()
                try:
                    return _original(*args, **kwargs)
                finally:
                    self.seconds[_name] += time.perf_counter() - start

            setattr(obj, attr, timed)
            originals.append((obj, attr))
        try:
            yield self
        finally:
            for obj, attr in originals:
                delattr(obj, attr)  # the instance attribute shadowed the class method


def _say(message: str) -> None:
    """Progress on stderr: an sd15 run takes many minutes between tables."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_size(size: str, steps: int, resolution: int, repeats: int) -> dict:
    from llm4gen.feature_cache import PromptCache

    with tempfile.TemporaryDirectory(prefix="llm4gen-infer-") as tmp:
        _say(f"{size}: building the models ...")
        plain, ours = build(size, Path(tmp))
        res = resolution if size == "sd15" else 32
        kwargs = dict(num_inference_steps=steps, guidance_scale=7.5, height=res, width=res, output_type="np")
        cache = PromptCache()

        def setup(padding: str | None, mask: bool = False, cached: bool = False):
            def apply():
                if padding is not None:
                    ours.llm_encoder.register_to_config(padding=padding)
                    ours.register_to_config(use_llm_attention_mask=mask)
                    ours._prompt_cache = cache if cached else None
            return apply

        modes = {
            "plain SD": (plain, setup(None)),
            "llm4gen fixed-256": (ours, setup("max_length")),
            "llm4gen fixed-256, cached": (ours, setup("max_length", cached=True)),
            "llm4gen trimmed": (ours, setup("longest", mask=True)),
            "llm4gen trimmed, cached": (ours, setup("longest", mask=True, cached=True)),
        }
        results = {name: {"seconds": 0.0, "images": 0, "split": defaultdict(float)} for name in modes}
        for name, (pipe, apply) in modes.items():  # warm-up, and fills the prompt cache for the cached modes
            _say(f"{size}: warm-up, {name} ...")
            apply()
            pipe(PROMPT, **kwargs)
            if hasattr(pipe, "encode_fused_prompt"):
                fused = pipe.encode_fused_prompt(PROMPT, device="cpu")
                results[name]["cond_tokens"] = int(fused.prompt_embeds.shape[1])
        for r in range(repeats):  # interleaved, so that drift of the machine hits every mode alike
            for name, (pipe, apply) in modes.items():
                apply()
                split = Split()
                start = time.perf_counter()
                with split.watch(pipe):
                    out = pipe(PROMPT, generator=torch.Generator().manual_seed(r), **kwargs)
                results[name]["seconds"] += time.perf_counter() - start
                _say(f"{size}: repeat {r + 1}/{repeats}, {name}: {time.perf_counter() - start:.1f} s")
                results[name]["images"] += len(out.images)
                for k, v in split.seconds.items():
                    results[name]["split"][k] += v
        table = {}
        for name, r in results.items():
            n = r["images"]
            table[name] = {"s_per_image": r["seconds"] / n, "images_per_s": n / r["seconds"],
                           "cond_tokens": r.get("cond_tokens", 77),
                           "split_s_per_image": {k: v / n for k, v in r["split"].items()}}
        base = table["plain SD"]["s_per_image"]
        for r in table.values():
            r["overhead_vs_plain"] = r["s_per_image"] / base - 1
        _say(f"{size}: timing one UNet step per conditioning length ...")
        unet_step = time_unet_step(ours.unet, res // ours.vae_scale_factor,
                                   {"77 (plain SD)": 77, "77 + real (trimmed)": table["llm4gen trimmed"]["cond_tokens"],
                                    "77 + 256 (fixed)": 333}, rounds=max(5, 3 * repeats))
        return {"steps": steps, "resolution": res, "repeats": repeats, "modes": table, "unet_step": unet_step}


@torch.no_grad()
def time_unet_step(unet, latent: int, token_counts: dict[str, int], rounds: int) -> dict:
    """Median seconds of one UNet forward (batch 2, as with CFG) per conditioning length, interleaved rounds."""
    dim = unet.config.cross_attention_dim
    sample = torch.randn(2, unet.config.in_channels, latent, latent)
    t = torch.tensor([500, 500])
    conds = {name: torch.randn(2, n, dim) for name, n in token_counts.items()}
    times: dict[str, list[float]] = {name: [] for name in conds}
    for cond in conds.values():  # warm-up
        unet(sample, t, encoder_hidden_states=cond)
    for _ in range(rounds):
        for name, cond in conds.items():
            start = time.perf_counter()
            unet(sample, t, encoder_hidden_states=cond)
            times[name].append(time.perf_counter() - start)
    med = {name: sorted(v)[len(v) // 2] for name, v in times.items()}
    base = med["77 (plain SD)"]
    return {name: {"tokens": token_counts[name], "median_s": med[name], "overhead_vs_plain": med[name] / base - 1}
            for name in conds}


def main() -> None:
    from llm4gen.utils import write_report

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny, and sd15 at 128 px, 2 steps, 1 repeat")
    parser.add_argument("--sizes", nargs="+", default=["tiny", "sd15"], choices=["tiny", "sd15"])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--resolution", type=int, default=512, help="sd15 image size (tiny is always 32)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default="runs/benchmarks/inference_overhead.json")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.resolution, args.repeats = 2, 128, 1

    from rich.console import Console
    from rich.table import Table

    report = {"benchmark": "inference_overhead", "threads": torch.get_num_threads(), "machine": platform.platform(),
              "torch": torch.__version__, "device": "cpu", "sizes": {}}
    console = Console(width=150)
    for size in args.sizes:
        result = run_size(size, args.steps, args.resolution, args.repeats)
        report["sizes"][size] = result
        table = Table(title=f"{size}: {result['resolution']} px, {result['steps']} steps, CFG, {args.repeats} "
                            f"image(s) timed per mode ({torch.get_num_threads()} threads)")
        cols = ["mode", "tokens", "s/image", "overhead", "LLM", "CLIP", "CAM", "UNet loop", "VAE decode"]
        for col in cols:
            table.add_column(col, justify="left" if col == "mode" else "right")
        for name, m in result["modes"].items():
            sp = m["split_s_per_image"]
            overhead = f"{100 * m['overhead_vs_plain']:+.1f}%"
            parts = (f"{sp.get(k, 0.0):.3f}" for k in ("LLM", "CLIP", "CAM", "UNet loop", "VAE decode"))
            table.add_row(name, str(m["cond_tokens"]), f"{m['s_per_image']:.3f}", overhead, *parts)
        console.print(table)
        steps_table = Table(title=f"{size}: one UNet step at {result['resolution']} px, batch 2, median of "
                                  f"{max(5, 3 * args.repeats)} interleaved rounds")
        for col in ("conditioning", "tokens", "median s", "vs 77 tokens"):
            steps_table.add_column(col, justify="left" if col == "conditioning" else "right")
        for name, m in result["unet_step"].items():
            steps_table.add_row(name, str(m["tokens"]), f"{m['median_s']:.4f}", f"{100 * m['overhead_vs_plain']:+.1f}%")
        console.print(steps_table)
    write_report(args.json, report)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
