"""PixMo-Points (allenai/pixmo-points) from its published parquet files and a local image folder.

Schema (the dataset card's ``dataset_info``): one row per (image, label) with

    image_url: string, image_sha256: string, points: list<struct<x: float64, y: float64>>,
    count: int64, label: string, collection_method: string ("pointing" or "counting")

Images are not in the parquet: they are downloaded from ``image_url`` separately, and URLs can
repeat. The local folder holds them named by their sha256 (``<sha256>``, with or without an
extension), or ``image_map`` maps sha256 or URL to a path.

Point units: the card says "pixels", but Molmo's own loader reads these points with
``point_scale=100`` (percent of the image width / height). Molmo's reading is what trained Molmo,
so the default is ``point_units="percent"``; ``"pixels"`` is there for copies that store pixels.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from lookhere.data.image import open_rgb
from lookhere.data.sample import Geometry, Point, Sample

REQUIRED_COLUMNS = ("image_url", "image_sha256", "points", "label", "count")
OPTIONAL_COLUMNS = ("collection_method",)
POINT_UNITS = ("percent", "pixels")
SPLITS = ("all", "train", "val")
ON_MISSING = ("skip", "error")
MODES = ("point", "count")
IMAGE_SUFFIXES = ("", ".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp")
TASK = "pixmo_points"


class PixmoFormatError(ValueError):
    """A parquet file lacks a column or has the wrong type (the message names file and field)."""


@dataclass(frozen=True, eq=False)
class PixmoPoint:
    """One PixMo-Points row: a label, its points in image pixels, and the count."""

    row: int  # index over the concatenated parquet files, before any filtering
    image_path: Path
    image_url: str
    image_sha256: str
    image_size: tuple[int, int]  # (width, height)
    label: str
    count: int
    points: tuple[Point, ...]  # pixels, x right, y down; clipped into the image
    points_raw: tuple[Point, ...]  # as stored in the parquet
    collection_method: str
    n_clipped: int  # points that lay outside the image and were moved onto its edge

    def load_image(self) -> Image.Image:
        return open_rgb(self.image_path)


# ---------------------------------------------------------------------------------------------
# Files


def parquet_files(source: str | Path | Sequence[str | Path]) -> list[Path]:
    """A parquet file, a folder of them (searched recursively), or a list of files."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir():
            files = sorted(path.rglob("*.parquet"))
            if not files:
                raise FileNotFoundError(f"no .parquet files under {path}")
            return files
        sources: Sequence[str | Path] = [path]
    else:
        sources = source
    files = [Path(p) for p in sources]
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"PixMo-Points parquet file not found: {f}")
    if not files:
        raise ValueError("no parquet files given")
    return files


def check_schema(path: Path) -> list[str]:
    """The columns to read from ``path``; errors name the file and the missing field."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except Exception as e:  # not parquet at all
        raise PixmoFormatError(f"{path}: not a readable parquet file ({e})") from e
    missing = [c for c in REQUIRED_COLUMNS if c not in schema.names]
    if missing:
        raise PixmoFormatError(f"{path}: missing required column(s) {missing}; "
                               f"has {schema.names}")
    ptype = schema.field("points").type
    ok = (pa.types.is_list(ptype) or pa.types.is_large_list(ptype)) and \
        pa.types.is_struct(ptype.value_type)
    names = [ptype.value_type.field(i).name for i in range(ptype.value_type.num_fields)] \
        if ok else []
    if not ok or "x" not in names or "y" not in names:
        raise PixmoFormatError(f"{path}: column 'points' must be list<struct<x, y>>, "
                               f"got {ptype}")
    return list(REQUIRED_COLUMNS) + [c for c in OPTIONAL_COLUMNS if c in schema.names]


def read_table(files: Sequence[Path]) -> Any:
    """One pyarrow table over all files (only the columns we use)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for f in files:
        cols = check_schema(f)
        t = pq.read_table(f, columns=cols)
        if "collection_method" not in cols:
            t = t.append_column("collection_method", pa.array([""] * len(t), pa.string()))
        tables.append(t.select(list(REQUIRED_COLUMNS) + ["collection_method"]))
    return pa.concat_tables(tables, promote_options="permissive")


