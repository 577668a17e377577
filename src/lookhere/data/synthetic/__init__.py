"""Synthetic grounding tasks, one module each, deterministic in (seed, index).

Importing this package registers the built-in tasks (each module registers itself).
"""

from lookhere.data.synthetic import grid_patch, line_intersection, line_tracing, scenes, shapes
from lookhere.data.synthetic.base import TASKS, SyntheticTask, make_task, register_task

__all__ = [
    "TASKS", "SyntheticTask", "grid_patch", "line_intersection", "line_tracing", "make_task",
    "register_task", "scenes", "shapes",
]
