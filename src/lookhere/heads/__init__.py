"""Localization heads (training-free grounding): head scores and selection so far; the search
over a model and grounding come next (issue 5)."""

from lookhere.heads.scoring import (
    binarise,
    chord_knee,
    components,
    image_attention_sum,
    spatial_entropy,
)
from lookhere.heads.selection import HeadSpec, Selection, select_heads

__all__ = ["HeadSpec", "Selection", "binarise", "chord_knee", "components",
           "image_attention_sum", "select_heads", "spatial_entropy"]
