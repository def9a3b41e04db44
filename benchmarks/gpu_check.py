"""One prepared GPU check: every CUDA path of llm4gen at real size, in one short run (docs/performance.md#gpu-check).

Models are built from their configs with random weights, on the GPU directly, with nothing downloaded (speed and
memory do not depend on the weights): an SD1.5-shaped pipeline (UNet, VAE and CLIP ViT-L/14 from SD1.5's configs),
an SDXL-shaped one (UNet, VAE, CLIP ViT-L/14 and OpenCLIP ViT-bigG/14 text encoders from SDXL's configs) and a
T5-XL-shaped encoder as the LLM (RankGen-T5-XL's size: width 2048, 24 layers; OpenAI CLIP's BPE vocabulary, which
the package bundles, as its tokenizer, so no tokenizer download either). One process runs four parts:

    inference  fp16, SD1.5 at 512 px and SDXL at 1024 px: plain SD vs llm4gen fixed-256 (the authors' setting) vs
               trimmed + cached prompt, and fixed-256 with enable_model_cpu_offload (the LLM leaves the GPU after
               encoding): seconds per image, ratio to plain SD, peak GPU memory (LLM in bf16)
    official   LLM4GenPipeline.from_official on the authors' release layout, written here at real size (a base SD1.5
               folder, the fine-tuned unet/, projector.pth, an fp32 T5-XL, "pre " prefix, 256 tokens, no mask):
               load seconds, seconds per image, peak GPU memory
    training   the trainer (llm4gen.training.train) on in-memory data at 512 px: full UNet with fp16 (grad scaler)
               and bf16 mixed precision, and LoRA, each without and with a warm feature cache (one cold run fills
               it): samples/s, peak GPU memory, losses finite, grad-scaler updates
    regions    region guidance, the mask and both against unguided sampling on the SD1.5 pipeline in fp16 (timed as
               benchmarks/region_overhead.py times them): ratio and peak GPU memory

The parts share a time budget (--budget, 6.5 minutes of measuring; writing the checkpoints comes on top and is
reported apart): each gets a share of what is left and starts no new mode, call or training run once its share is
spent (a training run stops at its next step); what was skipped says so. A mode or a part that
fails is reported with its error and the rest goes on, so one run returns everything it could measure. Writes one
JSON (--json) and prints one table, also written as Markdown beside the JSON.

    python benchmarks/gpu_check.py                          # one GPU: 4-5 minutes on an H100 (an estimate)
    python benchmarks/gpu_check.py --parts training regions # rerun some parts
    python benchmarks/gpu_check.py --device cpu --quick     # tiny sizes on the CPU: the smoke test, under a minute
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import NamedTuple

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmarks: their model sizes and timing
import region_overhead  # noqa: E402
from inference_overhead import PROMPT, SD15_CLIP, SD15_UNET, SD15_VAE  # noqa: E402
from llm_memory import SIZES as T5_SIZES  # noqa: E402

# SDXL base 1.0's configs (unet/, vae/, text_encoder_2/); its text_encoder/ is SD1.5's CLIP ViT-L/14
SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20), cross_attention_dim=2048, use_linear_projection=True,
    addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
    norm_num_groups=32,
)
SDXL_VAE = {**SD15_VAE, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True}
SDXL_CLIP_G = dict(
    vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
    max_position_embeddings=77, projection_dim=1280, hidden_act="gelu", bos_token_id=49406, eos_token_id=49407,
    pad_token_id=49407,
)
# the tiny sizes of --quick, as llm4gen.tiny builds them
TINY_UNET = dict(
    sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64), norm_num_groups=16,
    cross_attention_dim=32, attention_head_dim=8, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
)
TINY_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 32), norm_num_groups=16,
    down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, sample_size=32,
)
TINY_CLIP = {**SD15_CLIP, "vocab_size": 514, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 2, "projection_dim": 32, "bos_token_id": 512, "eos_token_id": 513,
             "pad_token_id": 513}  # llm4gen.tiny's character-level vocabulary
TINY_XL_CLIP = {**TINY_CLIP, "hidden_size": 16, "intermediate_size": 32, "projection_dim": 16}
TINY_XL_UNET = {**TINY_UNET, "attention_head_dim": (2, 4), "use_linear_projection": True,
                "addition_embed_type": "text_time", "addition_time_embed_dim": 8,
                "projection_class_embeddings_input_dim": 6 * 8 + 16}


class Sizes(NamedTuple):
    """Model configs and run lengths of one size (``real`` or the ``tiny`` ones of --quick)."""

    name: str
    sd15: dict  # unet, vae, clip configs and the image resolution
    sdxl: dict  # the same with clip_2
    t5: dict  # T5Config sizes of the LLM
    steps: int  # inference steps per image
    rounds: int  # timed rounds per mode, after one warm-up call
    train_steps: int
    train_batch: int
    guide_steps: int  # region guidance's guided steps
    char_tokenizer: bool = False  # llm4gen.tiny's character-level CLIP tokenizer instead of OpenAI CLIP's BPE


REAL = Sizes("real", dict(unet=SD15_UNET, vae=SD15_VAE, clip=SD15_CLIP, resolution=512),
             dict(unet=SDXL_UNET, vae=SDXL_VAE, clip=SD15_CLIP, clip_2=SDXL_CLIP_G, resolution=1024),
             T5_SIZES["xl"], steps=20, rounds=2, train_steps=20, train_batch=4, guide_steps=10)
TINY = Sizes("tiny", dict(unet=TINY_UNET, vae=TINY_VAE, clip=TINY_CLIP, resolution=32),
             dict(unet=TINY_XL_UNET, vae=TINY_VAE, clip=TINY_XL_CLIP, clip_2=TINY_XL_CLIP, resolution=32),
             dict(d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2), steps=2, rounds=1, train_steps=3,
             train_batch=2, guide_steps=1, char_tokenizer=True)
LLM_TOKENS = 256  # the authors' fixed LLM length
LLM_WINDOW = 1024  # the LLM tokenizer's model_max_length: counting a prompt's tokens stays quiet up to it


class Budget:
    """Seconds from now until a deadline."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()

    def spent(self) -> bool:
        return self.left() <= 0

    def extend(self, seconds: float) -> None:
        self.seconds += seconds
        self.end += seconds


