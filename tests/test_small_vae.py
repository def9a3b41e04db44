"""The small ShapesWorld VAE recipe: a tiny end-to-end run, the saved model, and its reported numbers."""

from __future__ import annotations

import json

import torch
from diffusers import AutoencoderKL

from llm4gen.shapesworld.small_vae import SmallVaeConfig, train_small_vae


def test_tiny_vae_run(tmp_path):
    cfg = SmallVaeConfig(block_out_channels=(16, 16), steps=3, batch_size=4, train_items=8, eval_items=4,
                         image_size=32)
    result = train_small_vae(tmp_path, cfg, progress=False)
    vae = AutoencoderKL.from_pretrained(tmp_path / "vae")
    assert vae.config.scaling_factor == result["scaling_factor"] > 0
    x = torch.zeros(1, 3, 32, 32)
    with torch.no_grad():
        z = vae.encode(x).latent_dist.mean
    assert z.shape == (1, 4, 16, 16)  # two levels: 32 px -> 16 x 16
    metrics = json.loads((tmp_path / "vae_metrics.json").read_text())
    assert set(metrics["scorer_on_reconstructions"]) >= {"count", "binding", "all_correct"}
    assert metrics["psnr_db_heldout"] > 0 and (tmp_path / "reconstructions.png").is_file()


def test_cli_train_vae(tmp_path):
    from typer.testing import CliRunner

    from llm4gen.cli import app

    res = CliRunner().invoke(app, ["shapes", "train-vae", str(tmp_path), "--steps", "2", "--batch-size", "2",
                                   "--train-items", "4", "--eval-items", "2", "--size", "32"])
    assert res.exit_code == 0, res.output
    assert "PSNR" in res.output and (tmp_path / "vae" / "config.json").is_file()


def test_vae_round_trip_is_independent_of_the_batch_size():
    from llm4gen.shapesworld.small_vae import SmallVaeConfig, build_small_vae, vae_round_trip

    torch.manual_seed(0)
    vae = build_small_vae(SmallVaeConfig(image_size=16)).eval()
    x = torch.rand(5, 3, 16, 16) * 2 - 1
    means, rec = vae_round_trip(vae, x, batch_size=2)
    with torch.no_grad():
        whole_means = vae.encode(x).latent_dist.mean
        whole_rec = vae.decode(whole_means).sample.clamp(-1, 1)
    torch.testing.assert_close(means, whole_means, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rec, whole_rec, atol=1e-5, rtol=1e-5)
    assert rec.min() >= -1 and rec.max() <= 1
