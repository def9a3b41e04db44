"""LLM4GEN pipelines: Stable Diffusion 1.x (`LLM4GenPipeline`) and SDXL (`LLM4GenXLPipeline`).

Both are diffusers pipelines with two more components, ``llm_encoder`` (an :class:`~llm4gen.LLMEncoder`) and
``adapter`` (a :class:`~llm4gen.CrossAdapter`). They only replace ``encode_prompt``:

    prompt -> CLIP text encoder(s) (diffusers' own encode_prompt: LoRA scale, clip_skip, textual inversion)
           -> LLM encoder (per-token features + mask)
           -> CAM: concat(clip, λ · cam(llm, clip))  =  [B, 77 + T_llm, D]
           -> the base pipeline's denoising loop, unchanged

so schedulers, ``enable_model_cpu_offload``, LoRA loading, callbacks and ``output_type`` work as in diffusers.
Positive and negative prompts are encoded by the LLM in one batch, so their embeddings always have equal length.

With ``use_llm_attention_mask=True`` (a pipeline config value, for UNets trained with it) the LLM padding mask is
passed to the UNet as ``encoder_attention_mask``, so padded LLM tokens have no effect; the authors' SD1.5 weights were
trained without it (fixed 256 LLM tokens), which is the default.
"""

from __future__ import annotations

import inspect
import json
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from diffusers.schedulers import KarrasDiffusionSchedulers
from transformers import (
    CLIPImageProcessor,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionModelWithProjection,
)

from .adapter import CrossAdapter
from .clip_checkpoint import write_prefixed_clip
from .encoders import LLMEncoder, collate_rows, output_rows
from .feature_cache import PromptCache, encoder_namespace
from .layout import PLACE_EXAMPLES, plan_regions
from .regions import Region, region_control
from .sampling import SamplingDefaults
from .unet import load_unet
from .utils import check_generation_args, describe_load_error, validate_prompts

__all__ = ["FusedPrompt", "LLM4GenPipeline", "LLM4GenXLPipeline"]

_LLM4GEN_COMPONENTS = ("llm_encoder", "adapter")
_CLIP_TOKENS = 77  # CLIP's window, when the pipeline has no tokenizer to ask


@dataclass
class FusedPrompt:
    """Fused prompt embeddings as the UNet sees them (one row per prompt, no repetition per image)."""

    prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor | None
    prompt_attention_mask: torch.Tensor
    negative_prompt_attention_mask: torch.Tensor | None
    pooled_prompt_embeds: torch.Tensor | None = None  # SDXL only
    negative_pooled_prompt_embeds: torch.Tensor | None = None  # SDXL only


def _repeat(x: torch.Tensor | None, n: int) -> torch.Tensor | None:
    """Repeat each row n times, in diffusers' order (row 0 n times, then row 1, ...)."""
    return x if x is None or n == 1 else x.repeat_interleave(n, dim=0)


