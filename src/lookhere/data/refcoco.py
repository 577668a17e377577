"""RefCOCO, RefCOCO+ and RefCOCOg from the refer toolkit's layout, as referring-expression samples.

Layout (github.com/lichengunc/refer)::

    <root>/<dataset>/instances.json            COCO images, annotations, categories
    <root>/<dataset>/refs(<split_by>).p        the refs: a Python (2) pickle
    <root>/images/mscoco/images/train2014/     the COCO train2014 images

Loaders read the refs only in a converted form, ``refs(<split_by>).json`` or ``.parquet``, made
once with ``convert_refs_pickle`` (or ``lookhere data convert-refs SRC [DST]``),
which reads the pickle with ``lookhere.data.safe_pickle`` (plain data only, nothing executes).
Reading the pickle directly needs ``allow_pickle=True`` and goes through the same restricted reader.

Geometry is in original-image pixels: boxes xyxy with x1/y1 exclusive (COCO's xywh is converted),
masks decoded on demand from polygons (with pycocotools) or RLE.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lookhere.data import safe_pickle
from lookhere.data.formats import render_box
from lookhere.data.image import open_rgb
from lookhere.data.sample import Box, Geometry, Sample, rle_to_mask
from lookhere.io import atomic_path

# Which split_by files exist per dataset, and the splits each holds.
SPLITS: dict[str, dict[str, tuple[str, ...]]] = {
    "refcoco": {"unc": ("train", "val", "testA", "testB"), "google": ("train", "val", "test")},
    "refcoco+": {"unc": ("train", "val", "testA", "testB")},
    "refcocog": {"umd": ("train", "val", "test"), "google": ("train", "val")},
}
MODES = ("rec", "rec_pixels")
REF_KEYS = ("ref_id", "ann_id", "image_id", "split", "sentences")
SENT_KEYS = ("sent", "sent_id")
INSTANCES_KEYS = {
    "images": ("id", "file_name", "width", "height"),
    "annotations": ("id", "image_id", "bbox", "segmentation"),
    "categories": ("id", "name"),
}
DEFAULT_IMAGE_DIR = Path("images", "mscoco", "images", "train2014")  # refer's, under root
PICKLE_SUFFIXES = (".p", ".pkl", ".pickle")
CONVERTED_SUFFIXES = (".json", ".parquet")
JSON_FORMAT = "refer-refs"


class RefCocoFormatError(ValueError):
    """A file does not have the expected structure (the message names the file and field)."""


class PickleNotAllowedError(ValueError):
    """A refs pickle was given without ``allow_pickle=True``."""


# ---------------------------------------------------------------------------------------------
# Records


@dataclass(frozen=True, eq=False)
class Expression:
    """One referring expression of a ref (a ``sentences`` entry)."""

    sent_id: int
    text: str  # refer's ``sent``: the cleaned, lower-cased expression
    raw: str
    tokens: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class Ref:
    """One referred object with all its expressions. Pixel geometry, boxes xyxy."""

    dataset: str
    split_by: str
    split: str
    ref_id: int
    ann_id: int
    image_id: int
    category_id: int
    category: str
    image_path: Path
    image_size: tuple[int, int]  # (width, height) from instances.json
    bbox_xywh: tuple[float, float, float, float]
    box: Box
    segmentation: Any  # COCO polygons (list of flat lists) or an RLE dict, as stored
    expressions: tuple[Expression, ...]

    def mask(self) -> np.ndarray:
        """The object's (H, W) bool mask, decoded now (not cached: masks are large)."""
        w, h = self.image_size
        return segmentation_to_mask(self.segmentation, h, w)

    def load_image(self) -> Image.Image:
        return load_image(self.image_path, self.image_size)


@dataclass(frozen=True, eq=False)
class RefExpression:
    """One expression together with its ref: the unit a REC sample is made of."""

    ref: Ref
    sent_id: int
    text: str
    raw: str
    tokens: tuple[str, ...]

    @property
    def box(self) -> Box:
        return self.ref.box

    @property
    def image_path(self) -> Path:
        return self.ref.image_path

    @property
    def image_size(self) -> tuple[int, int]:
        return self.ref.image_size

    @property
    def split(self) -> str:
        return self.ref.split

    def mask(self) -> np.ndarray:
        return self.ref.mask()


