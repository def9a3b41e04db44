"""Tiny scoring models for the evaluation and data tests, built from configs and saved like hub checkpoints.

Imported by tests/test_eval_compbench.py, test_eval_dpg.py, test_dense_prompts.py and test_recaption.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "yes", "no", "a", "an", "the", "red", "green", "blue", "apple",
         "leaf", "dog", "cat", "and", "?", "is", "there", "photo", "of", "picture", "image", "describe", "this", "in",
         "more", "than", "words", "."]


def _blip_tokenizer(folder: Path, with_enc: bool):
    from transformers import BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(WORDS) + "\n")
    tok = BertTokenizer(str(vocab))
    tok.add_special_tokens({"bos_token": "[DEC]"})
    if with_enc:
        tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tok


def _blip_config(tok):
    from transformers import BlipConfig

    text = dict(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                max_position_embeddings=64, bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id,
                sep_token_id=tok.sep_token_id)
    vision = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32,
                  patch_size=8)
    return BlipConfig(text_config=text, vision_config=vision, projection_dim=32)


def _blip_processor(tok):
    from transformers import BlipImageProcessor, BlipProcessor

    return BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok)


def make_tiny_blip_vqa(folder: str | os.PathLike, with_enc: bool = True, seed: int = 0) -> str:
    """A random BlipForQuestionAnswering (~50k parameters) with a 33-word BERT vocabulary and its processor."""
    from transformers import BlipForQuestionAnswering

    folder = Path(folder)
    tok = _blip_tokenizer(folder, with_enc)
    torch.manual_seed(seed)
    BlipForQuestionAnswering(_blip_config(tok)).save_pretrained(folder)
    _blip_processor(tok).save_pretrained(folder)
    return str(folder)


def make_tiny_blip_captioner(folder: str | os.PathLike, seed: int = 0) -> str:
    """A random BlipForConditionalGeneration (an image-to-text model with generate()) and its processor."""
    from transformers import BlipForConditionalGeneration

    folder = Path(folder)
    tok = _blip_tokenizer(folder, with_enc=False)
    torch.manual_seed(seed)
    BlipForConditionalGeneration(_blip_config(tok)).save_pretrained(folder)
    _blip_processor(tok).save_pretrained(folder)
    return str(folder)


def make_tiny_detr(folder: str | os.PathLike, labels=("person", "dog", "cat", "dining table"), seed: int = 0) -> str:
    """A random DETR with a tiny ResNet backbone built by transformers (no timm, no torchvision)."""
    from transformers import DetrConfig, DetrForObjectDetection, DetrImageProcessor, ResNetConfig

    torch.manual_seed(seed)
    backbone = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 8, 8, 8], depths=[1, 1, 1, 1],
                            out_features=["stage4"])
    cfg = DetrConfig(use_timm_backbone=False, use_pretrained_backbone=False, backbone_config=backbone, d_model=16,
                     encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                     encoder_ffn_dim=32, decoder_ffn_dim=32, num_queries=6,
                     id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
    model = DetrForObjectDetection(cfg)
    with torch.no_grad():  # distinct queries, so that the detections differ from one another
        model.model.query_position_embeddings.weight.normal_()
    model.save_pretrained(folder)
    DetrImageProcessor(size={"shortest_edge": 32, "longest_edge": 64}).save_pretrained(folder)
    return str(folder)


def make_tiny_clip(folder: str | os.PathLike, seed: int = 0) -> str:
    """A random CLIPModel with the character-level CLIP tokenizer and a 32 px image processor."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from llm4gen.tiny import make_char_clip_tokenizer

    folder = Path(folder)
    tok = make_char_clip_tokenizer(folder)
    torch.manual_seed(seed)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=77, bos_token_id=512, eos_token_id=513,
                         pad_token_id=513),
        vision_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    CLIPModel(cfg).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return str(folder)


CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def make_tiny_causal_lm(folder: str | os.PathLike, chat_template: bool = True, seed: int = 0) -> str:
    """A random LlamaForCausalLM with MiniLM's WordPiece tokenizer (and a chat template, unless told not to)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from llm4gen.encoders import resolve_model_reference
    from llm4gen.tiny import MINILM_REF

    tok = AutoTokenizer.from_pretrained(resolve_model_reference(MINILM_REF))
    tok.chat_template = CHAT_TEMPLATE if chat_template else None
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048,
                      bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)
