"""Heatmaps on a grid of visual tokens -> segmentation masks, and the pointing game.

A heatmap is one value per cell of a `GridGeometry` (a lens map from `lookhere.lens`, a head's
attention map, ...). `segment` turns it into a mask in four steps, each reusing the
localization-heads code so that both parts of lookhere binarise maps the same way:

1. optional Gaussian smoothing (``smooth_sigma`` > 0; `lookhere.heads.grounding.smooth`: a 7-tap
   window, mirrored borders);
2. a threshold: ``"mean"``, the cells above the map's mean (`lookhere.heads.scoring.binarise`,
   the localization-heads rule); ``"two_mean"``, above twice the mean plus 0.001 (the heads
   authors' code); or a number ``t`` in (0, 1), the cells at or above ``t`` times the map's
   maximum (relative to the peak, so the scale of the map does not matter);
3. optionally the largest 8-connected component only (most cells; ties: the most heat;
   `lookhere.heads.grounding.largest_component`), for one-instance concepts;
4. the grid mask mapped back to the original image: each pixel takes the cell its centre falls
   in (`lookhere.heads.grounding.pixel_mask`), undoing the processor's resize, crop and padding.

A map with no cell above its threshold (a flat map, or a relative threshold on a map whose
maximum is <= 0) has no evidence anywhere and gives an empty mask.

`pointing` is the pointing game: whether the centre of the map's peak cell lies in the gold mask.
Score masks with `lookhere.eval.metrics.mask_ious` (cIoU / mIoU).
"""

from __future__ import annotations

from numbers import Real
from typing import NamedTuple

import numpy as np

from lookhere.eval.metrics import point_in_region
from lookhere.heads.grounding import largest_component as _largest
from lookhere.heads.grounding import pixel_mask, smooth
from lookhere.heads.scoring import binarise
from lookhere.models.layout import GridGeometry

Threshold = str | float
NAMED_THRESHOLDS = ("mean", "two_mean")


class Segmentation(NamedTuple):
    """A segmented heatmap: ``grid_mask`` (rows, cols) and ``pixel_mask`` (H, W), both bool."""

    grid_mask: np.ndarray
    pixel_mask: np.ndarray


def parse_threshold(value: str | float) -> Threshold:
    """``"mean"``, ``"two_mean"``, or a number in (0, 1) (also given as text, e.g. ``"0.5"``)."""
    if isinstance(value, str):
        if value in NAMED_THRESHOLDS:
            return value
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"threshold must be one of {NAMED_THRESHOLDS} or a number in (0, 1),"
                             f" got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, Real) or not 0 < float(value) < 1:
        raise ValueError(f"threshold must be one of {NAMED_THRESHOLDS} or a number in (0, 1) "
                         f"(a fraction of the map's maximum), got {value!r}")
    return float(value)


def segment(heatmap: np.ndarray, geometry: GridGeometry, threshold: Threshold = "mean",
            smooth_sigma: float = 0.0, largest_component: bool = False) -> Segmentation:
    """The mask of a ``(rows, cols)`` heatmap on ``geometry``'s grid (see the module doc)."""
    threshold = parse_threshold(threshold)
    heat = _smoothed(heatmap, geometry, smooth_sigma)  # (rows, cols) float64
    if isinstance(threshold, str):
        fg = binarise(heat, threshold)
    else:
        top = heat.max()
        fg = heat >= threshold * top if top > 0 else np.zeros(heat.shape, dtype=bool)
    if largest_component and fg.any():
        fg = _largest(fg, heat)
    return Segmentation(fg, pixel_mask(fg, geometry))


def peak_cell(heatmap: np.ndarray, geometry: GridGeometry, smooth_sigma: float = 0.0
              ) -> tuple[int, int]:
    """``(row, col)`` of the heatmap's peak cell (after smoothing; the first maximum,
    row-major)."""
    heat = _smoothed(heatmap, geometry, smooth_sigma)
    r, c = np.unravel_index(int(np.argmax(heat)), heat.shape)
    return int(r), int(c)


def peak_point(heatmap: np.ndarray, geometry: GridGeometry, smooth_sigma: float = 0.0
               ) -> tuple[float, float]:
    """Image-pixel centre of the heatmap's peak cell (`peak_cell`; the cell clipped to the
    image), as `lookhere.eval.rec.peak_point` does for a grounding."""
    r, c = peak_cell(heatmap, geometry, smooth_sigma)
    x0, y0, x1, y1 = geometry.cell_boxes()[r, c]
    return float((x0 + x1) / 2), float((y0 + y1) / 2)


def pointing(heatmap: np.ndarray, geometry: GridGeometry, gold_mask: np.ndarray,
             smooth_sigma: float = 0.0) -> bool:
    """The pointing game: whether `peak_point` falls inside ``gold_mask`` ``(H, W)`` bool (the
    pixel holding the point must be True)."""
    gold = np.asarray(gold_mask)
    w, h = geometry.image_size
    if gold.shape != (h, w):
        raise ValueError(f"gold_mask must be (height, width) = {(h, w)} of the geometry's "
                         f"image, got {gold.shape}")
    return point_in_region(peak_point(heatmap, geometry, smooth_sigma), mask=gold.astype(bool))


def _smoothed(heatmap: np.ndarray, geometry: GridGeometry, sigma: float) -> np.ndarray:
    heat = np.asarray(heatmap, dtype=np.float64)
    if heat.shape != (geometry.rows, geometry.cols):
        raise ValueError(f"heatmap must be (rows, cols) = {(geometry.rows, geometry.cols)} for "
                         f"this grid, got {np.shape(heatmap)}")
    if not np.isfinite(heat).all():
        raise ValueError("heatmap must be finite")
    if isinstance(sigma, bool) or not isinstance(sigma, Real) or not 0 <= sigma < float("inf"):
        raise ValueError(f"smooth_sigma must be a finite number >= 0, got {sigma!r}")
    return smooth(heat, float(sigma)) if sigma > 0 else heat
