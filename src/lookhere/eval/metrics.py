"""Metrics: exact match, box IoU and Acc@IoU, pointing, cIoU/mIoU, and the attention ratio.

All are plain functions of arrays. Boxes are xyxy pixels; masks are bool (H, W) arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from lookhere.maps import Box, point_in_region

if TYPE_CHECKING:  # torch is imported where a tensor is measured: scoring a file needs none
    import torch


def normalise_answer(text: str) -> str:
    """Lower case, single spaces, no surrounding punctuation or trailing period."""
    return " ".join(text.strip().strip(".!?").lower().split())


def exact_match(preds: Sequence[str | None], golds: Sequence[str]) -> float:
    """Share of predictions equal to the gold answer after `normalise_answer`; None is wrong."""
    _same_length(preds, golds)
    hits = [p is not None and normalise_answer(p) == normalise_answer(g)
            for p, g in zip(preds, golds, strict=True)]
    return float(np.mean(hits)) if hits else 0.0


def box_iou(a: Box, b: Box) -> float:
    """IoU of two xyxy boxes (0 when either is empty)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = _area(a) + _area(b) - inter
    return inter / union if union > 0 else 0.0


def acc_at_iou(preds: Sequence[Box | None], golds: Sequence[Box], threshold: float = 0.5
               ) -> float:
    """Share of predicted boxes with IoU >= threshold (Acc@0.5 by default); None is a miss."""
    _same_length(preds, golds)
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    hits = [p is not None and box_iou(p, g) >= threshold for p, g in zip(preds, golds, strict=True)]
    return float(np.mean(hits)) if hits else 0.0


def mean_box_iou(preds: Sequence[Box | None], golds: Sequence[Box]) -> float:
    _same_length(preds, golds)
    ious = [0.0 if p is None else box_iou(p, g) for p, g in zip(preds, golds, strict=True)]
    return float(np.mean(ious)) if ious else 0.0



def pointing_accuracy(points: Sequence[tuple[float, float] | None],
                      boxes: Sequence[Box | None] | None = None,
                      masks: Sequence[np.ndarray | None] | None = None) -> float:
    n = len(points)
    boxes = boxes if boxes is not None else [None] * n
    masks = masks if masks is not None else [None] * n
    _same_length(points, boxes)
    _same_length(points, masks)
    hits = [point_in_region(p, b, m) for p, b, m in zip(points, boxes, masks, strict=True)]
    return float(np.mean(hits)) if hits else 0.0


def mask_ious(preds: Sequence[np.ndarray], golds: Sequence[np.ndarray]) -> dict[str, float]:
    """``{"cIoU": cumulative intersection / cumulative union, "mIoU": mean per-sample IoU}``.

    A sample whose prediction and gold are both empty has IoU 1.
    """
    _same_length(preds, golds)
    inter_sum = union_sum = 0
    ious = []
    for p, g in zip(preds, golds, strict=True):
        p, g = np.asarray(p, bool), np.asarray(g, bool)
        if p.shape != g.shape:
            raise ValueError(f"mask shapes differ: {p.shape} vs {g.shape}")
        inter, union = int((p & g).sum()), int((p | g).sum())
        inter_sum, union_sum = inter_sum + inter, union_sum + union
        ious.append(inter / union if union else 1.0)
    return {"cIoU": inter_sum / union_sum if union_sum else 1.0,
            "mIoU": float(np.mean(ious)) if ious else 0.0}


def attention_ratio(attention: torch.Tensor, target: torch.Tensor,
                    visual: torch.Tensor | None = None) -> torch.Tensor:
    """The KLAL paper's figure 4 ratio: mean attention on target tokens / mean on all visual.

    Args:
        attention: (..., K) attention over visual keys (e.g. averaged over heads and layers).
        target: (..., K) bool, the target tokens (e.g. ground-truth cells).
        visual: (..., K) bool, the valid visual tokens (padding False); default all.
    Returns (...) ratios; NaN where a row has no target token (leave those out of averages).
    Above 1 means the target gets more than its share.
    """
    import torch

    visual = torch.ones_like(target, dtype=torch.bool) if visual is None else visual.bool()
    target = target.bool() & visual
    a = attention.float()
    mean_t = (a * target).sum(-1) / target.sum(-1)
    mean_v = (a * visual).sum(-1) / visual.sum(-1).clamp(min=1)
    return mean_t / mean_v


def bootstrap_ci(values: Sequence[float], n_boot: int = 2000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): percentile bootstrap interval of the mean of ``values``."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("values must not be empty")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, (n_boot, v.size))].mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(v.mean()), float(lo), float(hi)


class Tally:
    """Per-sample scores by name, appended as samples are scored (a mask kept only as its
    intersection and union counts, not the mask) and summarised at the end. ``a + b`` pools two
    tallies, a's values first."""

    def __init__(self) -> None:
        self.values: dict[str, list[float]] = {}

    def add(self, **scores: float) -> None:
        for name, value in scores.items():
            self.values.setdefault(name, []).append(value)

    def __getitem__(self, name: str) -> list[float]:
        """The values of ``name`` so far (empty when none was added)."""
        return self.values.get(name, [])

    def __add__(self, other: Tally) -> Tally:
        out = Tally()
        for tally in (self, other):
            for name, values in tally.values.items():
                out.values.setdefault(name, []).extend(values)
        return out

    def mean(self, name: str) -> float:
        return float(np.mean(self[name]))


def _area(b: Box) -> float:
    return max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])


def _same_length(a: Sequence, b: Sequence) -> None:
    if len(a) != len(b):
        raise ValueError(f"predictions ({len(a)}) and references ({len(b)}) differ in length")