SKIPPED = "skipped: the part's time budget was spent"


class Check:
    """What every part needs: sizes, device and dtypes, a work folder, and the checkpoints written there once.

    ``dtype``: the pipelines' weights; ``llm_dtype``: the LLM's in the inference and regions parts (T5 overflows in
    fp16)."""

    def __init__(self, sizes: Sizes, device: torch.device, dtype: torch.dtype, llm_dtype: torch.dtype,
                 work: Path) -> None:
        self.sizes, self.device, self.dtype, self.llm_dtype, self.work = sizes, device, dtype, llm_dtype, work
        self.start = time.perf_counter()
        self.folders: dict[str, Path] = {}
        self.tokenizers: dict[int, object] = {}
        self.budgets: list[Budget] = []  # the running ones, which writing the checkpoints does not count against
        self.setup_s: dict[str, float] = {}

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def log(self, message: str) -> None:
        print(f"[gpu-check {time.perf_counter() - self.start:6.1f}s] {message}", flush=True)

    def free(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def allocated_gib(self) -> float | None:
        return torch.cuda.memory_allocated(self.device) / 2**30 if self.cuda else None

    def peak_gib(self) -> float | None:
        return torch.cuda.max_memory_allocated(self.device) / 2**30 if self.cuda else None

    def tokenizer(self, model_max_length: int = 77):
        """OpenAI CLIP's BPE tokenizer (bundled with llm4gen; the tiny sizes: a character-level one), made once per
        length: 77 for the CLIP encoders, longer for the LLM, which reads up to 256 tokens with it."""
        if model_max_length not in self.tokenizers:
            if self.sizes.char_tokenizer:
                from llm4gen.tiny import make_char_clip_tokenizer

                tok = make_char_clip_tokenizer(self.work / f"tokenizer-{model_max_length}", model_max_length)
            else:
                from llm4gen.clip_tokenizer import load_clip_tokenizer

                tok = load_clip_tokenizer(model_max_length)
            self.tokenizers[model_max_length] = tok
        return self.tokenizers[model_max_length]

    def llm_tokenizer(self):
        return self.tokenizer(LLM_WINDOW)

    # ------------------------------------------------------------------ checkpoints on disk (written once, lazily)
    def _folder(self, name: str, what: str, write: Callable[[Path], None]) -> str:
        """``work/name``, written by ``write(path)`` the first time it is asked for."""
        if name not in self.folders:
            start = time.perf_counter()
            path = self.work / name
            write(path)
            self.free()
            self.folders[name] = path
            self.setup_s[name] = time.perf_counter() - start
            for budget in self.budgets:
                budget.extend(self.setup_s[name])
            self.log(f"wrote {what} ({_size_gib(path):.2f} GiB) in {self.setup_s[name]:.1f} s")
        return str(self.folders[name])

    def t5_folder(self) -> str:
        """The T5-XL-shaped encoder saved in fp32 with its tokenizer, as a model folder ``LLMEncoder`` loads."""

        def write(path: Path) -> None:
            build_t5(self, torch.float32).save_pretrained(path)
            self.llm_tokenizer().save_pretrained(path)

        return self._folder("t5", "the T5 encoder", write)

    def sd15_folder(self) -> str:
        """A base SD1.5 pipeline folder: text encoder and VAE in fp32 (what the trainer loads), the UNet in the
        pipelines' dtype (what from_official loads as the fine-tuned one)."""

        def write(path: Path) -> None:
            from diffusers import StableDiffusionPipeline

            parts = build_parts(self, "sd15", torch.float32)
            if self.dtype != torch.float32:
                parts["unet"].to(self.dtype)
            StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                                    requires_safety_checker=False).save_pretrained(path)

        return self._folder("sd15", "the SD1.5 base folder", write)

    def release_folder(self) -> str:
        """The authors' release layout: ``unet/`` (the base folder's, linked) and ``projector.pth`` in their key
        names (a random CAM of SD1.5 x T5-XL size)."""
        base = Path(self.sd15_folder())

        def write(path: Path) -> None:
            from llm4gen import CrossAdapter

            path.mkdir()
            (path / "unet").symlink_to(base / "unet", target_is_directory=True)
            torch.manual_seed(0)
            adapter = CrossAdapter(clip_dim=self.sizes.sd15["clip"]["hidden_size"], llm_dim=self.sizes.t5["d_model"],
                                   num_heads=8)
            torch.save(official_state_dict(adapter), path / "projector.pth")

        return self._folder("release", "the authors' release layout", write)


