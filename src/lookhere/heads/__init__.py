"""Localization heads (training-free grounding): scoring so far; selection and grounding next."""

from lookhere.heads.scoring import (
    binarise,
    chord_knee,
    components,
    image_attention_sum,
    spatial_entropy,
)

__all__ = ["binarise", "chord_knee", "components", "image_attention_sum", "spatial_entropy"]
