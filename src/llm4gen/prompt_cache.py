"""A cache of per-prompt LLM features for inference: repeated prompts (benchmark runs, negative prompts, batches of
seeds, an app's re-renders) do not run the LLM again.

Entries are keyed by a fingerprint of the LLM (its reference, config, a checksum of its weights and the encoder
settings: max_length, padding, prefix, layer) plus the exact prompt text, and hold the prompt's features as the
encoder gives them for that prompt alone: trimmed to its real tokens with ``padding="longest"``, full length with
``padding="max_length"`` (the authors' fixed 256 tokens). An in-memory LRU sits in front of an optional on-disk cache.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict

import torch

from .training.cache import FeatureCache, model_fingerprint

__all__ = ["PromptCache", "encoder_namespace"]


def encoder_namespace(encoder) -> str:
    """The cache namespace of an :class:`~llm4gen.LLMEncoder`: its weights' fingerprint (computed once per encoder
    object) and its current settings."""
    weights = getattr(encoder, "_llm4gen_weights_fingerprint", None)
    if weights is None:
        weights = model_fingerprint(encoder.model, encoder.config.model_name_or_path)
        encoder._llm4gen_weights_fingerprint = weights
    c = encoder.config
    settings = f"{c.max_length}|{c.padding}|{c.prefix}|{c.hidden_layer}|{encoder.dtype}"
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
