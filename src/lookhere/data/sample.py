"""One grounding sample: an image, a question, its answer, and the pixels the answer depends on.

Every generator and loader yields `Sample`s, so targets, losses, training and evaluation never
care where a sample came from. Geometry stays in original-image pixels (x right, y down, boxes
xyxy) until an adapter maps it onto its own grid (`lookhere.targets`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

Point = tuple[float, float]
Box = tuple[float, float, float, float]


@dataclass
class Geometry:
    """The ground-truth region an answer depends on, in image pixels. Any mix of:

    - ``boxes``: xyxy boxes (a patch set is a list of cell boxes);
    - ``points``: (x, y) points;
    - ``polylines``: lists of (x, y) vertices, each drawn with ``line_width`` pixels;
    - ``mask``: an (H, W) bool array.
    """

    boxes: list[Box] = field(default_factory=list)
    points: list[Point] = field(default_factory=list)
    polylines: list[list[Point]] = field(default_factory=list)
    line_width: float = 1.0
    mask: np.ndarray | None = None

    def is_empty(self) -> bool:
        return not (self.boxes or self.points or self.polylines or
                    (self.mask is not None and self.mask.any()))

    def to_json(self) -> dict[str, Any]:
        """JSON-able form (the mask as a COCO-style uncompressed RLE)."""
        out: dict[str, Any] = {
            "boxes": [list(map(float, b)) for b in self.boxes],
            "points": [list(map(float, p)) for p in self.points],
            "polylines": [[list(map(float, p)) for p in line] for line in self.polylines],
            "line_width": float(self.line_width),
        }
        if self.mask is not None:
            out["mask_rle"] = mask_to_rle(self.mask)
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Geometry:
        mask = rle_to_mask(d["mask_rle"]) if d.get("mask_rle") else None
        return cls(
            boxes=[tuple(b) for b in d.get("boxes", [])],
            points=[tuple(p) for p in d.get("points", [])],
            polylines=[[tuple(p) for p in line] for line in d.get("polylines", [])],
            line_width=float(d.get("line_width", 1.0)), mask=mask,
        )


@dataclass
class Sample:
    """A question about one image, with its answer and the geometry the answer depends on."""

    image: Image.Image
    question: str
    answer: str  # the answer string the model is trained to produce
    structured: dict[str, Any]  # the answer as data, e.g. {"row": 3, "col": 5}
    geometry: Geometry  # where the answer lives in the image
    task: str = ""
    id: str = ""
    meta: dict[str, Any] = field(default_factory=dict)  # difficulty knobs, objects, ...


def samples_digest(samples: Iterable[Sample]) -> str:
    """sha256 hex digest of what a model reads from ``samples``, in order: each id, question
    and image (mode, size, pixels). Caches of model outputs key on it rather than on a dataset
    folder's path, so a folder regenerated with other images or questions is another dataset."""
    h = hashlib.sha256()
    for s in samples:
        h.update(json.dumps([s.id, s.question, s.image.mode, list(s.image.size)]).encode())
        h.update(hashlib.sha256(s.image.tobytes()).digest())
    return h.hexdigest()


def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO uncompressed RLE: column-major run lengths, the first run counting zeros."""
    m = np.asarray(mask, dtype=bool)
    flat = m.flatten(order="F")
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1  # where a new run starts
    bounds = np.concatenate([[0], edges, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"size": [int(m.shape[0]), int(m.shape[1])], "counts": [int(c) for c in counts]}


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    h, w = rle["size"]
    counts = rle["counts"]
    if isinstance(counts, str):
        from pycocotools import mask as mask_utils

        return mask_utils.decode(rle).astype(bool)
    values = np.zeros(sum(counts), dtype=bool)
    pos, val = 0, False
    for c in counts:
        values[pos:pos + c] = val
        pos, val = pos + c, not val
    if values.size != h * w:
        raise ValueError(f"RLE counts sum to {values.size}, expected {h}x{w}")
    return values.reshape((h, w), order="F")


def check_geometry(geometry: Geometry, image_size: tuple[int, int], tol: float = 1e-6) -> None:
    """Clear errors for NaN, empty boxes, and boxes or points outside the image."""
    w, h = image_size
    for box in geometry.boxes:
        if len(box) != 4 or not np.all(np.isfinite(box)):
            raise ValueError(f"box {box!r} must be 4 finite numbers (x0, y0, x1, y1)")
        x0, y0, x1, y1 = box
        if not (x1 > x0 and y1 > y0):
            raise ValueError(f"box {box!r} is empty: need x1 > x0 and y1 > y0")
        if x0 < -tol or y0 < -tol or x1 > w + tol or y1 > h + tol:
            raise ValueError(f"box {box!r} lies outside the {w}x{h} image")
    lines = [p for line in geometry.polylines for p in line]
    for x, y in list(geometry.points) + lines:
        if not (np.isfinite(x) and np.isfinite(y)):
            raise ValueError(f"point {(x, y)!r} must be finite")
        if not (-tol <= x <= w + tol and -tol <= y <= h + tol):
            raise ValueError(f"point {(x, y)!r} lies outside the {w}x{h} image")
    if geometry.mask is not None and tuple(geometry.mask.shape) != (h, w):
        raise ValueError(f"mask has shape {geometry.mask.shape}, the image is {h}x{w} (h x w)")
