"""Pictures: contact sheets of samples with their ground-truth geometry drawn over them."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from lookhere.data.sample import Sample
from lookhere.data.synthetic import make_task
from lookhere.io import atomic_path

_OVERLAY = (255, 0, 255)  # magenta: rarely a task colour


def draw_geometry(sample: Sample) -> Image.Image:
    """The sample's image with its target geometry outlined (boxes, points, polylines, mask)."""
    img = sample.image.convert("RGB").copy()
    geo = sample.geometry
    if geo.mask is not None:
        arr = np.asarray(img).copy()
        arr[geo.mask] = (0.5 * arr[geo.mask] + 0.5 * np.array(_OVERLAY)).astype(np.uint8)
        img = Image.fromarray(arr)
    draw = ImageDraw.Draw(img)
    for x0, y0, x1, y1 in geo.boxes:
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=_OVERLAY, width=2)
    for line in geo.polylines:
        draw.line([tuple(p) for p in line], fill=_OVERLAY, width=1)
    for x, y in geo.points:
        draw.ellipse([x - 4, y - 4, x + 4, y + 4], outline=_OVERLAY, width=2)
    return img


def contact_sheet(samples: Sequence[Sample], cols: int = 4, cell: int = 256,
                  overlay: bool = True) -> Image.Image:
    """A grid of samples, each with its question and answer below, geometry optionally drawn."""
    if not samples:
        raise ValueError("samples must not be empty")
    rows = -(-len(samples) // cols)
    caption_h = 56
    sheet = Image.new("RGB", (cols * cell, rows * (cell + caption_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, s in enumerate(samples):
        r, c = divmod(i, cols)
        img = draw_geometry(s) if overlay else s.image.convert("RGB")
        k = (cell - 8) // max(img.size)
        if k > 1:  # small images are enlarged by a whole factor, pixels kept sharp
            img = img.resize((img.width * k, img.height * k), Image.Resampling.NEAREST)
        img.thumbnail((cell - 8, cell - 8))
        x, y = c * cell + 4, r * (cell + caption_h) + 4
        sheet.paste(img, (x, y))
        q = textwrap.wrap(f"Q: {s.question}", 40)
        q = q[:3] if len(q) <= 3 else q[:2] + [q[2][:37] + "..."]
        lines = q + textwrap.wrap(f"A: {s.answer}", 40)[:1]  # the answer always shows
        draw.multiline_text((x, y + cell - 4), "\n".join(lines), fill="black", spacing=1)
    return sheet


#: How each of the docs' contact sheets (docs/sheet_<task>.png, 16 samples of seed 0) is drawn:
#: `task_sheet` keywords. Grid Patch leaves out the grid preamble so the caption shows the
#: answer; Shapes shows 8 REC then 8 VQA samples (both modes draw, nearly always, the same
#: scene for an index, so the VQA ones come from the next indices: other images).
DOC_SHEETS: dict[str, dict[str, Any]] = {
    "grid_patch": {"overrides": {"describe_grid": False}},
    "line_intersection": {},
    "line_tracing": {"cell": 336},
    "shapes": {"cell": 336, "mix": ({"mode": "rec"}, {"mode": "vqa"})},
    "scenes": {},
}


def task_sheet(task: str, n: int = 16, seed: int = 0, cols: int = 4, cell: int = 256,
               overrides: Mapping[str, Any] | None = None,
               mix: Sequence[Mapping[str, Any]] = ({},)) -> Image.Image:
    """A contact sheet of a synthetic task's samples 0 to n-1 (`contact_sheet`), made with
    ``make_task(task, seed, **overrides)``. ``mix``: config overrides (on top of ``overrides``)
    that share the sheet in order, sample i drawn with ``mix[i * len(mix) // n]``."""
    if n < 1 or not mix:
        raise ValueError(f"a sheet needs n >= 1 and at least one mix entry, got n={n}, mix={mix}")
    tasks = [make_task(task, seed=seed, **{**(overrides or {}), **m}) for m in mix]
    samples = [tasks[i * len(mix) // n].sample(i) for i in range(n)]
    return contact_sheet(samples, cols=cols, cell=cell)


def save_image(img: Image.Image, path: str | Path) -> Path:
    """Save a PNG atomically (temporary file, then rename)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return path
