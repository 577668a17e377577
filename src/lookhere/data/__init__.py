"""Grounding data: the `Sample` type, synthetic tasks, real-dataset loaders, answer formats."""

from lookhere.data.sample import Geometry, Sample

__all__ = ["Geometry", "Sample"]
