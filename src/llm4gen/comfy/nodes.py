"""ComfyUI nodes for LLM4GEN (SD 1.x): load the LLM + CAM of an LLM4GEN pipeline folder, and encode prompts into
``CONDITIONING`` that ComfyUI's KSampler takes.

Pure torch: nothing here imports ComfyUI at import time, so the nodes are testable without it. The conditioning is
ComfyUI's list of ``[embeddings [1, T, D], {"pooled_output": pooled [1, D]}]`` pairs, with
``embeddings = concat(CLIP tokens, λ · CAM(LLM tokens, CLIP tokens))``, exactly what
:meth:`llm4gen.LLM4GenPipeline.encode_fused_prompt` gives for the same prompt and negative prompt.

The UNet and VAE come from ComfyUI's own loaders (the LLM4GEN folder is a diffusers folder, so "DiffusersLoader"
reads its fine-tuned ``unet/``, ``vae/`` and ``text_encoder/``). The CLIP tokens come from ComfyUI's ``CLIP`` when one
is connected (its first 77-token chunk: the window the model was trained with), else from the folder's own CLIP.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from ..encoders import collate_rows, output_rows
from ..pipeline import LLM4GenPipeline
from ..utils import validate_prompts

__all__ = ["LLM4GenEncode", "LLM4GenLoader", "LLM4GenTextModel", "NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]

CATEGORY = "llm4gen"
DEVICES = ["auto", "cpu", "cuda", "mps"]
DTYPES = ["auto", "float32", "float16", "bfloat16"]


def _pick_device(device: str) -> torch.device:
    if device != "auto":
        return torch.device(device)
    try:  # inside ComfyUI: the device it manages
        import comfy.model_management as mm

        return torch.device(mm.get_torch_device())
    except ImportError:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


@dataclass
class LLM4GenTextModel:
    """What the ``LLM4GEN`` socket carries: the folder's CLIP tokenizer and text encoder, LLM encoder and CAM."""

    tokenizer: Any
    text_encoder: Any
    llm_encoder: Any
    adapter: Any
    use_llm_attention_mask: bool
    ref: str = ""

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        device: str = "auto",
        dtype: str = "auto",
        trust_remote_code: bool = False,
    ) -> LLM4GenTextModel:
        """Load the text side of an LLM4GEN pipeline folder or hub id (its UNet and VAE are not loaded)."""
        import json

        ref = os.path.expanduser(os.fspath(path).strip())
        if not ref:
            raise ValueError("model_path is empty: give an LLM4GEN pipeline folder (with model_index.json) or hub id.")
        index = os.path.join(ref, "model_index.json")
        if os.path.isfile(index):
            with open(index, encoding="utf-8") as f:
                info = json.load(f)
            if "text_encoder_2" in info:
                raise NotImplementedError(
                    f"{ref!r} is an SDXL LLM4GEN pipeline; these ComfyUI nodes support SD 1.x pipelines for now. "
                    "Use LLM4GenXLPipeline from Python for SDXL."
                )
        elif os.path.isabs(ref) or ref.startswith(".") or ref.count("/") > 1:
            raise FileNotFoundError(f"{ref!r} is not an LLM4GEN pipeline folder (no model_index.json there).")
        dev = _pick_device(device)
        kwargs: dict[str, Any] = {"trust_remote_code": True} if trust_remote_code else {}
        pipe = LLM4GenPipeline.from_pretrained(ref, unet=None, vae=None, safety_checker=None, **kwargs)
        return cls.from_pipeline(pipe, device=dev, dtype=_pick_dtype(dtype, dev), ref=ref)

    @classmethod
    def from_pipeline(
        cls, pipe: Any, device: torch.device | str | None = None, dtype: torch.dtype | None = None, ref: str = ""
    ) -> LLM4GenTextModel:
        """Take the text side of an already loaded :class:`~llm4gen.LLM4GenPipeline` (shares its modules)."""
        if device is not None:
            pipe.llm_encoder.to(device=device)  # the LLM keeps the dtype it was loaded with
        if device is not None or dtype is not None:
            pipe.text_encoder.to(device=device, dtype=dtype)
            pipe.adapter.to(device=device, dtype=dtype)
        return cls(pipe.tokenizer, pipe.text_encoder, pipe.llm_encoder, pipe.adapter,
                   bool(pipe.config.use_llm_attention_mask), ref or str(pipe.name_or_path or ""))

    @property
    def device(self) -> torch.device:
        return next(self.adapter.parameters()).device

    # ------------------------------------------------------------------ CLIP
    @torch.no_grad()
    def clip_embeddings(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """CLIP token embeddings ``[B, 77, D]`` and pooled ``[B, D]`` as diffusers' SD pipeline computes them."""
        tok = self.tokenizer
        batch = tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                    return_tensors="pt")
        te = self.text_encoder
        device = next(te.parameters()).device
        mask = batch.attention_mask.to(device) if getattr(te.config, "use_attention_mask", False) else None
        out = te(batch.input_ids.to(device), attention_mask=mask)
        return out[0].to(te.dtype), out[1]

    @torch.no_grad()
    def comfy_clip_embeddings(self, clip: Any, text: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """CLIP tokens from a ComfyUI ``CLIP`` object: its first 77-token chunk (the window LLM4GEN was trained
        with; the LLM reads the whole prompt) and its pooled output."""
        tokens = clip.tokenize(text)
        cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
        window = int(getattr(self.tokenizer, "model_max_length", 77))
        cond = cond[:, :window]
        if cond.shape[-1] != self.adapter.config.clip_dim:
            raise ValueError(
                f"The connected CLIP gives {cond.shape[-1]}-d tokens but this LLM4GEN adapter expects "
                f"{self.adapter.config.clip_dim}-d ones: connect the CLIP of the matching base model (SD 1.x: 768)."
            )
        return cond, pooled

    # ------------------------------------------------------------------ LLM + CAM
    @torch.no_grad()
    def fuse(self, clip: torch.Tensor, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``concat(clip, λ · CAM(LLM(texts), clip))`` and its mask; the texts are encoded by the LLM in one batch
        and zero-padded to one length, as the pipeline does for a prompt and its negative."""
        out = self.llm_encoder(texts)
        rows = output_rows(out, trim=self.llm_encoder.config.padding == "longest")
        dtype = self.adapter.dtype
        feats, mask = collate_rows(rows, dtype=dtype, device=self.device)
        fused, fused_mask = self.adapter(clip.to(device=self.device, dtype=dtype), feats, mask)
        return fused.to(clip.dtype), fused_mask

    def encode(self, text: str, negative_text: str = "", clip: Any = None) -> tuple[list, list]:
        """Positive and negative ``CONDITIONING`` for ComfyUI.

        With ``use_llm_attention_mask`` (models trained with a masked UNet) the LLM padding is dropped from each
        conditioning instead of masked, which is the same for cross-attention: ComfyUI's KSampler passes no mask.
        """
        validate_prompts(text, "text")
        texts = [text, negative_text or ""]
        if clip is None:
            clip_embeds, pooled = self.clip_embeddings(texts)
            pooled_rows = [pooled[0:1], pooled[1:2]]
        else:
            pairs = [self.comfy_clip_embeddings(clip, t) for t in texts]
            width = max(p[0].shape[1] for p in pairs)
            if any(p[0].shape[1] != width for p in pairs):
                raise ValueError("The connected CLIP returned different token counts for the prompt and its negative.")
            clip_embeds = torch.cat([p[0] for p in pairs]).to(self.device)
            pooled_rows = [p[1] for p in pairs]
        fused, mask = self.fuse(clip_embeds, texts)
        conds = []
        for i in range(2):
            row = fused[i : i + 1]
            if self.use_llm_attention_mask and mask is not None:
                row = row[:, mask[i].bool()]
            extra = {} if pooled_rows[i] is None else {"pooled_output": pooled_rows[i].detach().float().cpu()}
            conds.append([[row.detach().float().cpu(), extra]])
        return conds[0], conds[1]


class LLM4GenLoader:
    """Load the LLM and the Cross-Adapter (and the folder's CLIP) of an LLM4GEN pipeline folder or hub id."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ("LLM4GEN",)
    RETURN_NAMES = ("llm4gen",)
    FUNCTION = "load"
    DESCRIPTION = ("Loads the text side of an LLM4GEN pipeline: its language model, Cross-Adapter (CAM) and CLIP. "
                   "Load the same folder's UNet and VAE with ComfyUI's DiffusersLoader.")

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, dict[str, tuple]]:
        return {
            "required": {
                "model_path": ("STRING", {"default": "models/diffusers/llm4gen", "multiline": False,
                                          "tooltip": "An LLM4GEN pipeline folder (with model_index.json) or hub id."}),
                "device": (DEVICES, {"default": "auto"}),
                "dtype": (DTYPES, {"default": "auto"}),
            },
            "optional": {
                "trust_remote_code": ("BOOLEAN", {"default": False,
                                                  "tooltip": "Allow the LLM's own Python code (e.g. RankGen-T5)."}),
            },
        }

    def load(self, model_path: str, device: str = "auto", dtype: str = "auto",
             trust_remote_code: bool = False) -> tuple[LLM4GenTextModel]:
        return (LLM4GenTextModel.from_pretrained(model_path, device, dtype, trust_remote_code),)


class LLM4GenEncode:
    """Encode a prompt and its negative with CLIP + LLM -> CAM into KSampler's positive and negative."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("positive", "negative")
    FUNCTION = "encode"
    DESCRIPTION = ("CLIP + LLM -> Cross-Adapter conditioning for an LLM4GEN UNet. Long prompts are welcome: CLIP reads "
                   "the first 77 tokens, the LLM reads the whole prompt.")

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, dict[str, tuple]]:
        return {
            "required": {
                "llm4gen": ("LLM4GEN",),
                "text": ("STRING", {"multiline": True, "dynamicPrompts": True}),
                "negative_text": ("STRING", {"multiline": True, "dynamicPrompts": True, "default": ""}),
            },
            "optional": {
                "clip": ("CLIP", {"tooltip": "ComfyUI's CLIP for the CLIP tokens; default: the LLM4GEN folder's."}),
            },
        }

    def encode(self, llm4gen: LLM4GenTextModel, text: str, negative_text: str = "", clip: Any = None) -> tuple:
        return llm4gen.encode(text, negative_text, clip)


NODE_CLASS_MAPPINGS = {"LLM4GenLoader": LLM4GenLoader, "LLM4GenEncode": LLM4GenEncode}
NODE_DISPLAY_NAME_MAPPINGS = {"LLM4GenLoader": "Load LLM4GEN (LLM + CAM)", "LLM4GenEncode": "LLM4GEN Text Encode"}
