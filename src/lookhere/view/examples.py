"""Samples of the synthetic tasks for the viewer's gallery: a few of each, at the model's input
size, with their questions and target geometry (so attention ratios can be shown)."""

from __future__ import annotations

from typing import Any

from lookhere.data.sample import Sample
from lookhere.data.synthetic import make_task
from lookhere.experiment.config import klal_task_defaults, shapes_defaults

#: the seed of the gallery's samples (index 0, 1, ...): the same pictures on every start
SEED = 0


def task_settings(image_size: int) -> dict[str, dict[str, Any]]:
    """Generator settings at ``image_size`` px: the KLAL benchmarks as the experiments draw them
    (Grid Patch with 28 px cells, no grid preamble), Shapes questions and Scenes instructions
    (what the shipped checkpoint was taught)."""
    klal = klal_task_defaults(image_size)
    return {
        "grid_patch": klal["grid_patch"],
        "line_intersection": klal["line_intersection"],
        "line_tracing": {**klal["line_tracing"], "image_size": max(96, image_size)},
        "shapes": {**shapes_defaults(image_size), "mode": "vqa"},
        "scenes": {"image_size": image_size, "mode": "instruct", "max_objects": 4},
    }


def example_samples(image_size: int = 96, per_task: int = 2) -> list[Sample]:
    """``per_task`` samples of each task in `task_settings`, ids ``<task>-<index>``."""
    if image_size < 32 or per_task < 1:
        raise ValueError(f"image_size must be >= 32 and per_task >= 1, got {image_size}, "
                         f"{per_task}")
    out = []
    for task, settings in task_settings(image_size).items():
        gen = make_task(task, seed=SEED, **settings)
        for i in range(per_task):
            s = gen.sample(i)
            s.id = f"{task}-{i}"
            out.append(s)
    return out


def model_image_size(processor: Any, default: int = 336) -> int:
    """The square input size the processor resizes to (``crop_size`` or ``size``), else
    ``default``: the size at which the gallery's samples are drawn."""
    image_processor = getattr(processor, "image_processor", None)
    for name in ("crop_size", "size"):
        value = getattr(image_processor, name, None)
        if value is None:
            continue
        get = value.get if isinstance(value, dict) else lambda k, v=value: getattr(v, k, None)
        side = get("height") or get("shortest_edge")
        if isinstance(side, int) and side >= 32:
            return side
    return default