def index_image_dir(image_dir: Path) -> dict[str, Path]:
    """Name and stem → path for the files in ``image_dir`` (one listing, not one stat per row)."""
    if not image_dir.is_dir():
        raise FileNotFoundError(f"image folder not found: {image_dir}")
    out: dict[str, Path] = {}
    for entry in image_dir.iterdir():
        if entry.is_file():
            if entry.suffix.lower() in IMAGE_SUFFIXES:
                out.setdefault(entry.stem, entry)
            out[entry.name] = entry
    return out


def read_image_map(image_map: Mapping[str, str | Path] | str | Path,
                   base: Path | None) -> dict[str, Path]:
    """sha256-or-URL → path, from a dict, a JSON object file or a two-column CSV file.

    Relative paths are taken relative to ``base`` (the image folder) when given.
    """
    if isinstance(image_map, (str, Path)):
        path = Path(image_map)
        if not path.is_file():
            raise FileNotFoundError(f"image map not found: {path}")
        if path.suffix.lower() == ".json":
            raw = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(raw, dict):
                raise PixmoFormatError(f"{path}: expected a JSON object key → image path")
        else:
            with path.open(newline="", encoding="utf-8") as f:
                rows = [r for r in csv.reader(f) if r]
            if any(len(r) < 2 for r in rows):
                raise PixmoFormatError(f"{path}: every CSV row needs two fields: key, path")
            raw = {r[0]: r[1] for r in rows}
    else:
        raw = dict(image_map)
    return {str(k): (base / v if base is not None else Path(v)) for k, v in raw.items()}


def split_of(image_sha256: str, val_fraction: float) -> str:
    """'val' or 'train' by a hash of the image, so one image never lands in both."""
    h = hashlib.sha256(f"lookhere-split:{image_sha256}".encode()).digest()
    return "val" if int.from_bytes(h[:8], "big") / 2.0 ** 64 < val_fraction else "train"


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _clip(v: float, size: int) -> float:
    # Outside points go onto the centre of the edge pixel, so that v // patch stays on the grid.
    return min(max(v, 0.0), size - 0.5)


# ---------------------------------------------------------------------------------------------
# The dataset


class PixmoPoints:
    """PixMo-Points rows whose image is available locally, with points in pixels.

    Args:
        parquet: a parquet file, a folder of them, or a list of files.
        image_dir: the folder of downloaded images, named by sha256 (extension optional).
        image_map: sha256-or-URL → image path (dict, JSON or CSV); relative to ``image_dir``.
        point_units: "percent" (0..100 of width/height, Molmo's reading) or "pixels".
        collection_method: keep only "pointing" or "counting" rows; None keeps both.
        split: "all", or "train" / "val" by a hash of the image (``val_fraction`` in val):
            the dataset has one split only.
        on_missing_image: "skip" rows whose image is not found (dead URLs are common) or "error".
        verify_sha256: hash every image file at load and treat a mismatch like a missing image.
    """

    def __init__(self, parquet: str | Path | Sequence[str | Path],
                 image_dir: str | Path | None = None, *,
                 image_map: Mapping[str, str | Path] | str | Path | None = None,
                 point_units: str = "percent", collection_method: str | None = None,
                 split: str = "all", val_fraction: float = 0.02,
                 on_missing_image: str = "skip", verify_sha256: bool = False) -> None:
        _check_args(point_units, split, val_fraction, on_missing_image, collection_method)
        if image_dir is None and image_map is None:
            raise ValueError("give image_dir, image_map or both")
        self.point_units, self.split = point_units, split
        self.files = parquet_files(parquet)
        self.table = read_table(self.files)
        base = Path(image_dir) if image_dir is not None else None
        self._by_name = index_image_dir(base) if base is not None else {}
        self._by_key = read_image_map(image_map, base) if image_map is not None else {}
        self._paths: dict[int, Path] = {}
        self.rows = self._select(collection_method, val_fraction, on_missing_image, verify_sha256)

    def _image_path(self, sha: str, url: str) -> Path | None:
        path = self._by_key.get(sha) or self._by_key.get(url) or self._by_name.get(sha)
        return path if path is not None and path.is_file() else None

    def _select(self, method: str | None, val_fraction: float, on_missing: str,
                verify: bool) -> list[int]:
        shas = self.table.column("image_sha256").to_pylist()
        urls = self.table.column("image_url").to_pylist()
        methods = self.table.column("collection_method").to_pylist()
        checked: dict[str, bool] = {}  # sha → image usable (an image serves many rows)
        self.n_missing, rows = 0, []
        for i, (sha, url, m) in enumerate(zip(shas, urls, methods, strict=True)):
            if method is not None and m != method:
                continue
            if self.split != "all" and split_of(sha, val_fraction) != self.split:
                continue
            path = self._image_path(sha, url)
            if path is not None and verify:
                if sha not in checked:
                    checked[sha] = _sha256_file(path) == sha
                path = path if checked[sha] else None
            if path is None:
                if on_missing == "error":
                    raise FileNotFoundError(f"row {i}: no image for sha256 {sha} ({url}) in the "
                                            "image folder / map" + (" or sha256 mismatch"
                                                                    if verify else ""))
                self.n_missing += 1
                continue
            self._paths[i] = path
            rows.append(i)
        return rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> PixmoPoint:
        return self.item(self.rows[index])

    def __iter__(self) -> Iterator[PixmoPoint]:
        for row in self.rows:
            yield self.item(row)

    def item(self, row: int) -> PixmoPoint:
        """The row ``row`` of the concatenated table (must have passed the filters)."""
        rec = {c: self.table.column(c)[row].as_py() for c in self.table.column_names}
        path = self._paths[row]
        with Image.open(path) as im:  # reads the header only
            w, h = im.size
        raw = tuple((float(p["x"]), float(p["y"])) for p in rec["points"] or [])
        sx, sy = (w / 100.0, h / 100.0) if self.point_units == "percent" else (1.0, 1.0)
        scaled = [(x * sx, y * sy) for x, y in raw]
        pts = tuple((_clip(x, w), _clip(y, h)) for x, y in scaled)
        return PixmoPoint(
            row=row, image_path=path, image_url=str(rec["image_url"]),
            image_sha256=str(rec["image_sha256"]), image_size=(w, h),
            label=str(rec["label"]).strip(), count=int(rec["count"]), points=pts,
            points_raw=raw, collection_method=str(rec["collection_method"] or ""),
            n_clipped=sum(p != q for p, q in zip(pts, scaled, strict=True)),
        )

    def iter_samples(self, mode: str = "point") -> Iterator[Sample]:
        for item in self:
            yield to_sample(item, mode=mode)