# ---------------------------------------------------------------------------------------------
# Geometry helpers


def xywh_to_xyxy(bbox: Sequence[float], width: int, height: int) -> Box:
    """COCO [x, y, w, h] → [x0, y0, x1, y1] (x1, y1 exclusive), clipped to the image."""
    x, y, w, h = (float(v) for v in bbox)
    return (min(max(x, 0.0), width), min(max(y, 0.0), height),
            min(max(x + w, 0.0), width), min(max(y + h, 0.0), height))


def _mask_utils() -> Any:
    try:
        from pycocotools import mask as mask_utils
    except ImportError as e:  # only a dev extra today; masks are optional for REC
        raise ImportError("decoding COCO polygons needs pycocotools "
                          "(pip install pycocotools)") from e
    return mask_utils


def rle_string_to_counts(s: str | bytes) -> list[int]:
    """COCO's compressed RLE string → run lengths (pycocotools' ``rleFrString``).

    Each count is a little-endian run of 5-bit groups in chars offset by 48, bit 0x20 meaning
    "more groups follow" and 0x10 of the last group the sign; from the third count on, counts
    are stored as the difference to the count two before. Decoded here so that compressed RLE
    needs no pycocotools, whose ``decode`` also warns under NumPy 2.
    """
    data = s.encode() if isinstance(s, str) else s
    counts: list[int] = []
    p = 0
    while p < len(data):
        x, k, more = 0, 0, True
        while more:
            c = data[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p, k = p + 1, k + 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def segmentation_to_mask(seg: Any, height: int, width: int) -> np.ndarray:
    """A COCO segmentation (polygons, uncompressed or compressed RLE) as an (H, W) bool array."""
    if isinstance(seg, list):
        polys = [[float(v) for v in p] for p in seg if len(p) >= 6]  # < 3 vertices: no area
        if not polys:
            return np.zeros((height, width), dtype=bool)
        mu = _mask_utils()
        seg = mu.merge(mu.frPyObjects(polys, height, width))  # → compressed RLE
    if isinstance(seg, dict) and "counts" in seg and "size" in seg:
        if [int(v) for v in seg["size"]] != [height, width]:
            raise RefCocoFormatError(
                f"RLE size {seg['size']} does not match the image size [{height}, {width}]")
        counts = seg["counts"]
        if not isinstance(counts, list):
            counts = rle_string_to_counts(counts)
        return rle_to_mask({"size": [height, width], "counts": counts})
    raise RefCocoFormatError(
        f"unknown segmentation {type(seg).__name__}: expected polygons or an RLE dict")


def load_image(path: Path, size: tuple[int, int] | None = None) -> Image.Image:
    """The RGB image; checks its size against instances.json (a wrong image folder shows here)."""
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    img = open_rgb(path)  # COCO's boxes are on the stored pixels: no EXIF rotation
    if size is not None and img.size != tuple(size):
        raise RefCocoFormatError(
            f"{path} is {img.size[0]}x{img.size[1]} but instances.json says {size[0]}x{size[1]}")
    return img


# ---------------------------------------------------------------------------------------------
# Reading and converting the refs


def _require(rec: Any, keys: Sequence[str], source: Path, what: str) -> None:
    if not isinstance(rec, dict):
        raise RefCocoFormatError(f"{source}: {what} is a {type(rec).__name__}, expected a dict")
    missing = [k for k in keys if k not in rec]
    if missing:
        raise RefCocoFormatError(f"{source}: {what} lacks required field(s) {missing}")


def validate_refs(refs: Any, source: Path) -> list[dict[str, Any]]:
    """Check the refs structure; errors name the file, the ref index and the missing field."""
    if not isinstance(refs, list):
        raise RefCocoFormatError(f"{source}: expected a list of refs, got {type(refs).__name__}")
    for i, ref in enumerate(refs):
        _require(ref, REF_KEYS, source, f"ref #{i}")
        if not isinstance(ref["sentences"], list):
            raise RefCocoFormatError(f"{source}: ref #{i} field 'sentences' is not a list")
        for j, sent in enumerate(ref["sentences"]):
            _require(sent, SENT_KEYS, source, f"ref #{i} sentence #{j}")
    return refs


def _read_json_refs(path: Path) -> Any:
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, dict):  # our envelope; a bare list (refer-style dump) is fine too
        if "refs" not in data:
            raise RefCocoFormatError(f"{path}: JSON object lacks required field 'refs'")
        return data["refs"]
    return data


