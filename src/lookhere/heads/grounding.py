"""From the selected heads' maps to a box and a mask (methods.md section 3, inference).

Each head's map (one grid of the image) is smoothed with a Gaussian (sigma 1, a 7-tap kernel,
mirrored borders as OpenCV and torchvision do), the maps are summed, the sum is binarised above
its mean, and the largest 8-connected component (by area; ties by attention mass) is kept. Its
convex hull, rasterised on the grid, is the pseudo-mask; its bounding box in cell units is the
box. Both map back to original-image pixels through the grid's `GridGeometry`, so the
processor's resize, crop and padding are undone (boxes are clipped to the image).

``component="all"`` is the authors' code instead: scipy's default smoothing (a 4-sigma window,
reflected borders), no largest-component step, the box covers every foreground cell and the mask
is the binarised grid itself.

A `Grounding` keeps the grid-level pieces (per-head maps, summed heatmap, grid mask) for figures.
Its pixel-level mask is filled by `lookhere.heads.locate.locate`: a refiner's mask (e.g. SAM,
`lookhere.heads.refine`) or, by default, the grid mask upsampled with `pixel_mask`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from lookhere.maps import (
    authors_smooth,
    convex_hull_mask,
    largest_component,
    pixel_mask,
    smooth,
)
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


def ground(maps: np.ndarray, geometry: GridGeometry, sigma: float = 1.0, kernel: int = 7,
           component: Component = "largest") -> Grounding:
    """Box and pseudo-mask from ``(k, rows, cols)`` (or one ``(rows, cols)``) head maps.

    ``component="largest"`` (the paper): the largest foreground component and its convex hull.
    ``"all"`` (the authors' code): scipy's default smoothing (``kernel`` unused), every
    foreground cell, no hull. ``pixel_mask`` is left None.
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
    if component == "all":
        heat = sum(authors_smooth(x, sigma) for x in m)  # (rows, cols)
    else:
        heat = sum(smooth(x, sigma, kernel) for x in m)
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
