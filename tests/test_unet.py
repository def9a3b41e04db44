"""The coordinate UNet: fixed x/y input channels, conversion from a plain UNet, save/load, training, pipelines."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel

from llm4gen.unet import CoordConv2d, CoordUNet2DConditionModel, coordinate_grid, load_unet, unet_class_for

TINY_UNET = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
                 norm_num_groups=8, cross_attention_dim=32, attention_head_dim=4,
                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))


def _plain(seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(**TINY_UNET).eval()


def _inputs(seed: int = 1, size: int = 8):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 4, size, size, generator=g), torch.tensor([10, 900]),
            torch.randn(2, 5, 32, generator=g))


def test_coordinate_grid_by_hand():
    grid = coordinate_grid(2, 4)
    assert grid.shape == (2, 2, 4)
    torch.testing.assert_close(grid[0], torch.tensor([[-0.75, -0.25, 0.25, 0.75]] * 2))
    torch.testing.assert_close(grid[1], torch.tensor([[-0.5] * 4, [0.5] * 4]))
    odd = coordinate_grid(3, 3)
    assert odd[0, 1, 1] == 0 and odd[1, 1, 1] == 0  # the centre pixel of an odd grid sits at (0, 0)
    assert coordinate_grid(2, 2, dtype=torch.float64).dtype == torch.float64


def test_coord_conv_is_a_conv_over_the_input_and_the_grid():
    torch.manual_seed(0)
    conv = CoordConv2d(3, 5, 3, padding=1)
    assert conv.weight.shape == (5, 5, 3, 3)
    x = torch.randn(2, 3, 6, 7)
    grid = torch.stack(torch.meshgrid((torch.arange(6) + 0.5) / 3 - 1, (torch.arange(7) + 0.5) / 3.5 - 1,
                                      indexing="ij")[::-1])  # x then y, pixel centres in [-1, 1]
    expected = F.conv2d(torch.cat([x, grid.expand(2, -1, -1, -1)], 1), conv.weight, conv.bias, padding=1)
    torch.testing.assert_close(conv(x), expected)
    with pytest.raises(ValueError, match=r"expects \[batch, 3, height, width\]"):
        conv(torch.randn(2, 5, 6, 7))
    with pytest.raises(ValueError, match="coord_channels must be 2"):
        CoordConv2d(3, 5, 3, coord_channels=3)


def test_from_unet_starts_as_the_plain_unet_and_its_coordinates_then_act_by_position():
    plain = _plain()
    coord = CoordUNet2DConditionModel.from_unet(plain).eval()
    assert coord.config.in_channels == 4 and coord.config.coord_channels == 2  # latents keep their channel count
    assert set(coord.state_dict()) == set(plain.state_dict())
    x, t, text = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(coord(x, t, encoder_hidden_states=text).sample,
                                   plain(x, t, encoder_hidden_states=text).sample)
        # a 1x1 view of conv_in: with weight a on x and b on y, every output channel shifts by a * x + b * y
        coord.conv_in.weight[:, 4, 1, 1] = 0.5
        coord.conv_in.weight[:, 5, 1, 1] = -2.0
        shift = coord.conv_in(x) - plain.conv_in(x)
    grid = coordinate_grid(8, 8)
    torch.testing.assert_close(shift, (0.5 * grid[0] - 2.0 * grid[1]).expand_as(shift))
    with pytest.raises(ValueError, match="already has coordinate channels"):
        CoordUNet2DConditionModel.from_unet(coord)


def test_save_and_load_pick_the_class_from_the_config(tmp_path):
    coord = CoordUNet2DConditionModel.from_unet(_plain()).eval()
    with torch.no_grad():
        coord.conv_in.weight[:, 4:] = 0.1
    coord.save_pretrained(tmp_path / "coord")
    assert json.loads((tmp_path / "coord" / "config.json").read_text())["_class_name"] == "CoordUNet2DConditionModel"
    back = load_unet(tmp_path / "coord").eval()
    assert type(back) is CoordUNet2DConditionModel
    x, t, text = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(back(x, t, encoder_hidden_states=text).sample,
                                   coord(x, t, encoder_hidden_states=text).sample)
    _plain().save_pretrained(tmp_path / "plain")
    assert type(load_unet(tmp_path / "plain")) is UNet2DConditionModel
    import llm4gen

    assert llm4gen.CoordUNet2DConditionModel is CoordUNet2DConditionModel  # exported at the top level
    assert unet_class_for("some-org/some-hub-model") is UNet2DConditionModel  # hub ids: diffusers decides
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text('{"_class_name": "UNet3DConditionModel"}')
    with pytest.raises(ValueError, match="UNet3DConditionModel.*can load"):
        load_unet(tmp_path / "odd")
    (tmp_path / "odd" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a JSON object"):
        load_unet(tmp_path / "odd")


def test_pipeline_round_trip_with_a_coordinate_unet(tiny_sd_dir, tmp_path):
    from llm4gen import LLM4GenPipeline

    pipe = LLM4GenPipeline.from_pretrained(tiny_sd_dir)
    pipe.unet = CoordUNet2DConditionModel.from_unet(pipe.unet)
    pipe.register_modules(unet=pipe.unet)
    with torch.no_grad():
        pipe.unet.conv_in.weight[:, -2:] = 0.2
    pipe.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["unet"] == ["llm4gen.unet", "CoordUNet2DConditionModel"]
    back = LLM4GenPipeline.from_pretrained(tmp_path / "pipe")
    assert type(back.unet) is CoordUNet2DConditionModel
    kw = dict(num_inference_steps=2, output_type="np")
    a = pipe("a red circle", generator=torch.Generator().manual_seed(0), **kw).images
    b = back("a red circle", generator=torch.Generator().manual_seed(0), **kw).images
    torch.testing.assert_close(torch.from_numpy(a), torch.from_numpy(b))


def test_training_with_unet_coords(tiny_sd_dir, tiny_llm_dirs, tmp_path):
    from llm4gen import LLM4GenPipeline
    from llm4gen.training.config import load_config
    from llm4gen.training.trainer import _load_unet, train

    def cfg(out, **kw):
        return load_config({"output_dir": str(tmp_path / out), "base_model": tiny_sd_dir, "llm": tiny_llm_dirs["bert"],
                            "llm_max_length": 160, "data": {"type": "shapesworld", "num_items": 32},
                            "resolution": 32, "train_batch_size": 4, "max_train_steps": 2, "log_every": 1,
                            "checkpointing_steps": 100, "learning_rate": 1e-3, **kw})

    for mode in ("lora", "frozen"):  # the new input weights would never train
        with pytest.raises(ValueError, match="only train_unet: full trains"):
            cfg("x", unet_coords=True, train_unet=mode)
    plain = train(cfg("plain"), progress=False)
    coord = train(cfg("coord", unet_coords=True), progress=False)
    # the new input weights start at 0, so the first step computes the plain UNet's loss exactly
    assert coord.losses[0] == pytest.approx(plain.losses[0], rel=1e-6)
    unet = LLM4GenPipeline.from_pretrained(tmp_path / "coord").unet
    assert type(unet) is CoordUNet2DConditionModel
    assert unet.conv_in.weight[:, -2:].abs().sum() > 0  # trained
    # a run that continues from the saved coordinate UNet keeps its class without the flag; a fresh UNet gets them
    loaded = _load_unet(cfg("again", unet=str(tmp_path / "coord" / "unet")), unet.config.cross_attention_dim)
    assert type(loaded) is CoordUNet2DConditionModel
    torch.testing.assert_close(loaded.conv_in.weight, unet.conv_in.weight)
    fresh = dict(TINY_UNET, cross_attention_dim=unet.config.cross_attention_dim)
    assert type(_load_unet(cfg("fresh", unet=fresh, unet_coords=True), fresh["cross_attention_dim"])) \
        is CoordUNet2DConditionModel
    assert type(_load_unet(cfg("fresh", unet=fresh), fresh["cross_attention_dim"])) is UNet2DConditionModel