def _read_parquet_refs(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    missing = [k for k in REF_KEYS if k not in table.column_names]
    if missing:
        raise RefCocoFormatError(f"{path}: parquet lacks required column(s) {missing}; "
                                 f"has {table.column_names}")
    return table.to_pylist()


def load_refs(path: str | Path, allow_pickle: bool = False) -> list[dict[str, Any]]:
    """The refs from a converted ``.json`` / ``.parquet`` file, or from the pickle if allowed.

    ``allow_pickle=True`` reads a ``.p`` file with the restricted unpickler
    (``lookhere.data.safe_pickle``): only plain data loads, never code. Converting once with
    ``convert_refs_pickle`` is still better: it is faster and the file can be inspected.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"refs file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise PickleNotAllowedError(
                f"{path} is a Python pickle. Convert it once to JSON with "
                f"`lookhere data convert-refs '{path}'` (or "
                "lookhere.data.refcoco.convert_refs_pickle(src, dst)) and load the .json; or pass "
                "allow_pickle=True to read it with the restricted (plain-data-only) unpickler")
        refs = safe_pickle.to_text(safe_pickle.load(path))
    elif suffix == ".json":
        refs = _read_json_refs(path)
    elif suffix == ".parquet":
        refs = _read_parquet_refs(path)
    else:
        raise RefCocoFormatError(f"{path}: unknown refs format {suffix!r}; expected "
                                 f"{list(CONVERTED_SUFFIXES)} (or a pickle with allow_pickle)")
    return validate_refs(refs, path)


def write_refs(refs: list[dict[str, Any]], dst: str | Path, source: Path | None = None) -> Path:
    """Write refs as ``.json`` (with a small envelope) or ``.parquet``, atomically."""
    dst = Path(dst)
    suffix = dst.suffix.lower()
    if suffix not in CONVERTED_SUFFIXES:
        raise ValueError(f"dst must end in one of {list(CONVERTED_SUFFIXES)}, got {dst.name!r}")
    with atomic_path(dst) as tmp:
        if suffix == ".json":
            doc: dict[str, Any] = {"format": JSON_FORMAT, "version": 1}
            if source is not None:
                doc["source"] = source.name
                doc["source_sha256"] = hashlib.sha256(source.read_bytes()).hexdigest()
            doc["refs"] = refs
            tmp.write_text(json.dumps(doc, ensure_ascii=False, separators=(",", ":")) + "\n",
                           encoding="utf-8")
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist(refs), tmp)
    return dst


def convert_refs_pickle(src: str | Path, dst: str | Path | None = None,
                        overwrite: bool = False) -> Path:
    """Convert a refer ``refs(<split_by>).p`` pickle to ``.json`` (default) or ``.parquet``.

    The pickle is read with the restricted unpickler: a pickle that imports or calls anything
    (``os.system``, ``builtins.set``, a class) is refused before anything runs. Python 2 strings
    are decoded as UTF-8 (Latin-1 if that fails). Returns the written path.
    """
    src = Path(src)
    dst = Path(dst) if dst is not None else src.with_suffix(".json")
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst} exists; pass overwrite=True (--overwrite) to replace it")
    refs = validate_refs(safe_pickle.to_text(safe_pickle.load(src)), src)
    return write_refs(refs, dst, source=src)


def find_refs_file(folder: Path, split_by: str) -> Path:
    """``refs(<split_by>)`` in ``folder``: converted forms first, then the pickle."""
    for suffix in CONVERTED_SUFFIXES + PICKLE_SUFFIXES:
        path = folder / f"refs({split_by}){suffix}"
        if path.is_file():
            return path
    raise FileNotFoundError(f"no refs({split_by}).json/.parquet/.p in {folder}")


def load_instances(path: str | Path) -> dict[str, list[dict[str, Any]]]:
    """COCO ``instances.json``; errors name the file, the section and the missing field."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"COCO instances file not found: {path}")
    data = json.loads(path.read_text(encoding="utf-8"))
    _require(data, tuple(INSTANCES_KEYS), path, "the top level")
    for section, keys in INSTANCES_KEYS.items():
        for i, rec in enumerate(data[section]):
            _require(rec, keys, path, f"{section}[{i}]")
    return data


# ---------------------------------------------------------------------------------------------
# The dataset


def check_choice(dataset: str, split_by: str, split: str | None) -> None:
    if dataset not in SPLITS:
        raise ValueError(f"dataset must be one of {list(SPLITS)}, got {dataset!r}")
    if split_by not in SPLITS[dataset]:
        raise ValueError(f"split_by for {dataset} must be one of {list(SPLITS[dataset])}, "
                         f"got {split_by!r}")
    if split is not None and split not in SPLITS[dataset][split_by]:
        raise ValueError(f"split for {dataset} ({split_by}) must be one of "
                         f"{list(SPLITS[dataset][split_by])} or None (all), got {split!r}")


class RefCoco:
    """Refs of one dataset / split_by / split, joined with their COCO image and annotation.

    ``root`` is the refer data folder; ``image_dir``, ``refs_path`` and ``instances_path``
    override the standard layout (then ``root`` may be None). ``split=None`` keeps all splits.
    """

    def __init__(self, root: str | Path | None = None, dataset: str = "refcoco",
                 split_by: str = "unc", split: str | None = None, *,
                 image_dir: str | Path | None = None, refs_path: str | Path | None = None,
                 instances_path: str | Path | None = None, allow_pickle: bool = False,
                 check_images: bool = False) -> None:
        check_choice(dataset, split_by, split)
        self.dataset, self.split_by, self.split = dataset, split_by, split
        folder = Path(root) / dataset if root is not None else None
        if folder is None and None in (image_dir, refs_path, instances_path):
            raise ValueError("give root, or all of image_dir, refs_path and instances_path")
        self.refs_path = Path(refs_path) if refs_path else find_refs_file(folder, split_by)
        self.instances_path = Path(instances_path or folder / "instances.json")
        self.image_dir = Path(image_dir or Path(root) / DEFAULT_IMAGE_DIR)
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.image_dir}")
        refs = load_refs(self.refs_path, allow_pickle=allow_pickle)
        self.refs = self._join(refs, load_instances(self.instances_path))
        if not self.refs:
            present = sorted({str(r["split"]) for r in refs})
            raise ValueError(f"{self.refs_path}: no refs in split {split!r}; it has {present}")
        if check_images:
            missing = [r.image_path for r in self.refs if not r.image_path.is_file()]
            if missing:
                raise FileNotFoundError(f"{len(missing)} image(s) missing, e.g. {missing[0]}")

    def _join(self, refs: list[dict[str, Any]], inst: dict[str, Any]) -> list[Ref]:
        images = {int(im["id"]): im for im in inst["images"]}
        anns = {int(a["id"]): a for a in inst["annotations"]}
        cats = {int(c["id"]): str(c["name"]) for c in inst["categories"]}
        out = []
        for ref in refs:
            if self.split is None or ref["split"] == self.split:
                out.append(self._make_ref(ref, images, anns, cats))
        return out

    def _make_ref(self, ref: dict[str, Any], images: dict[int, Any], anns: dict[int, Any],
                  cats: dict[int, str]) -> Ref:
        ann, img = anns.get(int(ref["ann_id"])), images.get(int(ref["image_id"]))
        if ann is None or img is None:
            kind, key = ("annotation", "ann_id") if ann is None else ("image", "image_id")
            raise RefCocoFormatError(f"ref {ref['ref_id']} in {self.refs_path}: {kind} "
                                     f"{ref[key]} not in {self.instances_path}")
        if int(ann["image_id"]) != int(img["id"]):
            raise RefCocoFormatError(f"ref {ref['ref_id']}: annotation {ann['id']} belongs to "
                                     f"image {ann['image_id']}, not {img['id']}")
        w, h = int(img["width"]), int(img["height"])
        cat_id = int(ref.get("category_id", ann.get("category_id", -1)))
        sents = tuple(Expression(int(s["sent_id"]), str(s["sent"]), str(s.get("raw") or s["sent"]),
                                 tuple(s.get("tokens") or str(s["sent"]).split()))
                      for s in ref["sentences"])
        return Ref(
            dataset=self.dataset, split_by=self.split_by, split=str(ref["split"]),
            ref_id=int(ref["ref_id"]), ann_id=int(ref["ann_id"]), image_id=int(img["id"]),
            category_id=cat_id, category=cats.get(cat_id, ""),
            image_path=self.image_dir / str(img["file_name"]), image_size=(w, h),
            bbox_xywh=tuple(float(v) for v in ann["bbox"]),
            box=xywh_to_xyxy(ann["bbox"], w, h), segmentation=ann["segmentation"],
            expressions=sents,
        )

    def __len__(self) -> int:
        return len(self.refs)

    @property
    def num_expressions(self) -> int:
        return sum(len(r.expressions) for r in self.refs)

    def iter_refs(self) -> Iterator[Ref]:
        """One item per referred object, with all its expressions."""
        return iter(self.refs)

    def iter_expressions(self) -> Iterator[RefExpression]:
        """One item per referring expression (the usual REC evaluation unit)."""
        for ref in self.refs:
            for e in ref.expressions:
                yield RefExpression(ref, e.sent_id, e.text, e.raw, e.tokens)

    def iter_samples(self, mode: str = "rec", with_mask: bool = True) -> Iterator[Sample]:
        for expr in self.iter_expressions():
            yield to_sample(expr, mode=mode, with_mask=with_mask)