def _size_gib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**30


# ---------------------------------------------------------------------- building models
def build_t5(check: Check, dtype: torch.dtype):
    """A T5 encoder of the check's size with random weights, created on the device."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=len(check.llm_tokenizer()), feed_forward_proj="gated-gelu", is_encoder_decoder=False,
                      **check.sizes.t5)
    torch.manual_seed(0)
    with torch.device(check.device):
        model = T5EncoderModel(config)
    return model.to(dtype).eval()


def make_llm(check: Check, model, padding: str):
    """An ``LLMEncoder`` over ``model``: 256 tokens, ``padding`` "max_length" (the authors') or "longest"."""
    from llm4gen import LLMEncoder

    return LLMEncoder(model=model, tokenizer=check.llm_tokenizer(), max_length=LLM_TOKENS, padding=padding)


def build_parts(check: Check, which: str, dtype: torch.dtype | None = None) -> dict:
    """The base pipeline's components (``which``: sd15 or sdxl) with random weights, created on the device."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from llm4gen.utils import quiet_library_notices

    spec = getattr(check.sizes, which)
    torch.manual_seed(0)
    with torch.device(check.device):
        parts = dict(unet=UNet2DConditionModel(**spec["unet"]), vae=AutoencoderKL(**spec["vae"]),
                     text_encoder=CLIPTextModel(CLIPTextConfig(**spec["clip"])))
        if "clip_2" in spec:
            parts["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig(**spec["clip_2"]))
    dtype = dtype or check.dtype
    with quiet_library_notices():  # diffusers' notice on casting a built model (it keeps nothing in fp32)
        for module in parts.values():
            if dtype != torch.float32:  # created in fp32
                module.to(dtype)
            module.eval()
    parts["tokenizer"] = check.tokenizer()
    if "clip_2" in spec:
        parts["tokenizer_2"] = check.tokenizer()
    parts["scheduler"] = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                       clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return parts


def build_adapter(check: Check, clip_dim: int, llm_dim: int):
    from llm4gen import CrossAdapter
    from llm4gen.utils import quiet_library_notices

    torch.manual_seed(0)
    with torch.device(check.device):
        adapter = CrossAdapter(clip_dim=clip_dim, llm_dim=llm_dim, num_heads=8)
    if check.dtype != torch.float32:
        with quiet_library_notices():
            adapter.to(check.dtype)
    return adapter.eval()


# the authors' LLMFusionModule names the CAM's parts differently (see CrossAdapter.from_official)
_AUTHORS_NAMES = {"clip_norm": "q_norm", "llm_norm": "kv_norm", "ffn_norm": "norm", "ffn": "FFN"}


def official_state_dict(adapter) -> dict[str, torch.Tensor]:
    """A one-layer ``CrossAdapter``'s weights under the key names of the authors' ``projector.pth``."""
    out = {}
    for key, value in adapter.state_dict().items():
        layer, _, rest = key.partition(".0.")  # layers.0.<part>.<param>
        part, _, param = rest.partition(".")
        if layer != "layers":
            raise ValueError(f"Unexpected CrossAdapter weight {key!r}.")
        out[f"CrossFusionModule.0.{_AUTHORS_NAMES.get(part, part)}.{param}"] = value.detach().cpu().contiguous()
    return out


def pipelines(check: Check, which: str, parts: dict, llm_model) -> dict:
    """Plain SD / SDXL and LLM4GEN pipelines sharing ``parts`` (and one CAM and LLM), for the inference modes."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    from llm4gen import LLM4GenPipeline, LLM4GenXLPipeline

    xl = which == "sdxl"
    extra = dict(add_watermarker=False) if xl else dict(safety_checker=None, feature_extractor=None,
                                                         requires_safety_checker=False)
    adapter = build_adapter(check, parts["unet"].config.cross_attention_dim, llm_model.config.d_model)
    ours = LLM4GenXLPipeline if xl else LLM4GenPipeline

    def llm4gen(padding: str, mask: bool):
        return ours(**parts, **extra, llm_encoder=make_llm(check, llm_model, padding), adapter=adapter,
                    use_llm_attention_mask=mask)

    out = {"plain SD": (StableDiffusionXLPipeline if xl else StableDiffusionPipeline)(**parts, **extra),
           "llm4gen fixed-256": llm4gen("max_length", False), "llm4gen trimmed + cached": llm4gen("longest", True),
           "llm4gen fixed-256, model CPU offload": llm4gen("max_length", False)}
    out["llm4gen trimmed + cached"].enable_prompt_cache()
    for pipe in out.values():
        pipe.set_progress_bar_config(disable=True)
    return out


# ---------------------------------------------------------------------- timing
def _error(err: BaseException) -> dict:
    return {"error": f"{type(err).__name__}: {err}"[:2000], "traceback": traceback.format_exc(limit=-4)[-3000:]}


def time_modes(check: Check, pipes: dict, resolution: int, budget: Budget, label: str) -> dict[str, dict]:
    """Seconds per image and peak GPU memory of each pipeline: one warm-up call each, then ``rounds`` interleaved
    timed rounds (seed = round), stopping when ``budget`` is spent."""
    from llm4gen.utils import quiet_library_notices

    common = dict(num_inference_steps=check.sizes.steps, guidance_scale=7.5, height=resolution, width=resolution,
                  output_type="np")
    stats: dict[str, dict] = {name: {"timed_s": [], "finite": True, "peak_gib": None} for name in pipes}
    for r in range(check.sizes.rounds + 1):  # round 0 warms up
        for name, pipe in pipes.items():
            s = stats[name]
            if "error" in s or "skipped" in s:
                continue
            if budget.spent():
                s["skipped"] = SKIPPED
                continue
            resident = check.allocated_gib()
            try:
                with quiet_library_notices():  # CLIP's window notices, once per call
                    images, seconds, peak = region_overhead.timed_call(pipe, PROMPT, {}, r, str(check.device), common)
            except Exception as err:  # noqa: BLE001 - reported, and the other modes go on
                s.update(_error(err))
                check.log(f"{label}: {name}: FAILED {s['error'][:200]}")
                continue
            s["finite"] = s["finite"] and bool(np.isfinite(images).all())
            if peak is not None:
                s["peak_gib"] = max(s["peak_gib"] or 0.0, peak)
                s["resident_gib_before_call"] = resident
            if r == 0:
                s["first_call_s"] = seconds
            else:
                s["timed_s"].append(seconds)
    for name, s in stats.items():
        if s["timed_s"]:
            s["s_per_image"] = sum(s["timed_s"]) / len(s["timed_s"])
            if "skipped" in s:  # some rounds were timed: a number, from fewer rounds
                s["skipped"] = f"{SKIPPED} after {len(s['timed_s'])} timed round(s)"
            check.log(f"{label}: {name}: {s['s_per_image']:.3f} s/image" +
                      (f", peak {s['peak_gib']:.2f} GiB" if s["peak_gib"] is not None else ""))
    return stats


# ---------------------------------------------------------------------- the parts
def part_inference(check: Check, budget: Budget) -> dict:
    out = {}
    for which in ("sd15", "sdxl"):
        if budget.spent():
            out[which] = {"skipped": SKIPPED}
            continue
        try:
            out[which] = _inference(check, which, budget)
        except Exception as err:  # noqa: BLE001
            out[which] = _error(err)
            check.log(f"inference {which}: FAILED {out[which]['error'][:200]}")
        check.free()
    return out


def _inference(check: Check, which: str, budget: Budget) -> dict:
    from llm4gen.utils import quiet_library_notices

    resolution = getattr(check.sizes, which)["resolution"]
    pipes = pipelines(check, which, build_parts(check, which), build_t5(check, check.llm_dtype))
    with quiet_library_notices():
        tokens = {name: int(pipe.encode_fused_prompt(PROMPT, device=check.device).prompt_embeds.shape[1])
                  if hasattr(pipe, "encode_fused_prompt") else 77 for name, pipe in pipes.items()}
    offload_name = "llm4gen fixed-256, model CPU offload"
    offloaded = pipes.pop(offload_name)
    label = f"inference {which} {resolution}px"
    modes = time_modes(check, pipes, resolution, budget, label)
    # last: its hooks move every component the pipelines share to the CPU and back, one model at a time
    try:
        offloaded.enable_model_cpu_offload(device=check.device)
    except Exception as err:  # noqa: BLE001 - reported with the modes measured so far
        modes[offload_name] = {**_error(err), "timed_s": [], "finite": True, "peak_gib": None}
    else:
        modes.update(time_modes(check, {offload_name: offloaded}, resolution, budget, label))
    base = modes["plain SD"].get("s_per_image")
    for name, m in modes.items():
        m["cond_tokens"] = tokens[name]
        if base and "s_per_image" in m:
            m["vs_plain"] = m["s_per_image"] / base
    del pipes, offloaded
    return {"resolution": resolution, "steps": check.sizes.steps, "rounds": check.sizes.rounds, "modes": modes}


def part_official(check: Check, budget: Budget) -> dict:
    from llm4gen import LLM4GenPipeline
    from llm4gen.utils import quiet_library_notices

    if budget.spent():
        return {"skipped": SKIPPED}
    base, release, llm = check.sd15_folder(), check.release_folder(), check.t5_folder()
    check.free()
    start = time.perf_counter()
    with quiet_library_notices():  # diffusers' notice on casting the projector to torch_dtype
        pipe = LLM4GenPipeline.from_official(base_model=base, unet=release, projector=release, llm=llm,
                                             llm_tokenizer=None, torch_dtype=check.dtype, safety_checker=None,
                                             requires_safety_checker=False)
    pipe.to(check.device)
    if check.cuda:
        torch.cuda.synchronize(check.device)
    pipe.set_progress_bar_config(disable=True)
    load_s = time.perf_counter() - start
    check.log(f"official: from_official loaded in {load_s:.1f} s")
    enc = pipe.llm_encoder
    with quiet_library_notices():
        fused = pipe.encode_fused_prompt(PROMPT, device=check.device)
    settings = {"prefix": enc.config.prefix, "max_length": enc.max_length, "padding": enc.config.padding,
                "use_llm_attention_mask": bool(pipe.config.use_llm_attention_mask), "llm_dtype": str(enc.dtype),
                "unet_dtype": str(pipe.unet.dtype), "cond_tokens": int(fused.prompt_embeds.shape[1])}
    resolution = check.sizes.sd15["resolution"]
    modes = time_modes(check, {"from_official": pipe}, resolution, budget, f"official {resolution}px")
    del pipe, enc, fused
    return {"load_s": load_s, "resolution": resolution, "steps": check.sizes.steps, "settings": settings,
            "modes": modes}


class _Stop(Exception):
    """Raised from the trainer's on_step to end a timed run without its final checkpoint and pipeline."""


class InMemoryData:
    """``n`` (random image, dense caption) pairs made on demand: the trainer's data without files."""

    def __init__(self, n: int, resolution: int) -> None:
        self.n, self.resolution = n, resolution

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int):
        from llm4gen.data.sources import Example

        return Example(partial(_noise_image, index, self.resolution), f"{PROMPT} Scene {index}.", f"gpu-check|{index}")


