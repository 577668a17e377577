"""Localization heads (training-free grounding, methods.md section 3): head scores, the search
over a model's heads, selection, and grounding from maps, with an optional mask refiner."""

from lookhere.heads.grounding import Grounding, ground, largest_component, pixel_mask
from lookhere.heads.locate import head_maps, locate, select_grid
from lookhere.heads.refine import Refiner, SamRefiner, refine_masks
from lookhere.heads.scoring import (
    HeadScores,
    binarise,
    chord_knee,
    components,
    image_attention_sum,
    pooled_entropy,
    spatial_entropy,
)
from lookhere.heads.search import find_heads, score_batch, score_samples
from lookhere.heads.selection import HeadSpec, Selection, check_options, select_heads

__all__ = [
    "Grounding", "HeadScores", "HeadSpec", "Refiner", "SamRefiner", "Selection", "binarise",
    "check_options", "chord_knee", "components", "find_heads", "ground", "head_maps",
    "image_attention_sum", "largest_component", "locate", "pixel_mask", "pooled_entropy",
    "refine_masks", "score_batch", "score_samples", "select_grid", "select_heads",
    "spatial_entropy",
]
