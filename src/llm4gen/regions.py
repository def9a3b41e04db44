"""Region guidance: put the things a prompt names inside boxes at sampling time, without training.

Training-free layout control by cross-attention guidance, as in Chen et al. 2024 ("Training-free layout control with
cross-attention guidance", their backward guidance) and BoxDiff (Xie et al. 2023). Each :class:`Region` is a phrase of
the prompt (every occurrence of it, or given character spans) and a box. While the image is sampled, the
cross-attention probabilities of every UNet layer with at most 16 x 16 positions are recorded for the conditional
prompt, and for the tokens ``t`` of each region's phrase the loss

    L = mean_{layers, regions, tokens t}  1 - sum_xy P_t(x, y) * B(x, y)        in [0, 1]

is the share of the token's attention that falls outside its box (``P_t``: the token's attention over positions,
normalised to sum 1; ``B``: the fraction of each attention cell inside the box, :func:`box_cover`). After each of the
first ``steps`` denoising steps, the latents entering the next step are moved against the gradient of ``L`` (computed
by one more UNet pass at that step's timestep). The gradient is normalised per image to a root-mean-square of 1, so
``scale`` is the RMS change of the latents per guided step, whatever the model's gradient magnitudes.

With an LLM4GEN pipeline the guided tokens are the CAM's (one per LLM token, ``tokens="llm"``, the default), CLIP's
(``"clip"``: the tokens inside its 77-token window) or both; a plain Stable Diffusion pipeline has only CLIP's.
``LLM4GenPipeline(..., regions=[...])`` (and ``LLM4GenXLPipeline``) does all of this; :class:`RegionGuidance` is the
same as a ``callback_on_step_end`` for any SD1.x or SDXL diffusers pipeline. By default the layers read are those of
at most 16 x 16 positions (SD1.x) or 32 x 32 (SDXL, whose cross-attention starts at 32 x 32 at 1024 px).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from .attention import AttentionStore, StoringProcessor, cover_share

__all__ = ["GUIDED_TOKENS", "Region", "RegionGuidance", "RegionMask", "attention_grid", "box_cover", "region_control",
           "region_loss", "region_spans", "span_tokens"]

GUIDED_TOKENS = ("llm", "clip", "both")


@dataclass(frozen=True)
class Region:
    """A phrase of the prompt and the box it should lie in.

    ``box`` is ``(x0, y0, x1, y1)`` in fractions of the image's width and height, y downwards (``(0, 0, 0.5, 0.5)``:
    the upper left quarter). ``text`` is matched case-insensitively on word boundaries, every occurrence; or give
    ``spans``, character ``(start, end)`` spans of the prompt, and ``text=None``.
    """

    text: str | None
    box: tuple[float, float, float, float]
    spans: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        try:
            box = tuple(float(v) for v in self.box)
        except (TypeError, ValueError):
            raise ValueError(f"Region box must be four numbers (x0, y0, x1, y1), got {self.box!r}.") from None
        if len(box) != 4:
            raise ValueError(f"Region box must be four numbers (x0, y0, x1, y1), got {len(box)}: {self.box!r}.")
        x0, y0, x1, y1 = box
        if not (0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0):
            raise ValueError(f"Region box {box} must satisfy 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1 (fractions of "
                             "the image, y downwards).")
        object.__setattr__(self, "box", box)
        spans = tuple((int(s), int(e)) for s, e in self.spans)
        if any(not 0 <= s < e for s, e in spans):
            raise ValueError(f"Region spans must be (start, end) character offsets with 0 <= start < end: {spans}.")
        object.__setattr__(self, "spans", spans)
        if bool(self.text and self.text.strip()) == bool(spans):
            raise ValueError("A Region needs either a phrase (text) or character spans of the prompt, not both.")

    @classmethod
    def parse(cls, text: str) -> Region:
        """``"red circle: 0, 0, 0.4, 0.4"`` (``PHRASE:X0,Y0,X1,Y1``, the command line's and the app's form) ->
        ``Region("red circle", (0, 0, 0.4, 0.4))``; a ValueError naming the form otherwise."""
        phrase, sep, box = text.rpartition(":")
        try:
            values = tuple(float(v) for v in box.split(","))
        except ValueError:
            values = ()
        if not sep or not phrase.strip() or len(values) != 4:
            raise ValueError(f"A region is PHRASE:X0,Y0,X1,Y1 such as 'red circle:0,0,0.4,0.4'; got {text!r}.")
        return cls(phrase.strip(), values)


def box_cover(box: Sequence[float], rows: int, cols: int | None = None) -> torch.Tensor:
    """Per cell of a ``rows`` x ``cols`` grid over the image (``cols`` defaults to ``rows``; flattened row-major, y
    down, as a UNet's attention positions), the fraction of the cell's area inside ``box`` = ``(x0, y0, x1, y1)``;
    float32, ``[rows * cols]``."""
    x0, y0, x1, y1 = (float(v) for v in box)
    cols = rows if cols is None else cols

    def overlap(a: float, b: float, n: int) -> torch.Tensor:
        lo = torch.arange(n, dtype=torch.float64) / n
        return (torch.clamp(lo + 1.0 / n, max=b) - torch.clamp(lo, min=a)).clamp_min(0.0) * n

    return (overlap(y0, y1, rows)[:, None] * overlap(x0, x1, cols)[None, :]).reshape(-1).float()


def attention_grid(positions: int, height: int, width: int) -> tuple[int, int]:
    """The ``(rows, cols)`` of a UNet layer's attention grid with ``positions`` cells, for latents of ``height`` x
    ``width`` (the layer's grid keeps their aspect ratio); a clear error when no such grid fits."""
    f = (height * width / positions) ** 0.5
    rows, cols = round(height / f), round(width / f)
    if rows * cols != positions:
        raise ValueError(f"Cannot lay {positions} attention positions out as a grid with the latents' aspect "
                         f"{height} x {width}; use a height and width divisible by the UNet's total downsampling.")
    return rows, cols


def region_spans(prompt: str, region: Region) -> list[tuple[int, int]]:
    """The character spans of ``prompt`` that ``region`` names; a clear error when its phrase is not there."""
    if region.spans:
        bad = [s for s in region.spans if s[1] > len(prompt)]
        if bad:
            raise ValueError(f"Region spans {bad} run past the end of the prompt ({len(prompt)} characters).")
        return list(region.spans)
    pattern = r"(?<!\w)" + re.escape(region.text.strip()) + r"(?!\w)"
    found = [(m.start(), m.end()) for m in re.finditer(pattern, prompt, flags=re.IGNORECASE)]
    if not found:
        shown = prompt if len(prompt) <= 80 else prompt[:77] + "..."
        raise ValueError(f"Region phrase {region.text!r} does not occur in the prompt {shown!r}; give words of the "
                         "prompt (case does not matter) or character spans.")
    return found


def span_tokens(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]], prefix_len: int = 0,
                limit: int | None = None) -> list[int]:
    """Every token (by a fast tokenizer's ``offset_mapping`` of ``prefix + text``) that overlaps one of the character
    ``spans`` of the text, below ``limit``; special tokens (empty offsets) never."""
    out = []
    for i, (a, b) in enumerate(offsets):
        if limit is not None and i >= limit:
            break
        if b > a and any(a < e + prefix_len and b > s + prefix_len for s, e in spans):
            out.append(i)
    return out


