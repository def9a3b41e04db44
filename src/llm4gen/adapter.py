"""The Cross-Adapter Module (CAM) of LLM4GEN.

One layer reads, top to bottom (B = batch, Tc = CLIP tokens, Tl = LLM tokens, Dc = CLIP width):

    h   = llm_proj(llm_embeds)                                # [B, Tl, Dc]  LLM tokens projected to CLIP width
    q   = q_proj(llm_norm(h))                                 # queries come from the LLM tokens
    k,v = k_proj(clip_norm(clip)), v_proj(clip_norm(clip))    # keys and values come from the CLIP tokens
    h   = h + out_proj(softmax(q k^T / sqrt(d_head)) v)       # multi-head cross-attention + residual
    h   = h + ffn(ffn_norm(h))                                # pre-LN FFN with QuickGELU + residual

After the last layer the module returns ``concat(clip, scale * h)`` (``concat_order="clip_first"``), i.e.
``[B, Tc + Tl, Dc]`` prompt embeddings for the UNet's cross-attention. ``scale`` is the paper's balance factor λ.

Each LLM token only attends to CLIP tokens, never to other LLM tokens, so the output at a real LLM token does not
depend on how many padding tokens follow it; the returned attention mask lets the UNet ignore the padded ones.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import os
import re
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

__all__ = ["CrossAdapter", "CrossAdapterConfig", "CrossAdapterOutput", "QuickGELU"]

CONCAT_ORDERS = ("clip_first", "llm_first")


@dataclass
class CrossAdapterConfig:
    """Hyper-parameters of a :class:`CrossAdapter`; serialised to ``config.json`` by ``save_pretrained``.

    Args:
        clip_dim: width of the base model's text embeddings (SD1.x 768, SD2.x 1024, SDXL 2048 = 768 + 1280) and of
            the UNet's ``cross_attention_dim``.
        llm_dim: hidden size of the LLM features (T5-XL / RankGen-T5-XL 2048, MiniLM 384, Llama-3-8B 4096).
        num_heads: attention heads; ``clip_dim`` must be divisible by it.
        num_layers: stacked cross-fusion layers (the authors use 1).
        ffn_mult: the FFN's hidden width is ``ffn_mult * clip_dim``.
        scale: the balance factor λ multiplying the LLM branch before concatenation.
        concat_order: ``"clip_first"`` (as the authors' code: CLIP tokens, then LLM tokens) or ``"llm_first"``.
    """

    clip_dim: int = 768
    llm_dim: int = 2048
    num_heads: int = 8
    num_layers: int = 1
    ffn_mult: int = 4
    scale: float = 1.0
    concat_order: str = "clip_first"

    def __post_init__(self) -> None:
        for name in ("clip_dim", "llm_dim", "num_heads", "num_layers", "ffn_mult"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"CrossAdapterConfig.{name} must be a positive integer, got {value!r}.")
        if self.clip_dim % self.num_heads:
            raise ValueError(
                f"CrossAdapterConfig.clip_dim ({self.clip_dim}) must be divisible by num_heads ({self.num_heads}); "
                f"pick a head count that divides it (e.g. {_divisor_hint(self.clip_dim, self.num_heads)})."
            )
        if self.concat_order not in CONCAT_ORDERS:
            raise ValueError(
                f"CrossAdapterConfig.concat_order must be one of {CONCAT_ORDERS}, got {self.concat_order!r}."
            )
        self.scale = _check_scale(self.scale, "CrossAdapterConfig.scale")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _shape_numbers(text: str) -> list[int]:
    """``"32, 48"`` -> ``[32, 48]`` (a shape in diffusers' size-mismatch message)."""
    return [int(v) for v in re.findall(r"\d+", text)]


def _check_scale(value: Any, name: str) -> float:
    """λ as a float; a bool, a non-number, a negative or a non-finite value is an error naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} (the balance factor λ) must be a finite number >= 0, got {value!r}; "
                         "1.0 is what the adapter was trained with.")
    return float(value)


def _divisor_hint(dim: int, heads: int) -> int:
    for h in range(heads, 0, -1):
        if dim % h == 0:
            return h
    return 1


@dataclass
class CrossAdapterOutput:
    """What :meth:`CrossAdapter.forward` returns with ``return_dict=True``."""

    prompt_embeds: torch.Tensor  # [B, Tc + Tl, Dc]
    attention_mask: torch.Tensor | None  # [B, Tc + Tl] (1 = attend), or None when no LLM mask was given


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x), the GELU approximation of OpenAI CLIP (and of the authors' CAM)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class CrossFusionLayer(nn.Module):
    """One CAM layer: LLM tokens (queries) attend to CLIP tokens (keys/values), then an FFN."""

    def __init__(self, in_dim: int, dim: int, num_heads: int, ffn_mult: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.llm_proj = nn.Linear(in_dim, dim)
        self.llm_norm = nn.LayerNorm(dim)  # the authors call it `kv_norm`, but apply it to the LLM (query) tokens
        self.clip_norm = nn.LayerNorm(dim)  # the authors' `q_norm`, applied to the CLIP (key/value) tokens
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, dim * ffn_mult), QuickGELU(), nn.Linear(dim * ffn_mult, dim))
        for proj in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            nn.init.trunc_normal_(proj.weight, std=0.02)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)

    def branches(self, clip_embeds: torch.Tensor, llm_tokens: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The three terms whose sum is the layer's output: the projected input and the attention and FFN branches
        added to it."""
        h = self.llm_proj(llm_tokens)
        clip_n = self.clip_norm(clip_embeds)
        q = self._heads(self.q_proj(self.llm_norm(h)))
        k = self._heads(self.k_proj(clip_n))
        v = self._heads(self.v_proj(clip_n))
        attn = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d_head)) v, no mask on CLIP tokens
        b, _, t, _ = attn.shape
        attn = self.out_proj(attn.transpose(1, 2).reshape(b, t, -1))
        ffn = self.ffn(self.ffn_norm(h + attn))
        return h, attn, ffn

    def forward(self, clip_embeds: torch.Tensor, llm_tokens: torch.Tensor) -> torch.Tensor:
        h, attn, ffn = self.branches(clip_embeds, llm_tokens)
        return h + attn + ffn


