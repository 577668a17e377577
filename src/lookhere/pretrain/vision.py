"""The vision stage's objective: dense per-patch classification of the vision tower's features.

Every patch token predicts, through one linear head per label map, the colour, shape, size and
glyph class of its cell (read from the tower layer ``attribute_layer``) and, as FCOS does for
detection, the box of the object it lies on (each edge as one of `BOX_BINS` bins;
`scenes.patch_labels`; read from the last layer). With ``attribute_layer`` below the last, the
two kinds of label have a layer each, and LLaVA reads both (``vision_feature_layer`` as a list):
on one layer the box edges took the features' variance and the language model then never read
colour (docs/results.md, 6.4). The heads are discarded after the stage; only the tower is kept.
Why dense labels rather than CLIP's contrastive captions: docs/methods.md, "Pretraining".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lookhere.data.sample import Sample
from lookhere.pretrain.config import LABEL_CLASSES  # torch-free: PretrainConfig checks them


class DensePatchObjective(nn.Module):
    """The vision tower with linear per-patch heads; ``forward`` returns the weighted sum of the
    label maps' mean cross-entropies (and per-map losses, detached). ``box_weight`` weighs each
    of the four box-edge maps (the other maps weigh 1): at 1, the box edges took 37% of the
    features' variance and colour 7% (results section 6.4), and a language model trained from
    scratch then failed to read colour. ``attribute_layer`` (a hidden-state index, as LLaVA's
    ``vision_feature_layer``) is where the colour, shape, size and glyph maps are read; the box
    maps always read the last layer."""

    def __init__(self, vision_tower: nn.Module, hidden: int, box_weight: float = 1.0,
                 attribute_layer: int = -1) -> None:
        super().__init__()
        if not 0 <= box_weight:
            raise ValueError(f"box_weight must be >= 0, got {box_weight!r}")
        self.vision_tower = vision_tower
        self.attribute_layer = attribute_layer
        self.heads = nn.ModuleDict({k: nn.Linear(hidden, n) for k, n in LABEL_CLASSES.items()})
        self.weights = {k: box_weight if k.startswith("box_") else 1.0 for k in LABEL_CLASSES}

    def layer_of(self, name: str) -> int:
        """The tower layer (hidden-state index) label map ``name`` is predicted from."""
        return -1 if name.startswith("box_") else self.attribute_layer

    def forward(self, pixel_values: torch.Tensor, **labels: torch.Tensor) -> dict[str, Any]:
        hidden = self.vision_tower(pixel_values, output_hidden_states=True).hidden_states
        loss = pixel_values.new_zeros(())
        logs = {}
        for name, head in self.heads.items():
            feats = hidden[self.layer_of(name)][:, 1:]  # (B, K, D) patch tokens, CLS dropped
            logits = head(feats)  # (B, K, classes)
            target = labels[f"labels_{name}"]  # (B, K)
            ce = nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten())
            loss = loss + self.weights[name] * ce
            logs[name] = ce.detach()
        return {"loss": loss, **{f"{k}_loss": v for k, v in logs.items()}}


@dataclass
class DensePatchCollator:
    """``list[Sample]`` (Scenes in ``"vision"`` mode) -> pixel values and per-patch labels."""

    image_processor: Any
    num_patches: int

    def __call__(self, samples: Sequence[Sample]) -> dict[str, torch.Tensor]:
        pixels = self.image_processor([s.image for s in samples], return_tensors="pt")
        batch = {"pixel_values": pixels["pixel_values"]}
        for name in LABEL_CLASSES:
            rows = [s.meta["patch_labels"][name] for s in samples]
            if any(len(r) != self.num_patches for r in rows):
                raise ValueError(f"patch labels must have {self.num_patches} cells: the scenes' "
                                 "image_size / patch_size must match the vision tower's")
            batch[f"labels_{name}"] = torch.tensor(rows, dtype=torch.long)
        return batch
