"""Cross-attention recording: the maps the entity loss trains on and region guidance steers by.

:func:`install_attention_store` wraps every cross-attention processor of a diffusers UNet so that, while its
:class:`AttentionStore` is ``active``, each layer's attention probabilities ``[B, HW, T]`` (mean over heads) are
recorded, recomputed from the layer's own projections so gradients reach them. :func:`cover_share` measures how much
of a token's attention falls on a region, and :func:`grid_side` reads a square map's side.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["AttentionStore", "StoringProcessor", "cover_share", "grid_side", "install_attention_store"]


def cover_share(m: torch.Tensor, rows: list[tuple[int, int]], covers: torch.Tensor, eps: float = 1e-8
                ) -> torch.Tensor:
    """Share ``[R]`` of each token's spatial attention that falls on a region: ``rows`` are ``(b, t)`` into one
    layer's attention ``m`` (``[B, HW, T]``), ``covers`` ``[R, HW]`` the fraction of each cell inside row r's region
    (e.g. :func:`llm4gen.regions.box_cover`). A map spread evenly gives ``covers.mean(-1)`` (chance)."""
    if covers.shape != (len(rows), m.shape[1]):
        raise ValueError(f"covers must be [rows, positions] = [{len(rows)}, {m.shape[1]}], got {tuple(covers.shape)}.")
    b_idx = torch.tensor([r[0] for r in rows], device=m.device, dtype=torch.long)
    t_idx = torch.tensor([r[1] for r in rows], device=m.device, dtype=torch.long)
    p = m.float()[b_idx, :, t_idx]
    p = p / p.sum(-1, keepdim=True).clamp_min(eps)
    return (p * covers.to(p.device, p.dtype)).sum(-1)


def grid_side(m: torch.Tensor, what: str = "this") -> int:
    """The side of a square attention grid ``[B, side * side, T]``; an error for any other shape."""
    side = int(round(m.shape[1] ** 0.5))
    if side * side != m.shape[1]:
        raise ValueError(f"{what} needs square attention grids, got {m.shape[1]} positions.")
    return side


class AttentionStore:
    """Collects cross-attention probabilities ``[B, HW, T]`` (mean over heads) while ``active``."""

    def __init__(self, max_resolution: int = 16) -> None:
        self.max_tokens = max_resolution * max_resolution
        self.active = False
        self.maps: list[torch.Tensor] = []

    def reset(self) -> None:
        self.maps = []


class StoringProcessor:
    """Runs the layer's own processor, and while the store is active also records its attention probabilities
    (recomputed from the same projections, so gradients reach ``to_q`` / ``to_k``)."""

    def __init__(self, store: AttentionStore, inner: Any) -> None:
        self.store, self.inner = store, inner

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        out = self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        if self.store.active and encoder_hidden_states is not None and hidden_states.ndim == 3:
            b, hw, _ = hidden_states.shape
            if hw <= self.store.max_tokens:
                ctx = encoder_hidden_states
                if attn.norm_cross:
                    ctx = attn.norm_encoder_hidden_states(ctx)
                q = attn.head_to_batch_dim(attn.to_q(hidden_states))
                k = attn.head_to_batch_dim(attn.to_k(ctx))
                mask = attn.prepare_attention_mask(attention_mask, ctx.shape[1], b)
                probs = attn.get_attention_scores(q, k, mask)  # [B * heads, HW, T]
                self.store.maps.append(probs.view(b, attn.heads, hw, -1).mean(1))
        return out


def install_attention_store(unet: torch.nn.Module, store: AttentionStore) -> None:
    """Wrap the processors of every cross-attention layer (``attn2``) of ``unet`` so they report to ``store``."""
    processors = unet.attn_processors
    wrapped = {}
    for name, proc in processors.items():
        is_cross = name.endswith("attn2.processor")
        wrapped[name] = StoringProcessor(store, proc) if is_cross else proc
    unet.set_attn_processor(wrapped)
