"""Object detection for the spatial benchmarks: any transformers detector, boxes in pixels of the input image.

:class:`HFObjectDetector` wraps ``AutoImageProcessor`` + ``AutoModelForObjectDetection`` (DETR, Conditional/Deformable
DETR, YOLOS, RT-DETR, ...) and its ``post_process_object_detection``. Detections come sorted by score, highest first,
so "the first detection labelled X" is the most confident X (what T2I-CompBench's UniDet evaluator takes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from PIL import Image

from ..utils import describe_load_error

__all__ = ["Detection", "Detector", "HFObjectDetector"]


@dataclass(frozen=True)
class Detection:
    label: str
    score: float
    box: tuple[float, float, float, float]  # x_min, y_min, x_max, y_max in pixels of the scored image


@runtime_checkable
class Detector(Protocol):
    name: str

    def detect(self, images: Sequence[Image.Image]) -> list[list[Detection]]: ...


class HFObjectDetector:
    """Detections above ``threshold`` from a transformers object detector, each image sorted by score."""

    def __init__(self, model, processor, name: str = "detector", device: str | torch.device = "cpu",
                 threshold: float = 0.5, batch_size: int = 8) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}.")
        if not hasattr(processor, "post_process_object_detection"):
            raise ValueError(f"The image processor of {name!r} has no post_process_object_detection; "
                             "it is not an object detector.")
        self.model, self.processor, self.name = model.eval(), processor, name
        self.device, self.threshold, self.batch_size = torch.device(device), threshold, batch_size
        self.id2label = {int(k): v for k, v in model.config.id2label.items()}

    @classmethod
    def from_pretrained(cls, ref: str, device: str | torch.device = "cpu", threshold: float = 0.5,
                        dtype: torch.dtype = torch.float32, trust_remote_code: bool = False,
                        **kwargs) -> HFObjectDetector:
        from transformers import AutoImageProcessor, AutoModelForObjectDetection

        try:
            processor = AutoImageProcessor.from_pretrained(ref, trust_remote_code=trust_remote_code)
            model = AutoModelForObjectDetection.from_pretrained(ref, dtype=dtype, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as err:
            raise describe_load_error(err, "object detector", ref) from err
        return cls(model.to(device), processor, name=ref, device=device, threshold=threshold, **kwargs)

    @torch.no_grad()
    def detect(self, images: Sequence[Image.Image]) -> list[list[Detection]]:
        out: list[list[Detection]] = []
        for start in range(0, len(images), self.batch_size):
            ims = [im.convert("RGB") for im in images[start : start + self.batch_size]]
            inputs = self.processor(images=ims, return_tensors="pt").to(self.device)
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
            outputs = self.model(**inputs)
            sizes = torch.tensor([(im.height, im.width) for im in ims])
            results = self.processor.post_process_object_detection(outputs, threshold=self.threshold,
                                                                   target_sizes=sizes)
            for res in results:
                dets = [
                    Detection(self.id2label.get(int(lab), str(int(lab))), float(s),
                              tuple(float(v) for v in box))  # type: ignore[arg-type]
                    for s, lab, box in zip(res["scores"].tolist(), res["labels"].tolist(), res["boxes"].float())
                ]
                dets.sort(key=lambda d: -d.score)
                out.append(dets)
        return out