# ---------------------------------------------------------------------------------------------
# Samples


def format_box(box: Box, size: tuple[int, int], mode: str = "rec") -> tuple[str, list[float]]:
    """The answer string (`lookhere.data.formats.render_box`) and its numbers: clipped to the
    image and normalised to [0, 1] with 2 decimals ("rec") or whole original-image pixels
    ("rec_pixels")."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
    text = (render_box(box, size, "plain", clip=True) if mode == "rec"
            else render_box(box, size, "pixels"))
    return text, [float(v) for v in json.loads(text)]


def to_sample(expr: RefExpression, mode: str = "rec", with_mask: bool = True) -> Sample:
    """A REC sample: the question is the expression, the answer the object's box.

    ``mode="rec"``: "[x0, y0, x1, y1]" divided by the image width/height, 2 decimals (the
    LLaVA-1.5 style, but on the unpadded image); ``"rec_pixels"``: whole original-image pixels.
    Geometry: the box and (``with_mask``) the decoded mask. The image is loaded here.
    """
    if not isinstance(expr, RefExpression):
        raise TypeError("to_sample takes a RefExpression (from iter_expressions), "
                        f"got {type(expr).__name__}")
    ref = expr.ref
    answer, vals = format_box(ref.box, ref.image_size, mode)
    return Sample(
        image=ref.load_image(), question=expr.text, answer=answer,
        structured={"box": vals, "box_pixels": [float(v) for v in ref.box]},
        geometry=Geometry(boxes=[ref.box], mask=ref.mask() if with_mask else None),
        task=ref.dataset, id=f"{ref.dataset}-{ref.split_by}-{ref.ref_id}-{expr.sent_id}",
        meta={
            "mode": mode, "dataset": ref.dataset, "split_by": ref.split_by, "split": ref.split,
            "ref_id": ref.ref_id, "ann_id": ref.ann_id, "image_id": ref.image_id,
            "sent_id": expr.sent_id, "raw": expr.raw, "category_id": ref.category_id,
            "category": ref.category, "image_file": ref.image_path.name,
            "image_size": list(ref.image_size), "bbox_xywh": list(ref.bbox_xywh),
        },
    )
