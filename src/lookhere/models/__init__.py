"""Model adapters (one module per VLM family) and tiny offline models.

Importing this package registers lookhere's own adapters in lookhere's own registry; it touches
no global state of transformers or torch.
"""

# Registration order is the documented family order.
from lookhere.models import llava  # noqa: F401, I001
from lookhere.models import qwen2_vl  # noqa: F401
from lookhere.models import llava_next  # noqa: F401
from lookhere.models import gemma3  # noqa: F401
from lookhere.models import idefics3  # noqa: F401
from lookhere.models import paligemma  # noqa: F401
from lookhere.models import qwen3_vl  # noqa: F401
from lookhere.models import llava_onevision  # noqa: F401
from lookhere.models import internvl  # noqa: F401
from lookhere.models import generic  # noqa: F401  (the fallback, not a family)
from lookhere.models.adapter import (
    Adapter,
    UnsupportedModelError,
    adapter_class,
    families,
    get_adapter,
    register_adapter,
)
from lookhere.models.generic import GenericAdapter
from lookhere.models.layout import Grid, GridGeometry, ImageLayout, SampleLayout, VisualLayout
from lookhere.models.loading import load_pretrained
from lookhere.models.tiny import TINY_SIZES, TinySize, build_tiny

__all__ = [
    "Adapter", "GenericAdapter", "Grid", "GridGeometry", "ImageLayout", "SampleLayout",
    "TINY_SIZES", "TinySize",
    "UnsupportedModelError", "VisualLayout", "adapter_class", "build_tiny", "families",
    "get_adapter", "load_pretrained", "register_adapter",
]
