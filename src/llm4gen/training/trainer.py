"""The LLM4GEN trainer: CAM (+ UNet, fully or with LoRA, or frozen) on frozen CLIP, LLM and VAE.

Read top to bottom: ``train(config)`` loads the models, builds the data order, and runs the loop. One optimisation
step is ``gradient_accumulation_steps`` micro-batches; each micro-batch

    examples -> captions (dropped to "" with caption_dropout) -> frozen CLIP / LLM features (cached or computed)
             -> images -> frozen VAE latent distribution (cached or computed) -> latents
             -> noise, timesteps -> noisy latents -> CAM(clip, llm) -> UNet -> denoising loss (+ entity loss)

Everything random in a micro-batch (which examples, dropout, noise, timesteps, latent samples) is drawn from
generators seeded by (seed, batch number, process), so resuming a run reproduces the uninterrupted run exactly and
several processes see the same samples as one process with their summed batch. Checkpoints hold the trained weights,
EMA, optimizer and LR scheduler and are written to a temporary folder and renamed into place.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..adapter import CrossAdapter
from ..attention import AttentionStore, install_attention_store
from ..data.sources import make_source, preprocess_image
from ..denoiser import ClipText, Denoiser
from ..encoders import LLMEncoder, PromptTruncationWarning
from ..feature_cache import CACHE_DTYPES, FeatureCache, llm_batch, llm_entry, model_fingerprint
from ..images import make_grid
from ..pipeline import LLM4GenPipeline, LLM4GenXLPipeline
from ..prompt_words import token_bindings
from ..unet import CoordUNet2DConditionModel, load_unet
from ..utils import describe_load_error, loss_progress
from .config import TrainConfig
from .data import batch_indices, epoch_items, step_generator
from .distributed import (
    check_distributed,
    describe,
    full_optimizer_state,
    full_weights,
    gather,
    load_optimizer_state,
    load_weights,
    shard_like,
    splits_state,
    uses_deepspeed,
)
from .losses import diffusion_loss, entity_loss, timestep_weights

__all__ = ["CacheBuildResult", "TokenSpace", "TrainResult", "TrainingDivergedError", "build_cache", "entity_targets",
           "train"]

CHECKPOINT_PREFIX = "checkpoint-"


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    output_dir: Path
    final_step: int
    losses: list[float]  # per optimisation step, averaged over micro-batches and processes
    samples_per_second: float
    cache_hits: int = 0
    cache_misses: int = 0
    is_main_process: bool = True


@dataclass
class CacheBuildResult:
    cache_dir: Path
    items: int  # dataset items precomputed (all processes)
    entries: int  # entries in the cache folder (every namespace: CLIP, LLM, VAE; both flips)
    bytes: int  # on disk, all shards
    seconds: float
    parts: dict[str, tuple[int, int]]  # "clip" / "llm" / "vae" -> (entries, bytes) of this config's models
    is_main_process: bool = True

    @property
    def bytes_per_item(self) -> float:
        return self.bytes / max(self.items, 1)

    @property
    def items_per_second(self) -> float:
        return self.items / max(self.seconds, 1e-9)


# ---------------------------------------------------------------------- loading
def _load_frozen(cfg: TrainConfig):
    from diffusers import AutoencoderKL, DDPMScheduler
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    base = cfg.base_model
    if os.path.isdir(base):
        xl = os.path.isdir(os.path.join(base, "text_encoder_2"))
    else:  # a hub id: its model_index.json says whether it has a second text encoder (SDXL)
        from diffusers import DiffusionPipeline

        try:
            xl = "text_encoder_2" in DiffusionPipeline.load_config(base)
        except Exception as err:
            raise describe_load_error(err, "base model", base) from err

    def load(name, cls):
        try:
            return cls.from_pretrained(base, subfolder=name)
        except Exception as err:
            raise describe_load_error(err, f"base model's {name}", f"{base}/{name}") from err

    tokenizers = [load("tokenizer", CLIPTokenizer)]
    encoders = [load("text_encoder", CLIPTextModel)]
    if xl:
        tokenizers.append(load("tokenizer_2", CLIPTokenizer))
        encoders.append(load("text_encoder_2", CLIPTextModelWithProjection))
    vae, scheduler = load("vae", AutoencoderKL), load("scheduler", DDPMScheduler)
    if cfg.zero_terminal_snr:  # Lin et al. 2024: the last timestep keeps none of the image, sampling starts there
        scheduler = DDPMScheduler.from_config(scheduler.config, rescale_betas_zero_snr=True,
                                              timestep_spacing="trailing")
    scheduler.base_prediction_type = scheduler.config.prediction_type  # what a run without the override trains
    if cfg.prediction_type is not None:
        scheduler.register_to_config(prediction_type=cfg.prediction_type)
    if cfg.zero_terminal_snr and scheduler.config.prediction_type == "epsilon":
        raise ValueError(f"zero_terminal_snr: true needs v-prediction, but the base model's scheduler "
                         f"({base}/scheduler) predicts epsilon; set prediction_type: v_prediction.")
    vae.requires_grad_(False)
    vae.eval()
    return ClipText(tokenizers, encoders), vae, scheduler


def _load_unet(cfg: TrainConfig, clip_dim: int):
    from diffusers import UNet2DConditionModel

    if isinstance(cfg.unet, dict):
        unet = (CoordUNet2DConditionModel if cfg.unet_coords else UNet2DConditionModel)(**cfg.unet)
    else:
        ref, sub = (cfg.unet, None) if cfg.unet else (cfg.base_model, "unet")
        try:
            unet = load_unet(ref, subfolder=sub)
        except Exception as err:
            raise describe_load_error(err, "UNet", ref if sub is None else f"{ref}/{sub}") from err
        if cfg.unet_coords and not isinstance(unet, CoordUNet2DConditionModel):
            unet = CoordUNet2DConditionModel.from_unet(unet)  # new input weights at 0: starts as the loaded UNet
    if unet.config.cross_attention_dim != clip_dim:
        raise ValueError(
            f"The UNet's cross_attention_dim is {unet.config.cross_attention_dim} but the text encoder gives "
            f"{clip_dim}-d "
            "tokens; set unet.cross_attention_dim to match."
        )
    return unet


def _trained_model(cfg: TrainConfig, clip_dim: int, llm: LLMEncoder | None) -> Denoiser:
    """The UNet (trained fully, with LoRA, or frozen) and the CAM (with an LLM), as the config builds them."""
    unet = _load_unet(cfg, clip_dim)
    adapter = _load_adapter(cfg, clip_dim, llm.hidden_size) if llm is not None else None
    if cfg.train_unet == "frozen":
        unet.requires_grad_(False)
    elif cfg.train_unet == "lora":
        from peft import LoraConfig

        unet.requires_grad_(False)
        unet.add_adapter(LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_rank, init_lora_weights="gaussian",
                                    target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    return Denoiser(unet, adapter, cfg.use_llm_attention_mask)


def _load_adapter(cfg: TrainConfig, clip_dim: int, llm_dim: int) -> CrossAdapter:
    if cfg.adapter_init:
        path = cfg.adapter_init
        if os.path.isdir(path):
            adapter = CrossAdapter.from_pretrained(path)
        else:  # the authors' file holds no head count: take the config's (theirs is 8)
            adapter = CrossAdapter.from_official(path, num_heads=cfg.adapter.get("num_heads", 8))
        adapter = _apply_adapter_settings(adapter, cfg.adapter, path)
    else:
        kwargs = {"num_heads": max(h for h in (1, 2, 4, 8) if clip_dim % h == 0), **cfg.adapter}
        adapter = CrossAdapter(clip_dim=clip_dim, llm_dim=llm_dim, **kwargs)
    if (adapter.config.clip_dim, adapter.config.llm_dim) != (clip_dim, llm_dim):
        raise ValueError(
            f"adapter_init has clip_dim={adapter.config.clip_dim}, llm_dim={adapter.config.llm_dim}; this run needs "
            f"{clip_dim} and {llm_dim}."
        )
    return adapter


def _apply_adapter_settings(adapter: CrossAdapter, settings: dict, path: str) -> CrossAdapter:
    """``adapter:`` settings on top of an ``adapter_init`` adapter: equal values are fine, ``scale`` sets λ; any
    other difference cannot apply to trained weights."""
    loaded = adapter.config
    for key, value in settings.items():
        if key == "scale":
            adapter.set_scale(value)
        elif value != loaded[key]:
            raise ValueError(
                f"adapter.{key}={value!r} but adapter_init {path!r} was trained with {key}={loaded[key]!r}: the "
                f"weights cannot take another {key}. Drop adapter.{key} from the config or train a new adapter "
                "without adapter_init."
            )
    return adapter


# ---------------------------------------------------------------------- features
class Features:
    """Frozen-model features for a batch, from the cache when present (see ``llm4gen.feature_cache``)."""

    def __init__(self, cfg, text: ClipText, vae, llm, cache: FeatureCache | None, device) -> None:
        self.cfg, self.text, self.vae, self.llm = cfg, text, vae, llm
        self.cache, self.device = cache, device
        self.encoded = self.truncated = 0  # captions run through the LLM, and how many of them it had to cut
        # padded LLM features matter only to a UNet that reads them: max_length padding without the attention mask
        self.keep_padding = (llm is not None and llm.config.padding == "max_length"
                             and not cfg.use_llm_attention_mask)
        self.ns_clip = self.ns_llm = self.ns_vae = ""
        if cache is not None:
            self.ns_clip = "clip-" + model_fingerprint(text, cfg.base_model, max_length=text.num_tokens, xl=text.xl)
            self.ns_vae = "vae-" + model_fingerprint(vae, cfg.base_model, resolution=cfg.resolution,
                                                     crop=cfg.data.center_crop)
            if llm is not None:
                c = llm.config
                self.ns_llm = "llm-" + model_fingerprint(
                    llm.model, c.model_name_or_path, max_length=c.max_length, padding=c.padding, prefix=c.prefix,
                    layer=c.hidden_layer, keep_padding=self.keep_padding,
                    **({} if c.truncation == "tokenizer" else {"truncation": c.truncation}),
                )

    def _cached(self, ns: str, keys: list[str], compute) -> list[dict[str, torch.Tensor]]:
        """Look ``keys`` up; ``compute(indices)`` returns the values of the missing ones, which are then stored and
        used as stored (in the cache's dtype), so a run that fills the cache computes exactly what a warm one does."""
        out: list[dict[str, torch.Tensor] | None] = [None] * len(keys)
        if self.cache is not None:
            out = [self.cache.get(ns, k) for k in keys]
        todo = [i for i, v in enumerate(out) if v is None]
        if todo:
            for i, value in zip(todo, compute(todo)):
                out[i] = self.cache.put(ns, keys[i], value) if self.cache is not None else value
        return out  # type: ignore[return-value]

    @torch.no_grad()
    def clip(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """CLIP embeddings ``[B, 77, D]`` and, for SDXL, pooled embeddings ``[B, P]``."""

        def compute(todo):
            hidden, pooled = self.text([captions[i] for i in todo])
            rows = [{"clip": h} for h in hidden.float().cpu()]
            if pooled is not None:
                for row, p in zip(rows, pooled.float().cpu()):
                    row["pooled"] = p
            return rows

        rows = self._cached(self.ns_clip, captions, compute)
        clip = torch.stack([r["clip"] for r in rows]).to(self.device, torch.float32)
        pooled = (torch.stack([r["pooled"] for r in rows]).to(self.device, torch.float32) if "pooled" in rows[0]
                  else None)
        return clip, pooled

    @torch.no_grad()
    def llm_features(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """LLM features and mask as the encoder pads them. Rows keep only their real tokens (the cache's format, also
        without a cache, so a run computes the same with or without one); padded positions come back as zeros,
        which the masked UNet never reads. Without the mask (``use_llm_attention_mask: false``) with
        ``llm_padding: max_length`` the model reads the padded features, so those are kept."""
        def compute(todo):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", PromptTruncationWarning)
                out = self.llm.encode([captions[i] for i in todo])
            self.encoded += len(todo)
            self.truncated += sum(n > self.llm.max_length for n in out.num_tokens)
            return [llm_entry(f.float().cpu(), m.cpu(), self.keep_padding)
                    for f, m in zip(out.embeds, out.attention_mask)]

        rows = self._cached(self.ns_llm, captions, compute)
        pad_to = self.llm.max_length if self.llm.config.padding == "max_length" else None
        return llm_batch(rows, pad_to=pad_to, dtype=torch.float32, device=self.device)

    @torch.no_grad()
    def latents(self, images: list[Callable], keys: list[str], flips: list[bool], eps: torch.Tensor) -> torch.Tensor:
        """Sample latents ``(mean + std * eps) * scaling_factor`` from the VAE's (cached) latent distribution."""
        cfg = self.cfg

        def compute(todo):
            pixels = torch.stack([preprocess_image(images[i](), cfg.resolution, cfg.data.center_crop, flips[i])
                                  for i in todo]).to(self.device)
            dist = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist
            return [{"mean": m, "std": s} for m, s in zip(dist.mean.float().cpu(), dist.std.float().cpu())]

        rows = self._cached(self.ns_vae, [f"{k}|flip={f}" for k, f in zip(keys, flips)], compute)
        mean = torch.stack([r["mean"] for r in rows]).float()
        std = torch.stack([r["std"] for r in rows]).float()
        return ((mean + std * eps) * self.vae.config.scaling_factor).to(self.device)


# ---------------------------------------------------------------------- EMA, checkpoints
class EMA:
    """Exponential moving average of the trained parameters, with the usual warm-up of the decay.

    ``start`` is the step the average (re)started at: the warm-up counts from there (see ``restart``)."""

    def __init__(self, params: dict[str, torch.Tensor], decay: float) -> None:
        self.decay = decay
        self.start = 0
        self.shadow = {k: v.detach().clone().float() for k, v in params.items()}

    def restart(self, params: dict[str, torch.Tensor], step: int) -> None:
        """Average afresh from ``params`` at ``step``, warm-up included."""
        self.start = step
        self.shadow = {k: v.detach().clone().float() for k, v in params.items()}

    @torch.no_grad()
    def update(self, params: dict[str, torch.Tensor], step: int) -> None:
        age = step - self.start
        d = min(self.decay, (1 + age) / (10 + age))
        for k, v in params.items():
            self.shadow[k].mul_(d).add_(v.detach().float(), alpha=1 - d)

    def whole(self, keep: bool = True) -> dict[str, torch.Tensor] | None:
        """The average as whole CPU tensors (gathered from every process's shard under FSDP: a collective); None
        where not ``keep`` (a process that only takes part)."""
        out = {k: gather(v, keep) for k, v in self.shadow.items()}
        return out if keep else None

    def load_whole(self, shadow: dict[str, torch.Tensor], like: dict[str, torch.Tensor]) -> None:
        """Take a saved whole average, laid out (sharded) as the parameters ``like`` are."""
        missing = sorted(set(like) - set(shadow))
        if missing:
            raise ValueError(f"the EMA lacks {len(missing)} trained tensors, e.g. {missing[:3]}")
        self.shadow = {k: shard_like(shadow[k].float(), p) for k, p in like.items()}


def _trainable(model: Denoiser) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


# trained weights past this size mean the run diverged (Stable Diffusion's own weights stay below ~10): such weights
# are never committed as a checkpoint, so the last checkpoint on disk is always one a run can resume from
DIVERGED_WEIGHT = 1e4


def _diverged(tensors: dict[str, torch.Tensor]) -> str | None:
    """Why ``tensors`` look diverged (a non-finite value or one beyond ``DIVERGED_WEIGHT``), or None."""
    for name, t in tensors.items():
        t = t.detach()
        if not torch.isfinite(t).all():
            return f"{name} holds NaN or infinite values"
        peak = t.abs().max().item() if t.numel() else 0.0
        if peak > DIVERGED_WEIGHT:
            return f"{name} reaches |w| = {peak:.3g} (over {DIVERGED_WEIGHT:g})"
    return None


def _checkpoints(ckpt_root: Path) -> list[Path]:
    """The committed checkpoint folders under ``ckpt_root``, oldest first."""
    if not ckpt_root.is_dir():
        return []
    return sorted(p for p in ckpt_root.iterdir() if p.name.startswith(CHECKPOINT_PREFIX))


def _last_checkpoint_note(ckpt_root: Path) -> str:
    done = _checkpoints(ckpt_root)
    return f"the last good checkpoint, {done[-1]}, is kept" if done else f"no checkpoint was written to {ckpt_root}"


def _main_says(accelerator, value):
    """The main process's ``value``, on every process: so that all of them stop together on what it found."""
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value])[0] if accelerator.num_processes > 1 else value


def _save_checkpoint(accelerator, out: Path, step: int, model: Denoiser, optimizer, groups: list[list[torch.Tensor]],
                     lr_scheduler, ema: EMA | None, cfg: TrainConfig, losses: list[float], prediction_type: str
                     ) -> Path:
    """Write a checkpoint through a temporary folder renamed into place; every process calls this (under FSDP and
    DeepSpeed they gather their parts), the main one writes. Diverged weights are refused before anything is
    written, and a failed write (a full disk) removes the temporary folder and keeps the old ones; either ends the
    run on every process. ``groups``: the trained parameters of each optimizer group, as the optimizer was built."""
    ckpt_root = out / "checkpoints"
    trained = averaged = optim = problem = None
    main = accelerator.is_main_process
    if main or splits_state(accelerator):  # the others take part in the collectives; DDP's hold copies: nothing to do
        trained = full_weights(_trainable(model), keep=main)
        averaged = ema.whole(keep=main) if ema is not None else None
        optim = full_optimizer_state(optimizer, groups, keep=main)
    if main:
        problem = _diverged(trained) or (_diverged(averaged) if averaged is not None else None)
    problem = _main_says(accelerator, problem)
    if problem:
        raise TrainingDivergedError(
            f"The trained weights diverged by step {step} ({problem}); checkpoint {step} is not written and "
            f"{_last_checkpoint_note(ckpt_root)}. Try a lower learning rate, mixed_precision: no, or max_grad_norm."
        )
    final = ckpt_root / f"{CHECKPOINT_PREFIX}{step:08d}"
    failed = None
    if main:
        try:
            _write_checkpoint(ckpt_root, step, trained, averaged, optim, lr_scheduler, ema, cfg, losses,
                              prediction_type)
        except OSError as err:
            failed = err
    message = _main_says(accelerator, None if failed is None else str(failed))
    if failed is not None:
        raise failed
    if message:
        raise OSError(message)
    return final


def _write_checkpoint(ckpt_root: Path, step: int, trained: dict[str, torch.Tensor],
                      averaged: dict[str, torch.Tensor] | None, optim: dict[str, Any], lr_scheduler, ema: EMA | None,
                      cfg: TrainConfig, losses: list[float], prediction_type: str) -> None:
    from safetensors.torch import save_file

    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"{CHECKPOINT_PREFIX}{step:08d}"
    tmp = ckpt_root / f".tmp-{CHECKPOINT_PREFIX}{step:08d}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        tmp.mkdir()
        save_file(trained, tmp / "trained.safetensors")
        if averaged is not None:
            save_file({k: v.contiguous() for k, v in averaged.items()}, tmp / "ema.safetensors")
        torch.save(optim, tmp / "optimizer.pt")
        torch.save(lr_scheduler.state_dict(), tmp / "lr_scheduler.pt")
        state = {"step": step, "losses": losses, "config": cfg.to_dict(), "prediction_type": prediction_type,
                 "ema_start": ema.start if ema is not None else None}
        (tmp / "trainer_state.json").write_text(json.dumps(state))
    except Exception as err:  # OSError, safetensors' SafetensorError, torch's write errors: all end the same way
        shutil.rmtree(tmp, ignore_errors=True)
        raise OSError(
            f"Could not write {final.name} to {ckpt_root}: {err} (is the disk full?); "
            f"{_last_checkpoint_note(ckpt_root)}. Free some space and continue with --resume latest."
        ) from err
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)  # atomic: a checkpoint folder is complete or absent
    if cfg.checkpoints_total_limit is not None:
        done = _checkpoints(ckpt_root)
        for old in done[: max(0, len(done) - cfg.checkpoints_total_limit)]:
            shutil.rmtree(old)


