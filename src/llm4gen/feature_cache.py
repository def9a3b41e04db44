"""Caches of frozen-model outputs, keyed by the model and the exact input.

:class:`FeatureCache` is the on-disk cache the trainer keeps of CLIP features, LLM features and VAE latent
distributions; :class:`PromptCache` is the pipelines' cache of per-prompt LLM features (an in-memory LRU in front of
an optional :class:`FeatureCache`), so repeated prompts (benchmark runs, negative prompts, batches of seeds, an app's
re-renders) do not run the LLM again.

Every entry is keyed by the *identity of the model and its settings* (a namespace) plus the *input itself* (the caption
text, or an image's content key), hashed with SHA-256: a changed caption, a different LLM, another max_length or a
re-saved VAE all miss the cache instead of being served stale features.

On disk (format 2) the entries of a namespace live in a few large safetensors *shards*,
``<root>/shards/<namespace>/<dtype>/shard-*.safetensors``. Each shard carries its own index (entry digest -> tensor
names) in its safetensors header, so the set of shards *is* the index: there is no shared file to lock, and several
processes (or machines on a shared file system) add shards side by side. A shard is written to a temporary name and
renamed into place, so it is complete or absent; a build that is interrupted keeps every shard it finished and a
rerun computes only the rest. Shards are read through ``safe_open`` (memory mapped): opening a cache reads headers,
never the tensors. Floating-point tensors are stored in ``dtype`` (bfloat16 by default, float32 on request) and
:meth:`FeatureCache.put` returns the tensors exactly as a later :meth:`~FeatureCache.get` will give them back, so a
run that fills the cache and a run that reads it compute with bit-identical features.

LLM features are stored as the prompt's real tokens only (``[n, D]``, the count ``n`` is the row length);
:func:`llm_entry` and :func:`llm_batch` drop and rebuild the padding and mask exactly as the encoder pads (right
padding, mask ``1`` for the ``n`` real tokens). Format 1 (one file per entry, ``<root>/<ns>/<xx>/<digest>.safetensors``,
up to 0.2) is not read: a cache folder holding it says so once and its features are computed again into shards.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import uuid
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

__all__ = ["CACHE_DTYPES", "FeatureCache", "PromptCache", "encoder_namespace", "llm_batch", "llm_entry",
           "model_fingerprint"]

CACHE_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
SHARD_DIR = "shards"
_INDEX_KEY = "llm4gen_index"


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
    """Sharded cache of tensors: ``get(namespace, key)`` / ``put(namespace, key, tensors)``, ``flush()`` to write.

    Args:
        root: the cache folder (created if missing).
        dtype: floating-point tensors are stored in this dtype (``None`` keeps each tensor's own); integer tensors are
            kept as they are.
        shard_bytes: entries are buffered in memory and written as one shard when they reach this many bytes (and on
            :meth:`flush`); 0 writes every ``put`` at once (the prompt cache).
        max_open: shards kept open (memory mapped) at a time.
    """

    def __init__(self, root: str | os.PathLike, dtype: torch.dtype | None = torch.bfloat16,
                 shard_bytes: int = 256 << 20, max_open: int = 64) -> None:
        if dtype is not None and not dtype.is_floating_point:
            raise ValueError(f"The cache dtype must be a floating-point dtype (bfloat16, float32), got {dtype}.")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.dtype, self.shard_bytes, self.max_open = dtype, shard_bytes, max_open
        self.hits = self.misses = 0
        self.bytes_written = self.entries_written = 0
        self._index: dict[str, dict[str, tuple[Path, list[str]]]] = {}  # namespace -> digest -> (shard, names)
        self._seen: dict[str, set[str]] = {}  # namespace -> shard file names already indexed
        self._scanned: dict[str, float] = {}  # namespace -> time of the last directory scan
        self._pending: dict[str, dict[str, dict[str, torch.Tensor]]] = {}
        self._pending_bytes = 0
        self._open: OrderedDict[Path, Any] = OrderedDict()
        self._report_old_format()

    # ------------------------------------------------------------------ layout
    def _dir(self, namespace: str) -> Path:
        kind = str(self.dtype).removeprefix("torch.") if self.dtype is not None else "native"
        return self.root / SHARD_DIR / namespace / kind

    @staticmethod
    def _digest(namespace: str, key: str) -> str:
        return hashlib.sha256(f"{namespace}\x00{key}".encode()).hexdigest()[:32]

    def _report_old_format(self) -> None:
        old = [p for p in self.root.iterdir() if p.is_dir() and p.name != SHARD_DIR
               and any(q.is_dir() and len(q.name) == 2 for q in p.iterdir())]
        if not old:
            return
        files = [f for d in old for f in d.rglob("*.safetensors")]
        size = sum(f.stat().st_size for f in files)
        warnings.warn(
            f"{self.root} holds {len(files)} cache entries ({size / 1e6:.1f} MB) in the old one-file-per-item format "
            f"(folders {', '.join(sorted(p.name for p in old))}). They are not read: their features are computed "
            f"again into the sharded format (or all at once with `llm4gen cache build CONFIG`). Delete those folders "
            "to free the space.",
            stacklevel=3,
        )

    # ------------------------------------------------------------------ reading
    def _scan(self, namespace: str) -> None:
        """Index the shards of ``namespace`` that this object has not seen yet (other processes add shards)."""
        index = self._index.setdefault(namespace, {})
        seen = self._seen.setdefault(namespace, set())
        self._scanned[namespace] = time.monotonic()
        folder = self._dir(namespace)
        if not folder.is_dir():
            return
        for path in sorted(folder.glob("shard-*.safetensors")):
            if path.name in seen:
                continue
            seen.add(path.name)
            try:
                with safe_open(path, framework="pt") as f:
                    entries = json.loads((f.metadata() or {})[_INDEX_KEY])
            except Exception as err:  # a damaged shard is skipped (its entries are recomputed), never trusted
                warnings.warn(f"Skipping the damaged cache shard {path}: {err}", stacklevel=3)
                continue
            for digest, names in entries.items():
                index.setdefault(digest, (path, names))

    def _handle(self, path: Path):
        handle = self._open.get(path)
        if handle is None:
            handle = safe_open(path, framework="pt")
            self._open[path] = handle
            while len(self._open) > self.max_open:
                self._open.popitem(last=False)
        self._open.move_to_end(path)
        return handle

    def __contains__(self, item: tuple[str, str]) -> bool:
        namespace, key = item
        if namespace not in self._index:
            self._scan(namespace)
        digest = self._digest(namespace, key)
        return digest in self._index[namespace] or digest in self._pending.get(namespace, {})

    def get(self, namespace: str, key: str) -> dict[str, torch.Tensor] | None:
        digest = self._digest(namespace, key)
        pending = self._pending.get(namespace, {}).get(digest)
        if pending is not None:
            self.hits += 1
            return dict(pending)
        if namespace not in self._index or (digest not in self._index[namespace]
                                            and time.monotonic() - self._scanned[namespace] > 1.0):
            self._scan(namespace)  # at most once a second on misses: shards written since by other processes
        found = self._index[namespace].get(digest)
        if found is not None:
            path, names = found
            try:
                handle = self._handle(path)
                value = {name.split(".", 1)[1]: handle.get_tensor(name) for name in names}
            except Exception:  # damaged since it was indexed: recompute, never trust
                self._index[namespace].pop(digest, None)
                self._open.pop(path, None)
            else:
                self.hits += 1
                return value
        self.misses += 1
        return None

    # ------------------------------------------------------------------ writing
    def stored(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``tensors`` as the cache stores and returns them: on the CPU, floating point ones in the cache's dtype."""
        out = {}
        for name, t in tensors.items():  # copies: an entry never shares (or keeps alive) the batch it came from
            dtype = self.dtype if self.dtype is not None and t.is_floating_point() else t.dtype
            out[name] = t.detach().to("cpu", dtype, copy=True).contiguous()
        return out

    def put(self, namespace: str, key: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Add an entry (written with the next shard) and return it as :meth:`get` will give it back."""
        value = self.stored(tensors)
        self._pending.setdefault(namespace, {})[self._digest(namespace, key)] = value
        self._pending_bytes += sum(t.numel() * t.element_size() for t in value.values())
        if self._pending_bytes >= self.shard_bytes:
            self.flush()
        return dict(value)

    def flush(self) -> None:
        """Write the buffered entries: one shard per namespace, atomically."""
        for namespace, entries in self._pending.items():
            if not entries:
                continue
            folder = self._dir(namespace)
            folder.mkdir(parents=True, exist_ok=True)
            tensors, index = {}, {}
            for slot, (digest, value) in enumerate(entries.items()):
                index[digest] = [f"{slot}.{name}" for name in value]
                tensors.update({f"{slot}.{name}": t for name, t in value.items()})
            name = f"shard-{time.time_ns():020d}-{uuid.uuid4().hex[:12]}.safetensors"
            fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
            os.close(fd)
            try:
                save_file(tensors, tmp, metadata={_INDEX_KEY: json.dumps(index), "format": "llm4gen-cache-2"})
                os.replace(tmp, folder / name)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            self.bytes_written += (folder / name).stat().st_size
            self.entries_written += len(entries)
            if namespace in self._index:  # what this process wrote is readable at once
                self._seen[namespace].add(name)
                for digest, names in index.items():
                    self._index[namespace].setdefault(digest, (folder / name, names))
        self._pending.clear()
        self._pending_bytes = 0

    def size(self, namespace: str | None = None) -> tuple[int, int]:
        """``(entries, bytes)`` on disk (pending entries not included): of ``namespace`` in this cache's dtype, or of
        every namespace and dtype."""
        entries = size = 0
        paths = (self._dir(namespace).glob("shard-*.safetensors") if namespace is not None
                 else (self.root / SHARD_DIR).glob("*/*/shard-*.safetensors"))
        for path in paths:
            try:
                with safe_open(path, framework="pt") as f:
                    entries += len(json.loads((f.metadata() or {})[_INDEX_KEY]))
            except Exception:
                continue
            size += path.stat().st_size
        return entries, size

    def close(self) -> None:
        self.flush()
        self._open.clear()


# ---------------------------------------------------------------------- LLM rows without their padding
def llm_entry(features: torch.Tensor, mask: torch.Tensor, keep_padding: bool = False) -> dict[str, torch.Tensor]:
    """One prompt's encoder output ``([T, D] features, [T] right-padded mask)`` as a cache entry: its real tokens
    only (``[n, D]``; the count is the row length). With ``keep_padding`` (padded features that the model reads, i.e.
    no attention mask) the whole row is kept and the count goes in ``num_tokens``."""
    n = int(mask.sum())
    if not bool(mask[:n].all()):
        raise ValueError("llm_entry expects right padding (the mask's ones first), as LLMEncoder pads.")
    if keep_padding:
        return {"llm": features, "num_tokens": torch.tensor([n], dtype=torch.int64)}
    return {"llm": features[:n]}


def llm_batch(entries: Sequence[dict[str, torch.Tensor]], pad_to: int | None = None,
              dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Cache entries (:func:`llm_entry`) back to the encoder's batch layout: ``([B, T, D] features, [B, T] long
    mask)``, right-padded with zeros to the longest row (``padding="longest"``) or to ``pad_to`` tokens
    (``padding="max_length"``); the mask is 1 on each row's real tokens."""
    rows = [e["llm"] for e in entries]
    counts = [int(e["num_tokens"][0]) if "num_tokens" in e else e["llm"].shape[0] for e in entries]
    length = max([r.shape[0] for r in rows] + [pad_to or 0])
    feats = torch.zeros(len(rows), length, rows[0].shape[-1], dtype=dtype, device=device)
    mask = torch.zeros(len(rows), length, dtype=torch.long, device=device)
    for i, (row, n) in enumerate(zip(rows, counts)):
        feats[i, : row.shape[0]] = row.to(device=feats.device, dtype=dtype)
        mask[i, :n] = 1
    return feats, mask


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
        self.disk = FeatureCache(cache_dir, dtype=None, shard_bytes=0) if cache_dir is not None else None
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
