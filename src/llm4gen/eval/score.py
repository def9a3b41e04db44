"""Scoring a folder of generated images: CLIP score against each image's prompt, FID, Inception Score, aesthetics.

The folder is one ``llm4gen eval generate`` wrote (its ``manifest.jsonl`` gives each image's prompt); the metrics
themselves are :mod:`llm4gen.scoring.metrics`'.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..scoring.features import make_classifier, make_feature_extractor
from ..scoring.metrics import (
    ClipScorer,
    aesthetic_score,
    fid_statistics,
    frechet_distance,
    inception_score,
    list_images,
    save_statistics,
)
from .generate import MANIFEST_NAME, manifest_path, read_manifest

__all__ = ["score_generated"]


def score_generated(
    images_dir: str | os.PathLike,
    *,
    clip_model: str | os.PathLike | ClipScorer | None = None,
    fid_ref: str | os.PathLike | None = None,
    fid_features: str | Callable[[list[Image.Image]], np.ndarray | torch.Tensor] | None = None,
    is_classifier: str | Callable[[list[Image.Image]], np.ndarray | torch.Tensor] | None = None,
    is_splits: int = 10,
    aesthetic: Callable[[list[Image.Image]], Any] | None = None,
    limit: int | None = None,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    save_ref_stats: str | os.PathLike | None = None,
    progress: bool = False,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Score a folder written by ``llm4gen eval generate`` (its ``manifest.jsonl`` gives the prompts) with the
    metrics asked for; returns a JSON-ready report ``{"images_dir", "num_images", "metrics": {...}, "per_image"}``.

    - ``clip_model``: CLIP score of each image with its prompt (hub id / folder / :class:`ClipScorer`);
    - ``fid_ref`` + ``fid_features``: FID against a reference folder or ``.npz`` statistics, in the features of
      ``inception:PATH`` / ``hf:ID`` (:func:`~llm4gen.scoring.features.make_feature_extractor`) or a given extractor;
      ``save_ref_stats`` writes the reference statistics to ``.npz`` for the next run;
    - ``is_classifier``: Inception Score (``inception:PATH`` / ``hf:ID`` or a callable returning probabilities),
      over ``min(is_splits, N)`` splits;
    - ``aesthetic``: any aesthetic scorer (e.g. :class:`LaionAestheticPredictor`).

    A folder without a manifest can still get FID, IS and aesthetics (all its images, sorted by name).
    ``limit`` scores the first N images only (smoke runs).
    """
    root = Path(images_dir)
    if manifest_path(root).is_file():
        records = read_manifest(root)
        missing = [r["file"] for r in records if not (root / r["file"]).is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} images of {manifest_path(root)} are missing (e.g. "
                                    f"{missing[0]}); re-run `llm4gen eval generate` to complete the folder.")
    else:
        if clip_model is not None:
            raise FileNotFoundError(f"{root} has no {MANIFEST_NAME}, so the prompts of its images are unknown and "
                                    "the CLIP score cannot be computed; generate with `llm4gen eval generate`.")
        records = [{"file": p.name, "prompt": None} for p in list_images(root)]
    if limit is not None:
        records = records[:limit]
    if not records:
        raise ValueError(f"No images to score in {root}.")
    if fid_ref is not None and fid_features is None:
        raise ValueError("FID needs a feature extractor: pass fid_features ('inception:PATH' or 'hf:ID').")
    if not any(x is not None for x in (clip_model, fid_ref, is_classifier, aesthetic)):
        raise ValueError("Nothing to compute: ask for at least one of the CLIP score, FID, IS or an aesthetic score.")
    paths = [root / r["file"] for r in records]
    report: dict[str, Any] = {"images_dir": str(root), "num_images": len(paths), "metrics": {}}
    per_image: list[dict[str, Any]] = [{"file": r["file"], "prompt": r.get("prompt")} for r in records]

    if clip_model is not None:
        scorer = clip_model if isinstance(clip_model, ClipScorer) else ClipScorer(
            clip_model, device=device, dtype=dtype, batch_size=batch_size, trust_remote_code=trust_remote_code)
        scores = scorer.score_pairs(paths, [r["prompt"] for r in records], progress=progress)
        report["metrics"]["clip_score"] = {"mean": float(scores.mean()), "std": float(scores.std()),
                                           "n": len(scores), "model": scorer.model_name}
        for row, s in zip(per_image, scores):
            row["clip_score"] = float(s)

    if fid_ref is not None:
        extractor = (make_feature_extractor(fid_features, device=device, dtype=dtype,
                                            trust_remote_code=trust_remote_code)
                     if isinstance(fid_features, str) else fid_features)
        mu1, s1, n1 = fid_statistics(paths, extractor, batch_size=batch_size, progress=progress)
        mu2, s2, n2 = fid_statistics(fid_ref, extractor, batch_size=batch_size, progress=progress)
        if save_ref_stats is not None:
            save_statistics(save_ref_stats, mu2, s2)
        report["metrics"]["fid"] = {"value": frechet_distance(mu1, s1, mu2, s2), "n": n1, "n_reference": n2,
                                    "reference": os.fspath(fid_ref),
                                    "features": getattr(extractor, "name", type(extractor).__name__)}

    if is_classifier is not None:
        classifier = (make_classifier(is_classifier, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
                      if isinstance(is_classifier, str) else is_classifier)
        splits = max(1, min(is_splits, len(paths)))
        mean, std = inception_score(paths, classifier, splits=splits, batch_size=batch_size, progress=progress)
        report["metrics"]["inception_score"] = {"mean": mean, "std": std, "splits": splits, "n": len(paths),
                                                "classifier": getattr(classifier, "name", type(classifier).__name__)}

    if aesthetic is not None:
        mean, values = aesthetic_score(paths, aesthetic, batch_size=batch_size, progress=progress)
        report["metrics"]["aesthetic"] = {"mean": mean, "std": float(values.std()), "n": len(values),
                                          "scorer": getattr(aesthetic, "name", type(aesthetic).__name__)}
        for row, v in zip(per_image, values):
            row["aesthetic"] = float(v)
    report["per_image"] = per_image
    return report