def _noise_image(index: int, resolution: int):
    from PIL import Image

    rng = np.random.default_rng(index)
    return Image.fromarray(rng.integers(0, 256, (resolution, resolution, 3), dtype=np.uint8))


TRAIN_MODES = {  # name: (config settings, with the feature cache)
    "full fp16": (dict(train_unet="full", mixed_precision="fp16"), False),
    "full bf16": (dict(train_unet="full", mixed_precision="bf16"), False),
    "LoRA fp16": (dict(train_unet="lora", mixed_precision="fp16"), False),
    "full fp16, cache cold (writing)": (dict(train_unet="full", mixed_precision="fp16"), True),
    "full fp16, cache warm": (dict(train_unet="full", mixed_precision="fp16"), True),
    "full bf16, cache warm": (dict(train_unet="full", mixed_precision="bf16"), True),
    "LoRA fp16, cache warm": (dict(train_unet="lora", mixed_precision="fp16"), True),
}


class _ScalerUpdates:
    """Count the grad scaler's updates (and the scale after each) while inside: the fp16 runs' scaler at work."""

    def __enter__(self) -> list[float]:
        self.scales: list[float] = []
        self.original = torch.amp.GradScaler.update
        scales, original = self.scales, self.original

        def update(scaler, *args, **kwargs):
            original(scaler, *args, **kwargs)
            scales.append(float(scaler.get_scale()))

        torch.amp.GradScaler.update = update
        return self.scales

    def __exit__(self, *exc) -> None:
        torch.amp.GradScaler.update = self.original


