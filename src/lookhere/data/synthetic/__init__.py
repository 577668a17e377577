"""Synthetic grounding tasks, one module each, deterministic in (seed, index)."""

from lookhere.data.synthetic.base import TASKS, SyntheticTask, make_task, register_task

__all__ = ["TASKS", "SyntheticTask", "make_task", "register_task"]
