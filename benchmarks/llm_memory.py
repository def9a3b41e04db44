"""Memory of the LLM encoder by weight dtype: fp32 vs bf16 vs fp16 (peak RSS on CPU; peak GPU memory with a GPU).

A T5 encoder of the chosen size is built from its config (random weights: memory does not depend on them), saved
once, then loaded and run by ``LLMEncoder`` in a fresh subprocess per dtype, so each peak RSS is that mode's own.
A subprocess that only imports the libraries gives the runtime's baseline; the table reports the resident set after
encoding (steady state) and the peak (loading an fp32 checkpoint into bf16/fp16 briefly holds both). With a CUDA
GPU the script also measures peak GPU memory of a whole LLM4GEN pipeline with the LLM resident vs
``enable_model_cpu_offload`` (the LLM leaves the GPU after encoding); without one that part is reported as not
measured.

    python benchmarks/llm_memory.py --quick              # T5-base-sized encoder, under 2 minutes
    python benchmarks/llm_memory.py --size large         # T5-v1.1-large-sized encoder (~340M parameters)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SIZES = {
    "base": dict(d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_heads=12),
    "large": dict(d_model=1024, d_kv=64, d_ff=2816, num_layers=24, num_heads=16),
    "xl": dict(d_model=2048, d_kv=64, d_ff=5120, num_layers=24, num_heads=32),  # RankGen-T5-XL's encoder size
}

CHILD = r"""
import gc, json, resource, sys, time
import psutil
import torch
from llm4gen import LLMEncoder
path, dtype = sys.argv[1], sys.argv[2]
proc = psutil.Process()
def rss():
    gc.collect()
    return proc.memory_info().rss / 2**20
if dtype == "none":  # the same imports, no model: the runtime's own memory
    print(json.dumps({"rss_mb": rss(), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
    sys.exit(0)
enc = LLMEncoder.from_pretrained(path, tokenizer=sys.argv[3], dtype=getattr(torch, dtype), max_length=256,
                                 padding="max_length")
after_load = rss()
weights = sum(p.numel() * p.element_size() for p in enc.parameters()) / 2**20
prompts = ["a small red circle to the left of a large blue square on a grey floor, " * 8] * 8
start = time.perf_counter()
out = enc.encode(prompts)
seconds = time.perf_counter() - start
print(json.dumps({"weights_mb": weights, "rss_after_load_mb": after_load, "rss_after_encode_mb": rss(),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "seconds_encode_8x256": seconds, "features_dtype": str(out.embeds.dtype)}))
"""


def build_encoder(root: Path, size: str) -> tuple[str, str]:
    import torch
    from transformers import T5Config, T5EncoderModel

    from llm4gen.encoders import resolve_model_reference
    from llm4gen.tiny import MINILM_REF

    tokenizer = resolve_model_reference(MINILM_REF)  # any tokenizer works for memory; MiniLM's is offline
    cfg = T5Config(vocab_size=30522, feed_forward_proj="gated-gelu", is_encoder_decoder=False, **SIZES[size])
    torch.manual_seed(0)
    model = T5EncoderModel(cfg)
    model.save_pretrained(root / "t5", safe_serialization=True)
    return str(root / "t5"), tokenizer


def child(path: str, dtype: str, tokenizer: str) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", CHILD, path, dtype, tokenizer], capture_output=True, text=True,
                          env=env, timeout=900)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def gpu_offload(size: str) -> dict:  # pragma: no cover - needs a CUDA GPU
    import torch

    if not torch.cuda.is_available():
        return {"measured": False, "why": "no CUDA GPU on this machine"}
    from llm4gen.tiny import build_tiny_pipeline

    with tempfile.TemporaryDirectory() as tmp:
        path, tok = build_encoder(Path(tmp), size)
        from llm4gen import LLMEncoder

        out = {"measured": True}
        for mode in ("resident", "model_cpu_offload"):
            llm = LLMEncoder.from_pretrained(path, tokenizer=tok, dtype=torch.bfloat16, max_length=256)
            pipe = build_tiny_pipeline(llm=llm, work_dir=Path(tmp) / mode)
            if mode == "resident":
                pipe.to("cuda")
            else:
                pipe.enable_model_cpu_offload()
            torch.cuda.reset_peak_memory_stats()
            pipe("a small red circle", num_inference_steps=2)
            out[mode] = {"peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20,
                         "after_call_gpu_mb": torch.cuda.memory_allocated() / 2**20}
            del pipe, llm
            torch.cuda.empty_cache()
        return out


def main() -> None:
    from llm4gen.utils import write_report

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the base size")
    parser.add_argument("--size", choices=sorted(SIZES), default="large")
    parser.add_argument("--json", default="runs/benchmarks/llm_memory.json")
    args = parser.parse_args()
    size = "base" if args.quick else args.size

    from rich.console import Console
    from rich.table import Table

    with tempfile.TemporaryDirectory(prefix="llm4gen-mem-") as tmp:
        path, tok = build_encoder(Path(tmp), size)
        runtime = child(path, "none", tok)
        modes = {dtype: child(path, dtype, tok) for dtype in ("float32", "bfloat16", "float16")}
    base_rss = runtime.get("rss_mb", 0.0)
    fp32 = modes["float32"].get("rss_after_encode_mb")
    table = Table(title=f"LLM encoder memory, T5-{size}-sized encoder, CPU; runtime alone {base_rss:.0f} MB RSS")
    for col in ("dtype", "weights MB", "RSS after encode MB", "above runtime MB", "vs fp32", "peak RSS MB",
                "encode 8x256 s"):
        table.add_column(col, justify="left" if col == "dtype" else "right")
    for dtype, m in modes.items():
        if "error" in m:
            table.add_row(dtype, "-", "-", "-", "-", "-", m["error"][:60])
            continue
        above = m["rss_after_encode_mb"] - base_rss
        m["above_runtime_mb"] = above
        m["ratio_vs_fp32"] = above / (fp32 - base_rss) if fp32 and fp32 > base_rss else None
        table.add_row(dtype, f"{m['weights_mb']:.0f}", f"{m['rss_after_encode_mb']:.0f}", f"{above:.0f}",
                      f"{m['ratio_vs_fp32']:.2f}x" if m["ratio_vs_fp32"] else "-", f"{m['peak_rss_mb']:.0f}",
                      f"{m['seconds_encode_8x256']:.2f}")
    Console(width=150).print(table)
    gpu = gpu_offload(size)
    print("GPU (resident LLM vs enable_model_cpu_offload):", json.dumps(gpu))
    report = {"benchmark": "llm_memory", "size": size, "machine": platform.platform(), "runtime": runtime,
              "cpu_modes": modes, "gpu": gpu}
    write_report(args.json, report)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
