"""A user's own data as a lookhere dataset folder: `import_jsonl` reads a plain JSONL, one
sample per line, and writes the folder `lookhere.data.disk` reads (``lookhere train``,
``lookhere eval``, ``lookhere lens``). Its task is ``custom``, scored by the row's ``kind``.

Each line is a JSON object::

    {"image": "photos/cat.jpg",            # required: a path, relative to --images
     "question": "Where is the cat?",      # required
     "answer": "[0.12, 0.30, 0.55, 0.81]", # required: the text the model should answer
     "id": "cat-1",                        # optional (default: the line number)
     "boxes": [[40, 96, 176, 260]],        # optional: xyxy in image pixels
     "points": [[108, 170]],               # optional: (x, y) in image pixels
     "mask": "masks/cat.png",              # optional: a PNG the size of the image, >0 inside
     "kind": "box"}                        # optional: text (default), box or points

The geometry (boxes, points, mask) is where KLAL's target map puts its mass and what the
evaluation scores: ``kind`` ``box`` scores the answer's box by IoU >= 0.5 with the one gold box
(the answer in LLaVA's normalised "[x0, y0, x1, y1]" or another style of
`lookhere.data.formats`); ``points`` matches the answer's points to the gold points (or boxes)
one to one; ``text`` compares the answer text, ignoring case, surrounding space and a final
full stop.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from lookhere.data.disk import json_object, sample_fields
from lookhere.data.image import open_rgb
from lookhere.data.sample import Geometry, check_geometry
from lookhere.io import atomic_dir

TASK = "custom"
KINDS = ("text", "box", "points")
_FIELDS = {"image": str, "question": str, "answer": str, "id": (str, int), "boxes": list,
           "points": list, "mask": str, "kind": str}
_REQUIRED = ("image", "question", "answer")


def import_jsonl(src: str | Path, out: str | Path, images: str | Path | None = None,
                 progress: bool = True) -> int:
    """Write the samples of the JSONL ``src`` to the new dataset folder ``out`` (images copied
    as they are; relative paths from ``images``, default the JSONL's folder). Every row is
    checked before anything is written; a bad row is a ValueError naming ``src:<line>``.
    Returns the number of samples."""
    from tqdm import tqdm

    src = Path(src)
    base = Path(images) if images is not None else src.parent
    rows = _read(src, base)
    with atomic_dir(out) as tmp:
        (tmp / "images").mkdir()
        lines = []
        for i, (row, image_path, geometry) in enumerate(tqdm(rows, desc="import", unit="sample",
                                                             disable=not progress)):
            name = f"images/{i:07d}{image_path.suffix.lower()}"
            shutil.copyfile(image_path, tmp / name)
            lines.append(json.dumps(_metadata(row, name, geometry, row["size"]),
                                    sort_keys=True))
        (tmp / "metadata.jsonl").write_text("\n".join(lines) + "\n")
        info = {"task": TASK, "n": len(rows), "source": str(src),
                "format": "lookhere-imagefolder-v1"}
        (tmp / "lookhere.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return len(rows)


def _read(src: Path, base: Path) -> list[tuple[dict[str, Any], Path, Geometry]]:
    out = []
    ids: set[str] = set()
    with open(src, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row, image_path, geometry = _row(line, base, lineno)
            except (ValueError, TypeError, OSError) as err:
                raise ValueError(f"{src}:{lineno}: {err}") from None
            if row["id"] in ids:
                raise ValueError(f"{src}:{lineno}: id {row['id']!r} is used twice")
            ids.add(row["id"])
            out.append((row, image_path, geometry))
    if not out:
        raise ValueError(f"{src}: no samples")
    return out


def _row(line: str, base: Path, lineno: int) -> tuple[dict[str, Any], Path, Geometry]:
    row = json_object(line)
    unknown = sorted(set(row) - set(_FIELDS))
    if unknown:
        raise ValueError(f"unknown field(s) {unknown}; expected some of {sorted(_FIELDS)}")
    for key in _REQUIRED:
        if key not in row:
            raise ValueError(f"field {key!r} is missing")
    for key, kind in _FIELDS.items():
        if key in row and (not isinstance(row[key], kind) or isinstance(row[key], bool)):
            raise ValueError(f"field {key!r} has the wrong type ({type(row[key]).__name__})")
    row = {**row, "id": str(row.get("id", lineno)), "kind": row.get("kind", "text")}
    if row["kind"] not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {row['kind']!r}")
    image_path = base / row["image"]
    image = open_rgb(image_path)  # checks the file is a readable image within the pixel limit
    geometry = Geometry(boxes=[_numbers(b, 4, "boxes") for b in row.get("boxes", [])],
                        points=[_numbers(p, 2, "points") for p in row.get("points", [])],
                        mask=_mask(base / row["mask"], image.size) if "mask" in row else None)
    check_geometry(geometry, image.size)
    if row["kind"] == "box" and len(geometry.boxes) != 1:
        raise ValueError(f"kind 'box' needs exactly one box, got {len(geometry.boxes)}")
    if row["kind"] == "points" and not (geometry.points or geometry.boxes):
        raise ValueError("kind 'points' needs points or boxes")
    return {**row, "size": image.size}, image_path, geometry


def _numbers(values: Any, n: int, name: str) -> tuple[float, ...]:
    if not isinstance(values, list) or len(values) != n or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ValueError(f"{name}: each entry must be a list of {n} numbers, got {values!r}")
    return tuple(float(v) for v in values)


def _mask(path: Path, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        if im.size != size:
            raise ValueError(f"mask {path.name} is {im.size[0]}x{im.size[1]}, the image "
                             f"{size[0]}x{size[1]}")
        return np.asarray(im.convert("L")) > 0


def _metadata(row: dict[str, Any], name: str, geometry: Geometry, size: tuple[int, int]
              ) -> dict[str, Any]:
    structured: dict[str, Any] = {"kind": row["kind"]}
    if row["kind"] == "points":
        structured["points"] = [list(p) for p in geometry.points]
    return sample_fields(name, row["id"], TASK, row["question"], row["answer"], structured,
                         geometry, size=size)