def part_training(check: Check, budget: Budget) -> dict:
    from llm4gen.data.sources import register_source

    sizes = check.sizes
    resolution, steps, batch = sizes.sd15["resolution"], sizes.train_steps, sizes.train_batch
    register_source("gpu-check", lambda cfg, res: InMemoryData(cfg.num_items, res))
    cache = check.work / "feature-cache"
    modes: dict[str, dict] = {}
    for name, (settings, cached) in TRAIN_MODES.items():
        if budget.spent():
            modes[name] = {"skipped": SKIPPED}
            continue
        try:
            modes[name] = _train_run(check, name, settings, cache if cached else None, budget)
        except Exception as err:  # noqa: BLE001
            modes[name] = _error(err)
            check.log(f"training: {name}: FAILED {modes[name]['error'][:200]}")
        check.free()
    for name, m in modes.items():
        plain = modes.get(name.split(",")[0], {})
        if "cache" in name and m.get("samples_per_s") and plain.get("samples_per_s"):
            m["vs_no_cache"] = m["samples_per_s"] / plain["samples_per_s"]
    return {"resolution": resolution, "batch": batch, "steps": steps, "llm": "T5 (fp32, padding longest + mask)",
            "trainer_device": "cuda" if torch.cuda.is_available() else "cpu", "modes": modes}