def _token_windows(pipe: Any, tokens: str, fused_len: int) -> list[tuple[Any, str, int, int]]:
    """(tokenizer, prefix, shift, limit) of each guided token sequence (``tokens``) inside ``pipe``'s fused one."""
    clip_len = int(pipe.tokenizer.model_max_length)
    adapter = getattr(pipe, "adapter", None)
    llm = getattr(pipe, "llm_encoder", None)
    llm_len = fused_len - clip_len if llm is not None else 0
    clip_first = adapter is None or getattr(adapter.config, "concat_order", "clip_first") == "clip_first"
    out = []
    if tokens in ("clip", "both"):
        out.append((pipe.tokenizer, "", 0 if clip_first else llm_len, clip_len))
    if tokens in ("llm", "both"):
        out.append((llm.tokenizer, llm.config.prefix, clip_len if clip_first else 0, llm_len))
    for tok, *_ in out:
        if not getattr(tok, "is_fast", False):
            raise ValueError(f"Region guidance maps words to tokens with offsets, which {type(tok).__name__} "
                             "does not give; load a fast tokenizer.")
    return out


def _per_image(prompts: Sequence[str], regions: Sequence[Sequence[Region]], num_images_per_prompt: int
               ) -> tuple[list[str], list[list[Region]], list[list[list[tuple[int, int]]]], list[tuple], list[int]]:
    """Per image (each prompt's ``num_images_per_prompt`` images share its regions): the prompts, their regions, each
    region's character spans, every (image, region)'s box in one flat list, and each image's first index into it."""
    if len(regions) != len(prompts):
        raise ValueError(f"Give one list of regions per prompt: {len(prompts)} prompts, {len(regions)} lists.")
    image_prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
    image_regions = [list(r) for r in regions for _ in range(num_images_per_prompt)]
    spans = [[region_spans(p, r) for r in rs] for p, rs in zip(image_prompts, image_regions)]
    boxes = [region.box for rs in image_regions for region in rs]
    firsts = [0]
    for rs in image_regions[:-1]:
        firsts.append(firsts[-1] + len(rs))
    return image_prompts, image_regions, spans, boxes, firsts


