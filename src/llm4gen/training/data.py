"""The deterministic order of training batches.

The order is a pure function of (seed, batch number): batch ``b`` of the whole run takes the slice
``[w * G, (w + 1) * G)`` of the permutation of epoch ``b // W`` (``G`` = global batch = per-process batch x processes,
``W`` = batches per epoch), and process ``r`` takes its ``r``-th part of that slice. Resuming at any step therefore
continues with exactly the batches an uninterrupted run would have used, and one process with batch ``2B`` sees the
same samples as two processes with batch ``B``.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch

from .._compat import moved_attributes

__all__ = ["batch_indices", "epoch_items", "step_generator"]


def _stable_seed(*parts: Any) -> int:
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def batch_indices(batch_number: int, num_items: int, per_process: int, num_processes: int, rank: int,
                  seed: int) -> list[int]:
    """Indices of this process's examples for global batch ``batch_number`` (see the module docs)."""
    global_batch = per_process * num_processes
    if num_items < global_batch:
        raise ValueError(
            f"The dataset has {num_items} items but one global batch needs {global_batch} "
            f"({per_process} per process x {num_processes} processes); lower train_batch_size or add data."
        )
    per_epoch = num_items // global_batch
    epoch, within = divmod(batch_number, per_epoch)
    g = torch.Generator().manual_seed(_stable_seed("epoch", seed, epoch))
    perm = torch.randperm(num_items, generator=g)
    start = within * global_batch + rank * per_process
    return perm[start : start + per_process].tolist()


def epoch_items(num_items: int, per_process: int, num_processes: int, rank: int, seed: int,
                epoch: int = 0) -> list[int]:
    """Every index that process ``rank`` handles in ``epoch`` by the training split rule, in training order: its part
    of each global batch (exactly :func:`batch_indices`), then its part of the remainder that no whole global batch
    takes (the same rule: position ``p`` of the permutation goes to process ``(p mod G) // per_process``). Over the
    processes this covers the dataset once; a cache build uses it so that each process precomputes the items it will
    train on."""
    global_batch = per_process * num_processes
    g = torch.Generator().manual_seed(_stable_seed("epoch", seed, epoch))
    perm = torch.randperm(num_items, generator=g).tolist()
    return [i for p, i in enumerate(perm) if (p % global_batch) // per_process == rank]


def step_generator(seed: int, batch_number: int, purpose: str) -> torch.Generator:
    """A generator seeded by (seed, batch, purpose): the noise, timesteps and dropout of a global batch are a pure
    function of its position in the run, so a resumed run draws exactly what an uninterrupted one would, and every
    process draws the same global values and takes its own rows."""
    # the trailing 0 stood for the process rank; it stays in the hash so that existing runs keep their draws
    return torch.Generator().manual_seed(_stable_seed(purpose, seed, batch_number, 0))


# names that lived here before 0.2 (llm4gen._compat)
__getattr__ = moved_attributes(__name__, {
    **dict.fromkeys(("Example", "ImageFolderSource", "HFSource", "WebDatasetSource", "expand_shards", "make_source",
                     "preprocess_image", "file_fingerprint"), "llm4gen.data.sources"),
    "ShapesSource": "llm4gen.shapesworld.source",
    **dict.fromkeys(("COLOUR_WORDS", "SIZE_WORDS", "MATERIAL_WORDS", "ATTRIBUTE_WORDS", "parse_entities",
                     "parse_entities_spacy", "token_at_span", "token_bindings", "token_pairs"), "llm4gen.prompt_words"),
    **dict.fromkeys(("scene_mentions", "mention_words"), "llm4gen.shapesworld.mentions"),
})