def _train_run(check: Check, name: str, settings: dict, cache: Path | None, budget: Budget) -> dict:
    from llm4gen.training.config import load_config
    from llm4gen.training.trainer import train

    sizes = check.sizes
    steps, batch = sizes.train_steps, sizes.train_batch
    base, llm = check.sd15_folder(), check.t5_folder()
    entries_before = _count_entries(cache)
    cfg = load_config({
        "output_dir": str(check.work / "train" / name.replace(" ", "_").replace(",", "")), "base_model": base,
        "unet": dict(sizes.sd15["unet"]), "llm": llm, "resolution": sizes.sd15["resolution"],
        "train_batch_size": batch, "max_train_steps": steps + 1,  # on_step stops it at `steps`, before a checkpoint
        "checkpointing_steps": 10**9, "log_every": 10**9, "data": {"type": "gpu-check", "num_items": steps * batch},
        "cache_dir": str(cache) if cache else None, **settings,
    })
    stamps: list[float] = []
    losses: list[float] = []

    def on_step(step: int, loss: float) -> None:
        stamps.append(time.perf_counter())
        losses.append(loss)
        if step >= steps or budget.spent():
            raise _Stop

    check.free()
    resident = check.allocated_gib()
    start = time.perf_counter()
    with _ScalerUpdates() as scales:
        try:
            train(cfg, progress=False, on_step=on_step)
        except _Stop:
            pass
    out = {"steps_done": len(stamps), "seconds": time.perf_counter() - start, "peak_gib": check.peak_gib(),
           "resident_gib_before": resident, "losses": losses, "losses_finite": all(map(math.isfinite, losses)),
           "grad_scaler_updates": len(scales), "grad_scale_last": scales[-1] if scales else None,
           "cache_entries_written": _count_entries(cache) - entries_before if cache else None,
           "mixed_precision": settings["mixed_precision"], "train_unet": settings["train_unet"]}
    if len(stamps) < steps:
        out["skipped"] = f"{SKIPPED} after {len(stamps)} of {steps} steps"
    if len(stamps) >= 2:  # the first step (warm-up, and setup) is left out
        timed = stamps[-1] - stamps[0]
        out["samples_per_s"] = (len(stamps) - 1) * batch / timed
        out["s_per_step"] = timed / (len(stamps) - 1)
    check.log(f"training: {name}: {out.get('samples_per_s', 0):.2f} samples/s over {len(stamps)} steps, loss "
              f"{losses[-1] if losses else float('nan'):.4f}" +
              (f", peak {out['peak_gib']:.2f} GiB" if out["peak_gib"] is not None else ""))
    return out


def _count_entries(path: Path | None) -> int:
    """Entries in the feature cache at ``path`` (every namespace and dtype; its shards hold many each)."""
    from llm4gen.feature_cache import FeatureCache

    return FeatureCache(path, dtype=None).size()[0] if path is not None and path.is_dir() else 0


