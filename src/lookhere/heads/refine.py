"""Pixel masks from a grounding box: the `Refiner` hook, and SAM through transformers.

lookhere's default mask is the grid pseudo-mask upsampled to the image
(`lookhere.heads.grounding.pixel_mask`). For referring segmentation the paper instead prompts SAM
with the box from the localization heads (methods.md section 3; the SAM variant is not named).
A refiner is that step: any callable ``(image, box, grounding) -> (height, width) bool`` at the
image's own resolution, the box in image pixels (xyxy). One that also has
``refine_many(images, boxes)`` is called once per list, so it can batch.

`SamRefiner` wraps transformers' `SamModel` and `SamProcessor`. Without torchvision,
transformers 5 builds SAM's PIL image processor (`SamImageProcessorPil`: resize the longest edge,
normalise, pad), and its `post_process_masks` needs only torch, so everything runs here; with
torchvision the fast processor is used, which does the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image

if TYPE_CHECKING:
    from lookhere.heads.grounding import Grounding

Box = tuple[float, float, float, float]  # (x0, y0, x1, y1) in original-image pixels


@runtime_checkable
class Refiner(Protocol):
    """``(image, box, grounding) -> (height, width)`` bool mask at the image's resolution."""

    def __call__(self, image: Image.Image, box: Box, grounding: Grounding | None = None
                 ) -> np.ndarray: ...


class SamRefiner:
    """SAM prompted with one box per image; a `Refiner` with a batched `refine_many`.

    ``multimask=True`` (default) asks SAM for its three candidate masks and keeps the one with
    the highest predicted IoU. ``multimask=False`` uses SAM's single-output token, which SAM's
    authors suggest for unambiguous prompts. ``mask_threshold`` applies to SAM's logits.
    """

    def __init__(self, model: Any, processor: Any, multimask: bool = True,
                 batch_size: int = 8, mask_threshold: float = 0.0) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.processor = processor
        self.multimask = multimask
        self.batch_size = batch_size
        self.mask_threshold = mask_threshold

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device | None = None,
                        dtype: torch.dtype | None = None, **kwargs: Any) -> SamRefiner:
        """Load a SAM checkpoint (hub id or folder) with its processor; ``kwargs`` go to
        `SamRefiner`. ``dtype`` None keeps transformers' default."""
        from transformers import SamModel, SamProcessor

        model = SamModel.from_pretrained(path, **({"dtype": dtype} if dtype is not None else {}))
        if device is not None:
            model = model.to(device)
        return cls(model.eval(), SamProcessor.from_pretrained(path), **kwargs)

    def __call__(self, image: Image.Image, box: Box, grounding: Grounding | None = None
                 ) -> np.ndarray:
        """``(height, width)`` bool mask of the object in ``box``; ``grounding`` is not used."""
        return self.refine_many([image], [box])[0]

    def refine_many(self, images: Sequence[Image.Image], boxes: Sequence[Box]
                    ) -> list[np.ndarray]:
        """One ``(height, width)`` bool mask per (image, box), ``batch_size`` images a forward."""
        if len(images) != len(boxes):
            raise ValueError(f"images and boxes must pair up, got {len(images)} images and "
                             f"{len(boxes)} boxes")
        checked = [check_box(b, _check_image(im).size)
                   for im, b in zip(images, boxes, strict=True)]
        out: list[np.ndarray] = []
        for i in range(0, len(images), self.batch_size):
            out += self._batch(images[i:i + self.batch_size], checked[i:i + self.batch_size])
        return out

    @torch.no_grad()
    def _batch(self, images: Sequence[Image.Image], boxes: Sequence[list[float]]
               ) -> list[np.ndarray]:
        enc = self.processor(images=[im.convert("RGB") for im in images],
                             input_boxes=[[b] for b in boxes], return_tensors="pt")
        p = next(self.model.parameters())
        out = self.model(pixel_values=enc["pixel_values"].to(p.device, p.dtype),
                         input_boxes=enc["input_boxes"].to(p.device, p.dtype),  # (B, 1, 4)
                         multimask_output=self.multimask)
        # pred_masks (B, 1, n, h, w) low-resolution logits, iou_scores (B, 1, n); n = 3 or 1
        best = out.iou_scores[:, 0].float().argmax(-1)  # (B,)
        low = out.pred_masks[torch.arange(len(images)), 0, best].float().cpu()  # (B, h, w)
        masks = self.processor.post_process_masks(
            [m[None, None] for m in low], enc["original_sizes"], enc["reshaped_input_sizes"],
            mask_threshold=self.mask_threshold)  # each (1, 1, height, width) bool
        return [m[0, 0].numpy().astype(bool) for m in masks]


def refine_masks(refiner: Refiner, images: Sequence[Image.Image],
                 groundings: Sequence[Grounding]) -> list[np.ndarray]:
    """The refiner's ``(height, width)`` bool mask for each (image, grounding), through
    ``refiner.refine_many`` when it has one; checks what comes back."""
    if len(images) != len(groundings):
        raise ValueError(f"images and groundings must pair up, got {len(images)} and "
                         f"{len(groundings)}")
    many = getattr(refiner, "refine_many", None)
    if many is not None:
        masks = list(many(list(images), [g.box for g in groundings]))
    else:
        masks = [refiner(im, g.box, g) for im, g in zip(images, groundings, strict=True)]
    for im, m in zip(images, masks, strict=True):
        w, h = im.size
        if not isinstance(m, np.ndarray) or m.dtype != bool or m.shape != (h, w):
            raise ValueError(f"the refiner must return a ({h}, {w}) bool array for a {w}x{h} "
                             f"image, got {type(m).__name__} {getattr(m, 'shape', '')} "
                             f"{getattr(m, 'dtype', '')}")
    return masks


def check_box(box: Any, image_size: tuple[int, int]) -> list[float]:
    """``box`` as four floats, checked to be xyxy inside an image of ``(width, height)``."""
    try:
        b = np.asarray(box, dtype=np.float64)
    except (TypeError, ValueError):
        b = np.empty(0)
    if b.shape != (4,) or not np.isfinite(b).all():
        raise ValueError(f"box must be 4 finite numbers (x0, y0, x1, y1), got {box!r}")
    x0, y0, x1, y1 = b.tolist()
    w, h = image_size
    if not (0 <= x0 <= x1 <= w and 0 <= y0 <= y1 <= h):
        raise ValueError(f"box must lie inside the {w}x{h} image with x0 <= x1 and y0 <= y1, "
                         f"got {box!r}")
    return [x0, y0, x1, y1]


def _check_image(image: Any) -> Image.Image:
    if not isinstance(image, Image.Image):
        raise ValueError(f"images must be PIL images, got {type(image).__name__}")
    return image
