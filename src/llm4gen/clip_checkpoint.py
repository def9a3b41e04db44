"""CLIP text-encoder checkpoints in the key layout that every client reads.

transformers 5 saves a ``CLIPTextModel`` with its keys at the root (``embeddings.…``, ``encoder.layers.…``,
``final_layer_norm.…``). The original Stable Diffusion folders, transformers 4 and ComfyUI's CLIP loader use the
``text_model.`` prefix instead; ComfyUI loads a root-level file with every weight missing (its CLIP then encodes NaNs
and KSampler returns a black image). transformers 4 and 5 both load the prefixed layout, so the pipelines write it
(:func:`write_prefixed_clip`, called by ``save_pretrained``), and a folder saved before can be fixed in place.
"""

from __future__ import annotations

import json
import os

__all__ = ["CLIP_TEXT_PREFIX", "clip_key_with_prefix", "write_prefixed_clip"]

CLIP_TEXT_PREFIX = "text_model."
# keys that sit beside ``text_model.`` in the prefixed layout (CLIPTextModelWithProjection's projection)
_TOP_LEVEL = ("text_projection.", "logit_scale")
_CLIP_TEXT_TYPES = ("clip_text_model",)


def clip_key_with_prefix(key: str) -> str:
    """The name of a CLIP text-encoder weight in the ``text_model.`` layout (unchanged if it already is)."""
    if key.startswith(CLIP_TEXT_PREFIX) or key.startswith(_TOP_LEVEL):
        return key
    return CLIP_TEXT_PREFIX + key


def _is_clip_text_folder(folder: str) -> bool:
    config = os.path.join(folder, "config.json")
    if not os.path.isfile(config):
        return False
    with open(config, encoding="utf-8") as f:
        return json.load(f).get("model_type") in _CLIP_TEXT_TYPES


def write_prefixed_clip(folder: str | os.PathLike) -> list[str]:
    """Rewrite the ``*.safetensors`` weights of a saved CLIP text encoder (a ``text_encoder/`` folder) with the
    ``text_model.`` key prefix, in place; the sharding index, if any, follows. Other folders are left alone.

    Returns the files rewritten (none when the folder already has the prefixed layout or is no CLIP text encoder).
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    folder = os.fspath(folder)
    if not _is_clip_text_folder(folder):
        return []
    rewritten = []
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".safetensors"):
            continue
        path = os.path.join(folder, name)
        with safe_open(path, framework="pt") as f:
            keys = list(f.keys())
            if all(clip_key_with_prefix(k) == k for k in keys):
                continue
            metadata = f.metadata() or {"format": "pt"}
            tensors = {clip_key_with_prefix(k): f.get_tensor(k) for k in keys}
        save_file(tensors, path, metadata=metadata)
        rewritten.append(path)
    for name in os.listdir(folder):
        if name.endswith(".safetensors.index.json"):
            index_path = os.path.join(folder, name)
            with open(index_path, encoding="utf-8") as f:
                index = json.load(f)
            index["weight_map"] = {clip_key_with_prefix(k): v for k, v in index.get("weight_map", {}).items()}
            with open(index_path, "w", encoding="utf-8") as f:
                json.dump(index, f, indent=2)
    return rewritten