def part_regions(check: Check, budget: Budget) -> dict:
    from llm4gen import LLM4GenPipeline
    from llm4gen.utils import quiet_library_notices

    if budget.spent():
        return {"skipped": SKIPPED}
    parts = build_parts(check, "sd15")
    llm_model = build_t5(check, check.llm_dtype)
    pipe = LLM4GenPipeline(**parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
                           llm_encoder=make_llm(check, llm_model, "longest"),
                           adapter=build_adapter(check, parts["unet"].config.cross_attention_dim,
                                                 llm_model.config.d_model),
                           use_llm_attention_mask=True)
    resolution = check.sizes.sd15["resolution"]
    with quiet_library_notices():
        # float32 here means "as built": the pipeline is already in check.dtype, its LLM in check.llm_dtype
        result = region_overhead.run(pipe, device=str(check.device), dtype=torch.float32, resolution=resolution,
                                     steps=check.sizes.steps, guide_steps=check.sizes.guide_steps, batches=[1],
                                     repeats=check.sizes.rounds)
    for mode, m in result["batches"]["1"].items():
        check.log(f"regions: {mode}: {m['s_per_image']:.3f} s/image, {m['vs_unguided']:.2f}x unguided")
    del pipe, parts, llm_model
    result.update(resolution=resolution, steps=check.sizes.steps, guide_steps=check.sizes.guide_steps,
                  rounds=check.sizes.rounds, dtype=str(check.dtype), llm_dtype=str(check.llm_dtype))
    return result


PARTS: dict[str, Callable[[Check, Budget], dict]] = {
    "inference": part_inference, "official": part_official, "training": part_training, "regions": part_regions,
}
SHARES = {"inference": 0.3, "official": 0.12, "training": 0.43, "regions": 0.15}  # of the time budget


def _gaps(value) -> bool:
    """Whether a part's results hold a failed or skipped entry anywhere."""
    if isinstance(value, dict):
        return "error" in value or "skipped" in value or any(_gaps(v) for v in value.values())
    return False


# ---------------------------------------------------------------------- the table
def table_rows(report: dict) -> list[list[str]]:
    """One row per measured (or failed, or skipped) mode of every part."""

    def num(value, fmt: str, unit: str = "") -> str:
        return "-" if value is None else format(value, fmt) + unit

    def note(m: dict) -> str:
        if "error" in m:
            return "FAILED: " + m["error"][:90]
        return m.get("skipped", "")

    rows = []
    for part, entry in report["parts"].items():
        if entry["status"] == "failed" or "skipped" in entry.get("results", {}):
            rows.append([part, "", "", "", "", "", note(entry) or note(entry["results"])])
            continue
        res = entry["results"]
        if part == "inference":
            for which, r in res.items():
                if "modes" not in r:
                    rows.append([part, which, "", "", "", "", note(r)])
                    continue
                for name, m in r["modes"].items():
                    rows.append([part, f"{which} {r['resolution']}px", f"{name} ({m['cond_tokens']} tokens)",
                                 num(m.get("s_per_image"), ".3f", " s/img"), num(m.get("vs_plain"), ".2f", "x"),
                                 num(m.get("peak_gib"), ".2f"),
                                 note(m) or ("" if m["finite"] else "images not finite")])
        elif part == "official":
            s = res["settings"]
            for name, m in res["modes"].items():
                rows.append([part, f"sd15 {res['resolution']}px", f"{name} ({s['cond_tokens']} tokens, LLM "
                             f"{s['llm_dtype'].removeprefix('torch.')})", num(m.get("s_per_image"), ".3f", " s/img"),
                             "", num(m.get("peak_gib"), ".2f"), note(m) or f"load {res['load_s']:.1f} s"])
        elif part == "training":
            for name, m in res["modes"].items():
                detail = note(m)
                if not detail:
                    detail = f"loss {m['losses'][-1]:.4f}" + ("" if m["losses_finite"] else " NOT FINITE")
                    if m["grad_scaler_updates"]:
                        detail += f", scaler {m['grad_scaler_updates']} updates"
                    if m["cache_entries_written"] is not None:
                        detail += f", {m['cache_entries_written']} cache entries written"
                ratio = num(m.get("vs_no_cache"), ".2f", "x") if "cache" in name else ""
                rows.append([part, f"sd15 {res['resolution']}px batch {res['batch']}", name,
                             num(m.get("samples_per_s"), ".2f", " samples/s"), ratio,
                             num(m.get("peak_gib"), ".2f"), detail])
        elif part == "regions":
            for mode, m in res["batches"]["1"].items():
                rows.append([part, f"sd15 {res['resolution']}px", mode, f"{m['s_per_image']:.3f} s/img",
                             f"{m['vs_unguided']:.2f}x", num(m["peak_gib"], ".2f"),
                             f"mean |change| {m['mean_abs_change_vs_unguided']:.4f}"])
    return rows


COLUMNS = ("part", "model", "mode", "speed", "ratio", "peak GiB", "notes")


