"""Model adapters (one module per VLM family) and tiny offline models.

Importing this package registers lookhere's own adapters in lookhere's own registry; it touches
no global state of transformers or torch.
"""

from lookhere.models import llava  # noqa: F401  (registers the family)
from lookhere.models.adapter import (
    Adapter,
    UnsupportedModelError,
    adapter_class,
    families,
    get_adapter,
    register_adapter,
)
from lookhere.models.layout import Grid, GridGeometry, ImageLayout, SampleLayout, VisualLayout
from lookhere.models.tiny import TINY_SIZES, TinySize, build_tiny

__all__ = [
    "Adapter", "Grid", "GridGeometry", "ImageLayout", "SampleLayout", "TINY_SIZES", "TinySize",
    "UnsupportedModelError", "VisualLayout", "adapter_class", "build_tiny", "families",
    "get_adapter", "register_adapter",
]