def check_output_dir(output_dir: str | os.PathLike, resume: str | None, overwrite: bool = False) -> None:
    """Before a fresh run (no ``resume``): refuse an ``output_dir`` that holds another run's checkpoints, whose logs
    would mix with this run's and whose checkpoints ``--resume latest`` would later pick, unless ``overwrite``
    (then the caller deletes them, see :func:`_clear_previous_run`)."""
    if resume is not None or overwrite:
        return
    done = _checkpoints(Path(output_dir) / "checkpoints")
    if done:
        raise FileExistsError(
            f"output_dir {str(output_dir)!r} already holds checkpoints of a run ({done[0].name} ... {done[-1].name}). "
            "Continue that run with --resume latest, choose another output_dir, or pass --overwrite to delete them "
            "and start afresh."
        )


def _clear_previous_run(out: Path) -> None:
    """A fresh run's ``output_dir``: earlier checkpoints (allowed by ``overwrite``) and metrics go."""
    for old in _checkpoints(out / "checkpoints"):
        shutil.rmtree(old)
    (out / "logs" / "metrics.jsonl").unlink(missing_ok=True)


def _trim_metrics(logs: Path, step: int) -> None:
    """On resume, drop the records of steps after the checkpoint (logged before the interruption; they are redone)."""
    if not logs.is_file():
        return
    lines = logs.read_text(encoding="utf-8").splitlines()
    kept = []
    for line in lines:
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a line cut by the interruption
    tmp = logs.with_name(logs.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    os.replace(tmp, logs)


def _apply_learning_rates(optimizer, lr_scheduler, lrs: list[float]) -> None:
    """After a resume, the run's learning rates (the checkpoint's state holds the old ones) on the restored schedule
    position: each group's lr is its new base rate times the (new) schedule's factor at the restored step."""
    lambdas = getattr(lr_scheduler, "lr_lambdas", None)
    if lambdas is None:
        return
    lr_scheduler.base_lrs = list(lrs)
    for group, base, factor in zip(optimizer.param_groups, lrs, lambdas):
        group["initial_lr"] = base
        group["lr"] = base * factor(lr_scheduler.last_epoch)
    lr_scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def find_checkpoint(output_dir: str | os.PathLike, resume: str) -> Path:
    """``resume`` is ``"latest"`` or a checkpoint folder."""
    if resume != "latest":
        path = Path(resume)
        if not (path / "trainer_state.json").is_file():
            raise FileNotFoundError(f"{path} is not a checkpoint folder (no trainer_state.json).")
        return path
    root = Path(output_dir) / "checkpoints"
    done = _checkpoints(root)
    if not done:
        raise FileNotFoundError(f"--resume latest: no checkpoint in {root}.")
    return done[-1]


# settings that only say where and how often to write things: changing them on resume changes no training
_BOOKKEEPING = {"output_dir", "checkpointing_steps", "checkpoints_total_limit", "validation_prompts",
                "validation_steps", "log_every", "report_to"}


def config_changes(then: dict[str, Any], now: dict[str, Any], prefix: str = "") -> list[str]:
    """``"key: old -> new"`` for every setting (nested ones as ``data.key``) that differs between a checkpoint's
    config ``then`` and the run's ``now``, bookkeeping settings left out. A key only one side has shows as missing."""
    out = []
    for key in sorted(set(then) | set(now)):
        if not prefix and key in _BOOKKEEPING:
            continue
        a, b = then.get(key, "<missing>"), now.get(key, "<missing>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_changes(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def _load_checkpoint(path: Path, model: Denoiser, optimizer, groups: list[list[torch.Tensor]], lr_scheduler,
                     ema: EMA | None, noise_scheduler=None) -> tuple[int, list, dict]:
    """Restore a checkpoint into the run; returns its step, loss history and config. When the run now trains another
    target than the checkpoint did (epsilon vs v-prediction, e.g. a run continued with ``prediction_type:
    v_prediction``), the EMA restarts from the restored weights: an average of weights trained for two different
    targets predicts neither."""
    from safetensors.torch import load_file

    files: dict[str, Any] = {}
    name = ""
    try:  # reading: a file that cannot be read is damaged
        for name, read in [("trained.safetensors", load_file), ("ema.safetensors", load_file),
                           ("optimizer.pt", _torch_load), ("lr_scheduler.pt", _torch_load),
                           ("trainer_state.json", lambda f: json.loads(f.read_text()))]:
            if name == "ema.safetensors" and (ema is None or not (path / name).is_file()):
                continue
            files[name] = read(path / name)
    except Exception as err:
        earlier = [p for p in _checkpoints(path.parent) if p.name < path.name]
        before = f"the previous checkpoint is {earlier[-1]}" if earlier else "there is no earlier checkpoint"
        raise ValueError(f"Cannot resume from {path}: {name} is damaged ({type(err).__name__}: {err}); {before}."
                         ) from err
    trained, state = files["trained.safetensors"], files["trainer_state.json"]
    try:
        own = _trainable(model)
        missing = sorted(set(own) - set(trained))
        if missing:
            raise ValueError(f"the checkpoint lacks {len(missing)} trained tensors, e.g. {missing[:3]}")
        load_weights(own, trained)
        if "ema.safetensors" in files:
            ema.load_whole(files["ema.safetensors"], own)
        load_optimizer_state(optimizer, files["optimizer.pt"], groups)
        lr_scheduler.load_state_dict(files["lr_scheduler.pt"])
        if ema is not None:
            ema.start = int(state.get("ema_start") or 0)
            if noise_scheduler is not None:
                base = getattr(noise_scheduler, "base_prediction_type", noise_scheduler.config.prediction_type)
                then = state.get("prediction_type") or state["config"].get("prediction_type") or base
                now = noise_scheduler.config.prediction_type
                if then != now:
                    ema.restart(own, int(state["step"]))
                    print(f"{path.name} was trained for {then}; this run trains {now}: the EMA restarts here.")
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        raise ValueError(
            f"Cannot resume from {path}: {err}. The checkpoint is incomplete or from another config."
        ) from err
    return int(state["step"]), list(state.get("losses", [])), state.get("config") or {}


def _torch_load(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True)


# ---------------------------------------------------------------------- outputs
def _build_pipeline(cfg, unet, adapter, vae, text: ClipText, llm, noise_scheduler):
    from diffusers import DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    scheduler = DDIMScheduler.from_config(noise_scheduler.config)
    common = dict(vae=vae, text_encoder=text.encoders[0], tokenizer=text.tokenizers[0], unet=unet, scheduler=scheduler)
    if text.xl:
        common.update(text_encoder_2=text.encoders[1], tokenizer_2=text.tokenizers[1], add_watermarker=False)
        if llm is None:
            return StableDiffusionXLPipeline(**common)
        return LLM4GenXLPipeline(**common, llm_encoder=llm, adapter=adapter,
                                 use_llm_attention_mask=cfg.use_llm_attention_mask)
    common.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    if llm is None:
        return StableDiffusionPipeline(**common)
    return LLM4GenPipeline(**common, llm_encoder=llm, adapter=adapter,
                           use_llm_attention_mask=cfg.use_llm_attention_mask)


@contextlib.contextmanager
def _swapped(model: Denoiser, params: dict[str, torch.Tensor] | None):
    """Temporarily load ``params`` (e.g. EMA weights) into the model."""
    if params is None:
        yield
        return
    own = _trainable(model)
    backup = {k: v.detach().clone() for k, v in own.items()}
    with torch.no_grad():
        for k, p in own.items():
            p.copy_(params[k])
    try:
        yield
    finally:
        with torch.no_grad():
            for k, p in own.items():
                p.copy_(backup[k])


def _validate(cfg, step, model, pipeline_parts, out: Path) -> Path | None:
    if not cfg.validation_prompts:
        return None

    pipe = _build_pipeline(cfg, model.unet, model.adapter, *pipeline_parts)
    pipe.set_progress_bar_config(disable=True)
    images = []
    for i, prompt in enumerate(cfg.validation_prompts):
        g = torch.Generator().manual_seed(cfg.seed + i)
        images.append(pipe(prompt, num_inference_steps=cfg.validation_num_inference_steps,
                           guidance_scale=cfg.validation_guidance_scale, generator=g,
                           height=cfg.resolution, width=cfg.resolution).images[0])
    target = out / "validation" / f"step-{step:08d}.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    make_grid(images, captions=list(cfg.validation_prompts), cell=max(128, cfg.resolution)).save(target)
    return target


# ---------------------------------------------------------------------- the run
def _has_accelerator() -> bool:
    probe = getattr(torch, "accelerator", None)
    if probe is not None and hasattr(probe, "is_available"):
        return bool(probe.is_available())
    return torch.cuda.is_available()


def _fused_positions(token_pairs_: list[tuple[int, int]], shift: int, limit: int) -> list[tuple[int, int]]:
    """Token pairs moved into the fused (CLIP + LLM) sequence, keeping only tokens below ``limit`` (the length of
    the token sequence they index)."""
    return [(a + shift, b + shift) for a, b in token_pairs_ if max(a, b) < limit]


@dataclass
class TokenSpace:
    """One token sequence the entity loss reads: its tokenizer (fast, for offsets), the prefix put before each
    caption, where its tokens start in the fused sequence the UNet attends to (``shift``), and how many of them the
    UNet sees (``limit``: CLIP's window, or the batch's padded LLM length)."""

    tokenizer: Any
    prefix: str
    shift: int
    limit: int


def entity_targets(captions: list[str], spaces: list[TokenSpace], parser: str = "rule", negatives: bool = False
                   ) -> tuple[list, list | None]:
    """Per caption, the entity loss's token pairs and push pairs (with ``negatives``), in fused-sequence positions,
    pooled over ``spaces``."""
    pairs: list[list[tuple[int, int]]] = [[] for _ in captions]
    pushed: list[list[tuple[int, int]]] | None = [[] for _ in captions] if negatives else None
    for sp in spaces:
        # truncated to the window as the encoder was, so the last slot holds its end token, not a word
        offsets = sp.tokenizer([sp.prefix + c for c in captions], return_offsets_mapping=True, truncation=True,
                               max_length=sp.limit)["offset_mapping"]
        for i, (c, o) in enumerate(zip(captions, offsets)):
            p, n = token_bindings(c, o, len(sp.prefix), parser)
            pairs[i] += _fused_positions(p, sp.shift, sp.limit)
            if pushed is not None:
                pushed[i] += _fused_positions(n, sp.shift, sp.limit)
    return pairs, pushed


def _accelerator(cfg: TrainConfig):
    from accelerate import Accelerator

    # accelerate keeps one global state per process; a second run in the same (single-process) Python session, e.g.
    # with another mixed_precision, starts from a clean one
    if not torch.distributed.is_initialized():
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)
    if _has_accelerator():
        return Accelerator(mixed_precision=cfg.mixed_precision)
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        # accelerate starts DeepSpeed only for cpu=False; without a GPU, DeepSpeed's CPU accelerator over gloo
        from accelerate.utils import InitProcessGroupKwargs

        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        gloo = InitProcessGroupKwargs(backend="gloo")
        return Accelerator(mixed_precision=cfg.mixed_precision, kwargs_handlers=[gloo])
    # without a GPU, run on the CPU; under torchrun / `accelerate launch --multi_gpu` that is gloo across processes
    return Accelerator(mixed_precision=cfg.mixed_precision, cpu=True)


