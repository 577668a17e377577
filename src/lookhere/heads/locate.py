"""Grounding with a `HeadSpec`: one SDPA forward per batch gives the selected heads' maps, then
`lookhere.heads.grounding.ground` turns them into a box and a pseudo-mask in image pixels."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from lookhere.data.sample import Sample
from lookhere.heads.grounding import Grounding, ground
from lookhere.heads.search import prefill_attention
from lookhere.heads.selection import HeadSpec
from lookhere.models.adapter import Adapter


@torch.no_grad()
def locate(model: nn.Module, processor: Any, adapter: Adapter, spec: HeadSpec,
           samples: Sequence[Sample], batch_size: int = 8, sigma: float = 1.0,
           kernel: int = 7) -> list[Grounding]:
    """A `Grounding` (box, grid pseudo-mask, summed heatmap) per sample, for its first image."""
    if not spec.heads:
        raise ValueError("the HeadSpec names no head")
    layers = sorted({layer for layer, _ in spec.heads})
    if max(layers) >= adapter.num_layers or max(h for _, h in spec.heads) >= adapter.num_heads:
        raise ValueError(f"the HeadSpec's heads {spec.heads} do not fit this model "
                         f"({adapter.num_layers} layers x {adapter.num_heads} heads)")
    out: list[Grounding] = []
    for i in range(0, len(samples), batch_size):
        rows, layout = prefill_attention(model, processor, adapter, samples[i:i + batch_size],
                                         layers)
        for b, sample_layout in enumerate(layout.samples):
            grid = sample_layout.images[0].primary
            maps = torch.stack([grid.to_grid(rows[layer][b, head])
                                for layer, head in spec.heads]).numpy()  # (k, rows, cols)
            out.append(ground(maps, grid.geometry, sigma, kernel))
    return out
