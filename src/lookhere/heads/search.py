"""Scoring every head of a model on samples: one SDPA forward per batch under the probe.

For each sample, the prefill prompt (images, then the expression, no assistant turn) runs once;
the probe records the last text token's attention over the visual tokens for every head of every
layer, ``(B, H, K)`` per layer: O(layers * heads * visual tokens) memory, never the L x L maps.
``S_img`` is each row's sum; the spatial entropy is computed on the row reshaped to the image's
primary grid (its first: the whole image at the coarsest level). The resulting ``(N, L, H)``
arrays feed `lookhere.heads.selection.select_heads`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from lookhere.data.collate import to_device
from lookhere.data.prompt import prefill_prompt
from lookhere.data.sample import Sample
from lookhere.heads.scoring import Threshold, Weight, spatial_entropy
from lookhere.heads.selection import HeadSpec, select_heads
from lookhere.models.adapter import Adapter
from lookhere.probe import AttentionProbe


@torch.no_grad()
def score_samples(model: nn.Module, processor: Any, adapter: Adapter, samples: Sequence[Sample],
                  batch_size: int = 8, threshold: Threshold = "mean", weight: Weight = "area",
                  progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(S_img, entropy)``, each ``(N, L, H)`` float64, for every head on every sample."""
    if not samples or batch_size < 1:
        raise ValueError("score_samples needs samples and batch_size >= 1")
    s_all, e_all = [], []
    starts = range(0, len(samples), batch_size)
    for i in tqdm(starts, desc="score heads", disable=not progress, leave=False):
        rows, layout = prefill_attention(model, processor, adapter, samples[i:i + batch_size])
        rows = torch.stack([rows[layer] for layer in sorted(rows)], 1)  # (B, L, H, K)
        s_all.append(rows.sum(-1).numpy())
        e_all.append(_entropies(rows, layout, threshold, weight))
    return np.concatenate(s_all), np.concatenate(e_all)


@torch.no_grad()
def prefill_attention(model: nn.Module, processor: Any, adapter: Adapter,
                      samples: Sequence[Sample], layers: Sequence[int] | None = None
                      ) -> tuple[dict[int, torch.Tensor], Any]:
    """One probe forward on the samples' prefill prompts: per layer, the last text token's
    attention over the visual tokens, ``(B, H, K)`` float64 on the CPU, and the batch's
    `VisualLayout`."""
    images = [[s.image] for s in samples]
    prompts = [prefill_prompt(adapter, processor, s.question) for s in samples]
    batch = adapter.process(processor, prompts, images, padding=True)
    with AttentionProbe(model, layers=layers, queries="last_text") as probe:
        model(**to_device(batch, next(model.parameters()).device))
    rows = {layer: r[:, :, 0].double().cpu() for layer, r in probe.rows.items()}
    return rows, adapter.layout(batch, images, processor)


def _entropies(rows: torch.Tensor, layout: Any, threshold: Threshold, weight: Weight
               ) -> np.ndarray:
    b, n_layers, n_heads, _ = rows.shape
    out = np.empty((b, n_layers, n_heads))
    for i in range(b):
        grid = layout.samples[i].images[0].primary
        maps = grid.to_grid(rows[i]).numpy()  # (L, H, rows, cols)
        for layer in range(n_layers):
            for head in range(n_heads):
                out[i, layer, head] = spatial_entropy(maps[layer, head], threshold, weight)
    return out


def find_heads(model: nn.Module, processor: Any, adapter: Adapter, samples: Sequence[Sample],
               model_id: str = "", top_k: int = 3, per_sample: int = 10,
               tau: str = "mean_curve", threshold: Threshold = "mean", weight: Weight = "area",
               batch_size: int = 8, progress: bool = True) -> HeadSpec:
    """Score every head on ``samples`` and select the localization heads (the paper's defaults)."""
    s_img, entropy = score_samples(model, processor, adapter, samples, batch_size, threshold,
                                   weight, progress)
    selection = select_heads(s_img, entropy, top_k=top_k, per_sample=per_sample, tau=tau)
    settings = {"top_k": top_k, "per_sample": per_sample, "tau": tau, "threshold": threshold,
                "weight": weight, "skip_layers": [0, 1]}
    return HeadSpec.from_selection(model_id or getattr(model.config, "_name_or_path", ""),
                                   selection, len(samples), settings)
