"""A small CLIP for ShapesWorld, trained contrastively: the honest text encoder of the *base* model.

Stable Diffusion's text encoder is a contrastively trained CLIP with a 77-token window. To compare LLM4GEN with its
base fairly on ShapesWorld, the base must be conditioned on the same kind of encoder: this recipe trains a small
CLIP (a text transformer with OpenAI CLIP's vocabulary and 77 positions, and a small ViT) on ShapesWorld pairs with
the symmetric InfoNCE loss, and saves

    OUT/text_encoder/   CLIPTextModel      (what a StableDiffusionPipeline loads as `text_encoder`)
    OUT/tokenizer/      CLIPTokenizer      (model_max_length 77, offline)
    OUT/clip/           the whole CLIPModel (text + vision + projections, for scoring)
    OUT/metrics.json    zero-shot retrieval on the held-out split, the recipe, the wall time

Captions are drawn from all three styles at random each time an item is seen; dense captions are cut at 77 tokens,
exactly the limitation that LLM4GEN removes.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..clip_tokenizer import CLIP_VOCAB_SIZE, load_clip_tokenizer
from ..images import pixels_from_uint8, uint8_tensor
from ..utils import loss_progress
from .world import CAPTION_STYLES, ShapesWorld, ShapesWorldConfig

__all__ = ["SmallClipConfig", "build_small_clip", "retrieval_accuracy", "train_small_clip"]


@dataclass
class SmallClipConfig:
    hidden_size: int = 128
    num_layers: int = 3
    num_heads: int = 4
    projection_dim: int = 128
    image_size: int = 64
    patch_size: int = 8
    steps: int = 800
    batch_size: int = 96
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup_steps: int = 100
    train_items: int = 12000
    eval_items: int = 500
    seed: int = 0
    data_seed: int = 0


def build_small_clip(cfg: SmallClipConfig):
    """A randomly initialised ``transformers.CLIPModel`` of the configured size with OpenAI CLIP's vocabulary."""
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    text = CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE, hidden_size=cfg.hidden_size, intermediate_size=4 * cfg.hidden_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, max_position_embeddings=77,
        projection_dim=cfg.projection_dim, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
        hidden_act="quick_gelu",
    )
    vision = CLIPVisionConfig(
        image_size=cfg.image_size, patch_size=cfg.patch_size, hidden_size=cfg.hidden_size,
        intermediate_size=4 * cfg.hidden_size, num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
        projection_dim=cfg.projection_dim, hidden_act="quick_gelu",
    )
    torch.manual_seed(cfg.seed)
    return CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                                projection_dim=cfg.projection_dim))


def retrieval_accuracy(text_emb: torch.Tensor, image_emb: torch.Tensor, k: int = 1) -> dict[str, float]:
    """Top-k retrieval accuracy between row-aligned embeddings (row i of each is a true pair), both directions."""
    t = F.normalize(text_emb.float(), dim=-1)
    v = F.normalize(image_emb.float(), dim=-1)
    sim = t @ v.T
    target = torch.arange(sim.shape[0], device=sim.device)
    kk = min(k, sim.shape[0])  # with fewer candidates than k, every candidate counts
    t2i = (sim.topk(kk, dim=1).indices == target[:, None]).any(1).float().mean().item()
    i2t = (sim.T.topk(kk, dim=1).indices == target[:, None]).any(1).float().mean().item()
    return {f"text_to_image_top{k}": t2i, f"image_to_text_top{k}": i2t}


def _make_split(split: str, n: int, cfg: SmallClipConfig, progress: bool):
    items = ShapesWorld(split, seed=cfg.data_seed, config=ShapesWorldConfig(size=cfg.image_size)).take(n, progress)
    captions = [[it.captions[s] for s in CAPTION_STYLES] for it in items]
    return uint8_tensor([it.image for it in items]), captions


@torch.no_grad()
def _evaluate(model, tokenizer, images: torch.Tensor, captions: list[list[str]], batch: int = 250) -> dict[str, float]:
    model.eval()
    img_emb = torch.cat([_features(model.get_image_features(pixel_values=pixels_from_uint8(images[i : i + batch])))
                         for i in range(0, len(images), batch)])
    out: dict[str, float] = {"chance_top1": 1.0 / len(images)}
    for si, style in enumerate(CAPTION_STYLES):
        texts = [c[si] for c in captions]
        txt_emb = []
        for i in range(0, len(texts), batch):
            ids = tokenizer(texts[i : i + batch], padding="max_length", max_length=77, truncation=True,
                            return_tensors="pt")
            feats = model.get_text_features(input_ids=ids.input_ids, attention_mask=ids.attention_mask)
            txt_emb.append(_features(feats))
        emb = torch.cat(txt_emb)
        for k in (1, 5):
            for name, value in retrieval_accuracy(emb, img_emb, k).items():
                out[f"{style}/{name}"] = value
    model.train()
    return out


def _features(out: Any) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def train_small_clip(
    out_dir: str | os.PathLike,
    config: SmallClipConfig | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train the small CLIP with ``config`` and save it under ``out_dir`` (see the module docs). Returns the metrics."""
    from transformers import CLIPTextModel

    cfg = config or SmallClipConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    tokenizer = load_clip_tokenizer()
    train_images, train_captions = _make_split("train", cfg.train_items, cfg, progress)
    eval_images, eval_captions = _make_split("test", cfg.eval_items, cfg, progress)
    model = build_small_clip(cfg)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * t))

    steps: Any = range(cfg.steps)
    prog = None
    if progress:
        prog, task = loss_progress("small CLIP", cfg.steps, loss_digits=3)
    losses = []
    n_train = len(train_images)
    try:
        for step in steps:
            idx = rng.choice(n_train, size=min(cfg.batch_size, n_train), replace=False)
            texts = [train_captions[i][int(rng.integers(3))] for i in idx]
            ids = tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
            pixels = pixels_from_uint8(train_images[torch.from_numpy(idx)])
            img = F.normalize(_features(model.get_image_features(pixel_values=pixels)), dim=-1)
            txt = F.normalize(_features(model.get_text_features(input_ids=ids.input_ids,
                                                                attention_mask=ids.attention_mask)), dim=-1)
            logits = model.logit_scale.exp().clamp(max=100) * txt @ img.T
            target = torch.arange(len(idx))
            loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
            if not torch.isfinite(loss):
                raise FloatingPointError(f"The small-CLIP loss became {loss.item()} at step {step}; lower the lr.")
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
            if prog is not None:
                prog.update(task, advance=1, loss=float(np.mean(losses[-20:])))
    finally:
        if prog is not None:
            prog.stop()
    metrics = _evaluate(model, tokenizer, eval_images, eval_captions)
    # save: the whole CLIP, and the text side in the layout of a Stable Diffusion pipeline
    model.save_pretrained(out / "clip", safe_serialization=True)
    text_encoder = CLIPTextModel(model.config.text_config)
    state = {k.removeprefix("text_model."): v for k, v in model.state_dict().items() if k.startswith("text_model.")}
    text_encoder.load_state_dict(state, strict=True)
    text_encoder.save_pretrained(out / "text_encoder", safe_serialization=True)
    tokenizer.save_pretrained(out / "tokenizer")
    result = {
        "retrieval_heldout": metrics,
        "final_loss": float(np.mean(losses[-50:])) if losses else None,
        "first_loss": losses[0] if losses else None,
        "wall_time_s": round(time.time() - start, 1),
        "threads": torch.get_num_threads(),
        "config": asdict(cfg),
    }
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    return result