def _load_llm(cfg: TrainConfig) -> LLMEncoder | None:
    if cfg.llm is None:
        return None
    return LLMEncoder.from_pretrained(
        cfg.llm, max_length=cfg.llm_max_length, padding=cfg.llm_padding, prefix=cfg.llm_prefix,
        hidden_layer=cfg.llm_hidden_layer, dtype=getattr(torch, cfg.llm_dtype), trust_remote_code=cfg.trust_remote_code,
    )


def build_cache(cfg: TrainConfig, batch_size: int | None = None, progress: bool = True) -> CacheBuildResult:
    """Precompute the frozen features of ``cfg``'s dataset into ``cfg.cache_dir``: CLIP and LLM features of each
    caption (and of the empty caption that caption dropout uses), and the VAE latent distribution of each image (both
    flips with ``data.random_flip``). Under ``accelerate launch`` each process takes the items that the training split
    rule gives it (:func:`~llm4gen.training.data.epoch_items`). Entries already in the cache are read, not computed,
    so a build that was interrupted goes on where its last shard ended."""
    if not cfg.cache_dir:
        raise ValueError("The config has no cache_dir: set cache_dir (e.g. --set cache_dir=runs/cache) to build a "
                         "feature cache.")
    accelerator = _accelerator(cfg)
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    text, vae, _ = _load_frozen(cfg)
    llm = _load_llm(cfg)
    for model in (text, vae, llm):
        if model is not None:
            model.to(device)
    source = make_source(cfg.data, cfg.resolution)
    B = batch_size or cfg.train_batch_size
    mine = epoch_items(len(source), cfg.train_batch_size, world, rank, cfg.data.seed + cfg.seed)
    cache = FeatureCache(cfg.cache_dir, dtype=CACHE_DTYPES[cfg.cache_dtype])
    feats = Features(cfg, text, vae, llm, cache, device)
    flips = (False, True) if cfg.data.random_flip else (False,)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    zero = torch.zeros(vae.config.latent_channels, cfg.resolution // factor, cfg.resolution // factor)
    bar = task = None
    if progress and accelerator.is_main_process:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        bar = Progress(TextColumn("cache"), BarColumn(), TextColumn("{task.completed}/{task.total} items"),
                       TimeRemainingColumn(), transient=False)
        task = bar.add_task("cache", total=len(mine) * world)  # the main process's share stands for all
        bar.start()
    t_start = time.time()
    try:
        for start in range(0, len(mine), B):
            examples = [source[i] for i in mine[start : start + B]]
            captions = [ex.caption for ex in examples] + ([""] if start == 0 and rank == 0 else [])
            feats.clip(captions)
            if llm is not None:
                feats.llm_features(captions)
            for flip in flips:
                feats.latents([ex.load_image for ex in examples], [ex.key for ex in examples], [flip] * len(examples),
                              zero.expand(len(examples), *zero.shape))
            if bar is not None:
                bar.update(task, completed=(start + len(examples)) * world)
    finally:
        cache.close()
        if bar is not None:
            bar.stop()
    accelerator.wait_for_everyone()
    seconds = time.time() - t_start
    parts = {name: cache.size(ns) for name, ns in (("clip", feats.ns_clip), ("llm", feats.ns_llm),
                                                     ("vae", feats.ns_vae)) if ns}
    return CacheBuildResult(Path(cfg.cache_dir), len(source), sum(e for e, _ in parts.values()),
                            sum(b for _, b in parts.values()), seconds, parts, accelerator.is_main_process)


def train(
    cfg: TrainConfig,
    resume: str | None = None,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
    overwrite: bool = False,
) -> TrainResult:
    """Run training as configured; ``resume`` = ``"latest"`` or a checkpoint folder continues a run.

    A fresh run refuses an ``output_dir`` that holds another run's checkpoints unless ``overwrite``, which deletes
    them (and the old ``logs/metrics.jsonl``) first.

    ``on_step(step, loss)`` is called on the main process after each optimisation step (and after its checkpoint);
    raising from it stops the run, as an interruption would.
    """
    from diffusers.optimization import get_scheduler

    accelerator = _accelerator(cfg)
    check_distributed(accelerator, cfg)
    split = splits_state(accelerator)  # FSDP, DeepSpeed: each process holds part of the trained state
    if accelerator.is_main_process and accelerator.num_processes > 1:
        print(f"training on {describe(accelerator)} ({accelerator.device.type})")
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    out = Path(cfg.output_dir)
    check_output_dir(out, resume, overwrite)  # before any model loads
    if resume is not None:
        find_checkpoint(out, resume)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        if resume is None:
            _clear_previous_run(out)
        (out / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    torch.manual_seed(cfg.seed)

    # frozen models
    text, vae, noise_scheduler = _load_frozen(cfg)
    clip_dim = text.width
    llm = _load_llm(cfg)
    text.to(device)
    vae.to(device)
    if llm is not None:
        llm.to(device)

    # trained models
    model = _trained_model(cfg, clip_dim, llm)
    unet, adapter = model.unet, model.adapter
    store = None
    if cfg.entity_loss_weight > 0:
        store = AttentionStore(cfg.entity_loss_max_resolution)
        install_attention_store(unet, store)

    groups = []
    unet_params = [p for p in unet.parameters() if p.requires_grad]
    if unet_params:
        groups.append({"params": unet_params, "lr": cfg.learning_rate})
    if adapter is not None:
        groups.append({"params": list(adapter.parameters()), "lr": cfg.adapter_learning_rate or cfg.learning_rate})
    if not groups:
        raise ValueError("Nothing to train: no LLM (no adapter) and train_unet is 'frozen'.")
    optimizer = torch.optim.AdamW(groups, betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.adam_weight_decay,
                                  eps=cfg.adam_epsilon)
    lr_scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.lr_warmup_steps,
                                 num_training_steps=cfg.max_train_steps)
    run_lrs = list(lr_scheduler.base_lrs)
    group_params = [list(g["params"]) for g in groups]  # DeepSpeed's ZeRO swaps them for flat partitions
    model, optimizer = accelerator.prepare(model, optimizer)
    raw = accelerator.unwrap_model(model)
    # after prepare: under FSDP the average is of each process's shard, like the parameters it follows
    ema = EMA(_trainable(raw), cfg.ema_decay) if cfg.use_ema else None

    start_step, losses = 0, []
    if resume is not None:
        ckpt = find_checkpoint(out, resume)
        start_step, losses, then = _load_checkpoint(ckpt, raw, optimizer, group_params, lr_scheduler, ema,
                                                    noise_scheduler)
        losses = losses[:start_step]
        _apply_learning_rates(optimizer, lr_scheduler, run_lrs)  # this run's rates, not the checkpoint's
        if accelerator.is_main_process:
            print(f"resumed from {ckpt} at step {start_step}")
            changed = config_changes(then, cfg.to_dict())
            if changed:
                print(f"Settings changed since {ckpt.name} (training goes on from its state with the new ones): "
                      + "; ".join(changed))

    source = make_source(cfg.data, cfg.resolution)
    cache = FeatureCache(cfg.cache_dir, dtype=CACHE_DTYPES[cfg.cache_dtype]) if cfg.cache_dir else None
    feats = Features(cfg, text, vae, llm, cache, device)
    # whose attention maps the entity loss reads: the LLM tokens by default, CLIP's window without an LLM
    loss_spaces = {"auto": ("llm",) if llm is not None else ("clip",), "llm": ("llm",), "clip": ("clip",),
                   "both": ("clip", "llm")}[cfg.entity_loss_tokens]
    # the fused sequence: the CLIP window then the LLM tokens (clip_first), or the other way round
    clip_first = adapter is None or adapter.config.concat_order == "clip_first"

    def loss_token_spaces(n_llm: int) -> dict[str, TokenSpace]:
        """The token sequences the entity loss reads, for a batch whose padded LLM sequence has ``n_llm`` tokens."""
        where = {"clip": TokenSpace(text.tokenizers[0], "", 0 if clip_first else n_llm, text.num_tokens)}
        if llm is not None:
            where["llm"] = TokenSpace(llm.tokenizer, cfg.llm_prefix, text.num_tokens if clip_first else 0, n_llm)
        return {name: where[name] for name in loss_spaces}

    if store is not None:
        for name, space in loss_token_spaces(0).items():
            if not getattr(space.tokenizer, "is_fast", False):
                raise ValueError(f"The entity loss on the {name.upper()} tokens needs a fast tokenizer (offset "
                                 f"mappings); {type(space.tokenizer).__name__} is not one. Use entity_loss_tokens "
                                 "to pick another.")

    logs = out / "logs" / "metrics.jsonl"
    writer = None
    if accelerator.is_main_process:
        logs.parent.mkdir(parents=True, exist_ok=True)
        _trim_metrics(logs, start_step)
        if cfg.report_to == "tensorboard":
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise ImportError(
                    "report_to: tensorboard needs the tensorboard package: pip install tensorboard."
                ) from err
            writer = SummaryWriter(log_dir=str(out / "logs" / "tensorboard"))
    bar = None
    if progress and accelerator.is_main_process:
        bar, task = loss_progress("train", cfg.max_train_steps, completed=start_step, samples_per_s=True,
                                  transient=False)

    A, B = cfg.gradient_accumulation_steps, cfg.train_batch_size
    G = B * world  # the global batch
    n_train_t = noise_scheduler.config.num_train_timesteps
    t_weights = None  # uniform draws keep torch.randint, so runs without a bias draw exactly what they always did
    if cfg.timestep_bias != "none":
        t_weights = timestep_weights(n_train_t, cfg.timestep_bias, cfg.timestep_bias_multiplier,
                                     cfg.timestep_bias_portion, cfg.timestep_bias_range).float()

    def draw_timesteps(g: torch.Generator) -> torch.Tensor:
        if t_weights is None:
            return torch.randint(0, n_train_t, (G,), generator=g)
        return torch.multinomial(t_weights, G, replacement=True, generator=g)
    # SDXL micro-conditioning: original size, crop offset, target size (center crops of square images)
    time_ids = torch.tensor([[cfg.resolution, cfg.resolution, 0, 0, cfg.resolution, cfg.resolution]] * B,
                            dtype=torch.float32, device=device)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    latent_shape = (vae.config.latent_channels, cfg.resolution // factor, cfg.resolution // factor)

    def draw(batch_number: int, purpose: str, fn):
        """Draw for the whole global batch from a generator seeded by (seed, batch, purpose); callers take their
        rows. One process with batch 2B and two with B therefore get identical randomness."""
        return fn(step_generator(cfg.seed, batch_number, purpose))

    whole_copy: list[Denoiser] = []  # under FSDP and DeepSpeed, the main process's whole model to sample and save

    def whole_model(where) -> Denoiser | None:
        """The trained weights (the EMA's when EMA is on) gathered whole, in fp32, into a model as the config builds
        it, on the main process (a collective under FSDP and DeepSpeed: every process calls it)."""
        main = accelerator.is_main_process
        weights = ema.whole(keep=main) if ema is not None else full_weights(_trainable(raw), keep=main)
        if not main:
            return None
        if not whole_copy:
            with torch.random.fork_rng(devices=[]):  # built on the CPU, its random initialisation is overwritten
                whole_copy.append(_trained_model(cfg, clip_dim, llm))
        missing, unexpected = whole_copy[0].load_state_dict(weights, strict=False)
        assert not unexpected and set(missing).isdisjoint(_trainable(whole_copy[0])), (missing, unexpected)
        return whole_copy[0].to(where)

    # DeepSpeed casts the trained weights themselves to bf16 (and accelerate's autocast is off under it): the
    # features go in at their dtype
    weight_dtype = raw.unet.dtype if uses_deepspeed(accelerator) else None

    def cast(t: torch.Tensor | None) -> torch.Tensor | None:
        return t if t is None or weight_dtype is None else t.to(weight_dtype)

    t_start, samples = time.time(), 0
    model.train()
    try:
        for step in range(start_step, cfg.max_train_steps):
            step_loss = torch.zeros((), device=device)
            parts = {"diffusion": 0.0, "entity": 0.0}
            for micro in range(A):
                b = step * A + micro
                idx = batch_indices(b, len(source), B, world, rank, cfg.data.seed + cfg.seed)
                examples = [source[i] for i in idx]
                mine = slice(rank * B, (rank + 1) * B)  # this process's rows of the global batch's draws
                drop = draw(b, "dropout", lambda g: torch.rand(G, generator=g))[mine] < cfg.caption_dropout
                captions = ["" if d else ex.caption for ex, d in zip(examples, drop.tolist())]
                flips = [False] * B
                if cfg.data.random_flip:
                    flips = (draw(b, "flip", lambda g: torch.rand(G, generator=g))[mine] < 0.5).tolist()
                eps = draw(b, "latent", lambda g: torch.randn((G, *latent_shape), generator=g))[mine]
                latents = feats.latents([ex.load_image for ex in examples], [ex.key for ex in examples], flips, eps)
                clip, pooled = feats.clip(captions)
                llm_feats = llm_mask = None
                if llm is not None:
                    llm_feats, llm_mask = feats.llm_features(captions)
                noise = draw(b, "noise", lambda g: torch.randn((G, *latent_shape), generator=g))[mine]
                if cfg.noise_offset:
                    offset = draw(b, "offset", lambda g: torch.randn((G, latent_shape[0], 1, 1), generator=g))[mine]
                    noise = noise + cfg.noise_offset * offset
                noise = noise.to(device)
                timesteps = draw(b, "timesteps", draw_timesteps)[mine]
                timesteps = timesteps.to(device)
                noisy = noise_scheduler.add_noise(latents, noise, timesteps)
                if noise_scheduler.config.prediction_type == "v_prediction":
                    target = noise_scheduler.get_velocity(latents, noise, timesteps)
                else:
                    target = noise
                if store is not None:
                    store.reset()
                    store.active = True
                sync = contextlib.nullcontext() if micro == A - 1 else accelerator.no_sync(model)
                with sync:
                    with accelerator.autocast():
                        pred = model(cast(noisy), timesteps, cast(clip), cast(llm_feats), llm_mask, cast(pooled),
                                     cast(time_ids) if pooled is not None else None,
                                     drop.to(device) if text.xl else None)
                        loss_d = diffusion_loss(pred, target, timesteps, noise_scheduler, cfg.snr_gamma)
                        loss = loss_d
                        if store is not None:
                            spaces = loss_token_spaces(llm_feats.shape[1] if llm is not None else 0)
                            pairs, negatives = entity_targets(
                                captions, list(spaces.values()), cfg.entity_parser, cfg.entity_loss_negatives)
                            loss_e = entity_loss(store.maps, pairs, negatives)
                            loss = loss + cfg.entity_loss_weight * loss_e
                            parts["entity"] += loss_e.item() / A
                            store.active = False
                    if not torch.isfinite(loss):
                        raise TrainingDivergedError(
                            f"The loss became {loss.item()} at step {step + 1} (micro-batch {micro + 1}); "
                            f"stopping: {_last_checkpoint_note(out / 'checkpoints')}. Try a lower learning rate, "
                            "mixed_precision: no, or max_grad_norm."
                        )
                    accelerator.backward(loss / A)
                step_loss += loss.detach() / A
                parts["diffusion"] += loss_d.item() / A
            if cfg.max_grad_norm:
                accelerator.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update(_trainable(raw), step)
            # the loss and its parts, averaged over the processes (one collective)
            step_parts = torch.stack([step_loss, torch.tensor(parts["diffusion"], device=device),
                                      torch.tensor(parts["entity"], device=device)])
            mean_loss, parts["diffusion"], parts["entity"] = accelerator.reduce(step_parts, reduction="mean").tolist()
            losses.append(mean_loss)
            samples += A * B * world
            done = step + 1
            sps = samples / max(time.time() - t_start, 1e-9)
            if bar is not None:
                bar.update(task, completed=done, loss=mean_loss, sps=sps)
            if accelerator.is_main_process and (done % cfg.log_every == 0 or done == cfg.max_train_steps):
                record = {"step": done, "loss": mean_loss, "loss_diffusion": parts["diffusion"],
                          "loss_entity": parts["entity"], "lr": lr_scheduler.get_last_lr()[0],
                          "samples_per_s": round(sps, 2), "llm_truncated": feats.truncated,
                          "elapsed_s": round(time.time() - t_start, 1)}
                with open(logs, "a", encoding="utf-8") as f:
                    f.write(json.dumps(record) + "\n")
                if writer is not None:
                    for name in ("loss", "loss_diffusion", "loss_entity", "lr", "samples_per_s"):
                        writer.add_scalar(f"train/{name}", record[name], done)
            if done % cfg.checkpointing_steps == 0 or done == cfg.max_train_steps:
                if cache is not None:
                    cache.flush()  # the features computed so far outlive an interruption, like the weights
                accelerator.wait_for_everyone()
                _save_checkpoint(accelerator, out, done, raw, optimizer, group_params, lr_scheduler, ema, cfg, losses,
                                 noise_scheduler.config.prediction_type)
            if cfg.validation_prompts and done % cfg.validation_steps == 0:
                # the pipeline runs the UNet and CAM on one process: under FSDP and DeepSpeed a whole fp32 copy
                shown = whole_model(device) if split else raw
                if accelerator.is_main_process:
                    with _swapped(shown, ema.shadow if ema is not None and not split else None):
                        shown.eval()
                        _validate(cfg, done, shown, (vae, text, llm, noise_scheduler), out)
                        shown.train()
            if on_step is not None and accelerator.is_main_process:
                on_step(done, mean_loss)
    finally:
        if cache is not None:
            cache.flush()
        if bar is not None:
            bar.stop()
        if writer is not None:
            writer.close()

    # the final pipeline folder, with EMA weights when EMA is on
    accelerator.wait_for_everyone()
    if ema is not None and not split:
        load_weights(_trainable(raw), ema.shadow)
    final = whole_model("cpu") if split else raw
    if accelerator.is_main_process:
        final_unet = final.unet
        if cfg.train_unet == "lora":
            from diffusers import StableDiffusionPipeline
            from peft.utils import get_peft_model_state_dict

            lora_layers = get_peft_model_state_dict(final_unet)
            StableDiffusionPipeline.save_lora_weights(out / "lora", unet_lora_layers=lora_layers)
            final_unet.fuse_lora()
            final_unet.unload_lora()
        pipe = _build_pipeline(cfg, final_unet, final.adapter, vae, text, llm, noise_scheduler)
        pipe.save_pretrained(out)
    accelerator.wait_for_everyone()
    if feats.truncated and accelerator.is_main_process:
        warnings.warn(
            f"{feats.truncated} of {feats.encoded} captions encoded in this run were longer than llm_max_length="
            f"{cfg.llm_max_length} tokens and were cut; raise llm_max_length to keep them whole.",
            PromptTruncationWarning,
            stacklevel=2,
        )
    elapsed = max(time.time() - t_start, 1e-9)
    return TrainResult(out, cfg.max_train_steps, losses, samples / elapsed,
                       cache.hits if cache else 0, cache.misses if cache else 0, accelerator.is_main_process)

