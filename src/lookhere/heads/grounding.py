"""From the selected heads' maps to a box and a mask (methods.md section 3, inference).

Each head's map (one grid of the image) is smoothed with a Gaussian (sigma 1, a 7-tap kernel,
mirrored borders as OpenCV and torchvision do), the maps are summed, the sum is binarised above
its mean, and the largest 8-connected component (by area; ties by attention mass) is kept. Its
convex hull, rasterised on the grid, is the pseudo-mask; its bounding box in cell units is the
box. Both map back to original-image pixels through the grid's `GridGeometry`, so the
processor's resize, crop and padding are undone (boxes are clipped to the image).

``component="all"`` is the authors' code instead: no largest-component step, the box covers every
foreground cell and the mask is the binarised grid itself.

A `Grounding` keeps the grid-level pieces (per-head maps, summed heatmap, grid mask) for figures.
Its pixel-level mask is filled by `lookhere.heads.locate.locate`: a refiner's mask (e.g. SAM,
`lookhere.heads.refine`) or, by default, the grid mask upsampled with `pixel_mask`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from lookhere.heads.scoring import components
from lookhere.models.layout import GridGeometry

Component = Literal["largest", "all"]


@dataclass(frozen=True, eq=False)
class Grounding:
    """One grounding: ``box`` in image pixels (xyxy), the grid-level pieces for pictures, and
    (once `locate` or a caller sets it) the mask at the image's resolution."""

    box: tuple[float, float, float, float]
    grid_box: tuple[int, int, int, int]  # (col0, row0, col1, row1), cell edges
    mask: np.ndarray  # (rows, cols) bool: hull of the largest component, or all foreground
    heatmap: np.ndarray  # (rows, cols) the summed smoothed maps
    maps: np.ndarray  # (k, rows, cols) the heads' raw maps, before smoothing
    geometry: GridGeometry  # the grid the maps live on
    pixel_mask: np.ndarray | None = None  # (height, width) bool; None until set

    def image_mask(self) -> np.ndarray:
        """``pixel_mask`` when set, else the grid mask upsampled to the image (computed now)."""
        if self.pixel_mask is not None:
            return self.pixel_mask
        return pixel_mask(self.mask, self.geometry)


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


def ground(maps: np.ndarray, geometry: GridGeometry, sigma: float = 1.0, kernel: int = 7,
           component: Component = "largest") -> Grounding:
    """Box and pseudo-mask from ``(k, rows, cols)`` (or one ``(rows, cols)``) head maps.

    ``component="largest"`` (the paper): the largest foreground component and its convex hull.
    ``"all"`` (the authors' code): every foreground cell, no hull. ``pixel_mask`` is left None.
    """
    if component not in ("largest", "all"):
        raise ValueError(f"component must be 'largest' or 'all', got {component!r}")
    m = np.asarray(maps, dtype=np.float64)
    m = m[None] if m.ndim == 2 else m
    if m.ndim != 3 or m.shape[1:] != (geometry.rows, geometry.cols):
        raise ValueError(f"maps must be (k, {geometry.rows}, {geometry.cols}) for this grid, "
                         f"got {np.shape(maps)}")
    if not np.isfinite(m).all():
        raise ValueError("maps must be finite")
    heat = sum(smooth(x, sigma, kernel) for x in m)  # (rows, cols)
    fg = heat > heat.mean()
    if not fg.any():  # a flat map: no evidence anywhere, so the whole grid
        fg = np.ones_like(heat, dtype=bool)
    if component == "all":
        region = mask = fg
    else:
        region = largest_component(fg, heat)
        mask = convex_hull_mask(region)
    rows, cols = np.nonzero(region)
    grid_box = (int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1)
    box = tuple(float(v) for v in geometry.grid_box_to_image(grid_box))
    return Grounding(box, grid_box, mask, heat, m, geometry)


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
