"""A UNet that knows where it is: :class:`CoordUNet2DConditionModel` (not in the paper).

A convolutional UNet with cross-attention is translation-equivariant except near the image border (zero padding), and
its attention has no position embedding, so a pixel in the middle of the image cannot tell whether it is left or right
of the centre. A caption word like "upper left" then has nothing to attend from. This UNet is diffusers'
``UNet2DConditionModel`` with two fixed input channels appended to the latents before ``conv_in``: the pixel's x and y,
from -1 (left / top) to +1 (right / bottom) at the pixel centres, as CoordConv (Liu et al., 2018). Nothing else
changes: ``config.in_channels`` stays the latent channel count (pipelines size their latents from it), the state dict
has the same keys (only ``conv_in.weight`` is wider), and ``save_pretrained`` / ``from_pretrained`` work as for any
diffusers model. :meth:`CoordUNet2DConditionModel.from_unet` turns a trained plain UNet into one whose new input weights
are zero, so it computes exactly what the plain UNet did until training moves them.

Loading a UNet folder whose class is not known in advance goes through :func:`load_unet`, which picks the class from
its ``config.json``.
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401  (diffusers finds a component's loader here)
from torch import nn

__all__ = ["CoordConv2d", "CoordUNet2DConditionModel", "coordinate_grid", "load_unet", "unet_class_for"]


def coordinate_grid(height: int, width: int, *, device=None, dtype=None) -> torch.Tensor:
    """``[2, height, width]``: channel 0 is x, channel 1 is y, each running from -1 to +1 over the pixel centres
    (``(2 * i + 1) / n - 1`` for pixel ``i`` of ``n``), so the grid is symmetric about the image centre."""
    xs = (2 * torch.arange(width, device=device, dtype=torch.float32) + 1) / width - 1
    ys = (2 * torch.arange(height, device=device, dtype=torch.float32) + 1) / height - 1
    grid = torch.stack([xs.expand(height, width), ys[:, None].expand(height, width)])
    return grid if dtype is None else grid.to(dtype)


class CoordConv2d(nn.Conv2d):
    """A ``Conv2d`` over its input plus ``coord_channels`` fixed coordinate channels (x, y of
    :func:`coordinate_grid`), appended after the input's own channels. ``in_channels`` counts both."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, coord_channels: int = 2,
                 **kwargs: Any) -> None:
        if coord_channels != 2:
            raise ValueError(f"coord_channels must be 2 (x and y), got {coord_channels}.")
        super().__init__(in_channels + coord_channels, out_channels, kernel_size, **kwargs)
        self.coord_channels = coord_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expected = self.in_channels - self.coord_channels
        if x.ndim != 4 or x.shape[1] != expected:
            raise ValueError(f"CoordConv2d expects [batch, {expected}, height, width] inputs, got {tuple(x.shape)}.")
        grid = coordinate_grid(x.shape[-2], x.shape[-1], device=x.device, dtype=x.dtype)
        return super().forward(torch.cat([x, grid.expand(x.shape[0], -1, -1, -1)], dim=1))


class CoordUNet2DConditionModel(UNet2DConditionModel):
    """``UNet2DConditionModel`` whose ``conv_in`` also sees each pixel's x and y (see the module docstring).

    Takes every argument of ``UNet2DConditionModel`` plus ``coord_channels`` (2). ``conv_in_kernel`` and
    ``block_out_channels[0]`` size the coordinate convolution as they size the plain one."""

    def __init__(self, *args: Any, coord_channels: int = 2, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        old = self.conv_in
        self.conv_in = CoordConv2d(old.in_channels, old.out_channels, old.kernel_size[0], padding=old.padding,
                                   coord_channels=coord_channels)
        self.register_to_config(coord_channels=coord_channels)

    @classmethod
    def from_unet(cls, unet: UNet2DConditionModel, coord_channels: int = 2) -> CoordUNet2DConditionModel:
        """A coordinate UNet with ``unet``'s config and weights; the new coordinate input weights are zero, so its
        output equals ``unet``'s until they are trained. Dtype and device follow ``unet``."""
        if isinstance(unet, CoordUNet2DConditionModel):
            raise ValueError("This UNet already has coordinate channels; use it as it is.")
        if type(unet) is not UNet2DConditionModel:
            raise TypeError(f"from_unet needs a diffusers UNet2DConditionModel, got {type(unet).__name__}.")
        config = {k: v for k, v in unet.config.items() if not k.startswith("_")}
        with torch.random.fork_rng(devices=[]):  # the throw-away random init must not shift the caller's random draws
            new = cls(**config, coord_channels=coord_channels)
        state = dict(unet.state_dict())
        w = state["conv_in.weight"]
        state["conv_in.weight"] = torch.cat([w, w.new_zeros(w.shape[0], coord_channels, *w.shape[2:])], dim=1)
        new.load_state_dict(state)
        param = next(unet.parameters())
        new = new.to(param.device)
        return new if param.dtype == torch.float32 else new.to(param.dtype)


# diffusers builds a model from its config by reading the __init__ signature: show it the parent's arguments plus ours.
_parent_params = list(inspect.signature(UNet2DConditionModel.__init__).parameters.values())
CoordUNet2DConditionModel.__init__.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    _parent_params + [inspect.Parameter("coord_channels", inspect.Parameter.KEYWORD_ONLY, default=2)]
)

_UNET_CLASSES = {cls.__name__: cls for cls in (UNet2DConditionModel, CoordUNet2DConditionModel)}


def unet_class_for(folder: str | os.PathLike, subfolder: str | None = None) -> type[UNet2DConditionModel]:
    """The UNet class a local folder's ``config.json`` names (``UNet2DConditionModel`` for a hub id or a folder
    without one, so diffusers' own errors still apply). Raises for a class this library cannot build."""
    path = Path(folder) / subfolder if subfolder else Path(folder)
    config = path / "config.json"
    if not config.is_file():
        return UNet2DConditionModel
    try:
        name = json.loads(config.read_text()).get("_class_name", "UNet2DConditionModel")
    except (json.JSONDecodeError, AttributeError) as err:
        raise ValueError(f"The UNet config {config} is not a JSON object ({err}); re-save the UNet.") from err
    if name not in _UNET_CLASSES:
        raise ValueError(f"The UNet in {path} is a {name!r}; llm4gen can load {sorted(_UNET_CLASSES)}.")
    return _UNET_CLASSES[name]


def load_unet(ref: str | os.PathLike, subfolder: str | None = None, **kwargs: Any) -> UNet2DConditionModel:
    """``from_pretrained`` with the class the folder's config names (a plain or a coordinate UNet)."""
    return unet_class_for(ref, subfolder).from_pretrained(ref, subfolder=subfolder, **kwargs)
