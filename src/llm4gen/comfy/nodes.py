"""ComfyUI nodes for LLM4GEN (SD 1.x): load the LLM + CAM of an LLM4GEN pipeline folder, and encode prompts into
``CONDITIONING`` that ComfyUI's KSampler takes.

Pure torch: nothing here imports ComfyUI at import time, so the nodes are testable without it. The conditioning is
ComfyUI's list of ``[embeddings [1, T, D], {"pooled_output": pooled [1, D]}]`` pairs, with
``embeddings = concat(CLIP tokens, λ · CAM(LLM tokens, CLIP tokens))``, exactly what
:meth:`llm4gen.LLM4GenPipeline.encode_fused_prompt` gives for the same prompt and negative prompt.

The UNet and VAE come from ComfyUI's own loaders (the LLM4GEN folder is a diffusers folder, so "DiffusersLoader"
reads its fine-tuned ``unet/``, ``vae/`` and ``text_encoder/``). ComfyUI recognises only UNets of the layouts it knows
(SD 1.x here: :func:`comfy_unet_problems`). The CLIP tokens come from ComfyUI's ``CLIP`` when one is connected (its
first 77-token chunk: the window the model was trained with), else from the folder's own CLIP; a connected CLIP that
does not hold the folder's CLIP weights (:func:`comfy_clip_problems`) is refused.
"""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch

from ..clip_checkpoint import clip_key_with_prefix
from ..encoders import collate_rows, output_rows
from ..pipeline import LLM4GenPipeline
from ..utils import validate_prompts

__all__ = [
    "LLM4GenEncode",
    "LLM4GenLoader",
    "LLM4GenTextModel",
    "NODE_CLASS_MAPPINGS",
    "NODE_DISPLAY_NAME_MAPPINGS",
    "comfy_clip_problems",
    "comfy_unet_problems",
    "check_comfy_unet",
]

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


# The diffusers UNet config of Stable Diffusion 1.x: ComfyUI matches a diffusers UNet's layout (input channels, first
# width, cross-attention width, attention blocks per level) against the models it knows, then builds SD 1.5's UNet
# (widths 320-640-1280-1280, two res blocks per level, 8 heads, conv projections) and loads the weights into it.
SD1_UNET_LAYOUT: dict[str, Any] = {
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "transformer_layers_per_block": 1,
    "use_linear_projection": False,
    "class_embed_type": None,
    "addition_embed_type": None,
}


# diffusers' defaults for the keys an older config may leave out
_UNET_DEFAULTS: dict[str, Any] = {"transformer_layers_per_block": 1, "use_linear_projection": False}


def comfy_unet_problems(config: dict[str, Any]) -> list[str]:
    """How a diffusers UNet config departs from the SD 1.x layout ComfyUI loads (empty: ComfyUI can load it)."""
    problems = []
    for key, want in SD1_UNET_LAYOUT.items():
        got = config.get(key, _UNET_DEFAULTS.get(key))
        if isinstance(got, (list, tuple)):
            got = list(got)
            if key in ("transformer_layers_per_block", "attention_head_dim", "cross_attention_dim") and got:
                got = got[0] if all(g == got[0] for g in got) else got
        if got != want:
            problems.append(f"{key} {got!r} (SD 1.x: {want!r})")
    return problems


def comfy_clip_problems(comfy_weights: dict[str, torch.Tensor], text_encoder: torch.nn.Module) -> list[str]:
    """The weights of ``text_encoder`` (a transformers CLIP) that a ComfyUI CLIP lacks or holds different values of.

    ``comfy_weights`` are named as ComfyUI names them inside its text-encoder wrapper: ``text_model.…`` (the part of
    the key after ``transformer.``). Values are compared at half-precision tolerance (ComfyUI may hold fp16).
    """
    problems = []
    for key, param in text_encoder.named_parameters():
        name = clip_key_with_prefix(key)
        theirs = comfy_weights.get(name)
        if theirs is None:
            problems.append(f"{name} missing")
        elif theirs.shape != param.shape:
            problems.append(f"{name} has shape {tuple(theirs.shape)}, not {tuple(param.shape)}")
        else:
            theirs = theirs.detach().to(device=param.device, dtype=torch.float32)
            if not torch.isfinite(theirs).all() or not torch.allclose(theirs, param.detach().float(), rtol=1e-2,
                                                                      atol=1e-3):
                problems.append(f"{name} differs")
    return problems


