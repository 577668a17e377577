"""Synthetic grounding tasks, one module each, deterministic in (seed, index)."""

from lookhere.data.synthetic.base import TASKS, SyntheticTask, make_task, register_task

# The built-in tasks register themselves on import.
from lookhere.data.synthetic import shapes  # noqa: F401, E402, I001

__all__ = ["TASKS", "SyntheticTask", "make_task", "register_task"]
