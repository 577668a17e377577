"""Localization heads (training-free grounding, methods.md section 3): head scores, the search
over a model's heads, selection, and grounding from maps, with an optional mask refiner."""

from lookhere.heads.grounding import Grounding, ground
from lookhere.heads.locate import head_maps, locate, select_grid
from lookhere.heads.refine import Refiner, SamRefiner, refine_masks
from lookhere.heads.scoring import (
    HeadScores,
    chord_knee,
    image_attention_sum,
    pooled_entropy,
    spatial_entropy,
)
from lookhere.heads.search import find_heads, score_batch, score_samples
from lookhere.heads.selection import HeadSpec, Selection, check_options, select_heads

__all__ = [
    "Grounding", "HeadScores", "HeadSpec", "Refiner", "SamRefiner", "Selection",
    "check_options", "chord_knee", "find_heads", "ground", "head_maps",
    "image_attention_sum", "locate", "pooled_entropy",
    "refine_masks", "score_batch", "score_samples", "select_grid", "select_heads",
    "spatial_entropy",
]
