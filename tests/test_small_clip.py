"""The small ShapesWorld CLIP recipe: retrieval math, a tiny end-to-end run, and loading as SD's text encoder."""

from __future__ import annotations

import json

import torch
from transformers import CLIPTextModel, CLIPTokenizer
from typer.testing import CliRunner

from llm4gen.cli import app
from llm4gen.shapesworld.small_clip import SmallClipConfig, retrieval_accuracy, train_small_clip


def test_retrieval_accuracy_against_hand_counts():
    emb = torch.eye(4)
    assert retrieval_accuracy(emb, emb) == {"text_to_image_top1": 1.0, "image_to_text_top1": 1.0}
    shifted = emb[[1, 2, 3, 0]]  # text i is closest to image i+1: nothing right at top-1
    assert retrieval_accuracy(shifted, emb)["text_to_image_top1"] == 0.0
    # two of four right: texts 0 and 1 match, texts 2 and 3 are swapped
    half = emb[[0, 1, 3, 2]]
    assert retrieval_accuracy(half, emb)["text_to_image_top1"] == 0.5
    graded = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    images = torch.tensor([[0.6, 0.8], [1.0, 0.0]])
    # cosines: text0·img0 = 0.6, text0·img1 = 1.0 -> wrong; text1·img0 = 1.0, text1·img1 = 0.6 -> wrong
    assert retrieval_accuracy(graded, images)["text_to_image_top1"] == 0.0
    assert retrieval_accuracy(graded, images, k=2)["text_to_image_top2"] == 1.0
    assert retrieval_accuracy(graded, images, k=5)["text_to_image_top5"] == 1.0  # k beyond the pool: all count
    scaled = retrieval_accuracy(emb * 7.0, emb)  # cosine similarity: the scale does not matter
    assert scaled["text_to_image_top1"] == 1.0


def test_tiny_training_run_saves_a_loadable_text_encoder(tmp_path):
    cfg = SmallClipConfig(hidden_size=32, num_layers=1, num_heads=2, projection_dim=32, steps=4, batch_size=8,
                          train_items=24, eval_items=8, warmup_steps=2)
    result = train_small_clip(tmp_path, cfg, progress=False)
    assert result["first_loss"] is not None and result["config"]["steps"] == 4
    metrics = json.loads((tmp_path / "metrics.json").read_text())["retrieval_heldout"]
    assert metrics["chance_top1"] == 1 / 8 and 0.0 <= metrics["dense/text_to_image_top1"] <= 1.0
    text_encoder = CLIPTextModel.from_pretrained(tmp_path / "text_encoder")
    tokenizer = CLIPTokenizer.from_pretrained(tmp_path / "tokenizer")
    assert tokenizer.model_max_length == 77 and text_encoder.config.max_position_embeddings == 77
    ids = tokenizer(["a red circle"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = text_encoder(ids)[0]
    assert hidden.shape == (1, 77, 32)
    # the saved text encoder is exactly the text tower of the saved CLIP
    from transformers import CLIPModel

    clip = CLIPModel.from_pretrained(tmp_path / "clip")
    with torch.no_grad():
        torch.testing.assert_close(clip.text_model(input_ids=ids).last_hidden_state, hidden)


def test_cli_train_clip(tmp_path):
    res = CliRunner().invoke(app, ["shapes", "train-clip", str(tmp_path), "--steps", "2", "--batch-size", "4",
                                   "--hidden", "16", "--layers", "1", "--train-items", "8", "--eval-items", "4"])
    assert res.exit_code == 0, res.output
    assert "held-out" in res.output and (tmp_path / "text_encoder" / "config.json").is_file()
