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
    return {
        "file_name": file_name, "id": s.id, "task": s.task, "question": s.question,
        "answer": s.answer, "structured": json.dumps(s.structured, sort_keys=True),
        "geometry": json.dumps(s.geometry.to_json(), sort_keys=True),
        "meta": json.dumps(s.meta, sort_keys=True),
        "image_width": s.image.width, "image_height": s.image.height,
    }


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
    info = read_info(folder)
    path = folder / "metadata.jsonl"
    count = 0
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            count += 1
            try:
                yield _read_row(folder, line)
            except (ValueError, TypeError, KeyError, OSError) as err:
                raise ValueError(f"{path}:{lineno}: {err}") from None
    if "n" in info and info["n"] != count:
        raise ValueError(f"{path} has {count} rows, its {_INFO} says n = {info['n']}")


def _read_row(folder: Path, line: str) -> Sample:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"not valid JSON ({err.msg})") from None
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    for key, kind in _ROW_FIELDS.items():
        if key not in row:
            raise ValueError(f"field {key!r} is missing")
        if not isinstance(row.get(key), kind):
            raise ValueError(f"field {key!r} must be a {kind.__name__}, got "
                             f"{type(row.get(key)).__name__}")
    image_path = (folder / row["file_name"]).resolve()
    if not image_path.is_relative_to(folder.resolve()):
        raise ValueError(f"file_name {row['file_name']!r} lies outside the dataset folder")
    image = open_rgb(image_path)
    geometry = Geometry.from_json(json.loads(row["geometry"]))
    check_geometry(geometry, image.size)
    return Sample(image=image, question=row["question"], answer=row["answer"],
                  structured=json.loads(row["structured"]), geometry=geometry,
                  task=row["task"], id=row["id"], meta=json.loads(row["meta"]))
