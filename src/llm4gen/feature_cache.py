"""Caches of frozen-model outputs, keyed by the model and the exact input.

:class:`FeatureCache` is the on-disk cache the trainer keeps of CLIP features, LLM features and VAE latent
distributions; :class:`PromptCache` is the pipelines' cache of per-prompt LLM features (an in-memory LRU in front of
an optional :class:`FeatureCache`), so repeated prompts (benchmark runs, negative prompts, batches of seeds, an app's
re-renders) do not run the LLM again.

Every entry is keyed by the *identity of the model and its settings* (a namespace) plus the *input itself* (the caption
text, or an image's content key), hashed with SHA-256: a changed caption, a different LLM, another max_length or a
re-saved VAE all miss the cache instead of being served stale features. Entries are safetensors files written to a
temporary name and renamed into place, so concurrent processes and interrupted runs never leave half-written entries.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

__all__ = ["FeatureCache", "PromptCache", "encoder_namespace", "model_fingerprint"]


def model_fingerprint(module: torch.nn.Module, source: str | None, **settings: Any) -> str:
    """A namespace for a frozen model: where it came from, its config, a checksum of its weights, and the settings
    that change its outputs."""
    h = hashlib.sha256()
    h.update(str(source).encode())
    config = getattr(module, "config", None)
    if config is not None:
        cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, p in sorted(module.state_dict().items()):
            h.update(name.encode())
            flat = p.detach().flatten()
            step = max(1, flat.numel() // 64)  # a strided sample of every tensor: cheap and weight-sensitive
            h.update(flat[::step].float().cpu().numpy().tobytes())
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return h.hexdigest()[:24]


class FeatureCache:
    """A directory of cached tensors: ``get(namespace, key)`` / ``put(namespace, key, tensors)``."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.hits = 0
        self.misses = 0

    def _path(self, namespace: str, key: str) -> Path:
        digest = hashlib.sha256(f"{namespace}\x00{key}".encode()).hexdigest()
        return self.root / namespace[:24] / digest[:2] / f"{digest}.safetensors"

    def get(self, namespace: str, key: str) -> dict[str, torch.Tensor] | None:
        path = self._path(namespace, key)
        if not path.is_file():
            self.misses += 1
            return None
        try:
            value = load_file(path)
        except Exception:  # a damaged entry is recomputed, never trusted
            self.misses += 1
            return None
        self.hits += 1
        return value

    def put(self, namespace: str, key: str, tensors: dict[str, torch.Tensor]) -> None:
        path = self._path(namespace, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        try:
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


# ---------------------------------------------------------------------- the pipelines' prompt cache
# Entries are keyed by a fingerprint of the LLM (its reference, config, a checksum of its weights and the encoder
# settings: max_length, padding, prefix, layer) plus the exact prompt text, and hold the prompt's features as the
# encoder gives them for that prompt alone: trimmed to its real tokens with ``padding="longest"``, full length with
# ``padding="max_length"`` (the authors' fixed 256 tokens).
def encoder_namespace(encoder) -> str:
    """The cache namespace of an :class:`~llm4gen.LLMEncoder`: its weights' fingerprint (computed once per encoder
    object) and its current settings."""
    weights = getattr(encoder, "_llm4gen_weights_fingerprint", None)
    if weights is None:
        weights = model_fingerprint(encoder.model, encoder.config.model_name_or_path)
        encoder._llm4gen_weights_fingerprint = weights
    c = encoder.config
    settings = f"{c.max_length}|{c.padding}|{c.prefix}|{c.hidden_layer}|{encoder.dtype}"
    if getattr(c, "truncation", "tokenizer") != "tokenizer":  # keys of the default rule stay as they were
        settings += f"|{c.truncation}"
    return f"llm-{weights}-{hashlib.sha256(settings.encode()).hexdigest()[:12]}"


class PromptCache:
    """LRU of ``max_entries`` prompts in memory, backed by ``cache_dir`` on disk when given."""

    def __init__(self, max_entries: int = 256, cache_dir: str | os.PathLike | None = None) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries}.")
        self.max_entries = max_entries
        self.disk = FeatureCache(cache_dir) if cache_dir is not None else None
        self._memory: OrderedDict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._memory)

    def get(self, namespace: str, text: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        key = (namespace, text)
        if key in self._memory:
            self._memory.move_to_end(key)
            self.hits += 1
            return self._memory[key]
        if self.disk is not None:
            entry = self.disk.get(namespace, text)
            if entry is not None:
                self.hits += 1
                value = (entry["embeds"], entry["mask"])
                self._remember(key, value)
                return value
        self.misses += 1
        return None

    def put(self, namespace: str, text: str, embeds: torch.Tensor, mask: torch.Tensor) -> None:
        value = (embeds.detach().cpu(), mask.detach().cpu())
        self._remember((namespace, text), value)
        if self.disk is not None:
            self.disk.put(namespace, text, {"embeds": value[0], "mask": value[1]})

    def _remember(self, key: tuple[str, str], value: tuple[torch.Tensor, torch.Tensor]) -> None:
        self._memory[key] = value
        self._memory.move_to_end(key)
        while len(self._memory) > self.max_entries:
            self._memory.popitem(last=False)

    def clear(self) -> None:
        self._memory.clear()
