"""Image-generation metrics: CLIP score, FID (Inception or any vision model's features), Inception Score, aesthetics.

Conventions (they follow the references the papers use, see docs/evaluation.md for the deviations):

- **CLIP score** of an (image, text) pair is ``100 * max(cos(E_img, E_txt), 0)`` with the projected, L2-normalised
  embeddings of a CLIP model; a set's score is the mean over pairs. This is torchmetrics' ``CLIPScore`` (and the
  convention of most text-to-image papers). Texts longer than the model's window (77 tokens for CLIP) are truncated,
  with a warning that counts them.
- **FID** is the Fréchet distance between Gaussians fitted to two sets of features,
  ``||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrt(S1 S2))``, computed here (float64, ``scipy.linalg.sqrtm``) with the usual
  numerical fixes of pytorch-fid. Features come from a pluggable extractor (:mod:`llm4gen.scoring.features`): the FID
  Inception-v3 network (``pool3``, 2048-d) for the classic FID, or any transformers vision model (``CLIP-FID``).
- **Inception Score** is ``exp(E_x KL(p(y|x) || p(y)))`` averaged over ``splits`` equal parts of the set (mean and
  standard deviation over the parts), as in the original implementation.
- **Aesthetic score**: any callable that maps images to numbers; :class:`LaionAestheticPredictor` is the LAION
  improved aesthetic predictor (an MLP on CLIP ViT-L/14 image embeddings) with its head loaded from a file.

Every function that reads images takes PIL images or paths and loads them one batch at a time, so 30k-image sets fit
in memory; features are returned as float64 numpy arrays.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from ..utils import describe_load_error, validate_prompts
from .features import load_state_dict_file, pooled_embeddings

__all__ = [
    "DEFAULT_CLIP_MODEL",
    "IMAGE_EXTENSIONS",
    "AestheticScorer",
    "ClipScorer",
    "FeatureExtractor",
    "ImageClassifier",
    "LaionAestheticPredictor",
    "aesthetic_score",
    "batched",
    "clip_score",
    "clip_score_from_embeddings",
    "compute_features",
    "compute_probabilities",
    "feature_statistics",
    "fid",
    "fid_from_features",
    "fid_statistics",
    "frechet_distance",
    "inception_score",
    "inception_score_from_probs",
    "list_images",
    "load_images",
    "load_statistics",
    "save_statistics",
]

DEFAULT_CLIP_MODEL = "openai/clip-vit-large-patch14"  # torchmetrics' default; the usual choice in T2I papers
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

ImageInput = Image.Image | str | os.PathLike


# ----------------------------------------------------------------------------------------------------------- images
def list_images(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """The image files in ``folder`` (png, jpg, jpeg, webp, bmp), sorted by path."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"Image folder {str(root)!r} does not exist or is not a folder.")
    pattern = "**/*" if recursive else "*"
    files = sorted(p for p in root.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    return files


def load_images(items: Sequence[ImageInput]) -> list[Image.Image]:
    """Open paths (PIL images pass through) as RGB images; an unreadable file raises an ``OSError`` naming it."""
    out = []
    for item in items:
        if isinstance(item, Image.Image):
            out.append(item.convert("RGB"))
            continue
        try:
            with Image.open(item) as im:
                out.append(im.convert("RGB"))
        except (OSError, ValueError) as err:
            raise OSError(f"Could not read the image {os.fspath(item)!r}: {err}") from err
    return out


def batched(items: Sequence[Any], batch_size: int) -> Iterator[Sequence[Any]]:
    """Consecutive slices of ``items`` of at most ``batch_size``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    for start in range(0, len(items), batch_size):
        yield items[start : start + batch_size]


def _as_image_list(images: Sequence[ImageInput] | str | os.PathLike) -> Sequence[ImageInput]:
    if isinstance(images, (str, os.PathLike)):
        files = list_images(images)
        if not files:
            raise ValueError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) in the folder {os.fspath(images)!r}.")
        return files
    if isinstance(images, Image.Image):
        return [images]
    return images


def _progress(total: int, label: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=label, disable=not enabled, leave=False, unit="img")


# ------------------------------------------------------------------------------------------------------- CLIP score
def clip_score_from_embeddings(
    image_embeds: torch.Tensor | np.ndarray,
    text_embeds: torch.Tensor | np.ndarray,
    scale: float = 100.0,
    clamp_negative: bool = True,
) -> np.ndarray:
    """Per-pair CLIP scores ``scale * max(cos(image_i, text_i), 0)`` of row-aligned embeddings ``[N, D]``.

    The embeddings need not be normalised. ``clamp_negative=False`` and ``scale=1`` give the raw cosine similarity
    (the form some benchmarks, e.g. T2I-CompBench's CLIPScore, report).
    """
    a = torch.as_tensor(np.asarray(image_embeds) if isinstance(image_embeds, np.ndarray) else image_embeds)
    b = torch.as_tensor(np.asarray(text_embeds) if isinstance(text_embeds, np.ndarray) else text_embeds)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"image and text embeddings must both be [N, D] with the same shape, got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}.")
    a = torch.nn.functional.normalize(a.double(), dim=-1)
    b = torch.nn.functional.normalize(b.double(), dim=-1)
    cos = (a * b).sum(-1)
    if clamp_negative:
        cos = cos.clamp(min=0)
    return (scale * cos).numpy()


class ClipScorer:
    """Embeds images and texts with any transformers CLIP-style model (``get_image_features``/``get_text_features``)
    and scores pairs. ``model`` is a hub id, a local folder or an already loaded model (then give ``tokenizer`` and
    ``image_processor`` too)."""

    def __init__(
        self,
        model: str | os.PathLike | torch.nn.Module = DEFAULT_CLIP_MODEL,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        batch_size: int = 32,
        tokenizer: Any = None,
        image_processor: Any = None,
        trust_remote_code: bool = False,
    ) -> None:
        from transformers import AutoImageProcessor, AutoModel, AutoTokenizer


        self.batch_size = batch_size
        self.device = torch.device(device)
        if isinstance(model, torch.nn.Module):
            if tokenizer is None or image_processor is None:
                raise ValueError("A loaded CLIP model needs its `tokenizer` and `image_processor` as well.")
            self.model_name = type(model).__name__
            self.model = model
        else:
            ref = os.fspath(model)
            self.model_name = ref
            kwargs = {"trust_remote_code": True} if trust_remote_code else {}
            try:
                self.model = AutoModel.from_pretrained(ref, **kwargs)
            except (OSError, ValueError) as err:
                raise describe_load_error(err, "CLIP model", ref) from err
        if not (hasattr(self.model, "get_image_features") and hasattr(self.model, "get_text_features")):
            raise ValueError(f"{self.model_name!r} ({type(self.model).__name__}) is not a CLIP-style model: it has no "
                             "get_image_features/get_text_features. Pass a CLIP (or SigLIP, ...) checkpoint.")
        if not isinstance(model, torch.nn.Module):
            try:
                tokenizer = tokenizer or AutoTokenizer.from_pretrained(ref, **kwargs)
                image_processor = image_processor or AutoImageProcessor.from_pretrained(ref, **kwargs)
            except (OSError, ValueError) as err:
                raise describe_load_error(err, "CLIP tokenizer / image processor", ref) from err
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.model.eval().to(self.device)
        if dtype is not None:
            self.model.to(dtype)
        self.dtype = next(self.model.parameters()).dtype
        max_len = getattr(tokenizer, "model_max_length", None)
        cfg_len = getattr(getattr(self.model.config, "text_config", None), "max_position_embeddings", None)
        candidates = [n for n in (max_len, cfg_len) if isinstance(n, int) and 0 < n < 100_000]
        self.max_length = min(candidates) if candidates else 77

    @torch.inference_mode()
    def embed_images(self, images: Sequence[ImageInput], progress: bool = False) -> torch.Tensor:
        """L2-normalised image embeddings ``[N, D]`` (float32, CPU)."""
        images = _as_image_list(images)
        out = []
        with _progress(len(images), "CLIP images", progress) as bar:
            for batch in batched(images, self.batch_size):
                pixels = self.image_processor(images=load_images(batch), return_tensors="pt")["pixel_values"]
                emb = pooled_embeddings(self.model.get_image_features(pixel_values=pixels.to(self.device, self.dtype)))
                out.append(torch.nn.functional.normalize(emb.float(), dim=-1).cpu())
                bar.update(len(batch))
        return torch.cat(out)

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text embeddings ``[N, D]`` (float32, CPU); texts over the window are truncated."""

        texts = validate_prompts(list(texts) if not isinstance(texts, str) else texts, name="texts")
        out = []
        truncated = 0
        for batch in batched(texts, self.batch_size):
            full = self.tokenizer(list(batch), padding=False, truncation=False)["input_ids"]
            truncated += sum(len(ids) > self.max_length for ids in full)
            enc = self.tokenizer(list(batch), padding="max_length", truncation=True, max_length=self.max_length,
                                 return_tensors="pt")
            kwargs = {"input_ids": enc["input_ids"].to(self.device)}
            if "attention_mask" in enc:
                kwargs["attention_mask"] = enc["attention_mask"].to(self.device)
            emb = pooled_embeddings(self.model.get_text_features(**kwargs))
            out.append(torch.nn.functional.normalize(emb.float(), dim=-1).cpu())
        if truncated:
            warnings.warn(f"{truncated} of {len(texts)} texts are longer than the CLIP model's {self.max_length}-token "
                          "window and were truncated for the CLIP score.", stacklevel=2)
        return torch.cat(out)

    def score_pairs(self, images: Sequence[ImageInput], texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """Per-pair CLIP scores (``100 * max(cos, 0)``) of ``images[i]`` with ``texts[i]``."""
        images = _as_image_list(images)
        if len(images) != len(texts):
            raise ValueError(f"Got {len(images)} images but {len(texts)} texts; the CLIP score pairs them one to one.")
        if not len(images):
            raise ValueError("No images to score.")
        return clip_score_from_embeddings(self.embed_images(images, progress=progress), self.embed_texts(texts))

    __call__ = score_pairs


def clip_score(
    images: Sequence[ImageInput],
    texts: Sequence[str],
    model: str | os.PathLike | ClipScorer = DEFAULT_CLIP_MODEL,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    batch_size: int = 32,
) -> float:
    """Mean CLIP score (``100 * max(cos, 0)``) of ``images[i]`` paired with ``texts[i]``.

    ``model`` is a CLIP hub id / folder, or a :class:`ClipScorer` to reuse (then the other options are ignored).
    """
    scorer = model if isinstance(model, ClipScorer) else ClipScorer(model, device=device, dtype=dtype,
                                                                    batch_size=batch_size)
    return float(np.mean(scorer.score_pairs(images, texts)))


# -------------------------------------------------------------------------------------------------------------- FID
class FeatureExtractor(Protocol):
    """Maps a batch of RGB PIL images to features ``[N, D]`` (see :mod:`llm4gen.scoring.features`)."""

    name: str

    def __call__(self, images: list[Image.Image]) -> np.ndarray | torch.Tensor: ...


def _to_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def compute_features(
    images: Sequence[ImageInput] | str | os.PathLike,
    extractor: Callable[[list[Image.Image]], np.ndarray | torch.Tensor],
    batch_size: int = 50,
    progress: bool = False,
) -> np.ndarray:
    """Features ``[N, D]`` (float64) of images (PIL images, paths, or a folder), loaded one batch at a time."""
    images = _as_image_list(images)
    if not len(images):
        raise ValueError("No images to compute features of.")
    out = []
    with _progress(len(images), getattr(extractor, "name", "features"), progress) as bar:
        for batch in batched(images, batch_size):
            feats = _to_numpy(extractor(load_images(batch)))
            if feats.ndim != 2 or feats.shape[0] != len(batch):
                raise ValueError(f"The feature extractor returned shape {feats.shape} for {len(batch)} images; "
                                 "it must return [N, D].")
            out.append(feats)
            bar.update(len(batch))
    return np.concatenate(out)


def feature_statistics(features: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[D]`` and covariance ``[D, D]`` (unbiased, float64) of features ``[N, D]``."""
    feats = _to_numpy(features)
    if feats.ndim != 2:
        raise ValueError(f"features must be [N, D], got shape {feats.shape}.")
    if feats.shape[0] < 2:
        raise ValueError(f"FID needs at least 2 images per set to estimate a covariance, got {feats.shape[0]}.")
    if not np.isfinite(feats).all():
        raise ValueError("The features contain NaN or infinite values; check the images and the extractor.")
    return feats.mean(axis=0), np.cov(feats, rowvar=False).reshape(feats.shape[1], feats.shape[1])


def _sqrtm(a: np.ndarray) -> np.ndarray:
    from scipy import linalg

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # "singular matrix": handled by the caller
        out = linalg.sqrtm(a)
    return out[0] if isinstance(out, tuple) else out


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2):
    ``||mu1 - mu2||^2 + Tr(sigma1) + Tr(sigma2) - 2 Tr(sqrtm(sigma1 @ sigma2))``.

    Like pytorch-fid: when the product is singular (its square root not finite), ``eps * I`` is added to both
    covariances; an imaginary part of the square root's diagonal below 1e-3 is numerical noise and is dropped, a
    larger one raises a ``ValueError``.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape:
        raise ValueError(f"The two means have different shapes: {mu1.shape} and {mu2.shape}.")
    d = mu1.shape[0]
    if sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"The covariances must be [{d}, {d}], got {sigma1.shape} and {sigma2.shape}.")
    diff = mu1 - mu2
    covmean = _sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        warnings.warn(f"FID: the product of the covariances is singular; adding {eps} to their diagonals.",
                      stacklevel=2)
        offset = np.eye(d) * eps
        covmean = _sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FID: the matrix square root has a large imaginary component "
                             f"({np.max(np.abs(covmean.imag)):.3g}); the covariances are ill-conditioned (too few "
                             "images for the feature size?).")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fid_from_features(features_a: np.ndarray | torch.Tensor, features_b: np.ndarray | torch.Tensor) -> float:
    """FID between two feature sets ``[N, D]`` and ``[M, D]``."""
    return frechet_distance(*feature_statistics(features_a), *feature_statistics(features_b))


def save_statistics(path: str | os.PathLike, mu: np.ndarray, sigma: np.ndarray, **info: Any) -> Path:
    """Write FID statistics to ``.npz`` (``mu``, ``sigma``: the format pytorch-fid reads and writes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = {k: np.asarray(v) for k, v in info.items()}
    np.savez(path, mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64), **extra)
    return path


def load_statistics(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``(mu, sigma)`` from a ``.npz`` written by :func:`save_statistics` or pytorch-fid."""
    with np.load(path, allow_pickle=False) as data:
        if "mu" not in data or "sigma" not in data:
            raise ValueError(f"{os.fspath(path)!r} has no 'mu' and 'sigma' arrays (it has {sorted(data.files)}).")
        return data["mu"].astype(np.float64), data["sigma"].astype(np.float64)


def fid_statistics(
    images: Sequence[ImageInput] | str | os.PathLike,
    extractor: Callable[[list[Image.Image]], np.ndarray | torch.Tensor],
    batch_size: int = 50,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray, int]:
    """``(mu, sigma, n)`` of a set: a folder, a list of images/paths, or a ``.npz`` statistics file (n = -1)."""
    if isinstance(images, (str, os.PathLike)) and os.fspath(images).endswith(".npz"):
        return (*load_statistics(images), -1)
    feats = compute_features(images, extractor, batch_size=batch_size, progress=progress)
    return (*feature_statistics(feats), feats.shape[0])


def fid(
    images_a: Sequence[ImageInput] | str | os.PathLike,
    images_b: Sequence[ImageInput] | str | os.PathLike,
    extractor: Callable[[list[Image.Image]], np.ndarray | torch.Tensor],
    batch_size: int = 50,
    progress: bool = False,
) -> float:
    """FID between two image sets (folders, lists of images/paths, or ``.npz`` statistics) in ``extractor``'s
    feature space (:class:`~llm4gen.scoring.features.InceptionFeatures` for the classic FID)."""
    mu1, s1, _ = fid_statistics(images_a, extractor, batch_size, progress)
    mu2, s2, _ = fid_statistics(images_b, extractor, batch_size, progress)
    return frechet_distance(mu1, s1, mu2, s2)


# -------------------------------------------------------------------------------------------------- Inception Score
class ImageClassifier(Protocol):
    """Maps a batch of RGB PIL images to class probabilities ``[N, C]`` (rows sum to 1)."""

    name: str

    def __call__(self, images: list[Image.Image]) -> np.ndarray | torch.Tensor: ...


def inception_score_from_probs(probs: np.ndarray | torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """Inception Score ``exp(E_x KL(p(y|x) || p(y)))`` of class probabilities ``[N, C]``: mean and standard
    deviation over ``splits`` parts (part k is rows ``k*N//splits`` to ``(k+1)*N//splits``, as in the original)."""
    p = _to_numpy(probs)
    if p.ndim != 2:
        raise ValueError(f"probs must be [N, C], got shape {p.shape}.")
    n = p.shape[0]
    if splits < 1 or n < splits:
        raise ValueError(f"The Inception Score needs at least `splits` ({splits}) images, got {n}.")
    if (p < -1e-6).any() or not np.allclose(p.sum(axis=1), 1.0, atol=1e-3):
        raise ValueError("probs must be probabilities (non-negative rows that sum to 1); apply a softmax to logits.")
    p = np.clip(p, 0.0, None)
    scores = []
    for k in range(splits):
        part = p[k * n // splits : (k + 1) * n // splits]
        py = part.mean(axis=0, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = np.where(part > 0, part * (np.log(part) - np.log(py)), 0.0)
        scores.append(math.exp(kl.sum(axis=1).mean()))
    return float(np.mean(scores)), float(np.std(scores))


def compute_probabilities(
    images: Sequence[ImageInput] | str | os.PathLike,
    classifier: Callable[[list[Image.Image]], np.ndarray | torch.Tensor],
    batch_size: int = 50,
    progress: bool = False,
) -> np.ndarray:
    """Class probabilities ``[N, C]`` of images under ``classifier`` (one batch in memory at a time)."""
    return compute_features(images, classifier, batch_size=batch_size, progress=progress)


def inception_score(
    images: Sequence[ImageInput] | str | os.PathLike,
    classifier: Callable[[list[Image.Image]], np.ndarray | torch.Tensor],
    splits: int = 10,
    batch_size: int = 50,
    progress: bool = False,
) -> tuple[float, float]:
    """Inception Score (mean, std over ``splits``) of images under a classifier that returns probabilities
    (:class:`~llm4gen.scoring.features.InceptionFeatures` ``.classifier()`` for the classic IS)."""
    probs = compute_probabilities(images, classifier, batch_size=batch_size, progress=progress)
    return inception_score_from_probs(probs, splits=splits)


# ------------------------------------------------------------------------------------------------------- aesthetics
class AestheticScorer(Protocol):
    """The aesthetic-score hook: a batch of RGB PIL images to one number each."""

    name: str

    def __call__(self, images: list[Image.Image]) -> Sequence[float] | np.ndarray | torch.Tensor: ...


def aesthetic_score(
    images: Sequence[ImageInput] | str | os.PathLike,
    scorer: Callable[[list[Image.Image]], Sequence[float] | np.ndarray | torch.Tensor],
    batch_size: int = 32,
    progress: bool = False,
) -> tuple[float, np.ndarray]:
    """``(mean, per-image scores)`` of images under any aesthetic ``scorer`` (e.g. :class:`LaionAestheticPredictor`).
    """
    images = _as_image_list(images)
    out = []
    with _progress(len(images), "aesthetics", progress) as bar:
        for batch in batched(images, batch_size):
            raw = scorer(load_images(batch))
            values = _to_numpy(raw if isinstance(raw, torch.Tensor) else np.asarray(raw, dtype=np.float64)).reshape(-1)
            if values.shape[0] != len(batch):
                raise ValueError(f"The aesthetic scorer returned {values.shape[0]} values for {len(batch)} images.")
            out.append(values)
            bar.update(len(batch))
    if not out:
        raise ValueError("No images to score.")
    scores = np.concatenate(out)
    return float(scores.mean()), scores


class LaionAestheticPredictor(torch.nn.Module):
    """The LAION "improved aesthetic predictor": ``MLP(normalize(CLIP image embedding))`` -> a 1-10 rating.

    The head is ``Linear(D, 1024) -> Dropout -> Linear(1024, 128) -> Dropout -> Linear(128, 64) -> Dropout ->
    Linear(64, 16) -> Linear(16, 1)`` (no activations, as published), state-dict keys ``layers.{0,2,4,6,7}.*``.
    Its released weights (``sac+logos+ava1-l14-linearMSE.pth``, github.com/christophschuhmann/improved-aesthetic-
    predictor) go with ``openai/clip-vit-large-patch14``; both are given by path or id, nothing is downloaded.
    """

    def __init__(self, head_path: str | os.PathLike | None, clip: str | os.PathLike | ClipScorer = DEFAULT_CLIP_MODEL,
                 *, device: str | torch.device = "cpu", batch_size: int = 32) -> None:
        super().__init__()
        self.clip = clip if isinstance(clip, ClipScorer) else ClipScorer(clip, device=device, batch_size=batch_size)
        dim = getattr(self.clip.model.config, "projection_dim", None) or int(self.clip.embed_texts(["a"]).shape[-1])
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(dim, 1024), torch.nn.Dropout(0.2), torch.nn.Linear(1024, 128), torch.nn.Dropout(0.2),
            torch.nn.Linear(128, 64), torch.nn.Dropout(0.1), torch.nn.Linear(64, 16), torch.nn.Linear(16, 1),
        )
        self.name = f"laion-aesthetic({self.clip.model_name})"
        if head_path is not None:
            state = load_state_dict_file(head_path)
            state = {k.removeprefix("module."): v for k, v in state.items()}
            try:
                self.layers.load_state_dict({k.removeprefix("layers."): v for k, v in state.items()})
            except RuntimeError as err:
                raise ValueError(f"{os.fspath(head_path)!r} is not an aesthetic-predictor head for a {dim}-d CLIP "
                                 f"embedding: {err}") from None
        self.eval()

    @torch.inference_mode()
    def forward(self, images: list[Image.Image]) -> np.ndarray:  # type: ignore[override]
        emb = self.clip.embed_images(images)
        return self.layers(emb.to(next(self.layers.parameters()).dtype)).squeeze(-1).double().numpy()
