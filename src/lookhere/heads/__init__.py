"""Localization heads (training-free grounding): head scores, the search over a model's heads,
selection, and grounding from maps (issue 5, in progress)."""

from lookhere.heads.grounding import Grounding, ground, pixel_mask
from lookhere.heads.locate import locate
from lookhere.heads.scoring import (
    binarise,
    chord_knee,
    components,
    image_attention_sum,
    spatial_entropy,
)
from lookhere.heads.search import find_heads, score_samples
from lookhere.heads.selection import HeadSpec, Selection, select_heads

__all__ = [
    "Grounding", "HeadSpec", "Selection", "binarise", "chord_knee", "components", "find_heads",
    "ground", "image_attention_sum", "locate", "pixel_mask", "score_samples", "select_heads",
    "spatial_entropy",
]
