"""On-disk cache of frozen-model outputs (CLIP features, LLM features, VAE latent distributions).

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
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

__all__ = ["FeatureCache", "model_fingerprint"]


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
