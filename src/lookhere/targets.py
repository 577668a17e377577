"""Ground-truth attention maps: a distribution over an adapter's visual tokens from pixel geometry.

KLAL pulls the answer token's attention toward a map P over the visual tokens of the image the
question is about (methods.md §1). P gives the target cells the most mass, their 8-neighbour ring
an intermediate mass and every other cell a floor, then sums to 1.

How each kind of geometry becomes per-cell target weight (lookhere's choices, documented in
docs/methods.md): boxes and masks weigh a cell by the fraction of its area they cover; points
and polylines mark every cell they touch with full weight. The unnormalised weight of a cell is

    w = max(target * coverage, neighbour * [cell is touched or in the 8-ring of one], floor)

so a partly covered cell never falls below the ring (the target token of a coarse grid, such as
Qwen's 28 px tokens over a small box, keeps at least the ring's weight). All grids of the
image (LLaVA-NeXT's base and crops, SmolVLM's global and tiles) get their own map; the weights
are normalised jointly over the image's grid cells. Visual tokens outside every grid (LLaVA-NeXT
row newlines) and tokens of other images get 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from lookhere.data.sample import Geometry, check_geometry
from lookhere.losses.config import TargetConfig  # torch-free, beside KLALConfig; named here too
from lookhere.models.layout import GridGeometry, SampleLayout, VisualLayout

_SUB = 8  # mask coverage: sub-samples per cell side


def cell_weights(grid: GridGeometry, geometry: Geometry, config: TargetConfig = TargetConfig()
                 ) -> np.ndarray:
    """(rows, cols) unnormalised target weights of one grid."""
    coverage = cell_coverage(grid, geometry)
    near = _dilate(coverage > 0)  # touched cells and their 8-ring
    w = np.maximum(config.target * coverage, config.floor)
    return np.where(near, np.maximum(w, config.neighbour), w)


def cell_coverage(grid: GridGeometry, geometry: Geometry) -> np.ndarray:
    """(rows, cols) in [0, 1]: how much of each cell the geometry claims (see module doc)."""
    check_geometry(geometry, grid.image_size)
    cov = np.zeros((grid.rows, grid.cols))
    for box in geometry.boxes:
        cov = np.maximum(cov, grid.box_coverage(box))
    pts = list(geometry.points) + _polyline_points(geometry.polylines, geometry.line_width)
    for x, y in pts:
        cell = grid.point_to_cell(x, y)
        if cell is not None:
            cov[cell] = 1.0
    if geometry.mask is not None:
        cov = np.maximum(cov, _mask_coverage(grid, geometry.mask))
    return cov


def image_distribution(
    sample: SampleLayout,
    geometry: Geometry,
    image_index: int = 0,
    config: TargetConfig = TargetConfig(),
) -> torch.Tensor:
    """(K,) distribution over the sample's visual tokens; sums to 1 over image ``image_index``."""
    if not 0 <= image_index < len(sample.images):
        raise ValueError(
            f"image_index {image_index} is out of range for a sample with {len(sample.images)} "
            "images"
        )
    if geometry.is_empty():
        raise ValueError("geometry is empty: a target needs a box, point, polyline or mask")
    p = torch.zeros(len(sample.visual_positions), dtype=torch.float64)
    for grid in sample.images[image_index].grids:
        w = cell_weights(grid.geometry, geometry, config)  # (rows, cols)
        p[grid.key_index] = torch.from_numpy(w.reshape(-1))
    total = p.sum()
    if not total > 0:
        raise ValueError("the target map has no mass (all weights are 0; is floor 0?)")
    return (p / total).float()