def _signature_from(config_cls: type) -> Any:
    """Give ``__init__`` the signature of the config dataclass's fields, so the dataclass is the one list of the
    module's settings: diffusers' ``register_to_config`` and ``from_config`` read the signature, and ``help()`` and
    IDEs show it."""

    def decorate(init: Any) -> Any:
        params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        params += [inspect.Parameter(f.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=f.default,
                                     annotation=f.type) for f in dataclasses.fields(config_cls)]
        init.__signature__ = inspect.Signature(params, return_annotation=None)
        return init

    return decorate


class CrossAdapter(ModelMixin, ConfigMixin):
    """The Cross-Adapter Module: fuses per-token LLM features with the base model's CLIP text embeddings.

    A diffusers model: ``save_pretrained(dir)`` writes ``config.json`` + ``diffusion_pytorch_model.safetensors``,
    ``from_pretrained(dir_or_hub_id)`` loads them, and an ``LLM4GenPipeline`` saves it as its ``adapter/`` folder.
    Its settings are :class:`CrossAdapterConfig`'s fields (the one place they are listed): build one from those
    keyword arguments or from a config with :meth:`from_adapter_config`.
    """

    _supports_gradient_checkpointing = False

    @register_to_config
    @_signature_from(CrossAdapterConfig)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        cfg = CrossAdapterConfig(*args, **kwargs)
        self.adapter_config = cfg
        self.layers = nn.ModuleList(
            CrossFusionLayer(cfg.llm_dim if i == 0 else cfg.clip_dim, cfg.clip_dim, cfg.num_heads, cfg.ffn_mult)
            for i in range(cfg.num_layers)
        )

    @classmethod
    def from_adapter_config(cls, config: CrossAdapterConfig) -> CrossAdapter:
        return cls(**config.to_dict())

    @classmethod
    def extract_init_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> Any:
        """diffusers' reading of a saved ``config.json``, which refuses the gated CAM of llm4gen 0.1 by name
        (``gated: false``, which 0.1 wrote into every adapter's config, means the CAM this class is)."""
        if config_dict.get("gated"):
            raise ValueError(
                "This CrossAdapter was saved with gated=True, a research variant that left llm4gen in 0.2 (tried on "
                "ShapesWorld and not adopted: research/shapesworld/gated-cam.md); its gates would be dropped "
                "silently here. Load it with llm4gen 0.1 (commit 9537f8b), or train an ungated adapter."
            )
        return super().extract_init_dict({k: v for k, v in config_dict.items() if k != "gated"}, **kwargs)

    @torch.no_grad()
    def branch_rms(self, clip_embeds: torch.Tensor, llm_embeds: torch.Tensor,
                   llm_mask: torch.Tensor | None = None) -> list[dict[str, float]]:
        """Per layer, the root-mean-square size over the real LLM tokens (``llm_mask`` 1; all when None) of the
        three terms the layer adds up: ``input`` (``llm_proj``), ``attention`` and ``ffn``: how much of each token's
        fused feature comes from the LLM alone and how much from reading CLIP's tokens."""
        self._check_inputs(clip_embeds, llm_embeds, llm_mask)
        keep = (torch.ones(llm_embeds.shape[:2], dtype=torch.bool, device=llm_embeds.device) if llm_mask is None
                else llm_mask.to(device=llm_embeds.device).bool())
        h, rows = llm_embeds.to(dtype=clip_embeds.dtype), []
        for layer in self.layers:
            terms = layer.branches(clip_embeds, h)
            rows.append({name: float(_wide(t[keep]).pow(2).mean().sqrt()) if keep.any() else 0.0
                         for name, t in zip(("input", "attention", "ffn"), terms)})
            h = sum(terms)
        return rows

    def set_scale(self, scale: float) -> None:
        """Set the balance factor λ that multiplies the LLM branch (the trained value is in ``config.scale``).

        It also updates ``config``, so a later ``save_pretrained`` stores the new λ."""
        scale = _check_scale(scale, "scale")
        self.adapter_config.scale = scale
        self.register_to_config(scale=scale)

    def forward(
        self,
        clip_embeds: torch.Tensor,
        llm_embeds: torch.Tensor,
        llm_mask: torch.Tensor | None = None,
        return_dict: bool = False,
    ) -> CrossAdapterOutput | tuple[torch.Tensor, torch.Tensor | None]:
        """Fuse ``clip_embeds [B, Tc, Dc]`` with ``llm_embeds [B, Tl, Dl]`` into ``[B, Tc + Tl, Dc]``.

        ``llm_mask [B, Tl]`` (1 = real token, 0 = padding) is optional; when given, the matching mask over the fused
        sequence (CLIP tokens always 1) is returned for the UNet's ``encoder_attention_mask``.
        Returns ``(prompt_embeds, attention_mask_or_None)``, or a :class:`CrossAdapterOutput` with ``return_dict``.
        """
        cfg = self.adapter_config
        self._check_inputs(clip_embeds, llm_embeds, llm_mask)
        h = llm_embeds.to(dtype=clip_embeds.dtype)
        for layer in self.layers:
            h = layer(clip_embeds, h)
        h = cfg.scale * h
        parts = (clip_embeds, h) if cfg.concat_order == "clip_first" else (h, clip_embeds)
        fused = torch.cat(parts, dim=1)
        mask = None
        if llm_mask is not None:
            clip_mask = torch.ones(clip_embeds.shape[:2], dtype=llm_mask.dtype, device=llm_mask.device)
            masks = (clip_mask, llm_mask) if cfg.concat_order == "clip_first" else (llm_mask, clip_mask)
            mask = torch.cat(masks, dim=1)
        if return_dict:
            return CrossAdapterOutput(prompt_embeds=fused, attention_mask=mask)
        return fused, mask

    def _check_inputs(self, clip: torch.Tensor, llm: torch.Tensor, mask: torch.Tensor | None) -> None:
        cfg = self.adapter_config
        if not isinstance(clip, torch.Tensor) or clip.ndim != 3:
            raise ValueError(f"clip_embeds must be a [batch, tokens, {cfg.clip_dim}] tensor, got {_shape(clip)}.")
        if not isinstance(llm, torch.Tensor) or llm.ndim != 3:
            raise ValueError(f"llm_embeds must be a [batch, tokens, {cfg.llm_dim}] tensor, got {_shape(llm)}.")
        if clip.shape[-1] != cfg.clip_dim:
            raise ValueError(
                f"clip_embeds have width {clip.shape[-1]} but this CrossAdapter expects clip_dim={cfg.clip_dim}: "
                "use an adapter trained for this base model's text encoder."
            )
        if llm.shape[-1] != cfg.llm_dim:
            raise ValueError(
                f"llm_embeds have width {llm.shape[-1]} but this CrossAdapter expects llm_dim={cfg.llm_dim}: "
                "use the LLM this adapter was trained with (or an adapter trained for this LLM)."
            )
        if clip.shape[0] != llm.shape[0]:
            raise ValueError(f"clip_embeds batch {clip.shape[0]} != llm_embeds batch {llm.shape[0]}.")
        if mask is not None and tuple(mask.shape) != tuple(llm.shape[:2]):
            want = tuple(llm.shape[:2])
            raise ValueError(f"llm_mask must have shape {want} (batch, LLM tokens), got {_shape(mask)}.")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike | None, **kwargs: Any) -> CrossAdapter:
        """diffusers' ``from_pretrained``, with weights whose shapes disagree with ``config.json`` named as such."""
        try:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        except ValueError as err:
            found = re.search(r"(\S+) expected shape \S*?\(\[([\d, ]*)\]\), but got \S*?\(\[([\d, ]*)\]\)", str(err))
            if found is None:
                raise
            where = os.fspath(pretrained_model_name_or_path)
            where = os.path.join(where, kwargs["subfolder"]) if kwargs.get("subfolder") else where
            raise ValueError(
                f"The adapter in {where!r} does not match its config.json: {found.group(1)} should have shape "
                f"{tuple(_shape_numbers(found.group(2)))} for that config but the weights have "
                f"{tuple(_shape_numbers(found.group(3)))}. The config's sizes (clip_dim, llm_dim, ...) must be those "
                "the weights were trained with: restore the config.json saved with these weights."
            ) from None

    # ------------------------------------------------------------------ the authors' released weights
    @classmethod
    def from_official(
        cls,
        path: str | os.PathLike,
        num_heads: int = 8,
        scale: float = 1.0,
    ) -> CrossAdapter:
        """Load the authors' released ``projector.pth`` (their ``LLMFusionModule(768, 2048, 8)``).

        Sizes are read from the weights; ``num_heads`` cannot be and defaults to theirs (8). The file is read with
        ``torch.load(weights_only=True)`` (no code is unpickled); a ``.safetensors`` file works too. Their module is a
        ``concat(clip, cam(llm))`` with λ = 1, which this class reproduces exactly with the defaults.
        """
        state = _load_state_dict_file(path)
        state = {re.sub(r"^(module\.)+", "", k): v for k, v in state.items()}
        # their LLMFusionModule's keys, or those of a bare CrossFusion layer
        prefix = "" if "llm_proj.weight" in state else "CrossFusionModule.0."
        expected = {prefix + k for k in _OFFICIAL_TO_OURS}
        missing = sorted(expected - state.keys())
        unexpected = sorted(state.keys() - expected)
        if missing or unexpected:
            raise ValueError(
                f"{os.fspath(path)!r} is not an LLM4GEN projector state dict of one CrossFusion layer. "
                f"Missing keys: {missing or 'none'}. Unexpected keys: {unexpected or 'none'}."
            )
        clip_dim, llm_dim = state[prefix + "llm_proj.weight"].shape
        ffn_hidden = state[prefix + "FFN.0.weight"].shape[0]
        if ffn_hidden % clip_dim:
            raise ValueError(f"FFN width {ffn_hidden} is not a multiple of clip_dim {clip_dim} in {os.fspath(path)!r}.")
        model = cls(
            clip_dim=int(clip_dim),
            llm_dim=int(llm_dim),
            num_heads=num_heads,
            num_layers=1,
            ffn_mult=ffn_hidden // clip_dim,
            scale=scale,
            concat_order="clip_first",
        )
        ours = {"layers.0." + new: state[prefix + old] for old, new in _OFFICIAL_TO_OURS.items()}
        own = model.state_dict()
        for k, v in ours.items():
            if tuple(v.shape) != tuple(own[k].shape):
                raise ValueError(
                    f"{os.fspath(path)!r}: tensor {k} has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}."
                )
        model.load_state_dict(ours, strict=True)
        return model


