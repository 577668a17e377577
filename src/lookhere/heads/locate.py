"""Grounding with a `HeadSpec`: one SDPA forward per batch gives the selected heads' maps, then
`lookhere.heads.grounding.ground` turns them into a box and a pseudo-mask in image pixels.

`head_maps` is the shared forward path: the maps of any list of (layer, head) on one grid of
each sample's first image, so baselines (the mean of all heads, random heads) ground through
exactly the same code as the localization heads. The grid is the image's primary one by default
(its first: the whole image at the coarsest level), or another by index or name, e.g.
LLaVA-NeXT's finer ``"crops"`` grid or Idefics3's ``"tiles"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from lookhere.data.sample import Sample
from lookhere.heads.grounding import Component, Grounding, ground
from lookhere.heads.refine import Refiner, refine_masks
from lookhere.heads.search import prefill_attention
from lookhere.heads.selection import HeadSpec
from lookhere.maps import pixel_mask
from lookhere.models.adapter import Adapter, resolve_heads
from lookhere.models.layout import Grid, GridGeometry, ImageLayout

GridChoice = str | int  # "primary", an index into the image's grids, or a grid's name


@torch.no_grad()
def head_maps(model: nn.Module, processor: Any, adapter: Adapter, samples: Sequence[Sample],
              heads: Sequence[tuple[int, int]], grid: GridChoice = "primary",
              batch_size: int = 8, progress: bool = False
              ) -> list[tuple[np.ndarray, GridGeometry]]:
    """Per sample, the ``(k, rows, cols)`` float64 maps of ``heads`` (in their order) on the
    chosen grid of its first image, and that grid's `GridGeometry`.

    A map is the last text token's attention over the grid's visual tokens on the prefill prompt
    (un-renormalised probabilities), from one probe forward per batch.
    """
    heads = check_heads(heads, adapter)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    layers = sorted({layer for layer, _ in heads})
    out: list[tuple[np.ndarray, GridGeometry]] = []
    starts = range(0, len(samples), batch_size)
    for i in tqdm(starts, desc="head maps", disable=not progress, leave=False):
        rows, layout = prefill_attention(model, processor, adapter, samples[i:i + batch_size],
                                         layers)  # rows[layer]: (B, H, K)
        for b, sample_layout in enumerate(layout.samples):
            g = select_grid(sample_layout.images[0], grid)
            maps = torch.stack([g.to_grid(rows[layer][b, head]) for layer, head in heads])
            out.append((maps.numpy(), g.geometry))  # (k, rows, cols)
    return out


def locate(model: nn.Module, processor: Any, adapter: Adapter, spec: HeadSpec,
           samples: Sequence[Sample], batch_size: int = 8, sigma: float = 1.0,
           kernel: int = 7, component: Component = "largest", grid: GridChoice = "primary",
           refiner: Refiner | None = None, pixel_masks: bool = True, progress: bool = False
           ) -> list[Grounding]:
    """A `Grounding` per sample, for its first image: box, grid pseudo-mask, summed heatmap,
    the heads' maps, and ``pixel_mask`` at the image's resolution.

    ``pixel_mask`` comes from ``refiner`` when one is given (e.g. `SamRefiner`, prompted with
    the box), else it is the grid mask upsampled (`pixel_mask`). ``pixel_masks=False`` leaves it
    None to save memory (boxes only; `Grounding.image_mask` still computes the upsampled one).
    """
    if not spec.heads:
        raise ValueError("the HeadSpec names no head")
    if refiner is not None and not pixel_masks:
        raise ValueError("pixel_masks=False leaves no mask for the refiner to make")
    found = [ground(maps, geo, sigma, kernel, component) for maps, geo in
             head_maps(model, processor, adapter, samples, spec.heads, grid, batch_size,
                       progress)]
    if refiner is not None:
        masks = refine_masks(refiner, [s.image for s in samples], found)
    elif pixel_masks:
        masks = [pixel_mask(g.mask, g.geometry) for g in found]
    else:
        return found
    return [replace(g, pixel_mask=m) for g, m in zip(found, masks, strict=True)]


def select_grid(image: ImageLayout, grid: GridChoice = "primary") -> Grid:
    """One grid of an image: ``"primary"`` (the first), an index, or a grid's name."""
    names = [g.name for g in image.grids]
    if grid == "primary":
        return image.primary
    if isinstance(grid, int) and not isinstance(grid, bool) and 0 <= grid < len(names):
        return image.grids[grid]
    if isinstance(grid, str) and grid in names:
        return image.grids[names.index(grid)]
    raise ValueError(f"grid must be 'primary', an index below {len(names)} or one of this "
                     f"image's grids {names}, got {grid!r}")


def check_heads(heads: Sequence[tuple[int, int]], adapter: Adapter) -> list[tuple[int, int]]:
    """``heads`` as (layer, head) int pairs, checked to exist in the adapter's model; negative
    layers count from the end, as everywhere a layer is named."""
    return resolve_heads(heads, adapter.num_layers, adapter.num_heads)
