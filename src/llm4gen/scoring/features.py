"""Pluggable feature extractors and classifiers for FID, CLIP-FID and the Inception Score. No torchvision.

- :class:`InceptionFeatures`: the FID Inception-v3 network of pytorch-fid (the TensorFlow ``inception-2015-12-05``
  graph ported to PyTorch: ``FIDInceptionA/C/E`` blocks, TF-style average pooling, 2048-d ``pool3`` features,
  1008-class logits), written here in plain torch. Its weights cannot be downloaded by this library: give the file
  ``pt_inception-2015-12-05-6726825d.pth`` (github.com/mseitzer/pytorch-fid, release ``fid_weights``) by path.
- :class:`TransformersVisionFeatures`: any transformers vision model or CLIP-style model (CLIP-FID, DINOv2-FID, ...).
- :class:`TransformersImageClassifier`: any transformers image classifier, as the Inception Score's classifier.
- :func:`make_feature_extractor` / :func:`make_classifier`: build them from ``inception:PATH`` or ``hf:ID_OR_PATH``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..utils import describe_load_error

__all__ = [
    "FIDInceptionV3",
    "InceptionClassifier",
    "InceptionFeatures",
    "TransformersImageClassifier",
    "TransformersVisionFeatures",
    "load_state_dict_file",
    "make_classifier",
    "make_feature_extractor",
    "pil_to_unit_tensor",
    "pooled_embeddings",
]

INCEPTION_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_SOURCE = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
)


# ------------------------------------------------------------------------------------------------ FID Inception-v3
class BasicConv2d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, **kwargs: Any) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _tf_avg_pool(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow's average pool does not count the zero padding
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(nn.Module):
    def __init__(self, in_channels: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_tf_avg_pool(x))
        return torch.cat([b1, b5, b3, bp], 1)


class InceptionB(nn.Module):
    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([b3, bd, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class FIDInceptionC(nn.Module):
    def __init__(self, in_channels: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            bd = layer(bd)
        bp = self.branch_pool(_tf_avg_pool(x))
        return torch.cat([b1, b7, bd, bp], 1)


class InceptionD(nn.Module):
    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class FIDInceptionE(nn.Module):
    """``FIDInceptionE_1`` (``max_pool=False``: TF average pooling) and ``FIDInceptionE_2`` (``max_pool=True``: the
    FID graph's last block max-pools its pooling branch)."""

    def __init__(self, in_channels: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _tf_avg_pool(x)
        return torch.cat([b1, b3, bd, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """The FID Inception-v3 (pytorch-fid's ``fid_inception_v3``; state-dict keys as in its weight file).

    ``forward(x)`` takes RGB images ``[N, 3, H, W]`` in [0, 1], resizes them bilinearly to ``input_size`` (299, as
    pytorch-fid; other sizes >= 75 run too, but only 299 gives comparable FIDs), scales to [-1, 1] and returns
    ``(pool3 features [N, 2048], logits [N, 1008])``.
    """

    def __init__(self, num_classes: int = 1008, input_size: int = 299) -> None:
        super().__init__()
        if input_size < 75:
            raise ValueError(f"The Inception network needs inputs of at least 75x75 pixels, got {input_size}.")
        self.input_size = input_size
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = FIDInceptionA(192, pool_features=32)
        self.Mixed_5c = FIDInceptionA(256, pool_features=64)
        self.Mixed_5d = FIDInceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
        self.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = FIDInceptionE(1280, max_pool=False)
        self.Mixed_7c = FIDInceptionE(2048, max_pool=True)
        self.fc = nn.Linear(2048, num_classes)

    def pool_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pool = self.pool_features(x)
        return pool, self.fc(pool)


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch file (``weights_only=True``: no code is run)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Weight file {str(path)!r} does not exist.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors come in many types
        raise ValueError(f"Could not read {str(path)!r} as a torch state dict (weights_only=True): {err}") from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{str(path)!r} does not hold a state dict (a mapping of names to tensors).")
    return state


def load_inception_weights(model: FIDInceptionV3, path: str | os.PathLike) -> FIDInceptionV3:
    """Load the FID Inception weights from ``path`` into ``model``; missing, unexpected or mis-shaped keys raise a
    ``ValueError`` that lists them (BatchNorm ``num_batches_tracked`` counters are optional)."""
    state = load_state_dict_file(path)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    expected = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    given = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    shapes = sorted(f"{k}: file {tuple(given[k].shape)} vs model {tuple(expected[k].shape)}"
                    for k in set(expected) & set(given) if given[k].shape != expected[k].shape)
    if missing or unexpected or shapes:
        def head(items: list[str]) -> str:
            return ", ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")

        parts = [f"{len(missing)} missing ({head(missing)})" if missing else "",
                 f"{len(unexpected)} unexpected ({head(unexpected)})" if unexpected else "",
                 f"{len(shapes)} with other shapes ({head(shapes)})" if shapes else ""]
        raise ValueError(
            f"{os.fspath(path)!r} is not the FID Inception-v3 weight file: keys " + "; ".join(p for p in parts if p)
            + f". Use {INCEPTION_WEIGHTS_NAME} from {INCEPTION_WEIGHTS_SOURCE}."
        )
    model.load_state_dict(given, strict=False)
    return model


def pil_to_unit_tensor(images: Sequence[Image.Image], size: int | None = None) -> torch.Tensor:
    """RGB images as float ``[N, 3, H, W]`` in [0, 1]. Images of different sizes need ``size`` (bilinear resize of
    each to ``size x size`` on the float tensor, as pytorch-fid does)."""
    tensors = [torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
               for im in images]
    if size is not None:
        tensors = [F.interpolate(t[None], size=(size, size), mode="bilinear", align_corners=False)[0]
                   for t in tensors]
    elif len({tuple(t.shape) for t in tensors}) > 1:
        raise ValueError("Images of different sizes in one batch; pass `size` to resize them.")
    return torch.stack(tensors)


class InceptionFeatures:
    """FID features (2048-d ``pool3``) of the FID Inception-v3 loaded from ``weights_path``.

    ``weights_path=None`` keeps random weights (only for tests: such features mean nothing). Call it on a batch of
    PIL images; :meth:`classifier` gives the Inception Score's class probabilities from the same network.
    """

    dim = 2048

    def __init__(self, weights_path: str | os.PathLike | None, *, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, seed: int = 0, input_size: int = 299) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.model = FIDInceptionV3(input_size=input_size)
            if weights_path is None:  # variance-preserving random weights, so that test features are not ~0
                for module in self.model.modules():
                    if isinstance(module, nn.Conv2d):
                        nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        if weights_path is not None:
            load_inception_weights(self.model, weights_path)
        self.model.eval().requires_grad_(False).to(device=device, dtype=dtype)
        self.device = torch.device(device)
        self.dtype = dtype
        self.name = f"inception:{os.fspath(weights_path) if weights_path is not None else 'random'}"

    def _input(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return pil_to_unit_tensor(images, size=self.model.input_size).to(self.device, self.dtype)

    @torch.inference_mode()
    def __call__(self, images: list[Image.Image]) -> np.ndarray:
        return self.model.pool_features(self._input(images)).double().cpu().numpy()

    @torch.inference_mode()
    def logits(self, images: list[Image.Image], bias: bool = True) -> torch.Tensor:
        pool = self.model.pool_features(self._input(images))
        return F.linear(pool, self.model.fc.weight, self.model.fc.bias if bias else None).float().cpu()

    def classifier(self, bias: bool = False) -> InceptionClassifier:
        """The IS classifier: softmax over the 1008 logits. ``bias=False`` (default) leaves out the fc bias, as the
        original TF Inception Score (``pool3 @ W``) and torch-fidelity (``logits_unbiased``) do."""
        return InceptionClassifier(self, bias=bias)


class InceptionClassifier:
    """Class probabilities of :class:`InceptionFeatures` (the Inception Score's classifier)."""

    def __init__(self, features: InceptionFeatures, bias: bool = False) -> None:
        self.features = features
        self.bias = bias
        self.name = features.name + ("" if bias else ":unbiased")

    def __call__(self, images: list[Image.Image]) -> np.ndarray:
        return torch.softmax(self.features.logits(images, bias=self.bias).double(), dim=-1).numpy()


# ----------------------------------------------------------------------------------------------- transformers models
def pooled_embeddings(out: Any) -> torch.Tensor:
    """``get_*_features`` returns a tensor (transformers 4) or an output whose ``pooler_output`` is it (5)."""
    if isinstance(out, torch.Tensor):
        return out
    for name in ("pooler_output", "image_embeds", "text_embeds"):
        value = getattr(out, name, None)
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(f"Cannot find the embeddings in the model output of type {type(out).__name__}.")


def _load_processor(ref: str, kwargs: dict[str, Any]) -> Any:
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(ref, **kwargs)


class TransformersVisionFeatures:
    """Image features from any transformers vision model (hub id or folder), for CLIP-FID and the like.

    ``pooling``: ``auto`` uses a CLIP-style model's projected image embedding (``get_image_features``), else the
    model's ``image_embeds``, else ``pooler_output``, else the mean of ``last_hidden_state`` over tokens (or over
    space for conv nets); ``cls`` takes token 0 of ``last_hidden_state``; ``mean`` forces the mean. ``normalize``
    L2-normalises the features.
    """

    def __init__(self, model: str | os.PathLike, *, device: str | torch.device = "cpu",
                 dtype: torch.dtype | None = None, pooling: str = "auto", normalize: bool = False,
                 trust_remote_code: bool = False) -> None:
        from transformers import AutoModel

        if pooling not in ("auto", "cls", "mean"):
            raise ValueError(f"pooling must be 'auto', 'cls' or 'mean', got {pooling!r}.")
        ref = os.fspath(model)
        kwargs = {"trust_remote_code": True} if trust_remote_code else {}
        try:
            self.model = AutoModel.from_pretrained(ref, **kwargs)
            self.processor = _load_processor(ref, kwargs)
        except (OSError, ValueError) as err:
            raise describe_load_error(err, "vision model", ref) from err
        self.model.eval().to(device)
        if dtype is not None:
            self.model.to(dtype)
        self.device = torch.device(device)
        self.dtype = next(self.model.parameters()).dtype
        self.pooling = pooling
        self.normalize = normalize
        self.name = f"hf:{ref}"

    @torch.inference_mode()
    def __call__(self, images: list[Image.Image]) -> np.ndarray:
        pixels = self.processor(images=list(images), return_tensors="pt")["pixel_values"].to(self.device, self.dtype)
        if self.pooling == "auto" and hasattr(self.model, "get_image_features"):
            feats = pooled_embeddings(self.model.get_image_features(pixel_values=pixels))
        else:  # a CLIP-style model's vision tower, or the model itself
            backbone = getattr(self.model, "vision_model", None) if hasattr(self.model, "get_image_features") else None
            feats = self._pool((backbone or self.model)(pixel_values=pixels))
        feats = feats.float().reshape(feats.shape[0], -1)
        if self.normalize:
            feats = F.normalize(feats, dim=-1)
        return feats.double().cpu().numpy()

    def _pool(self, out: Any) -> torch.Tensor:
        hidden = getattr(out, "last_hidden_state", None)
        if self.pooling == "auto":
            for name in ("image_embeds", "pooler_output"):
                value = getattr(out, name, None)
                if isinstance(value, torch.Tensor):
                    return value
        if not isinstance(hidden, torch.Tensor):
            raise ValueError(f"{self.name}: the model output has no last_hidden_state to pool.")
        if self.pooling == "cls":
            return hidden[:, 0]
        return hidden.mean(dim=1) if hidden.ndim == 3 else hidden.flatten(2).mean(-1)


class TransformersImageClassifier:
    """Class probabilities (softmax of the logits) of any transformers image-classification model."""

    def __init__(self, model: str | os.PathLike, *, device: str | torch.device = "cpu",
                 dtype: torch.dtype | None = None, trust_remote_code: bool = False) -> None:
        from transformers import AutoModelForImageClassification

        ref = os.fspath(model)
        kwargs = {"trust_remote_code": True} if trust_remote_code else {}
        try:
            self.model = AutoModelForImageClassification.from_pretrained(ref, **kwargs)
            self.processor = _load_processor(ref, kwargs)
        except (OSError, ValueError) as err:
            raise describe_load_error(err, "image classifier", ref) from err
        self.model.eval().to(device)
        if dtype is not None:
            self.model.to(dtype)
        self.device = torch.device(device)
        self.dtype = next(self.model.parameters()).dtype
        self.name = f"hf:{ref}"

    @torch.inference_mode()
    def __call__(self, images: list[Image.Image]) -> np.ndarray:
        pixels = self.processor(images=list(images), return_tensors="pt")["pixel_values"].to(self.device, self.dtype)
        return torch.softmax(self.model(pixel_values=pixels).logits.double(), dim=-1).cpu().numpy()


# ------------------------------------------------------------------------------------------------------- factories
def _split_spec(spec: str, what: str) -> tuple[str, str]:
    kind, sep, ref = spec.partition(":")
    if not sep or kind not in ("inception", "hf") or not ref:
        raise ValueError(f"{what} {spec!r} must be 'inception:PATH' (the FID Inception weight file, "
                         f"{INCEPTION_WEIGHTS_NAME}) or 'hf:MODEL' (a transformers hub id or folder).")
    return kind, ref


def make_feature_extractor(spec: str, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                           trust_remote_code: bool = False):
    """``inception:PATH`` -> :class:`InceptionFeatures`; ``hf:ID_OR_PATH`` -> :class:`TransformersVisionFeatures`."""
    kind, ref = _split_spec(spec, "FID features")
    if kind == "inception":
        return InceptionFeatures(ref, device=device, dtype=dtype or torch.float32)
    return TransformersVisionFeatures(ref, device=device, dtype=dtype, trust_remote_code=trust_remote_code)


def make_classifier(spec: str, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                    trust_remote_code: bool = False):
    """``inception:PATH`` -> the FID Inception's (unbiased) softmax; ``hf:ID_OR_PATH`` -> a transformers classifier."""
    kind, ref = _split_spec(spec, "IS classifier")
    if kind == "inception":
        return InceptionFeatures(ref, device=device, dtype=dtype or torch.float32).classifier()
    return TransformersImageClassifier(ref, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