def check_comfy_unet(path: str | os.PathLike) -> None:
    """Refuse a local LLM4GEN folder whose UNet ComfyUI cannot load (a hub id is not checked)."""
    import json

    folder = os.path.expanduser(os.fspath(path).strip())
    config_path = os.path.join(folder, "unet", "config.json")
    index_path = os.path.join(folder, "model_index.json")
    if not folder or not os.path.isfile(config_path) or not os.path.isfile(index_path):
        return
    with open(index_path, encoding="utf-8") as f:
        if "text_encoder_2" in json.load(f):
            return  # SDXL: LLM4GenTextModel.from_pretrained refuses it with its own message
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    problems = comfy_unet_problems(config)
    if config.get("_class_name", "UNet2DConditionModel") != "UNet2DConditionModel":
        problems.insert(0, f"class {config['_class_name']} (SD 1.x: UNet2DConditionModel)")
    if problems:
        raise ValueError(
            f"ComfyUI cannot load the UNet of {os.fspath(path)!r}: it is not an SD 1.x UNet ({'; '.join(problems)}), "
            "so ComfyUI's DiffusersLoader stops with 'Could not detect model type'. These nodes need an SD 1.x-shaped "
            "LLM4GEN folder, such as the authors' SD1.5 release saved as an llm4gen folder "
            "(`llm4gen convert-official OUT`). The bundled ShapesWorld model draws with "
            "`llm4gen generate` or the Python pipeline, not in ComfyUI."
        )


def _comfy_clip_weights(clip: Any) -> dict[str, torch.Tensor] | None:
    """The weights of a ComfyUI ``CLIP`` object named from ``text_model.`` on (its keys read
    ``clip_l.transformer.text_model.…``), or None for an object that does not expose ComfyUI's ``cond_stage_model``."""
    model = getattr(clip, "cond_stage_model", None)
    if not isinstance(model, torch.nn.Module):
        return None
    weights = {}
    for key, value in model.state_dict().items():
        _, found, name = key.partition("transformer.")
        if found:
            weights[name] = value
    return weights


@dataclass
class LLM4GenTextModel:
    """What the ``LLM4GEN`` socket carries: the folder's CLIP tokenizer and text encoder, LLM encoder and CAM."""

    tokenizer: Any
    text_encoder: Any
    llm_encoder: Any
    adapter: Any
    use_llm_attention_mask: bool
    ref: str = ""
    # ComfyUI CLIP models found to hold the folder's CLIP weights (checked once each)
    _checked_clips: weakref.WeakSet = field(default_factory=weakref.WeakSet, repr=False)

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

    def check_comfy_clip(self, clip: Any) -> None:
        """Refuse a ComfyUI ``CLIP`` that does not hold this folder's CLIP weights (the CAM was trained on the
        folder's CLIP tokens; a CLIP loaded with missing weights encodes NaNs and KSampler returns black)."""
        if getattr(clip, "cond_stage_model", None) in self._checked_clips:
            return
        weights = _comfy_clip_weights(clip)
        if weights is None:
            return
        problems = comfy_clip_problems(weights, self.text_encoder)
        if problems:
            total = sum(1 for _ in self.text_encoder.parameters())
            folder = os.path.join(self.ref, "text_encoder") if self.ref else "FOLDER/text_encoder"
            raise ValueError(
                f"The CLIP connected to LLM4GEN Text Encode does not hold the CLIP weights of the LLM4GEN folder "
                f"{self.ref!r}: {len(problems)} of {total} weights missing or different ({', '.join(problems[:3])}"
                f"{', ...' if len(problems) > 3 else ''}). ComfyUI's CLIP loader reads weight names that start with "
                "'text_model.'; a text_encoder/ written by transformers 5 without llm4gen's fix has them at the root, "
                "so ComfyUI leaves every weight uninitialised (NaN conditioning, black images). Fix: rewrite it once "
                f"with `python -c \"from llm4gen.clip_checkpoint import write_prefixed_clip; "
                f"write_prefixed_clip('{folder}')\"` (or re-save the pipeline with this llm4gen) and reload it in "
                "ComfyUI, or leave the node's clip input unconnected to use the folder's own CLIP."
            )
        self._checked_clips.add(clip.cond_stage_model)

    @torch.no_grad()
    def comfy_clip_embeddings(self, clip: Any, text: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """CLIP tokens from a ComfyUI ``CLIP`` object: its first 77-token chunk (the window LLM4GEN was trained
        with; the LLM reads the whole prompt) and its pooled output."""
        self.check_comfy_clip(clip)
        tokens = clip.tokenize(text)
        cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
        window = int(getattr(self.tokenizer, "model_max_length", 77))
        cond = cond[:, :window]
        if cond.shape[-1] != self.adapter.config.clip_dim:
            raise ValueError(
                f"The connected CLIP gives {cond.shape[-1]}-d tokens but this LLM4GEN adapter expects "
                f"{self.adapter.config.clip_dim}-d ones: connect the CLIP of the matching base model (SD 1.x: 768)."
            )
        if not torch.isfinite(cond).all():
            raise ValueError(
                "The CLIP connected to LLM4GEN Text Encode returned NaN or infinite tokens (a CLIP loaded with missing "
                "weights does): connect the CLIP of this LLM4GEN folder, or leave the clip input unconnected."
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
                   "Load the same folder's UNet and VAE with ComfyUI's DiffusersLoader (advanced/loaders/deprecated); "
                   "the folder must be SD 1.x-shaped for ComfyUI to load its UNet.")

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
        check_comfy_unet(model_path)
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
