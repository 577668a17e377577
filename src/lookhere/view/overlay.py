"""Overlays: a grid map painted over its image, and a box and mask drawn on it, as PIL images.

A map lives on a grid of visual tokens; its `GridGeometry` says which image pixels each cell
covers (the processor's resize, crop and padding undone). Every output pixel takes the value of
the cell under its centre, so cells stay sharp and a cropped or padded grid lands exactly where
the model saw it; pixels no cell covers keep the plain image.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from lookhere.models.layout import GridGeometry

#: longest side of an overlay: small images are enlarged (pixels kept sharp), large ones reduced
DISPLAY_SIZE = 384
_BOX = (0, 255, 255)  # cyan: unlike the inferno colours of the map under it
_ALPHA = 0.6


def display_size(image_size: tuple[int, int], size: int = DISPLAY_SIZE) -> tuple[int, int]:
    """(width, height) of the overlay of an image of ``image_size``: longest side ``size``."""
    w, h = image_size
    k = size / max(w, h)
    return max(1, round(w * k)), max(1, round(h * k))


def cell_index(geometry: GridGeometry, out_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """For an image drawn at ``out_size`` (width, height): the (row, col) of the grid cell under
    each output pixel's centre, ``(H', W')`` int arrays, -1 where no cell covers it."""
    (w, h), (ow, oh) = geometry.image_size, out_size
    x = (np.arange(ow) + 0.5) * (w / ow)  # (W',) image pixels
    y = (np.arange(oh) + 0.5) * (h / oh)  # (H',)
    (sx, sy), (ox, oy), (cw, ch) = geometry.scale, geometry.offset, geometry.cell_size
    col = np.floor((x * sx + ox) / cw).astype(int)
    row = np.floor((y * sy + oy) / ch).astype(int)
    col = np.where((col >= 0) & (col < geometry.cols), col, -1)
    row = np.where((row >= 0) & (row < geometry.rows), row, -1)
    rows, cols = np.broadcast_arrays(row[:, None], col[None, :])
    inside = (rows >= 0) & (cols >= 0)
    return np.where(inside, rows, -1), np.where(inside, cols, -1)


def heat_overlay(image: Image.Image, heat: np.ndarray, geometry: GridGeometry,
                 vmax: float | None = None, size: int = DISPLAY_SIZE) -> Image.Image:
    """``image`` at ``size`` with the ``(rows, cols)`` map ``heat`` over it (inferno colours,
    0 to ``vmax``, default the map's max), as an RGB image."""
    heat = np.asarray(heat, dtype=np.float64)
    if heat.shape != (geometry.rows, geometry.cols):
        raise ValueError(f"heat must be ({geometry.rows}, {geometry.cols}) for this grid, got "
                         f"{heat.shape}")
    out_size = display_size(image.size, size)
    base = np.asarray(_resized(image, out_size), dtype=np.float64)  # (H', W', 3)
    top = float(heat.max()) if vmax is None else float(vmax)
    level = np.clip(heat / top, 0, 1) if top > 0 else np.zeros_like(heat)
    colours = _inferno()[np.round(level * 255).astype(int)]  # (rows, cols, 3)
    rows, cols = cell_index(geometry, out_size)
    inside = rows >= 0
    painted = colours[rows.clip(0), cols.clip(0)]  # (H', W', 3)
    mixed = np.where(inside[..., None], (1 - _ALPHA) * base + _ALPHA * painted, base)
    return Image.fromarray(np.round(mixed).astype(np.uint8))


def box_overlay(base: Image.Image, image_size: tuple[int, int],
                box: tuple[float, float, float, float] | None = None,
                mask: np.ndarray | None = None) -> Image.Image:
    """``base`` (an overlay of an image of ``image_size``) with ``mask`` ((height, width) bool in
    image pixels) tinted and ``box`` (xyxy image pixels) outlined."""
    out = base.convert("RGB").copy()
    kx, ky = out.width / image_size[0], out.height / image_size[1]
    if mask is not None:
        m = np.asarray(Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255)
                       .resize(out.size, Image.Resampling.NEAREST)) > 0
        arr = np.asarray(out, dtype=np.float64)
        arr[m] = 0.6 * arr[m] + 0.4 * np.array(_BOX)
        out = Image.fromarray(np.round(arr).astype(np.uint8))
    if box is not None:
        x0, y0, x1, y1 = box
        ImageDraw.Draw(out).rectangle([x0 * kx, y0 * ky, x1 * kx - 1, y1 * ky - 1],
                                      outline=_BOX, width=max(2, out.width // 128))
    return out


def display_image(image: Image.Image, size: int = DISPLAY_SIZE) -> Image.Image:
    """``image`` as RGB with its long side ``size`` (as `heat_overlay` draws it)."""
    return _resized(image, display_size(image.size, size))


def _resized(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Enlarged by pixel repetition (a 96 px synthetic image stays crisp), reduced smoothly."""
    image = image.convert("RGB")
    if size == image.size:
        return image
    smaller = size[0] < image.width
    return image.resize(size, Image.Resampling.LANCZOS if smaller else Image.Resampling.NEAREST)


_LUT: list[np.ndarray] = []


def _inferno() -> np.ndarray:
    """matplotlib's inferno as a (256, 3) float table, read once."""
    if not _LUT:
        from matplotlib import colormaps

        _LUT.append(colormaps["inferno"](np.linspace(0, 1, 256))[:, :3] * 255)
    return _LUT[0]
