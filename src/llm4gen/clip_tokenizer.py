"""OpenAI CLIP's BPE tokenizer, offline: built from the vocabulary file that ships with this package.

``bpe_simple_vocab_16e6.txt.gz`` is OpenAI CLIP's merge list (MIT licence, see ``assets/LICENSE.clip-bpe``; taken
from the open_clip distribution). From it we build the same 49,408-token vocabulary as ``openai/clip-vit-large-patch14``
(byte symbols, the same with ``</w>``, one token per merge, then ``<|startoftext|>`` and ``<|endoftext|>``), so the
ids match Stable Diffusion's tokenizer without a hub download.
"""

from __future__ import annotations

import gzip
import inspect
import os
import tempfile
from functools import lru_cache
from importlib import resources

__all__ = ["CLIP_VOCAB_SIZE", "bytes_to_unicode", "clip_vocab_and_merges", "load_clip_tokenizer"]

CLIP_VOCAB_SIZE = 49408
_NUM_MERGES = CLIP_VOCAB_SIZE - 256 * 2 - 2  # 48,894


def bytes_to_unicode() -> dict[int, str]:
    """Byte -> printable character map of byte-level BPE (printable Latin-1 bytes map to themselves).

    The order matters: printable bytes first, then the others, is the order of the first 256 vocabulary ids.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


@lru_cache(maxsize=1)
def clip_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """The vocabulary (token -> id) and merge rules ("a b") of OpenAI CLIP, from the bundled file."""
    data = resources.files("llm4gen").joinpath("assets/bpe_simple_vocab_16e6.txt.gz").read_bytes()
    lines = gzip.decompress(data).decode("utf-8").split("\n")
    merges = lines[1 : 1 + _NUM_MERGES]  # line 0 is a version header
    if len(merges) != _NUM_MERGES:
        raise ValueError(f"The bundled CLIP BPE file has {len(merges)} merges, expected {_NUM_MERGES}; it is corrupt.")
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def load_clip_tokenizer(model_max_length: int = 77, save_dir: str | os.PathLike | None = None):
    """A ``transformers.CLIPTokenizer`` with OpenAI CLIP's vocabulary and ``model_max_length`` (77, as SD needs).

    With ``save_dir`` it is also written there (``save_pretrained``), ready to be a pipeline's ``tokenizer/``.
    """
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges()
    if "vocab" in inspect.signature(CLIPTokenizer.__init__).parameters:  # transformers >= 5
        pairs = [tuple(m.split()) for m in merges]
        tok = CLIPTokenizer(vocab=dict(vocab), merges=pairs, model_max_length=model_max_length)
    else:  # transformers 4.x reads files
        import json

        with tempfile.TemporaryDirectory() as tmp:
            vocab_file, merges_file = os.path.join(tmp, "vocab.json"), os.path.join(tmp, "merges.txt")
            with open(vocab_file, "w", encoding="utf-8") as f:
                json.dump(vocab, f)
            with open(merges_file, "w", encoding="utf-8") as f:
                f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
            tok = CLIPTokenizer(vocab_file=vocab_file, merges_file=merges_file, model_max_length=model_max_length)
    if save_dir is not None:
        tok.save_pretrained(save_dir)
    return tok
