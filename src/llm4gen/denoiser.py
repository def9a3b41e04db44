"""The trained part of an LLM4GEN model as one module, and the base model's frozen CLIP text encoder(s).

:class:`Denoiser` is CAM (when there is an LLM) then UNet: the module the trainer optimises (one DDP wrapper) and
the diagnostics call directly. :class:`ClipText` encodes captions with the base model's CLIP as its diffusers
pipeline does (SD1.x and SDXL).
"""

from __future__ import annotations

import torch
from torch import nn

from .adapter import CrossAdapter

__all__ = ["ClipText", "Denoiser"]


class Denoiser(nn.Module):
    """The trained part in one module (one DDP wrapper): CAM (when there is an LLM) then the UNet."""

    def __init__(self, unet: nn.Module, adapter: CrossAdapter | None, use_mask: bool) -> None:
        super().__init__()
        self.unet, self.adapter, self.use_mask = unet, adapter, use_mask

    def forward(self, noisy, timesteps, clip, llm=None, llm_mask=None, pooled=None, time_ids=None, zero=None):
        if self.adapter is not None:
            cond, mask = self.adapter(clip, llm, llm_mask)
        else:
            cond, mask = clip, None
        mask = mask if self.use_mask else None
        added = None
        if pooled is not None:  # SDXL
            if zero is not None:  # dropped captions: zero conditioning, SDXL's convention for the empty prompt
                keep = (~zero).to(cond.dtype)
                cond = cond * keep[:, None, None]
                pooled = pooled * keep[:, None]
            added = {"text_embeds": pooled, "time_ids": time_ids}
        return self.unet(noisy, timesteps, encoder_hidden_states=cond, encoder_attention_mask=mask,
                         added_cond_kwargs=added).sample


class ClipText(nn.Module):
    """The base model's frozen CLIP text encoder(s), encoding as its diffusers pipeline does.

    SD1.x: the last hidden state of ``text_encoder`` (``[B, 77, D]``). SDXL: the penultimate hidden states of
    ``text_encoder`` and ``text_encoder_2`` side by side (``[B, 77, D1 + D2]``) and the pooled, projected embedding of
    ``text_encoder_2``.
    """

    def __init__(self, tokenizers: list, encoders: list[nn.Module]) -> None:
        super().__init__()
        self.tokenizers = tokenizers
        self.encoders = nn.ModuleList(encoders)
        self.xl = len(encoders) == 2
        for m in self.encoders:
            m.requires_grad_(False)
            m.eval()

    @property
    def width(self) -> int:
        return sum(e.config.hidden_size for e in self.encoders)

    @property
    def num_tokens(self) -> int:
        return self.tokenizers[0].model_max_length

    @torch.no_grad()
    def forward(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        device = next(self.encoders[0].parameters()).device
        hidden, pooled = [], None
        for tok, enc in zip(self.tokenizers, self.encoders):
            ids = tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                      return_tensors="pt").input_ids.to(device)
            if not self.xl:
                hidden.append(enc(ids)[0])
            else:
                out = enc(ids, output_hidden_states=True)
                hidden.append(out.hidden_states[-2])
                pooled = out[0]  # the last encoder's projected pooled output, as StableDiffusionXLPipeline
        return torch.cat(hidden, dim=-1), pooled
