"""ComfyUI's own CLIP loader (``comfy.sd.load_clip``) on a saved LLM4GEN folder's ``text_encoder/``, then LLM4GEN Text
Encode with that CLIP, against ``LLM4GenPipeline.encode_fused_prompt`` for the same prompt and negative. Run with
ComfyUI's Python (ComfyUI runs with ``--cpu``; ``--fp32-text-enc`` keeps its CLIP in float32 instead of float16).

    python research/clients/comfyui_conditioning.py ComfyUI ComfyUI/models/diffusers/llm4gen --fp32-text-enc
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from llm4gen import LLM4GenPipeline
from llm4gen.comfy import LLM4GenEncode, LLM4GenTextModel

PROMPT = ("A small red circle sits in the upper left corner of a plain grey canvas, while a large blue square fills "
          "the lower right; between them, slightly below the centre, a green triangle points upwards.")
NEGATIVE = "blurry, low quality"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("comfyui", help="ComfyUI's folder")
    parser.add_argument("folder", help="a saved LLM4GEN folder")
    parser.add_argument("--fp32-text-enc", action="store_true", help="ComfyUI's CLIP in float32")
    args = parser.parse_args()
    folder = args.folder
    sys.argv = [sys.argv[0], "--cpu", *(["--fp32-text-enc"] if args.fp32_text_enc else [])]  # ComfyUI's own flags
    sys.path.insert(0, args.comfyui)
    import comfy.options

    comfy.options.enable_args_parsing()  # as ComfyUI's main.py does
    import comfy.sd

    start = time.time()
    clip = comfy.sd.load_clip([f"{folder}/text_encoder/model.safetensors"])
    model = LLM4GenTextModel.from_pretrained(folder, device="cpu", dtype="float32")
    positive, negative = LLM4GenEncode().encode(model, PROMPT, NEGATIVE, clip=clip)
    pipe = LLM4GenPipeline.from_pretrained(folder, unet=None, vae=None, safety_checker=None)
    fused = pipe.encode_fused_prompt(PROMPT, NEGATIVE)
    weights = clip.cond_stage_model.state_dict()
    print("ComfyUI CLIP weights:", weights["clip_l.transformer.text_model.encoder.layers.0.mlp.fc1.weight"].dtype)
    for name, got, want in (("positive", positive[0][0], fused.prompt_embeds),
                            ("negative", negative[0][0], fused.negative_prompt_embeds)):
        print(f"{name}: {tuple(got.shape)} vs {tuple(want.shape)}, max |diff| {(got - want.float()).abs().max():.3g}, "
              f"max |value| {want.abs().max():.3g}, finite {bool(torch.isfinite(got).all())}")
    print(f"{time.time() - start:.1f} s")


if __name__ == "__main__":
    main()
