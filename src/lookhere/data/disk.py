"""Datasets on disk: a Hugging Face ``imagefolder`` with the fields and geometry of each sample.

Layout of a folder written by `write_dataset`:

    DIR/lookhere.json         task, seed, config, count, package version
    DIR/metadata.jsonl        one row per sample: file_name, id, question, answer, and
                              structured / geometry / meta as JSON strings
    DIR/images/NNNNNNN.png

``datasets.load_dataset("imagefolder", data_dir=DIR)`` loads it (the image column plus every
field); `read_samples` turns it back into `Sample`s. The folder is written to a temporary
sibling and renamed into place, so a crash never leaves half a dataset.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lookhere.data.image import open_rgb
from lookhere.data.sample import Geometry, Sample, check_geometry
from lookhere.io import atomic_dir

_INFO = "lookhere.json"


def write_dataset(task_name: str, n: int, out: str | Path, seed: int = 0, workers: int = 1,
                  progress: bool = True, **config: Any) -> Path:
    """Generate samples ``0..n-1`` of a synthetic task into a new dataset folder."""
    from tqdm import tqdm

    from lookhere.data.synthetic import make_task

    if not isinstance(n, int) or n <= 0:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    task = make_task(task_name, seed=seed, **config)  # validates name and config first
    chunks = [range(i, min(i + 256, n)) for i in range(0, n, 256)]
    with atomic_dir(out) as tmp:
        (tmp / "images").mkdir()
        rows = []
        bar = tqdm(total=n, desc=f"{task_name}", unit="sample", disable=not progress)
        args = [(task_name, seed, config, r, str(tmp)) for r in chunks]
        if workers == 1:
            results = map(_write_chunk, args)
        else:
            pool = ProcessPoolExecutor(workers)
            results = pool.map(_write_chunk, args)
        for chunk_rows in results:
            rows.extend(chunk_rows)
            bar.update(len(chunk_rows))
        bar.close()
        if workers > 1:
            pool.shutdown()
        with open(tmp / "metadata.jsonl", "w") as f:
            for row in rows:
                f.write(json.dumps(row, sort_keys=True) + "\n")
        info = {"task": task_name, "seed": seed, "n": n, "config": task.config_dict(),
                "format": "lookhere-imagefolder-v1"}
        (tmp / _INFO).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return Path(out)


def _write_chunk(args: tuple) -> list[dict[str, Any]]:
    from lookhere.data.synthetic import make_task

    task_name, seed, config, indices, root = args
    task = make_task(task_name, seed=seed, **config)
    rows = []
    for i in indices:
        s = task.sample(i)
        name = f"images/{i:07d}.png"
        s.image.save(Path(root) / name, format="PNG", compress_level=1)
        rows.append(sample_row(s, name))
    return rows


def sample_row(s: Sample, file_name: str) -> dict[str, Any]:
    """A sample's metadata.jsonl row (the image is stored separately)."""
    return sample_fields(file_name, s.id, s.task, s.question, s.answer, s.structured,
                         s.geometry, s.meta, s.image.size)


def sample_fields(file_name: str, id: str, task: str, question: str, answer: str,
                  structured: dict[str, Any], geometry: Geometry,
                  meta: dict[str, Any] | None = None, size: tuple[int, int] | None = None
                  ) -> dict[str, Any]:
    """A metadata.jsonl row from its parts (``size``: the image's, recorded when known)."""
    row = {
        "file_name": file_name, "id": id, "task": task, "question": question,
        "answer": answer, "structured": json.dumps(structured, sort_keys=True),
        "geometry": json.dumps(geometry.to_json(), sort_keys=True),
        "meta": json.dumps(meta or {}, sort_keys=True),
    }
    if size is not None:
        row["image_width"], row["image_height"] = size
    return row


def read_info(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / _INFO
    if not path.exists():
        raise FileNotFoundError(f"{folder} is not a lookhere dataset folder (no {_INFO})")
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text") from None
    if not isinstance(info, dict) or not isinstance(info.get("n", 0), int):
        raise ValueError(f"{path}: expected a JSON object whose 'n' is an int")
    return info


#: metadata.jsonl fields and their types (the JSON-in-a-string fields decode to objects)
_ROW_FIELDS = {"file_name": str, "id": str, "task": str, "question": str, "answer": str,
               "structured": str, "geometry": str, "meta": str}


def read_samples(folder: str | Path) -> Iterator[Sample]:
    """The `Sample`s of a folder written by `write_dataset`, in index order. A row that is not
    valid JSON, lacks a field or has one of the wrong type, names an image outside the folder,
    or holds geometry that is not finite, empty or outside its image is a ValueError naming
    ``metadata.jsonl:<line>``; so is a row count other than the info file's ``n``."""
    folder = Path(folder)
    for row in read_rows(folder):
        yield row_sample(folder, row)


@dataclass(frozen=True)
class Row:
    """One checked metadata.jsonl row, its image not yet read."""

    line: int  # 1-based line number in metadata.jsonl
    fields: dict[str, Any]


def read_rows(folder: str | Path) -> list[Row]:
    """Every row of a dataset folder, its fields checked (JSON, presence, types, the count
    against the info file's ``n``) but no image read: `row_sample` reads one. Errors are
    ValueErrors naming ``metadata.jsonl:<line>``."""
    folder = Path(folder)
    info = read_info(folder)
    path = folder / "metadata.jsonl"
    rows = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(Row(lineno, _parse_row(line)))
            except (ValueError, TypeError, KeyError) as err:
                raise ValueError(f"{path}:{lineno}: {err}") from None
    if "n" in info and info["n"] != len(rows):
        raise ValueError(f"{path} has {len(rows)} rows, its {_INFO} says n = {info['n']}")
    return rows


def row_sample(folder: str | Path, row: Row) -> Sample:
    """The `Sample` of a checked row: its image read, its geometry checked against it."""
    folder = Path(folder)
    try:
        return _row_sample(folder, row.fields)
    except (ValueError, TypeError, KeyError, OSError) as err:
        raise ValueError(f"{folder / 'metadata.jsonl'}:{row.line}: {err}") from None


def json_object(line: str) -> dict[str, Any]:
    """One JSONL line as a JSON object; anything else is a ValueError saying what it is."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"not valid JSON ({err.msg})") from None
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    return row


def _parse_row(line: str) -> dict[str, Any]:
    row = json_object(line)
    for key, kind in _ROW_FIELDS.items():
        if key not in row:
            raise ValueError(f"field {key!r} is missing")
        if not isinstance(row.get(key), kind):
            raise ValueError(f"field {key!r} must be a {kind.__name__}, got "
                             f"{type(row.get(key)).__name__}")
    return row


def _row_sample(folder: Path, row: dict[str, Any]) -> Sample:
    image_path = (folder / row["file_name"]).resolve()
    if not image_path.is_relative_to(folder.resolve()):
        raise ValueError(f"file_name {row['file_name']!r} lies outside the dataset folder")
    image = open_rgb(image_path)
    geometry = Geometry.from_json(json.loads(row["geometry"]))
    check_geometry(geometry, image.size)
    return Sample(image=image, question=row["question"], answer=row["answer"],
                  structured=json.loads(row["structured"]), geometry=geometry,
                  task=row["task"], id=row["id"], meta=json.loads(row["meta"]))
