"""The projector's starting point: the vision stage's dense heads, so every label is loud.

A language model trained from scratch read only the loud directions of the tower's features:
with the box edges at ~37% of the variance and colour at ~7%, it learned boxes and never colour,
and the other way round (docs/results.md, 6.4-6.5), although both were ~99% linearly readable.
The vision stage's per-patch heads already make every label explicit, one logit per class. So
the projector's first linear layer starts as those heads: its first rows are the heads'
weights, each map's logits centred and scaled to a chosen share of the variance (`LOUDNESS`),
the remaining rows left at their random initialisation, the labels together `LABEL_SHARE` of
the layer's variance (at unit scale the random rows' output had ~26 times the heads', which
would have hidden them again). The projector keeps LLaVA's class and shape
(``Linear -> GELU -> Linear``) and trains from there in the alignment stage.
"""

from __future__ import annotations

from typing import Any

import torch

from lookhere.pretrain.vision import DensePatchObjective

#: each map's share of the label logits' variance: colour and shape as loud as the four box
#: edges together, size and glyph half that
LOUDNESS = {"colour": 1.0, "shape": 1.0, "size": 0.5, "glyph": 0.5,
            "box_x0": 0.25, "box_y0": 0.25, "box_x1": 0.25, "box_y1": 0.25}
#: the label logits' share of the first layer's output variance (the rest: its random rows,
#: which keep what the labels do not name, such as curves and exact positions)
LABEL_SHARE = 0.9


def image_features(tower: torch.nn.Module, pixel_values: torch.Tensor, layers: list[int]
                   ) -> torch.Tensor:
    """(B, K, D * len(layers)): the patch tokens of ``layers``, concatenated, as LLaVA reads."""
    hidden = tower(pixel_values, output_hidden_states=True).hidden_states
    return torch.cat([hidden[i][:, 1:] for i in layers], dim=-1)


@torch.no_grad()
def init_from_heads(projector: torch.nn.Module, objective: DensePatchObjective,
                    layers: list[int], pixel_values: torch.Tensor,
                    loudness: dict[str, float] = LOUDNESS) -> dict[str, tuple[int, int]]:
    """Write the heads into ``projector.linear_1``'s first rows; return each map's row range.

    ``layers`` are the tower layers the projector reads (``vision_feature_layer``);
    the box heads read the last, the others ``objective.attribute_layer``; ``pixel_values``
    (B, 3, H, W) are held-out images whose logits set each map's centre and scale.
    """
    linear, tower = projector.linear_1, objective.vision_tower
    hidden = tower.config.hidden_size
    rows = sum(head.out_features for head in objective.heads.values())
    if rows > linear.out_features:
        raise ValueError(f"the heads have {rows} logits, more than the projector's "
                         f"{linear.out_features} rows")
    if set(loudness) != set(objective.heads):
        raise ValueError(f"loudness must name every map {sorted(objective.heads)}")
    param = next(tower.parameters())
    # after a GPU vision stage the tower (trained inside the objective) is on the GPU and the
    # projector still where the model was built: compute on the tower, write on the projector
    feats = image_features(tower, pixel_values.to(param.device, param.dtype), layers)
    feats = feats.flatten(0, 1).to(linear.weight.device, linear.weight.dtype)  # (N, Din)
    rest = (feats @ linear.weight[rows:].T).var(0).sum()  # variance of the random rows' output
    budget = rest * LABEL_SHARE / (1 - LABEL_SHARE) / sum(loudness.values())
    ranges, start = {}, 0
    for name, head in objective.heads.items():
        block = _block(layers, objective.layer_of(name), hidden)
        weight = head.weight.to(feats.device, feats.dtype)  # (C, D)
        bias = head.bias.to(feats.device, feats.dtype)
        logits = feats[:, block] @ weight.T + bias  # (N, C)
        scale = (budget * loudness[name] / logits.var(0).sum().clamp_min(1e-12)).sqrt()
        stop = start + head.out_features
        linear.weight[start:stop].zero_()
        linear.weight[start:stop, block] = scale * weight
        linear.bias[start:stop] = scale * (bias - logits.mean(0))
        ranges[name] = (start, stop)
        start = stop
    return ranges


def _block(layers: list[int], layer: int, hidden: int) -> slice:
    """The columns of the concatenated features that hold ``layer``."""
    if layer not in layers:
        raise ValueError(f"the projector reads layers {layers}, not the heads' layer {layer}")
    i = layers.index(layer)
    return slice(i * hidden, (i + 1) * hidden)


def held_out_pixels(processor: Any, samples: list[Any]) -> torch.Tensor:
    """(B, 3, H, W) pixel values of ``samples``' images."""
    return processor.image_processor([s.image for s in samples],
                                     return_tensors="pt")["pixel_values"]