_OFFICIAL_TO_OURS = {
    f"{old}.{p}": f"{new}.{p}"
    for old, new in {
        "llm_proj": "llm_proj",
        "q_proj": "q_proj",
        "k_proj": "k_proj",
        "v_proj": "v_proj",
        "out_proj": "out_proj",
        "q_norm": "clip_norm",
        "kv_norm": "llm_norm",
        "norm": "ffn_norm",
        "FFN.0": "ffn.0",
        "FFN.2": "ffn.2",
    }.items()
    for p in ("weight", "bias")
}


def _load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Projector file {path!r} does not exist. Download `projector.pth` from the authors' release "
            "(hub repo Shui-VL/LLM4GEN-models) and pass its local path."
        )
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt, truncated or a pickle with code in it
        raise ValueError(
            f"Could not read projector weights from {path!r} ({type(err).__name__}: {err}). The file is corrupt, "
            "truncated, or not a plain tensor state dict (only weights_only=True loading is allowed)."
        ) from err
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path!r} does not hold a state dict of tensors (got {type(state).__name__}).")
    return state


def _wide(x: torch.Tensor) -> torch.Tensor:
    """float16 / bfloat16 as float32 (for sums of squares); other dtypes unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _shape(x: Any) -> str:
    return str(tuple(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__