def markdown_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- main
def run_parts(report: dict, parts: list[str], total: Budget, check: Check) -> None:
    """Run ``parts`` in turn into ``report["parts"]``, each in its share of what is left of ``total``; a part that
    raises is reported as failed and the next one runs."""
    check.log(f"{check.sizes.name} sizes on {report['gpu'] or check.device}; parts {', '.join(parts)}; budget "
              f"{total.seconds:g} s")
    for i, name in enumerate(parts):
        share = SHARES[name] / sum(SHARES[n] for n in parts[i:])  # what earlier parts left goes to later ones
        budget = Budget(max(0.0, total.left() * share))
        check.budgets = [total, budget]
        entry: dict = {"budget_s": budget.seconds}
        start = time.perf_counter()
        try:
            entry["results"] = PARTS[name](check, budget)
            entry["status"] = "incomplete" if _gaps(entry["results"]) else "ok"
        except Exception as err:  # noqa: BLE001 - reported, and the next part runs
            entry.update(status="failed", **_error(err))
        check.free()
        entry["seconds"] = time.perf_counter() - start
        entry["budget_s"] = budget.seconds  # with the time spent writing checkpoints added
        report["parts"][name] = entry
        check.log(f"{name}: {entry['status']} in {entry['seconds']:.1f} s (budget {budget.seconds:.0f} s)"
                  + (f": {entry['error'][:300]}" if "error" in entry else ""))
    report["setup_s"] = check.setup_s  # writing the checkpoints, not counted against the budget


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda, cuda:1, ...; cpu only with --quick")
    ap.add_argument("--quick", action="store_true", help="tiny models, 32 px, a few steps: the smoke test")
    ap.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS), help="which parts to run")
    ap.add_argument("--budget", type=float, default=390.0,
                    help="seconds of measuring for all parts together (default 6.5 min; writing the checkpoints "
                         "the official and training parts load comes on top)")
    ap.add_argument("--work", default=None, help="where the checkpoints are written (a temporary folder inside it, "
                                                  "removed at the end; default: the system's temp folder)")
    ap.add_argument("--json", default="runs/benchmarks/gpu_check.json")
    args = ap.parse_args()
    try:
        device = torch.device(args.device)
    except RuntimeError as err:
        raise SystemExit(f"--device {args.device}: not a device name ({err}); use cuda, cuda:N or cpu.") from err
    if device.type not in ("cpu", "cuda"):
        raise SystemExit(f"--device {args.device}: this check knows cpu and cuda.")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: torch sees no CUDA device here; run on a GPU machine, or use "
                         "--device cpu --quick for the smoke test.")
    if device.type == "cpu" and not args.quick:
        raise SystemExit("--device cpu at real size would take hours; add --quick (tiny models) or use a GPU.")
    if not args.budget > 0:
        raise SystemExit(f"--budget is seconds for the whole run and must be > 0, got {args.budget}.")
    parts = list(dict.fromkeys(args.parts))

    import diffusers
    import transformers
    from rich.console import Console
    from rich.table import Table

    from llm4gen.utils import write_report

    cuda = device.type == "cuda"
    sizes = TINY if args.quick else REAL
    report = {"benchmark": "gpu_check", "sizes": sizes.name, "device": str(device),
              "gpu": torch.cuda.get_device_name(device) if cuda else None,
              "gpu_memory_gib": torch.cuda.get_device_properties(device).total_memory / 2**30 if cuda else None,
              "machine": platform.platform(), "torch": torch.__version__, "diffusers": diffusers.__version__,
              "transformers": transformers.__version__, "budget_s": args.budget, "parts": {}}
    start, total = time.perf_counter(), Budget(args.budget)
    threads = torch.get_num_threads()
    bars = [lib.utils.logging for lib in (diffusers, transformers) if lib.utils.logging.is_progress_bar_enabled()]
    for logging in bars:  # the per-load progress bars
        logging.disable_progress_bar()
    if not cuda:  # tiny models: one thread is as fast, and far faster on a CPU that other work shares
        torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(prefix="llm4gen-gpu-check-", dir=args.work) as tmp:
            run_parts(report, parts, total, Check(sizes, device, torch.float16 if cuda else torch.float32,
                                                  torch.bfloat16 if cuda else torch.float32, Path(tmp)))
    finally:
        torch.set_num_threads(threads)
        for logging in bars:
            logging.enable_progress_bar()
    report["elapsed_s"] = time.perf_counter() - start

    rows = table_rows(report)
    table = Table(title=f"llm4gen GPU check: {sizes.name} sizes, {report['gpu'] or device}, "
                        f"{report['elapsed_s']:.0f} s")
    for col in COLUMNS:
        table.add_column(col, justify="right" if col in ("speed", "ratio", "peak GiB") else "left")
    for row in rows:
        table.add_row(*row)
    Console(width=180).print(table)
    written = write_report(args.json, report)
    markdown = Path(args.json).with_suffix(".md")
    markdown.write_text(f"GPU check on {report['gpu'] or device} ({sizes.name} sizes, torch {torch.__version__}), "
                        f"{report['elapsed_s']:.0f} s\n\n" + markdown_table(rows), encoding="utf-8")
    print(f"wrote {', '.join(map(str, [*written, markdown]))}")


if __name__ == "__main__":
    main()
