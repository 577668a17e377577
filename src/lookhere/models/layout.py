"""Where the visual tokens of a processed batch sit, and which image pixels each one covers.

Coordinates follow one convention everywhere in lookhere:
- image pixels are (x, y) with the origin at the top-left corner of the *original* image, x to the
  right, y down; a box is (x0, y0, x1, y1) in that frame (xyxy, continuous, x1/y1 exclusive);
- an image size is (width, height), like ``PIL.Image.size``;
- a grid is indexed (row, col), row-major, and its cells are the visual tokens of that grid.

A processor resizes, crops and pads an image before the vision tower cuts it into patches. Every
such pipeline maps original pixels to the processed "canvas" by an axis-aligned affine map
``canvas = image * scale + offset``; a grid tiles the canvas from its origin with cells of
``cell_size`` canvas pixels. `GridGeometry` holds exactly that, so each adapter only has to say
what its processor did.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

Box = tuple[float, float, float, float]  # (x0, y0, x1, y1) in original-image pixels


@dataclass(frozen=True)
class GridGeometry:
    """Affine map between original-image pixels and a grid of visual tokens.

    ``canvas = image * scale + offset`` (per axis). Cell (r, c) covers canvas pixels
    ``[c * cell_w, (c + 1) * cell_w) x [r * cell_h, (r + 1) * cell_h)``.
    """

    rows: int
    cols: int
    cell_size: tuple[float, float]  # (cell_w, cell_h) in canvas pixels
    scale: tuple[float, float]  # (sx, sy): canvas pixels per image pixel
    offset: tuple[float, float]  # (ox, oy): canvas position of image pixel (0, 0)
    image_size: tuple[int, int]  # (width, height) of the original image

    def __post_init__(self) -> None:
        if self.rows <= 0 or self.cols <= 0:
            raise ValueError(f"rows and cols must be positive, got {self.rows}x{self.cols}")
        if min(self.cell_size) <= 0 or min(self.scale) <= 0:
            raise ValueError(
                f"cell_size and scale must be positive, got {self.cell_size}, {self.scale}"
            )

    # -- image -> canvas -> grid ---------------------------------------------------------------
    def image_to_canvas(self, xy: np.ndarray) -> np.ndarray:
        """(..., 2) image pixels -> (..., 2) canvas pixels."""
        return np.asarray(xy, dtype=np.float64) * np.array(self.scale) + np.array(self.offset)

    def canvas_to_image(self, uv: np.ndarray) -> np.ndarray:
        """(..., 2) canvas pixels -> (..., 2) image pixels."""
        return (np.asarray(uv, dtype=np.float64) - np.array(self.offset)) / np.array(self.scale)

    def point_to_cell(self, x: float, y: float) -> tuple[int, int] | None:
        """The (row, col) holding image point (x, y), or None when it falls outside the grid."""
        u, v = self.image_to_canvas(np.array([x, y]))
        c, r = int(np.floor(u / self.cell_size[0])), int(np.floor(v / self.cell_size[1]))
        if 0 <= r < self.rows and 0 <= c < self.cols:
            return r, c
        return None

    def box_coverage(self, box: Box) -> np.ndarray:
        """(rows, cols) fraction of each cell's area that the image box covers, in [0, 1]."""
        x0, y0, x1, y1 = _check_box(box)
        (u0, v0), (u1, v1) = self.image_to_canvas(np.array([[x0, y0], [x1, y1]]))
        cw, ch = self.cell_size
        cx = np.arange(self.cols + 1) * cw  # cell edges, canvas px
        cy = np.arange(self.rows + 1) * ch
        ox = np.clip(np.minimum(cx[1:], u1) - np.maximum(cx[:-1], u0), 0, None) / cw  # (cols,)
        oy = np.clip(np.minimum(cy[1:], v1) - np.maximum(cy[:-1], v0), 0, None) / ch  # (rows,)
        return oy[:, None] * ox[None, :]

    # -- grid -> image -------------------------------------------------------------------------
    def cell_boxes(self, clip: bool = True) -> np.ndarray:
        """(rows, cols, 4) xyxy image-pixel box of every cell.

        With ``clip`` the boxes are clipped to the image; cells that lie wholly in padding then
        have zero area.
        """
        cw, ch = self.cell_size
        c, r = np.meshgrid(np.arange(self.cols), np.arange(self.rows))
        lo = self.canvas_to_image(np.stack([c * cw, r * ch], -1))
        hi = self.canvas_to_image(np.stack([(c + 1) * cw, (r + 1) * ch], -1))
        boxes = np.concatenate([lo, hi], -1)
        if clip:
            w, h = self.image_size
            boxes = np.clip(boxes, 0, [w, h, w, h])
        return boxes

    def grid_box_to_image(self, box: Box, clip: bool = True) -> np.ndarray:
        """A box in grid units (col0, row0, col1, row1), cell edges, -> xyxy image pixels."""
        c0, r0, c1, r1 = box
        cw, ch = self.cell_size
        lo = self.canvas_to_image(np.array([c0 * cw, r0 * ch]))
        hi = self.canvas_to_image(np.array([c1 * cw, r1 * ch]))
        out = np.concatenate([lo, hi])
        if clip:
            w, h = self.image_size
            out = np.clip(out, 0, [w, h, w, h])
        return out

    def image_fraction(self) -> np.ndarray:
        """(rows, cols) fraction of each cell that shows image content rather than padding."""
        w, h = self.image_size
        return self.box_coverage((0, 0, w, h))