def _check_args(units: str, split: str, val_fraction: float, on_missing: str,
                method: str | None) -> None:
    if units not in POINT_UNITS:
        raise ValueError(f"point_units must be one of {list(POINT_UNITS)}, got {units!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"val_fraction must be in [0, 1], got {val_fraction!r}")
    if on_missing not in ON_MISSING:
        raise ValueError(f"on_missing_image must be one of {list(ON_MISSING)}, got {on_missing!r}")
    if method not in (None, "pointing", "counting"):
        raise ValueError(f"collection_method must be None, 'pointing' or 'counting', "
                         f"got {method!r}")


# ---------------------------------------------------------------------------------------------
# Samples


def format_points(points: Sequence[Point], size: tuple[int, int]) -> tuple[str, list[list[float]]]:
    """Points normalised to [0, 1] with 2 decimals, sorted left to right (then top to bottom) so
    that one set of points always gives the same answer string: "[[x, y], ...]"."""
    w, h = size
    vals = sorted([round(x / w, 2), round(y / h, 2)] for x, y in points)
    return "[" + ", ".join(f"[{x:.2f}, {y:.2f}]" for x, y in vals) + "]", vals


def to_sample(item: PixmoPoint, mode: str = "point") -> Sample:
    """A pointing ("point": "Point to all {label}.") or counting ("count": "How many {label}
    are there?") sample. Geometry: all the label's points in pixels, for both modes."""
    if mode == "point":
        question = f"Point to all {item.label}."
        answer, vals = format_points(item.points, item.image_size)
        structured: dict[str, Any] = {"points": vals, "count": len(item.points)}
    elif mode == "count":
        question = f"How many {item.label} are there?"
        answer, structured = str(item.count), {"count": item.count}
    else:
        raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
    return Sample(
        image=item.load_image(), question=question, answer=answer, structured=structured,
        geometry=Geometry(points=list(item.points)), task=TASK,
        id=f"{TASK}-{item.image_sha256[:12]}-{item.row}",
        meta={
            "mode": mode, "label": item.label, "count": item.count,
            "n_points": len(item.points), "points_pixels": [list(p) for p in item.points],
            "collection_method": item.collection_method, "image_url": item.image_url,
            "image_sha256": item.image_sha256, "image_file": item.image_path.name,
            "image_size": list(item.image_size), "row": item.row, "n_clipped": item.n_clipped,
        },
    )