class _LLM4GenMixin:
    """What both pipelines share: checks, the LLM + CAM step, the UNet mask hook, loading and saving."""

    _llm4gen_masks: tuple[torch.Tensor, torch.Tensor | None] | None = None
    # what encoding a prompt from text needs (the rest of the pipeline works without them on fused prompt_embeds)
    _prompt_components: tuple[str, ...] = ()

    # ------------------------------------------------------------------ construction checks
    def _check_llm4gen_components(self, clip_width: int | None) -> None:
        """Check the parts that are there; ``llm_encoder`` and ``adapter`` may be None (a pipeline fed precomputed
        fused ``prompt_embeds`` needs neither): :meth:`_require` then names them where they are needed."""
        llm_encoder, adapter, unet = self.llm_encoder, self.adapter, self.unet
        if llm_encoder is not None and not isinstance(llm_encoder, LLMEncoder):
            raise ValueError(
                f"{type(self).__name__} needs `llm_encoder` (an llm4gen.LLMEncoder), got {type(llm_encoder).__name__}. "
                "Pass llm_encoder=LLMEncoder.from_pretrained('<LLM id or path>')."
            )
        if adapter is not None and not isinstance(adapter, CrossAdapter):
            raise ValueError(
                f"{type(self).__name__} needs `adapter` (an llm4gen.CrossAdapter), got {type(adapter).__name__}. "
                "Pass adapter=CrossAdapter.from_pretrained('<adapter folder>') or CrossAdapter.from_official(path)."
            )
        if adapter is None:
            return
        cfg = adapter.config
        if llm_encoder is not None and llm_encoder.hidden_size != cfg.llm_dim:
            raise ValueError(
                f"The LLM encoder outputs {llm_encoder.hidden_size}-d features but the adapter expects llm_dim="
                f"{cfg.llm_dim}: this adapter was trained for another LLM. Use the matching LLM or adapter."
            )
        if clip_width is not None and clip_width != cfg.clip_dim:
            raise ValueError(
                f"The CLIP text encoder(s) give {clip_width}-d embeddings but the adapter expects clip_dim="
                f"{cfg.clip_dim}: this adapter was trained for another base model."
            )
        if unet is not None and unet.config.cross_attention_dim != cfg.clip_dim:
            raise ValueError(
                f"The UNet's cross_attention_dim is {unet.config.cross_attention_dim} but the adapter outputs "
                f"{cfg.clip_dim}-d tokens: the UNet and the adapter belong to different base models."
            )

    def _require(self, names: Sequence[str], purpose: str) -> None:
        """Raise, naming what is missing, when a component needed for ``purpose`` was built as None."""
        missing = [name for name in names if getattr(self, name, None) is None]
        if missing:
            raise ValueError(
                f"{type(self).__name__} was built without {', '.join(missing)}, which {purpose} needs. Pass "
                f"{'/'.join(missing)} when building or loading the pipeline (llm_encoder=LLMEncoder.from_pretrained"
                "(...), adapter=CrossAdapter.from_pretrained(...)), or pass precomputed fused `prompt_embeds` (and "
                "`negative_prompt_embeds`) from a complete pipeline's encode_fused_prompt()."
            )

    # ------------------------------------------------------------------ the LLM + CAM step
    def _prompt_lists(self, prompt: Any, negative_prompt: Any) -> tuple[list[str], list[str]]:
        prompts = validate_prompts(prompt, "prompt")
        if negative_prompt is None:
            negatives = [""] * len(prompts)
        elif isinstance(negative_prompt, str):
            negatives = [negative_prompt] * len(prompts)
        else:
            negatives = validate_prompts(negative_prompt, "negative_prompt", allow_empty=True)
            if len(negatives) != len(prompts):
                raise ValueError(
                    f"Got {len(prompts)} prompt(s) but {len(negatives)} negative prompt(s): pass one negative prompt "
                    "per prompt, or a single string for all."
                )
        return prompts, negatives

    def _llm_rows(self, texts: list[str]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-prompt LLM features and masks, as the encoder gives them for each prompt alone: trimmed to the real
        tokens with ``padding="longest"``, full length with ``"max_length"``. Served from the prompt cache when on."""
        cache = getattr(self, "_prompt_cache", None)
        rows: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(texts)
        namespace = ""
        if cache is not None:
            namespace = encoder_namespace(self.llm_encoder)
            rows = [cache.get(namespace, t) for t in texts]
        todo = [i for i, r in enumerate(rows) if r is None]
        if todo:
            with torch.no_grad():
                out = self.llm_encoder([texts[i] for i in todo])
            for i, row in zip(todo, output_rows(out, trim=self.llm_encoder.config.padding == "longest")):
                rows[i] = row
                if cache is not None:
                    cache.put(namespace, texts[i], *row)
        return rows  # type: ignore[return-value]

    def _fuse(
        self,
        clip_pos: torch.Tensor,
        clip_neg: torch.Tensor | None,
        prompts: list[str],
        negatives: list[str],
        llm_length: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
        """LLM features of the positive (and negative) prompts, zero-padded to one length (``llm_length`` when
        given, the length of the given fused embeddings that these must match), fused with CLIP's."""
        texts = prompts + (negatives if clip_neg is not None else [])
        rows = self._llm_rows(texts)
        adapter_dtype = self.adapter.dtype
        feats, mask = collate_rows(rows, dtype=adapter_dtype, device=clip_pos.device)
        if llm_length is not None:
            if feats.shape[1] > llm_length:
                raise ValueError(
                    f"The given prompt_embeds hold {llm_length} LLM tokens, but this pipeline's LLM encodes the empty "
                    f"negative prompt to {feats.shape[1]}: they come from another LLM setting. Pass "
                    "negative_prompt_embeds too, or encode both with this pipeline's encode_fused_prompt()."
                )
            feats = F.pad(feats, (0, 0, 0, llm_length - feats.shape[1]))
            mask = F.pad(mask, (0, llm_length - mask.shape[1]))
        b = len(prompts)
        out_dtype = clip_pos.dtype
        with torch.no_grad():
            pos, pos_mask = self.adapter(clip_pos.to(adapter_dtype), feats[:b], mask[:b])
            neg = neg_mask = None
            if clip_neg is not None:
                neg, neg_mask = self.adapter(clip_neg.to(adapter_dtype), feats[b:], mask[b:])
        return pos.to(out_dtype), None if neg is None else neg.to(out_dtype), pos_mask, neg_mask

    def set_adapter_scale(self, scale: float) -> None:
        """Set the CAM's balance factor λ (how strongly the LLM tokens enter the UNet's cross-attention) for the
        following calls, as diffusers' ``set_ip_adapter_scale``; 1.0 is the trained value, 0 leaves the UNet only
        CLIP's tokens (plus zeros in the LLM slots). Stored in ``adapter.config``, so ``save_pretrained`` keeps it."""
        self._require(["adapter"], "set_adapter_scale")
        self.adapter.set_scale(scale)

    def enable_prompt_cache(self, max_entries: int = 256, cache_dir: str | os.PathLike | None = None) -> None:
        """Keep the LLM features of the last ``max_entries`` prompts (and all of them on disk in ``cache_dir``), so
        repeated prompts and negative prompts skip the LLM. Keys include the LLM's weights and settings."""
        self._prompt_cache = PromptCache(max_entries, cache_dir)

    def disable_prompt_cache(self) -> None:
        self._prompt_cache = None

    @property
    def prompt_cache(self):
        """The active :class:`~llm4gen.feature_cache.PromptCache`, or None."""
        return getattr(self, "_prompt_cache", None)

    def encode_llm_prompt(self, prompt: str | list[str]):
        """The LLM encoder's raw output (features + mask) for ``prompt``; no CLIP, no adapter."""
        self._require(["llm_encoder"], "encode_llm_prompt")
        return self.llm_encoder.encode(prompt)

    def _encode_fused(self, prompt, negative_prompt, device, do_classifier_free_guidance, clip_skip):
        raise NotImplementedError

    def _check_fused_embeds(self, prompt_embeds: torch.Tensor, negative_prompt_embeds: torch.Tensor | None) -> int:
        """Given ``prompt_embeds`` must be fused ones: CLIP's window, then the LLM's tokens, at the CAM's width.
        Returns the number of LLM tokens in them."""
        tokenizer = getattr(self, "tokenizer", None) or getattr(self, "tokenizer_2", None)
        clip_tokens = int(tokenizer.model_max_length) if tokenizer is not None else _CLIP_TOKENS
        if prompt_embeds.ndim != 3:
            raise ValueError(f"prompt_embeds must be [batch, tokens, dim], got shape {tuple(prompt_embeds.shape)}.")
        length = int(prompt_embeds.shape[1])
        llm = self.llm_encoder
        fixed = llm is not None and llm.config.padding == "max_length"
        if length <= clip_tokens or (llm is not None and length - clip_tokens > llm.max_length) or (
            fixed and length - clip_tokens != llm.max_length
        ):
            want = f"{clip_tokens} + {llm.max_length}" if fixed else f"{clip_tokens} + 1 to {llm.max_length}"
            want = want if llm is not None else f"more than {clip_tokens}"
            raise ValueError(
                f"prompt_embeds has {length} tokens, but {type(self).__name__}'s UNet takes fused embeddings of {want} "
                f"tokens (CLIP's {clip_tokens}, then the LLM's). Raw CLIP embeddings lack the LLM tokens: compute "
                "fused ones with pipe.encode_fused_prompt(prompt)."
            )
        adapter, unet = self.adapter, self.unet
        width = adapter.config.clip_dim if adapter is not None else unet.config.cross_attention_dim if unet else None
        if width is not None and prompt_embeds.shape[-1] != width:
            raise ValueError(f"prompt_embeds are {prompt_embeds.shape[-1]}-d but this pipeline's are {width}-d.")
        if negative_prompt_embeds is not None and negative_prompt_embeds.shape != prompt_embeds.shape:
            raise ValueError(
                f"negative_prompt_embeds {tuple(negative_prompt_embeds.shape)} must have the shape of prompt_embeds "
                f"{tuple(prompt_embeds.shape)}; encode_fused_prompt(prompt, negative_prompt) returns both."
            )
        return length - clip_tokens

    def encode_fused_prompt(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        device: torch.device | str | None = None,
        do_classifier_free_guidance: bool = True,
        clip_skip: int | None = None,
    ) -> FusedPrompt:
        """Fused embeddings and masks (SDXL: and pooled embeddings) for ``prompt`` and its negative, one row per
        prompt; pass them back as ``prompt_embeds=`` etc. to reuse them across calls or seeds."""
        device = torch.device(device) if device is not None else self._execution_device
        pos, neg, pooled, neg_pooled = self._encode_fused(
            prompt, negative_prompt, device, do_classifier_free_guidance, clip_skip
        )
        pos_mask, neg_mask = self._llm4gen_masks
        self._llm4gen_masks = None
        return FusedPrompt(pos, neg, pos_mask, neg_mask, pooled, neg_pooled)

    @torch.no_grad()
    def _generate(
        self,
        call_kwargs: dict[str, Any],
        *,
        prompt_attention_mask: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
        regions: Any = None,
        region_guidance_scale: float = 0.05,
        region_guidance_steps: int = 10,
        region_tokens: str = "llm",
        region_mask: bool = True,
        region_mask_steps: int | None = None,
        region_mask_tokens: str = "both",
    ):
        """Generate exactly like the base diffusers pipeline's ``__call__``: all its arguments, in its order and with
        its defaults, plus the keyword-only ones below (``inspect.signature(pipe)`` shows them all).

        ``prompt_attention_mask`` / ``negative_prompt_attention_mask`` go with precomputed fused ``prompt_embeds``
        (see :meth:`encode_fused_prompt`); they are used when the pipeline's ``use_llm_attention_mask`` is on.

        ``regions`` (a list of :class:`~llm4gen.regions.Region`, words + box, for one prompt, or one list per prompt)
        steer where those words are drawn by region guidance (:mod:`llm4gen.regions`): after each of the first
        ``region_guidance_steps`` steps the latents move by an RMS of ``region_guidance_scale`` to pull the phrase's
        attention (``region_tokens``: ``"llm"``, ``"clip"`` or ``"both"``) into its box. ``regions="auto"`` plans
        the boxes from each prompt's own place words (:func:`llm4gen.layout.plan_regions`; a prompt that places
        nothing is sampled unguided, with a warning). ``region_mask`` (default True) also masks the cross-attention
        of prompts with two regions or more (:class:`~llm4gen.regions.RegionMask`): each phrase's tokens
        (``region_mask_tokens``) are read only by the positions inside its box, during the first ``region_mask_steps``
        steps (None: all). It costs no extra UNet pass: ``region_guidance_scale=0`` leaves the mask alone, the fast
        way to place things; ``region_mask=False`` the guidance alone.
        """
        prompt, kwargs = call_kwargs.get("prompt"), call_kwargs
        if prompt is None and kwargs.get("prompt_embeds") is None:
            raise ValueError("Pass a `prompt` (a string or a list of strings) or precomputed `prompt_embeds`.")
        if prompt is not None:
            validate_prompts(prompt, "prompt")
        kwargs = self._check_sampling_args(kwargs)
        if isinstance(regions, str) and prompt is not None:
            regions = _planned_regions([prompt] if isinstance(prompt, str) else list(prompt), regions)
            regions = regions if any(regions) else None
        with self._unet_mask_hook(prompt_attention_mask, negative_prompt_attention_mask):
            if not regions:
                return super().__call__(**kwargs)

            prompts, per_prompt = self._regions_per_prompt(prompt, regions)
            with region_control(self, prompts, per_prompt, kwargs, scale=region_guidance_scale,
                                steps=region_guidance_steps, tokens=region_tokens, mask=region_mask,
                                mask_steps=region_mask_steps, mask_tokens=region_mask_tokens):
                return super().__call__(**kwargs)

    def _check_sampling_args(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Check size, steps, guidance and image count (:func:`llm4gen.utils.check_generation_args`) of the call's
        arguments (``kwargs``, bound by name) before any work, and pass a missing height or width as the model's
        default when only the other is given (diffusers would drop the given one)."""
        sample = self.unet.config.sample_size
        rows, cols = (sample, sample) if isinstance(sample, int) else tuple(sample)
        factor = int(self.vae_scale_factor)
        height, width = check_generation_args(
            kwargs.get("height"), kwargs.get("width"), kwargs.get("num_inference_steps"), kwargs.get("guidance_scale"),
            kwargs.get("num_images_per_prompt"), vae_scale_factor=factor, default_size=(rows * factor, cols * factor))
        kwargs = dict(kwargs)
        for key, value in (("height", height), ("width", width)):
            if value is not None:
                kwargs[key] = value
        return kwargs

    @staticmethod
    def _regions_per_prompt(prompt: Any, regions: Any) -> tuple[list[str], list[list[Any]]]:
        """The prompts as a list and one list of Region per prompt, from the forms ``regions=`` accepts."""
        if prompt is None:
            raise ValueError("regions= needs the prompt text to find each region's words; pass `prompt`, not only "
                             "`prompt_embeds`.")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        regions = [regions] if isinstance(regions, Region) else list(regions)
        if all(isinstance(r, Region) for r in regions):
            if len(prompts) != 1:
                raise ValueError(f"regions: with {len(prompts)} prompts give one list of Region per prompt.")
            return prompts, [regions]
        per_prompt = [list(rs) if isinstance(rs, (list, tuple)) else rs for rs in regions]
        if len(per_prompt) != len(prompts) or not all(
                isinstance(rs, list) and all(isinstance(r, Region) for r in rs) for rs in per_prompt):
            raise ValueError(f"regions must be a list of Region (one prompt) or one such list per prompt "
                             f"({len(prompts)} prompts, {len(per_prompt)} entries given).")
        return prompts, per_prompt

    # ------------------------------------------------------------------ the UNet's attention mask
    @contextmanager
    def _unet_mask_hook(self, prompt_mask: Any, negative_mask: Any) -> Iterator[None]:
        self._llm4gen_masks = None
        self._given_masks = (prompt_mask, negative_mask)
        handle = None
        if self.config.use_llm_attention_mask and self.unet is not None:
            handle = self.unet.register_forward_pre_hook(self._inject_mask, with_kwargs=True)
        try:
            yield
        finally:
            if handle is not None:
                handle.remove()
            self._llm4gen_masks = None
            self._given_masks = (None, None)

    def _inject_mask(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        if kwargs.get("encoder_attention_mask") is not None or self._llm4gen_masks is None:
            return None
        ehs = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
        if ehs is None:
            return None
        pos, neg = self._llm4gen_masks
        candidates = [pos] if neg is None else [torch.cat([neg, pos]), pos]
        for m in candidates:
            if tuple(m.shape) == tuple(ehs.shape[:2]):
                kwargs["encoder_attention_mask"] = m.to(ehs.device)
                return args, kwargs
        raise RuntimeError(
            f"LLM4GEN could not match its attention mask(s) {[tuple(m.shape) for m in candidates]} to the UNet's "
            f"encoder_hidden_states {tuple(ehs.shape)}."
        )

    def _store_masks(self, pos_mask: Any, neg_mask: Any, n: int) -> None:
        given_pos, given_neg = getattr(self, "_given_masks", (None, None))
        pos_mask = given_pos if pos_mask is None else pos_mask
        neg_mask = given_neg if neg_mask is None else neg_mask
        if pos_mask is None:
            self._llm4gen_masks = None
            return
        self._llm4gen_masks = (_repeat(pos_mask, n), _repeat(neg_mask, n))

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any):
        """Load a saved LLM4GEN pipeline folder or hub id, or a base SD/SDXL one with ``llm_encoder=`` and
        ``adapter=`` passed in. Every keyword of ``DiffusionPipeline.from_pretrained`` works."""
        path = os.fspath(pretrained_model_name_or_path)
        if os.path.isdir(path):
            index_file = os.path.join(path, "model_index.json")
            if not os.path.isfile(index_file):
                raise FileNotFoundError(
                    f"{path!r} is not a diffusers pipeline folder: it has no model_index.json. Point at the folder "
                    "written by save_pretrained (or a Stable Diffusion checkpoint folder)."
                )
            try:
                with open(index_file, encoding="utf-8") as f:
                    index = json.load(f)
            except json.JSONDecodeError as err:
                raise ValueError(f"{index_file!r} is not valid JSON ({err}).") from err
            missing = [
                name
                for name, value in index.items()
                if not name.startswith("_")
                and isinstance(value, list)
                and value[0] is not None
                and name not in kwargs
                and not os.path.isdir(os.path.join(path, name))
            ]
            if missing:
                raise FileNotFoundError(
                    f"The pipeline folder {path!r} lists components {missing} in model_index.json, but their "
                    "sub-folders are missing. Re-save the pipeline or pass those components as arguments."
                )
            absent = [c for c in _LLM4GEN_COMPONENTS if c not in index and c not in kwargs]
            if absent:
                raise ValueError(
                    f"{path!r} is a base pipeline without {absent}. Pass them: "
                    f"{cls.__name__}.from_pretrained(path, llm_encoder=LLMEncoder.from_pretrained(...), "
                    "adapter=CrossAdapter.from_pretrained(...))."
                )
            if kwargs.get("trust_remote_code") and "llm_encoder" in index and "llm_encoder" not in kwargs:
                kwargs["llm_encoder"] = _llm_encoder_with_remote_code(path, kwargs.get("torch_dtype"),
                                                                      kwargs.get("variant"))
        try:
            pipe = super().from_pretrained(path, **kwargs)
        except OSError as err:
            raise describe_load_error(err, "pipeline", path) from err
        # the folder's recommended guidance, steps and scheduler (llm4gen_sampling.json), for callers to use
        pipe.sampling_defaults = SamplingDefaults.from_folder(path if os.path.isdir(path) else None)
        return pipe

    def save_pretrained(self, save_directory: str | os.PathLike, save_llm_weights: bool = False, **kwargs: Any) -> None:
        """Save like diffusers; the LLM is saved as a reference (hub id / path / package) unless
        ``save_llm_weights=True`` copies its weights into ``llm_encoder/`` (as ``model.<variant>.safetensors``
        with ``variant=``, which ``from_pretrained(..., variant=)`` then loads). CLIP text encoders are written with
        the ``text_model.`` key prefix (the layout of SD checkpoints, which ComfyUI's CLIP loader needs)."""
        if save_llm_weights:
            self._require(["llm_encoder"], "save_llm_weights=True")
        # with push_to_hub, diffusers uploads at the end of its own save: upload once our files are written too
        push_to_hub = kwargs.pop("push_to_hub", False)
        hub = {key: kwargs.pop(key) for key in ("commit_message", "private", "create_pr", "token", "repo_id")
               if key in kwargs}
        super().save_pretrained(save_directory, **kwargs)
        for name in ("text_encoder", "text_encoder_2"):  # the key layout ComfyUI and transformers 4 read
            write_prefixed_clip(os.path.join(save_directory, name))
        sampling = getattr(self, "sampling_defaults", None)
        if sampling is not None and sampling != SamplingDefaults():  # only settings of its own (llm4gen_sampling.json)
            sampling.save(save_directory)
        if save_llm_weights:
            self.llm_encoder.save_pretrained(
                os.path.join(save_directory, "llm_encoder"), save_weights=True, variant=kwargs.get("variant")
            )
        if push_to_hub:
            self._push_folder(save_directory, **hub)

    def _push_folder(self, save_directory: str | os.PathLike, repo_id: str | None = None, token: str | None = None,
                     private: bool | None = None, commit_message: str | None = None, create_pr: bool = False) -> None:
        """Upload a saved folder as diffusers' ``save_pretrained(push_to_hub=True)`` does (a model card included)."""
        from diffusers.utils.hub_utils import load_or_create_model_card, populate_model_card
        from huggingface_hub import create_repo

        repo_id = repo_id or os.fspath(save_directory).rstrip(os.sep).split(os.sep)[-1]
        repo_id = create_repo(repo_id, exist_ok=True, private=private, token=token).repo_id
        card = populate_model_card(load_or_create_model_card(repo_id, token=token, is_pipeline=True))
        card.save(os.path.join(save_directory, "README.md"))
        self._upload_folder(save_directory, repo_id, token=token, commit_message=commit_message, create_pr=create_pr)

    @classmethod
    def _load_official_parts(
        cls,
        unet: Any,
        unet_subfolder: str | None,
        projector: Any,
        projector_filename: str,
        llm: Any,
        llm_tokenizer: str | None,
        trust_remote_code: bool,
        torch_dtype: torch.dtype | None,
        llm_torch_dtype: torch.dtype | None,
        hub: dict[str, Any],
    ) -> tuple[Any, CrossAdapter, LLMEncoder]:
        if isinstance(unet, (str, os.PathLike)):
            ref = os.fspath(unet)
            sub = unet_subfolder
            if os.path.isdir(ref) and os.path.isfile(os.path.join(ref, "config.json")):
                sub = None  # the folder is the UNet itself
            try:
                unet = load_unet(ref, subfolder=sub, torch_dtype=torch_dtype, **hub)
            except OSError as err:
                raise describe_load_error(err, "fine-tuned UNet", ref) from err
        if not isinstance(projector, CrossAdapter):
            ref = os.fspath(projector)
            if not os.path.isfile(ref):
                if os.path.isdir(ref):
                    ref = os.path.join(ref, projector_filename)
                else:
                    from huggingface_hub import hf_hub_download

                    try:
                        ref = hf_hub_download(ref, projector_filename, **hub)
                    except Exception as err:
                        where = f"{ref}/{projector_filename}"
                        raise describe_load_error(err, "projector (CAM) weights", where) from err
            projector = CrossAdapter.from_official(ref)
            if torch_dtype is not None:
                projector = projector.to(torch_dtype)
        if not isinstance(llm, LLMEncoder):
            llm = LLMEncoder.from_pretrained(
                llm,
                tokenizer=llm_tokenizer,
                prefix="pre ",
                max_length=256,
                padding="max_length",
                truncation="slice",  # their script keeps the first 256 pieces of a longer prompt, without </s>
                trust_remote_code=trust_remote_code,
                dtype=llm_torch_dtype,
                **hub,
            )
        return unet, projector, llm


def _pipeline_call(base: type) -> Callable[..., Any]:
    """The ``__call__`` of an LLM4GEN pipeline over ``base``: its signature (``__signature__``, what
    ``inspect.signature`` and tools that introspect pipelines read) is ``base.__call__``'s parameters, in order and
    with their defaults, then ours (:meth:`_LLM4GenMixin._generate`'s keyword-only ones) before ``**kwargs``. Calls
    are bound to that signature, so a misspelt argument of ours fails as it would on any function."""
    base_params = list(inspect.signature(base.__call__).parameters.values())
    ours = [p for p in inspect.signature(_LLM4GenMixin._generate).parameters.values() if p.kind is p.KEYWORD_ONLY]
    clash = {p.name for p in base_params} & {p.name for p in ours}
    if clash:
        raise TypeError(f"{base.__name__}.__call__ now has parameter(s) {sorted(clash)} that LLM4GEN also defines.")
    var_keyword = [p for p in base_params if p.kind is p.VAR_KEYWORD]
    plain = [p for p in base_params if p.kind is not p.VAR_KEYWORD]
    signature = inspect.Signature(plain + ours + var_keyword)
    own = [p.name for p in ours]
    extra = var_keyword[0].name if var_keyword else None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        arguments = signature.bind(self, *args, **kwargs).arguments
        arguments.pop("self")
        options = {name: arguments.pop(name) for name in own if name in arguments}
        arguments.update(arguments.pop(extra, {}) if extra else {})
        return self._generate(arguments, **options)

    __call__.__signature__ = signature
    __call__.__doc__ = _LLM4GenMixin._generate.__doc__
    return __call__


class LLM4GenPipeline(_LLM4GenMixin, StableDiffusionPipeline):
    """Stable Diffusion 1.x with LLM4GEN prompt encoding.

    Example::

        pipe = LLM4GenPipeline.from_pretrained("path/to/llm4gen-pipeline")
        image = pipe("a red cube to the left of a blue ball ...", generator=torch.Generator().manual_seed(0)).images[0]
    """

    model_cpu_offload_seq = "text_encoder->llm_encoder->adapter->image_encoder->unet->vae"
    _optional_components = ["safety_checker", "feature_extractor", "image_encoder"]
    _prompt_components = ("text_encoder", "tokenizer", "llm_encoder", "adapter")
    __call__ = _pipeline_call(StableDiffusionPipeline)

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: KarrasDiffusionSchedulers,
        llm_encoder: LLMEncoder | None,
        adapter: CrossAdapter | None,
        safety_checker: StableDiffusionSafetyChecker | None = None,
        feature_extractor: CLIPImageProcessor | None = None,
        image_encoder: CLIPVisionModelWithProjection | None = None,
        requires_safety_checker: bool = True,
        use_llm_attention_mask: bool = False,
    ):
        super().__init__(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=safety_checker,
            feature_extractor=feature_extractor,
            image_encoder=image_encoder,
            requires_safety_checker=requires_safety_checker,
        )
        self.register_modules(llm_encoder=llm_encoder, adapter=adapter)
        self.register_to_config(use_llm_attention_mask=bool(use_llm_attention_mask))
        width = text_encoder.config.hidden_size if text_encoder is not None else None
        self._check_llm4gen_components(width)

    def encode_prompt(
        self,
        prompt,
        device,
        num_images_per_prompt,
        do_classifier_free_guidance,
        negative_prompt=None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        lora_scale: float | None = None,
        clip_skip: int | None = None,
    ):
        """CLIP + LLM -> CAM. Returns fused ``(prompt_embeds, negative_prompt_embeds)`` of equal length.

        Given ``prompt_embeds`` must be fused ones (e.g. from :meth:`encode_fused_prompt`: CLIP's 77 tokens, then the
        LLM's); with guidance and no ``negative_prompt_embeds``, the negative is the empty prompt's, fused at the
        length of ``prompt_embeds`` (as diffusers encodes ``""`` for a missing negative).
        """
        pos_mask = neg_mask = None
        if prompt_embeds is None:
            prompts, negatives = self._prompt_lists(prompt, negative_prompt)
            prompt_embeds, negative_prompt_embeds, pos_mask, neg_mask = self._encode_text(
                prompts, negatives, device, do_classifier_free_guidance, lora_scale, clip_skip
            )
        else:
            llm_length = self._check_fused_embeds(prompt_embeds, negative_prompt_embeds)
            if do_classifier_free_guidance and negative_prompt_embeds is None:
                empty = [""] * prompt_embeds.shape[0]
                _, negative_prompt_embeds, _, neg_mask = self._encode_text(
                    empty, empty, device, True, lora_scale, clip_skip, llm_length
                )
                negative_prompt_embeds = negative_prompt_embeds.to(prompt_embeds)
        if not do_classifier_free_guidance:
            negative_prompt_embeds = neg_mask = None
        self._store_masks(pos_mask, neg_mask, num_images_per_prompt)
        prompt_embeds = _repeat(prompt_embeds, num_images_per_prompt)
        negative_prompt_embeds = _repeat(negative_prompt_embeds, num_images_per_prompt)
        return prompt_embeds, negative_prompt_embeds

    def _encode_text(self, prompts, negatives, device, do_classifier_free_guidance, lora_scale, clip_skip,
                     llm_length=None):
        self._require(self._prompt_components, "encoding a prompt")
        clip_pos, clip_neg = StableDiffusionPipeline.encode_prompt(
            self,
            prompts,
            device,
            1,
            do_classifier_free_guidance,
            negatives if do_classifier_free_guidance else None,
            lora_scale=lora_scale,
            clip_skip=clip_skip,
        )
        if not do_classifier_free_guidance:
            clip_neg = None
        return self._fuse(clip_pos, clip_neg, prompts, negatives, llm_length)

    def _encode_fused(self, prompt, negative_prompt, device, do_classifier_free_guidance, clip_skip):
        pos, neg = self.encode_prompt(
            prompt, device, 1, do_classifier_free_guidance, negative_prompt, clip_skip=clip_skip
        )
        return pos, neg, None, None

    @classmethod
    def from_official(
        cls,
        base_model: str | os.PathLike = "sd-legacy/stable-diffusion-v1-5",
        unet: Any = "Shui-VL/LLM4GEN-models",
        projector: Any = "Shui-VL/LLM4GEN-models",
        llm: Any = "kalpeshk2011/rankgen-t5-xl-all",
        llm_tokenizer: str | None = "google/t5-v1_1-xl",
        *,
        unet_subfolder: str | None = "unet",
        projector_filename: str = "projector.pth",
        trust_remote_code: bool = False,
        torch_dtype: torch.dtype | None = None,
        llm_torch_dtype: torch.dtype | None = None,
        local_files_only: bool | None = None,
        token: str | None = None,
        load_safety_checker: bool = False,
        **pipeline_kwargs: Any,
    ) -> LLM4GenPipeline:
        """Load the authors' SD1.5 release unchanged: base SD1.5, their fine-tuned ``unet/``, ``projector.pth`` and
        RankGen-T5-XL (prompts prefixed with ``"pre "``, tokenized whole and cut to their first 256 tokens or padded
        to 256, no UNet mask), with no safety checker, as in their script.

        Every part may be a hub id, a local path, or an already-built object (UNet / CrossAdapter / LLMEncoder).
        RankGen-T5-XL ships its own model code: loading it needs ``trust_remote_code=True``.
        ``load_safety_checker=True`` loads the base folder's safety checker (the authors pass ``safety_checker=None``).
        """
        hub = {k: v for k, v in {"local_files_only": local_files_only, "token": token}.items() if v is not None}
        unet, adapter, llm_encoder = cls._load_official_parts(
            unet, unet_subfolder, projector, projector_filename, llm, llm_tokenizer, trust_remote_code,
            torch_dtype, llm_torch_dtype, hub,
        )
        if not load_safety_checker:  # as the authors: StableDiffusionPipeline.from_pretrained(..., safety_checker=None)
            pipeline_kwargs.setdefault("safety_checker", None)
            pipeline_kwargs.setdefault("requires_safety_checker", False)
        pipeline_kwargs.setdefault("use_llm_attention_mask", False)
        if torch_dtype is not None:
            pipeline_kwargs["torch_dtype"] = torch_dtype
        return cls.from_pretrained(
            base_model, unet=unet, adapter=adapter, llm_encoder=llm_encoder, **hub, **pipeline_kwargs
        )


class LLM4GenXLPipeline(_LLM4GenMixin, StableDiffusionXLPipeline):
    """SDXL with LLM4GEN prompt encoding. The CAM's ``clip_dim`` is SDXL's 2048 (768 + 1280, both encoders'
    penultimate states); the pooled embedding still comes from the second CLIP encoder alone.

    With ``force_zeros_for_empty_prompt`` (SDXL's default) and no negative prompt, the whole fused negative embedding
    is zero, extending SDXL's own convention to the LLM tokens.
    """

    model_cpu_offload_seq = "text_encoder->text_encoder_2->llm_encoder->adapter->image_encoder->unet->vae"
    _optional_components = [
        "tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2", "image_encoder", "feature_extractor"
    ]
    _prompt_components = ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "llm_encoder", "adapter")
    __call__ = _pipeline_call(StableDiffusionXLPipeline)

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        text_encoder_2: CLIPTextModelWithProjection,
        tokenizer: CLIPTokenizer,
        tokenizer_2: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: KarrasDiffusionSchedulers,
        llm_encoder: LLMEncoder | None,
        adapter: CrossAdapter | None,
        image_encoder: CLIPVisionModelWithProjection | None = None,
        feature_extractor: CLIPImageProcessor | None = None,
        force_zeros_for_empty_prompt: bool = True,
        add_watermarker: bool | None = None,
        use_llm_attention_mask: bool = False,
    ):
        super().__init__(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            unet=unet,
            scheduler=scheduler,
            image_encoder=image_encoder,
            feature_extractor=feature_extractor,
            force_zeros_for_empty_prompt=force_zeros_for_empty_prompt,
            add_watermarker=add_watermarker,
        )
        self.register_modules(llm_encoder=llm_encoder, adapter=adapter)
        self.register_to_config(use_llm_attention_mask=bool(use_llm_attention_mask))
        widths = [te.config.hidden_size for te in (text_encoder, text_encoder_2) if te is not None]
        self._check_llm4gen_components(sum(widths) if len(widths) == 2 else None)

    def encode_prompt(
        self,
        prompt,
        prompt_2=None,
        device=None,
        num_images_per_prompt: int = 1,
        do_classifier_free_guidance: bool = True,
        negative_prompt=None,
        negative_prompt_2=None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        lora_scale: float | None = None,
        clip_skip: int | None = None,
    ):
        """Both CLIP encoders + LLM -> CAM. Returns fused embeddings and SDXL's pooled embeddings (4 tensors).

        Given ``prompt_embeds`` (with ``pooled_prompt_embeds``) must be fused ones, e.g. from
        :meth:`encode_fused_prompt`. With guidance and no negative embeddings, the negative is zeros under
        ``force_zeros_for_empty_prompt`` (SDXL's default), else the empty prompt's, fused at the length of
        ``prompt_embeds``.
        """
        pos_mask = neg_mask = None
        if prompt_embeds is None:
            prompts, negatives = self._prompt_lists(prompt, negative_prompt)
            zero_negative = negative_prompt is None and self.config.force_zeros_for_empty_prompt
            (prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds, pos_mask,
             neg_mask) = self._encode_text(prompts, negatives, prompt_2, negative_prompt_2, zero_negative, device,
                                           do_classifier_free_guidance, lora_scale, clip_skip)
        else:
            if pooled_prompt_embeds is None:
                raise ValueError(
                    "With prompt_embeds, also pass pooled_prompt_embeds (pipe.encode_fused_prompt gives both)."
                )
            llm_length = self._check_fused_embeds(prompt_embeds, negative_prompt_embeds)
            if do_classifier_free_guidance and negative_prompt_embeds is None:
                if self.config.force_zeros_for_empty_prompt:  # zeros: no LLM or CLIP needed, and no mask matters
                    negative_prompt_embeds = torch.zeros_like(prompt_embeds)
                    negative_pooled_prompt_embeds = torch.zeros_like(pooled_prompt_embeds)
                    given = self._given_masks[0] if hasattr(self, "_given_masks") else None
                    neg_mask = None if given is None else torch.ones_like(given)
                else:
                    empty = [""] * prompt_embeds.shape[0]
                    _, negative_prompt_embeds, _, negative_pooled_prompt_embeds, _, neg_mask = self._encode_text(
                        empty, empty, None, None, False, device, True, lora_scale, clip_skip, llm_length
                    )
                    negative_prompt_embeds = negative_prompt_embeds.to(prompt_embeds)
                    negative_pooled_prompt_embeds = negative_pooled_prompt_embeds.to(pooled_prompt_embeds)
            elif do_classifier_free_guidance and negative_pooled_prompt_embeds is None:
                raise ValueError(
                    "With negative_prompt_embeds, also pass negative_pooled_prompt_embeds; "
                    "pipe.encode_fused_prompt(prompt, negative_prompt) returns them."
                )
        if not do_classifier_free_guidance:
            negative_prompt_embeds = negative_pooled_prompt_embeds = neg_mask = None
        self._store_masks(pos_mask, neg_mask, num_images_per_prompt)
        prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds = (
            _repeat(t, num_images_per_prompt)
            for t in (prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds)
        )
        return prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds

    def _encode_text(self, prompts, negatives, prompt_2, negative_prompt_2, zero_negative, device,
                     do_classifier_free_guidance, lora_scale, clip_skip, llm_length=None):
        self._require(self._prompt_components, "encoding a prompt")
        clip_pos, clip_neg, pooled, neg_pooled = StableDiffusionXLPipeline.encode_prompt(
            self,
            prompts,
            prompt_2,
            device,
            1,
            do_classifier_free_guidance,
            None if zero_negative else negatives,
            negative_prompt_2,
            lora_scale=lora_scale,
            clip_skip=clip_skip,
        )
        if not do_classifier_free_guidance:
            clip_neg = neg_pooled = None
        pos, neg, pos_mask, neg_mask = self._fuse(clip_pos, clip_neg, prompts, negatives, llm_length)
        if neg is not None and zero_negative:
            neg = torch.zeros_like(neg)
        return pos, neg, pooled, neg_pooled, pos_mask, neg_mask

    def _encode_fused(self, prompt, negative_prompt, device, do_classifier_free_guidance, clip_skip):
        return self.encode_prompt(
            prompt, None, device, 1, do_classifier_free_guidance, negative_prompt, clip_skip=clip_skip
        )


def _llm_encoder_with_remote_code(path: str, torch_dtype: torch.dtype | None, variant: str | None) -> LLMEncoder:
    """A saved folder's ``llm_encoder/`` with its model's own code allowed (RankGen-T5-XL): diffusers does not pass
    ``trust_remote_code`` on to a pipeline's components, so the encoder is loaded here."""
    return LLMEncoder.from_pretrained(os.path.join(path, "llm_encoder"), trust_remote_code=True, dtype=torch_dtype,
                                      variant=variant)


def _planned_regions(prompts: list[str], mode: str) -> list[list[Any]]:
    """``regions="auto"``: each prompt's regions from its own words (:func:`llm4gen.layout.plan_regions`)."""
    if mode != "auto":
        raise ValueError(f"regions must be a list of Region, one such list per prompt, or \"auto\"; got {mode!r}.")

    planned = [plan_regions(p) for p in prompts]
    empty = [i for i, rs in enumerate(planned) if not rs]
    if empty:
        warnings.warn(f"regions=\"auto\": prompt(s) {empty} name no place for anything ({PLACE_EXAMPLES}); sampled "
                      "without region guidance.", stacklevel=4)
    return planned