@dataclass(frozen=True)
class Grid:
    """One grid of visual tokens: its sequence positions and its pixel geometry.

    ``positions`` (rows * cols,) are absolute sequence positions, row-major. ``key_index``
    (rows * cols,) indexes the same tokens within the sample's ``visual_positions``, so a row of
    attention over visual keys reshapes to this grid by ``row[key_index].view(rows, cols)``.
    """

    positions: torch.Tensor
    key_index: torch.Tensor
    geometry: GridGeometry
    name: str = "base"  # e.g. "base", "crops", "tile_0_1", "global"

    @property
    def shape(self) -> tuple[int, int]:
        return self.geometry.rows, self.geometry.cols

    def to_grid(self, values: torch.Tensor) -> torch.Tensor:
        """(..., K) values over the sample's visual keys -> (..., rows, cols) for this grid."""
        return values[..., self.key_index].unflatten(-1, self.shape)


@dataclass(frozen=True)
class ImageLayout:
    """All grids of one image (one for LLaVA-1.5 or Qwen; base + crops for LLaVA-NeXT; ...)."""

    grids: tuple[Grid, ...]
    image_size: tuple[int, int]  # (width, height)

    @property
    def primary(self) -> Grid:
        """The grid that covers the whole image at the coarsest level (the first one)."""
        return self.grids[0]


@dataclass(frozen=True)
class SampleLayout:
    """Visual tokens of one sample of the batch."""

    visual_positions: torch.Tensor  # (K,) sorted sequence positions of every visual token
    images: tuple[ImageLayout, ...]

    @property
    def grids(self) -> list[Grid]:
        return [g for im in self.images for g in im.grids]


@dataclass(frozen=True)
class VisualLayout:
    """Visual tokens of a processed batch: one `SampleLayout` per sample."""

    samples: tuple[SampleLayout, ...] = field(default_factory=tuple)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, b: int) -> SampleLayout:
        return self.samples[b]

    def key_positions(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Visual positions padded to a batch: ``(B, K)`` long positions, ``(B, K)`` bool mask."""
        return pad_positions([s.visual_positions for s in self.samples])


def pad_positions(rows: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad ragged 1-D position tensors into ``(B, N)`` positions (pad 0) and a ``(B, N)`` mask."""
    n = max((len(r) for r in rows), default=0)
    pos = torch.zeros(len(rows), n, dtype=torch.long)
    mask = torch.zeros(len(rows), n, dtype=torch.bool)
    for b, r in enumerate(rows):
        pos[b, : len(r)] = torch.as_tensor(r, dtype=torch.long)
        mask[b, : len(r)] = True
    return pos, mask


def _check_box(box: Box) -> Box:
    if len(box) != 4:
        raise ValueError(f"box must be (x0, y0, x1, y1), got {box!r}")
    x0, y0, x1, y1 = (float(v) for v in box)
    if not all(np.isfinite([x0, y0, x1, y1])) or x1 < x0 or y1 < y0:
        raise ValueError(f"box must be finite xyxy with x1 >= x0 and y1 >= y0, got {box!r}")
    return x0, y0, x1, y1