def _region_rows(pipe: Any, prompts: Sequence[str], regions: Sequence[Sequence[Region]],
                spans: Sequence[Sequence[list[tuple[int, int]]]], first_box: Sequence[int], tokens: str,
                fused_len: int) -> list[tuple[int, int, int]]:
    """``(image b, token t, box index)`` for every token of the fused sequence (length ``fused_len``) that lies in a
    region's words, ``tokens`` = which windows; warns for a region without any such token."""
    rows: list[tuple[int, int, int]] = []
    for tok, prefix, shift, limit in _token_windows(pipe, tokens, fused_len):
        offsets = tok([prefix + p for p in prompts], return_offsets_mapping=True, truncation=True,
                      max_length=limit)["offset_mapping"]
        for b, image_spans in enumerate(spans):
            for r, s in enumerate(image_spans):
                ids = span_tokens(offsets[b], s, len(prefix), limit)
                rows += [(b, t + shift, first_box[b] + r) for t in ids]
    guided = {box for _, _, box in rows}
    for b, image_regions in enumerate(regions):
        for r, region in enumerate(image_regions):
            if first_box[b] + r not in guided:
                warnings.warn(f"Region {region.text or region.spans!r} of prompt {b} has no token inside the "
                              f"guided window(s) ({tokens}); it is not guided. Move it earlier in the prompt "
                              "or guide other tokens.", stacklevel=4)
    return rows


def region_loss(maps: Sequence[torch.Tensor], rows: Sequence[tuple[int, int, int]], covers: dict[int, torch.Tensor],
                batch: int, eps: float = 1e-8) -> torch.Tensor:
    """Per image ``[batch]``: the mean over ``maps`` (per layer ``[B, HW, T]`` attention probabilities) and ``rows``
    ``(image b, token t, region r)`` of the share of the token's attention outside region r's box; ``covers[HW]`` is
    ``[regions, HW]``, each box's cover of that layer's grid (:func:`box_cover`). 0 for images without rows."""
    device = maps[0].device if maps else torch.device("cpu")
    total = torch.zeros(batch, device=device)
    if not maps or not rows:
        return total
    tokens = [(b, t) for b, t, _ in rows]
    b_idx = torch.tensor([r[0] for r in rows], device=device)
    r_idx = torch.tensor([r[2] for r in rows], device=device)
    per_image = torch.zeros(batch, device=device).index_add_(0, b_idx, torch.ones(len(rows), device=device))
    for m in maps:
        if m.shape[1] not in covers:
            raise ValueError(f"region_loss has no box covers for a layer of {m.shape[1]} positions (covers for "
                             f"{sorted(covers)}).")
        outside = 1.0 - cover_share(m, tokens, covers[m.shape[1]].to(device)[r_idx], eps)
        total = total + torch.zeros(batch, device=device).index_add(0, b_idx, outside) / per_image.clamp_min(1)
    return total / len(maps)


