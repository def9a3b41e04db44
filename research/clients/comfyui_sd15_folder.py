"""Write an SD 1.5-shaped LLM4GEN folder with random weights for trying ComfyUI: full-size UNet (SD 1.5 layout),
CLIP-L text encoder, SD VAE, a tiny random BERT as the LLM (weights saved in the folder) and a CAM from 32 to 768
dimensions, through ``LLM4GenPipeline.save_pretrained``. Its images are noise-like; it shows what ComfyUI loads.

    python research/clients/comfyui_sd15_folder.py OUT --clip-tokenizer ComfyUI/comfy/sd1_tokenizer
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from llm4gen import CrossAdapter, LLM4GenPipeline, LLMEncoder
from llm4gen.tiny import make_tiny_llm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="the folder to write (e.g. ComfyUI/models/diffusers/llm4gen)")
    parser.add_argument("--clip-tokenizer", required=True,
                        help="a folder with OpenAI CLIP's vocab.json and merges.txt (ComfyUI's comfy/sd1_tokenizer)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.time()
    torch.manual_seed(args.seed)
    tokenizer = CLIPTokenizer.from_pretrained(args.clip_tokenizer, model_max_length=77)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12, projection_dim=768,
        hidden_act="quick_gelu"))
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)  # SD 1.5's layout
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2,
                        sample_size=512)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    llm = LLMEncoder.from_pretrained(make_tiny_llm(os.path.join(args.out + "-work", "tiny-llm"), seed=args.seed),
                                     max_length=64, padding="max_length")
    adapter = CrossAdapter(clip_dim=768, llm_dim=llm.hidden_size, num_heads=8)
    pipe = LLM4GenPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                           llm_encoder=llm, adapter=adapter, safety_checker=None, feature_extractor=None,
                           requires_safety_checker=False)
    pipe.save_pretrained(args.out, save_llm_weights=True)
    print(f"saved {args.out} in {time.time() - start:.1f} s")


if __name__ == "__main__":
    main()
