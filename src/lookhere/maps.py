"""Maps on a grid of visual tokens: smoothing, binarising, components, masks, pointing.

One module for every map operation, so the localization heads (`lookhere.heads`), the logit lens
and the experiments binarise and segment maps the same way. A heatmap is one value per cell of a
`GridGeometry` (a lens map, a head's attention map, ...).

- `smooth`: Gaussian smoothing (a 7-tap window, mirrored borders as OpenCV and torchvision do);
- `binarise`: the cells above the map's mean (the localization-heads rule) or above twice the
  mean plus 0.001 (the heads authors' code); `components`: 8-connected components;
  `largest_component` (most cells; ties: the most heat); `convex_hull_mask`;
- `pixel_mask`: a grid mask mapped back to the original image (each pixel takes the cell its
  centre falls in), undoing the processor's resize, crop and padding;
- `segment`: heatmap -> mask in four steps: optional smoothing (``smooth_sigma`` > 0); a threshold
  (``"mean"``, ``"two_mean"`` as `binarise`, or a number ``t`` in (0, 1): the cells at or above
  ``t`` times the map's maximum, so the scale of the map does not matter); optionally the
  largest component only, for one-instance concepts; the pixel mask. A map with no cell above its
  threshold has no evidence anywhere and gives an empty mask;
- `pointing`, the pointing game: whether the centre of the map's peak cell lies in the gold mask
  (`point_in_region`). Score masks with `lookhere.eval.metrics.mask_ious` (cIoU / mIoU).
"""

from __future__ import annotations

from numbers import Real
from typing import TYPE_CHECKING, Literal, NamedTuple

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

if TYPE_CHECKING:  # annotations only: configs parse thresholds here without torch
    from lookhere.models.layout import GridGeometry

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels
Threshold = str | float  # a named rule or a fraction of the peak (`segment`)
MeanRule = Literal["mean", "two_mean"]  # `binarise`: above the mean, or the authors' 2 x mean
_EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity
MARGIN = 1e-3  # the authors' code: a cell is foreground when A - 2 * mean(A) > 0.001
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
            smooth_sigma: float = 0.0, largest: bool = False) -> Segmentation:
    """The mask of a ``(rows, cols)`` heatmap on ``geometry``'s grid (see the module doc)."""
    threshold = parse_threshold(threshold)
    heat = _smoothed(heatmap, geometry, smooth_sigma)  # (rows, cols) float64
    if isinstance(threshold, str):
        fg = binarise(heat, threshold)
    else:
        top = heat.max()
        fg = heat >= threshold * top if top > 0 else np.zeros(heat.shape, dtype=bool)
    if largest and fg.any():
        fg = largest_component(fg, heat)
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


def check_map(attn_map: np.ndarray) -> np.ndarray:
    """The map as a finite, non-empty 2-D float64 array, or ValueError."""
    a = np.asarray(attn_map, dtype=np.float64)
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"an attention map must be a non-empty 2-D grid, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError("an attention map must be finite")
    return a


def binarise(attn_map: np.ndarray, threshold: MeanRule = "mean") -> np.ndarray:
    """Foreground cells: ``A > mean(A)`` (the paper) or ``A - 2 mean(A) > 0.001`` (the code).

    A constant map has none under either rule, whatever its dtype: its float mean can round
    below the constant, which would make every cell foreground."""
    a = check_map(attn_map)
    if threshold not in NAMED_THRESHOLDS:
        raise ValueError(f"threshold must be 'mean' or 'two_mean', got {threshold!r}")
    if np.ptp(a) == 0:
        return np.zeros(a.shape, dtype=bool)
    if threshold == "mean":
        return a > a.mean()
    return a - 2.0 * a.mean() > MARGIN


def components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of a bool map: (labels, count); label 0 is background."""
    labels, n = ndimage.label(np.asarray(mask, dtype=bool), structure=_EIGHT)
    return labels, int(n)


def smooth(attn_map: np.ndarray, sigma: float = 1.0, kernel: int = 7) -> np.ndarray:
    """Gaussian smoothing with a ``kernel``-tap window (odd) and mirrored borders."""
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"kernel must be a positive odd size, got {kernel}")
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    a = np.asarray(attn_map, dtype=np.float64)
    if sigma == 0:
        return a.copy()
    return ndimage.gaussian_filter(a, sigma, mode="mirror", radius=kernel // 2)


def authors_smooth(attn_map: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """Gaussian smoothing as the authors' code does it: scipy's defaults (a window of 4 sigma
    each side, borders reflected with the edge cell repeated)."""
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    return ndimage.gaussian_filter(np.asarray(attn_map, dtype=np.float64), sigma)


def largest_component(foreground: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """The 8-connected component of ``foreground`` with the most cells (ties: most ``heat``)."""
    labels, n = components(foreground)
    area = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    mass = np.bincount(labels.ravel(), weights=heat.ravel(), minlength=n + 1)[1:]
    best = max(range(n), key=lambda j: (area[j], mass[j]))
    return labels == best + 1


def convex_hull_mask(component: np.ndarray) -> np.ndarray:
    """Cells whose centre lies in the convex hull of the component's cells (their corners)."""
    rows, cols = np.nonzero(component)
    corners = np.concatenate([np.stack([cols + dx, rows + dy], 1)
                              for dx in (0, 1) for dy in (0, 1)]).astype(np.float64)
    try:
        hull = ConvexHull(corners)
    except QhullError:  # cannot happen for cell corners (always 2-D), kept for safety
        return component.copy()
    cy, cx = np.mgrid[0:component.shape[0], 0:component.shape[1]] + 0.5
    pts = np.stack([cx.ravel(), cy.ravel()], 1)
    inside = (hull.equations[:, :2] @ pts.T + hull.equations[:, 2:3] <= 1e-9).all(0)
    return inside.reshape(component.shape) | component


def pixel_mask(mask: np.ndarray, geometry: GridGeometry) -> np.ndarray:
    """The grid mask upsampled to the original image: ``(height, width)`` bool; each pixel takes
    the cell its centre falls in (pixels in no cell are False)."""
    w, h = geometry.image_size
    xs, ys = np.arange(w) + 0.5, np.arange(h) + 0.5
    uv = geometry.image_to_canvas(np.stack(np.meshgrid(xs, ys), -1))  # (h, w, 2)
    c = np.floor(uv[..., 0] / geometry.cell_size[0]).astype(int)
    r = np.floor(uv[..., 1] / geometry.cell_size[1]).astype(int)
    ok = (r >= 0) & (r < geometry.rows) & (c >= 0) & (c < geometry.cols)
    out = np.zeros((h, w), dtype=bool)
    out[ok] = np.asarray(mask, dtype=bool)[r[ok], c[ok]]
    return out


def point_in_region(point: tuple[float, float] | None, box: Box | None = None,
                    mask: np.ndarray | None = None) -> bool:
    """Whether a point falls inside the mask (preferred) or the box."""
    if point is None:
        return False
    x, y = point
    if mask is not None:
        xi, yi = int(np.floor(x)), int(np.floor(y))
        return 0 <= yi < mask.shape[0] and 0 <= xi < mask.shape[1] and bool(mask[yi, xi])
    if box is None:
        raise ValueError("point_in_region needs a box or a mask")
    return box[0] <= x < box[2] and box[1] <= y < box[3]