class RegionGuidance:
    """Region guidance (module docs) as a diffusers ``callback_on_step_end``.

    ``regions[i]`` are the regions of ``prompts[i]`` (a list of :class:`Region`, possibly empty); each prompt's
    ``num_images_per_prompt`` images share them. Use it inside :meth:`attached` and ask the pipeline for the latents
    and the prompt embeddings::

        guide = RegionGuidance(pipe, prompts, regions)
        with guide.attached():
            pipe(prompts, callback_on_step_end=guide, callback_on_step_end_tensor_inputs=guide.tensor_inputs)

    ``losses`` holds ``(step, mean loss before the update)`` per guided step.
    """

    def __init__(self, pipe: Any, prompts: Sequence[str], regions: Sequence[Sequence[Region]], scale: float = 0.05,
                 steps: int = 10, tokens: str = "llm", num_images_per_prompt: int = 1,
                 max_resolution: int | None = None) -> None:
        self.prompts, self.regions, self.spans, self._boxes, self._first_box = _per_image(prompts, regions,
                                                                                          num_images_per_prompt)
        if tokens not in GUIDED_TOKENS:
            raise ValueError(f"region tokens must be one of {GUIDED_TOKENS}, got {tokens!r}.")
        if not scale >= 0:
            raise ValueError(f"region_guidance_scale must be >= 0 (the RMS change of the latents per step), got "
                             f"{scale}.")
        if not (isinstance(steps, int) and steps >= 0):
            raise ValueError(f"region_guidance_steps must be a whole number >= 0, got {steps!r}.")
        llm = getattr(pipe, "llm_encoder", None)
        if tokens in ("llm", "both") and llm is None:
            raise ValueError(f"tokens={tokens!r} guides the LLM's tokens, but this pipeline has no LLM encoder; use "
                             "tokens='clip'.")
        self.pipe, self.scale, self.steps, self.tokens = pipe, float(scale), steps, tokens
        # SDXL (a second text encoder) needs its pooled embeddings and time ids in the UNet pass; its cross-attention
        # starts at 32 x 32 at 1024 px, where SD1.x's starts at 16 x 16 at 512 px
        self.xl = getattr(pipe, "text_encoder_2", None) is not None or hasattr(pipe, "tokenizer_2")
        self.tensor_inputs = ["latents", "prompt_embeds"] + (["add_text_embeds", "add_time_ids"] if self.xl else [])
        if max_resolution is None:
            max_resolution = 32 if self.xl else 16
        self.store = AttentionStore(max_resolution)  # the conditional pass's cross-attention, while active
        self.losses: list[tuple[int, float]] = []
        self._covers: dict[tuple[int, int, int], torch.Tensor] = {}  # (positions, latent h, w) -> [boxes, positions]
        self._rows: list[tuple[int, int, int]] | None = None

    def _build_rows(self, fused_len: int) -> None:
        self._rows = _region_rows(self.pipe, self.prompts, self.regions, self.spans, self._first_box, self.tokens,
                                 fused_len)

    # ------------------------------------------------------------------ the callback
    @contextmanager
    def attached(self, unet: Any = None) -> Iterator[RegionGuidance]:
        """Record attention in ``unet`` (the pipeline's) while inside; its processors are restored after."""
        unet = unet if unet is not None else self.pipe.unet
        original = unet.attn_processors
        unet.set_attn_processor({name: StoringProcessor(self.store, proc) if name.endswith("attn2.processor")
                                 else proc for name, proc in original.items()})
        try:
            yield self
        finally:
            unet.set_attn_processor(original)
            self.store.reset()

    def loss(self, latents: torch.Tensor, timestep: Any, prompt_embeds: torch.Tensor,
             added_cond_kwargs: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The per-image loss ``[B]`` of ``latents`` at ``timestep`` (one conditional UNet pass, with gradients;
        SDXL: ``added_cond_kwargs`` = the conditional ``text_embeds`` and ``time_ids``)."""
        pipe = self.pipe
        if self._rows is None:
            self._build_rows(prompt_embeds.shape[1])
        if not self._rows:  # no region has a token in the guided window(s): nothing to guide
            return torch.zeros(latents.shape[0], device=latents.device)
        self.store.reset()
        self.store.active = True
        try:
            pipe.unet(pipe.scheduler.scale_model_input(latents, timestep), timestep,
                      encoder_hidden_states=prompt_embeds, added_cond_kwargs=added_cond_kwargs)
        finally:
            self.store.active = False
        maps = self.store.maps
        self.store.reset()
        if not maps:
            raise RuntimeError("Region guidance recorded no cross-attention layer with at most "
                               f"{self.store.max_tokens} positions; is this an SD1.x-style UNet?")
        covers = {}
        for hw in {m.shape[1] for m in maps}:
            key = (hw, *latents.shape[-2:])
            if key not in self._covers:  # the same every guided step: built once
                grid = attention_grid(hw, *latents.shape[-2:])
                self._covers[key] = torch.stack([box_cover(box, *grid) for box in self._boxes])
            covers[hw] = self._covers[key]
        return region_loss(maps, self._rows, covers, latents.shape[0])

    def __call__(self, pipe: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        timesteps = pipe.scheduler.timesteps
        if self.scale == 0 or step >= self.steps or step + 1 >= len(timesteps):
            return {}
        latents = callback_kwargs["latents"]
        n = latents.shape[0]
        if n != len(self.prompts):
            raise ValueError(f"Region guidance was built for {len(self.prompts)} images, the pipeline sampled {n}.")
        embeds = callback_kwargs["prompt_embeds"][-n:]  # with classifier-free guidance: [negative; positive]
        added = None
        if self.xl:
            missing = [k for k in ("add_text_embeds", "add_time_ids") if k not in callback_kwargs]
            if missing:
                raise ValueError(f"SDXL region guidance needs {missing} among callback_on_step_end_tensor_inputs; "
                                 "pass guide.tensor_inputs.")
            added = {"text_embeds": callback_kwargs["add_text_embeds"][-n:],
                     "time_ids": callback_kwargs["add_time_ids"][-n:]}
        with torch.enable_grad():
            x = latents.detach().float().requires_grad_(True)
            per_image = self.loss(x.to(latents.dtype), timesteps[step + 1], embeds, added)
            self.losses.append((step, float(per_image.detach().mean())))
            if not per_image.requires_grad:
                return {}
            (grad,) = torch.autograd.grad(per_image.sum(), x)
        rms = grad.flatten(1).pow(2).mean(1).sqrt().view(-1, *([1] * (grad.ndim - 1)))
        step_dir = torch.where(rms > 0, grad / rms.clamp_min(1e-20), torch.zeros_like(grad))
        return {"latents": (x - self.scale * step_dir).detach().to(latents.dtype)}


class _MaskingProcessor:
    """Runs the layer's own processor with the region mask's bias added to its attention mask (cross-attention)."""

    def __init__(self, masker: RegionMask, inner: Any) -> None:
        self.masker, self.inner = masker, inner

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        if self.masker.active and encoder_hidden_states is not None and hidden_states.ndim == 3:
            full = self.masker.per_head(hidden_states.shape[0], hidden_states.shape[1], encoder_hidden_states.shape[1],
                                        attn.heads, attention_mask, hidden_states.dtype, hidden_states.device)
            if full is not None:
                attention_mask = full
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)


class RegionMask:
    """Masked cross-attention: each region's tokens are attended only from the positions inside its box.

    While attached and ``active``, every cross-attention layer of the UNet adds a large negative bias to the scores
    between a query position outside a region's box (no overlap of the position's cell with the box,
    :func:`box_cover`) and that region's tokens, for the conditional prompt's images (with classifier-free guidance,
    the second half of the UNet's batch); a token named by several regions is allowed in the union of their boxes. So
    the words "red circle" can only be drawn inside their box, and the pixels of another box cannot read them. Unlike
    :class:`RegionGuidance` it costs no extra UNet pass. Only the images of prompts with at least ``min_regions``
    regions (default 2) are masked: the mask keeps different objects' words apart, and one object alone has nothing to
    be kept from (on the bundled model, masking lone objects made them smaller and less often right). As a
    ``callback_on_step_end`` it switches itself off after the first ``steps`` denoising steps (``None``: all)::

        mask = RegionMask(pipe, prompts, regions)
        with mask.attached():
            pipe(prompts, callback_on_step_end=mask)
    """

    NEGATIVE = -1e4  # as diffusers' own attention masks: exp(-1e4) is 0 in every float type

    def __init__(self, pipe: Any, prompts: Sequence[str], regions: Sequence[Sequence[Region]], steps: int | None = None,
                 tokens: str = "both", num_images_per_prompt: int = 1, min_regions: int = 2) -> None:
        self.prompts, self.regions, self.spans, self._boxes, self._first_box = _per_image(prompts, regions,
                                                                                          num_images_per_prompt)
        if tokens not in GUIDED_TOKENS:
            raise ValueError(f"region mask tokens must be one of {GUIDED_TOKENS}, got {tokens!r}.")
        if steps is not None and not (isinstance(steps, int) and steps >= 0):
            raise ValueError(f"region_mask_steps must be a whole number >= 0 or None (every step), got {steps!r}.")
        if tokens in ("llm", "both") and getattr(pipe, "llm_encoder", None) is None:
            tokens = "clip" if tokens == "both" else tokens
            if tokens == "llm":
                raise ValueError("tokens='llm' masks the LLM's tokens, but this pipeline has no LLM encoder; use "
                                 "tokens='clip'.")
        if not (isinstance(min_regions, int) and min_regions >= 1):
            raise ValueError(f"min_regions must be a whole number >= 1, got {min_regions!r}.")
        self.pipe, self.steps, self.tokens, self.min_regions = pipe, steps, tokens, min_regions
        self._rows: list[tuple[int, int, int]] | None = None
        self._latent_hw: tuple[int, int] | None = None
        self._cache: dict[tuple, torch.Tensor | None] = {}
        self._per_head: dict[tuple, tuple[torch.Tensor | None, torch.Tensor]] = {}
        self.active = steps != 0

    def bias(self, batch: int, positions: int, fused_len: int, dtype: torch.dtype,
             device: torch.device) -> torch.Tensor | None:
        """The additive bias ``[batch, positions, fused_len]`` for one cross-attention layer (None: nothing masked)."""
        n = len(self.prompts)
        if batch not in (n, 2 * n):
            raise ValueError(f"The region mask was built for {n} images; the UNet got a batch of {batch} (expected "
                             f"{n}, or {2 * n} with classifier-free guidance).")
        if self._latent_hw is None:
            raise RuntimeError("RegionMask.bias needs the latents' size: use the mask inside `attached()`.")
        key = (batch, positions, fused_len, *self._latent_hw, dtype, str(device))
        if key not in self._cache:
            if self._rows is None:
                rows = _region_rows(self.pipe, self.prompts, self.regions, self.spans, self._first_box, self.tokens,
                                    fused_len)
                self._rows = [row for row in rows if len(self.regions[row[0]]) >= self.min_regions]
            if not self._rows:
                self._cache[key] = None
            else:
                grid = attention_grid(positions, *self._latent_hw)
                inside = torch.stack([box_cover(box, *grid) > 0 for box in self._boxes])  # [boxes, positions]
                allowed = torch.zeros(n, positions, fused_len, dtype=torch.bool)
                named = torch.zeros(n, fused_len, dtype=torch.bool)
                for b, t, r in self._rows:
                    allowed[b, :, t] |= inside[r]
                    named[b, t] = True
                masked = named[:, None, :] & ~allowed
                bias = torch.zeros(batch, positions, fused_len, dtype=dtype, device=device)
                bias[batch - n:] = masked.to(device).to(dtype) * self.NEGATIVE
                self._cache[key] = bias
        return self._cache[key]

    def per_head(self, batch: int, positions: int, fused_len: int, heads: int, key_mask: torch.Tensor | None,
                 dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
        """The layer's whole attention mask ``[batch * heads, positions, fused_len]``: :meth:`bias` plus the UNet's
        own key mask ``key_mask`` (diffusers': ``[B, 1, T]`` of 0 / -large, or None), repeated per head as diffusers'
        ``prepare_attention_mask`` would (so it does not repeat it again). The UNet passes the same key mask object to
        every layer of a forward pass, so this is built once per pass and resolution, not once per layer."""
        bias = self.bias(batch, positions, fused_len, dtype, device)
        if bias is None:
            return None
        key = (batch, positions, fused_len, *self._latent_hw, heads, dtype, str(device))
        held = self._per_head.get(key)
        if held is not None and held[0] is key_mask:  # the held reference keeps the identity check sound
            return held[1]
        full = bias if key_mask is None else bias + key_mask.reshape(batch, -1, fused_len).to(dtype)
        full = full.repeat_interleave(heads, dim=0)
        self._per_head[key] = (key_mask, full)
        return full

    @contextmanager
    def attached(self, unet: Any = None) -> Iterator[RegionMask]:
        """Mask the cross-attention of ``unet`` (the pipeline's) while inside; its processors are restored after."""
        unet = unet if unet is not None else self.pipe.unet
        original = unet.attn_processors

        def note_size(module: Any, args: tuple, kwargs: dict) -> None:
            sample = args[0] if args else kwargs.get("sample")
            if sample is not None:
                self._latent_hw = tuple(sample.shape[-2:])

        unet.set_attn_processor({name: _MaskingProcessor(self, proc) if name.endswith("attn2.processor") else proc
                                 for name, proc in original.items()})
        handle = unet.register_forward_pre_hook(note_size, with_kwargs=True)
        try:
            yield self
        finally:
            handle.remove()
            unet.set_attn_processor(original)
            self._per_head.clear()
            self.active = self.steps != 0

    def __call__(self, pipe: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        if self.steps is not None and step + 1 >= self.steps:
            self.active = False
        return {}


@contextmanager
def region_control(pipe: Any, prompts: Sequence[str], regions: Sequence[Sequence[Region]], call_kwargs: dict[str, Any],
                   *, scale: float = 0.05, steps: int = 10, tokens: str = "llm", mask: bool = True,
                   mask_steps: int | None = None, mask_tokens: str = "both") -> Iterator[RegionGuidance | None]:
    """Region guidance and/or masked cross-attention for one call of ``pipe`` on ``prompts``.

    Attaches a :class:`RegionMask` (when ``mask``) and a :class:`RegionGuidance` (when ``scale > 0`` and ``steps >
    0``) to the pipeline's UNet, and edits ``call_kwargs`` (the keyword arguments the pipeline will be called with) so
    that both callbacks run after each step, before the caller's own ``callback_on_step_end``. The guidance reads each
    layer's attention before the mask's bias, so it still sees where each phrase would attend unmasked. Yields the
    guidance (None without one)."""
    n_img = int(call_kwargs.get("num_images_per_prompt") or 1)
    guide = RegionGuidance(pipe, prompts, regions, scale=scale, steps=steps, tokens=tokens,
                           num_images_per_prompt=n_img)  # checks the settings and the phrases
    guide = guide if guide.scale > 0 and guide.steps > 0 else None
    masker = (RegionMask(pipe, prompts, regions, steps=mask_steps, tokens=mask_tokens, num_images_per_prompt=n_img)
              if mask else None)
    if guide is None and masker is None:
        yield None
        return
    callbacks = [c for c in (guide, masker) if c is not None]
    user = call_kwargs.pop("callback_on_step_end", None)
    inputs = list(call_kwargs.pop("callback_on_step_end_tensor_inputs", None) or ["latents"])
    inputs += list(getattr(user, "tensor_inputs", None) or [])  # diffusers' PipelineCallback objects name theirs
    inputs += guide.tensor_inputs if guide is not None else []
    call_kwargs["callback_on_step_end_tensor_inputs"] = list(dict.fromkeys(inputs))

    def chained(p: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for c in callbacks:
            out.update(c(p, step, timestep, callback_kwargs))
            callback_kwargs.update(out)
        if user is not None:
            out.update(user(p, step, timestep, callback_kwargs) or {})
        return out

    call_kwargs["callback_on_step_end"] = chained
    with masker.attached(pipe.unet) if masker is not None else _nothing():
        with guide.attached(pipe.unet) if guide is not None else _nothing():
            yield guide


@contextmanager
def _nothing() -> Iterator[None]:
    yield None
