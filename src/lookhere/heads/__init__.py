"""Localization heads (training-free grounding): head scores, the search over a model's heads,
and selection; grounding comes next (issue 5)."""

from lookhere.heads.scoring import (
    binarise,
    chord_knee,
    components,
    image_attention_sum,
    spatial_entropy,
)
from lookhere.heads.search import score_samples
from lookhere.heads.selection import HeadSpec, Selection, select_heads

__all__ = ["HeadSpec", "Selection", "binarise", "chord_knee", "components",
           "image_attention_sum", "score_samples", "select_heads", "spatial_entropy"]
