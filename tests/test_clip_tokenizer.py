from __future__ import annotations

from transformers import CLIPTokenizer

from llm4gen.clip_tokenizer import CLIP_VOCAB_SIZE, bytes_to_unicode, clip_vocab_and_merges, load_clip_tokenizer


def test_ids_match_openai_clip(tmp_path):
    tok = load_clip_tokenizer()
    assert len(tok) == CLIP_VOCAB_SIZE and tok.model_max_length == 77
    # ids of openai/clip-vit-large-patch14 (Stable Diffusion 1.x's tokenizer) for this well-known prompt
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tok.bos_token_id == 49406 and tok.eos_token_id == 49407
    tok.save_pretrained(tmp_path)
    again = CLIPTokenizer.from_pretrained(tmp_path)
    text = "A RED cube, and a blue-ball!! on a grey floor"
    assert again(text).input_ids == tok(text).input_ids
    padded = again(text, padding="max_length", max_length=77, truncation=True)
    assert len(padded.input_ids) == 77


def test_vocabulary_structure():
    table = bytes_to_unicode()
    assert len(table) == 256 and len(set(table.values())) == 256
    assert table[ord("a")] == "a" and table[ord(" ")] == "Ġ"
    vocab, merges = clip_vocab_and_merges()
    assert vocab["a</w>"] == 320 and vocab["<|endoftext|>"] == 49407
    assert vocab["".join(merges[0].split())] == 512  # the first merge follows the 512 byte symbols