def batch_targets(
    layout: VisualLayout,
    geometries: Sequence[Geometry | None],
    image_indices: Sequence[int] | None = None,
    config: TargetConfig = TargetConfig(),
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, K)`` target distributions aligned with ``layout.key_positions()``, ``(B,)`` mask.

    A sample whose geometry is None has no target: its row is 0 and its mask False, so a loss
    can leave it out instead of averaging a zero in.
    """
    if len(geometries) != len(layout):
        raise ValueError(f"geometries has {len(geometries)} entries for {len(layout)} samples")
    idx = image_indices if image_indices is not None else [0] * len(layout)
    k = max((len(s.visual_positions) for s in layout.samples), default=0)
    out = torch.zeros(len(layout), k)
    has = torch.zeros(len(layout), dtype=torch.bool)
    for b, (sample, geo) in enumerate(zip(layout.samples, geometries, strict=True)):
        if geo is None:
            continue
        p = image_distribution(sample, geo, idx[b], config)
        out[b, : len(p)] = p
        has[b] = True
    return out, has


def batch_target_cells(
    layout: VisualLayout,
    geometries: Sequence[Geometry | None],
    image_indices: Sequence[int] | None = None,
) -> torch.Tensor:
    """``(B, K)`` bool: the visual tokens the geometry touches (coverage > 0), aligned like
    `batch_targets`. These are the "target tokens" of the attention ratio (figure 4)."""
    if len(geometries) != len(layout):
        raise ValueError(f"geometries has {len(geometries)} entries for {len(layout)} samples")
    idx = image_indices if image_indices is not None else [0] * len(layout)
    k = max((len(s.visual_positions) for s in layout.samples), default=0)
    out = torch.zeros(len(layout), k, dtype=torch.bool)
    for b, (sample, geo) in enumerate(zip(layout.samples, geometries, strict=True)):
        if geo is None:
            continue
        if not 0 <= idx[b] < len(sample.images):
            raise ValueError(f"image_indices[{b}] = {idx[b]} is out of range")
        for grid in sample.images[idx[b]].grids:
            touched = cell_coverage(grid.geometry, geo).reshape(-1) > 0
            out[b, grid.key_index] = torch.from_numpy(touched)
    return out


def _dilate(m: np.ndarray) -> np.ndarray:
    """8-neighbourhood dilation of a bool grid."""
    p = np.pad(m, 1)
    out = np.zeros_like(m)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            out |= p[dy:dy + m.shape[0], dx:dx + m.shape[1]]
    return out


def _polyline_points(lines: Sequence[Sequence[tuple[float, float]]], width: float
                     ) -> list[tuple[float, float]]:
    """Points every <= 0.5 px along each polyline, on its centre line and both drawn edges."""
    half = max(width / 2 - 0.5, 0.0)  # the outermost pixel centres of a line `width` px wide
    pts: list[tuple[float, float]] = []
    for line in lines:
        v = np.asarray(line, dtype=np.float64).reshape(-1, 2)
        pts.extend(map(tuple, v))
        for a, b in zip(v[:-1], v[1:], strict=True):
            d = b - a
            length = max(float(np.hypot(*d)), 1e-9)
            t = np.linspace(0, 1, int(np.ceil(length / 0.5)) + 1)[:, None]
            normal = np.array([-d[1], d[0]]) / length
            for off in (0.0, half, -half):
                pts.extend(map(tuple, a + t * d + off * normal))
    return pts


def _mask_coverage(grid: GridGeometry, mask: np.ndarray) -> np.ndarray:
    """(rows, cols) fraction of each cell's sub-samples that fall on the mask."""
    h, w = mask.shape
    cw, ch = grid.cell_size
    frac = (np.arange(_SUB) + 0.5) / _SUB
    u = (np.arange(grid.cols)[:, None] + frac[None]) * cw  # (cols, SUB) canvas x
    v = (np.arange(grid.rows)[:, None] + frac[None]) * ch  # (rows, SUB) canvas y
    x = (u - grid.offset[0]) / grid.scale[0]
    y = (v - grid.offset[1]) / grid.scale[1]
    xi, yi = np.floor(x).astype(int), np.floor(y).astype(int)
    okx, oky = (xi >= 0) & (xi < w), (yi >= 0) & (yi < h)
    vals = mask[np.clip(yi, 0, h - 1)[:, :, None, None], np.clip(xi, 0, w - 1)[None, None]]
    vals &= oky[:, :, None, None] & okx[None, None]  # (rows, SUB, cols, SUB)
    return vals.mean(axis=(1, 3))
