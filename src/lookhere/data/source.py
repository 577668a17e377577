"""Where a training run's samples come from: `DataArguments` (torch-free, so ``lookhere train
--help`` shows it at once) and `open_split`, the train or eval split as a `SampleSource`.

Three formats:

- ``folder``: a lookhere dataset folder (`lookhere.data.disk`: ``lookhere data make``, or a user's
  own data through ``lookhere data import``); ``train`` and ``eval`` are two folders.
- ``refcoco``: RefCOCO / RefCOCO+ / RefCOCOg from the refer data folder ``train`` (``eval``
  empty: the same folder), splits by name (``train_split``, ``eval_split``).
- ``pixmo-points``: PixMo-Points parquet ``train`` with downloaded ``images``; the dataset has one
  split, divided into train and val by a hash of the image (`lookhere.data.pixmo_points`).

A `SampleSource` is a map-style dataset: each sample's image is read when it is asked for, so a
large split never sits in memory (the Trainer's DataLoader takes it as it is).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lookhere.data.sample import Sample

DATA_FORMATS = ("folder", "refcoco", "pixmo-points")
SPLIT_NAMES = ("train", "eval")


@dataclass(frozen=True)
class DataArguments:
    """The training and evaluation data of ``lookhere train``."""

    format: str = field(default="folder", metadata={
        "help": f"one of {', '.join(DATA_FORMATS)}"})
    train: str = field(default="", metadata={
        "help": "folder: a lookhere dataset folder; refcoco: the refer data folder (holding "
                "refcoco/, refcoco+/, refcocog/ and images/mscoco/train2014); pixmo-points: a "
                "parquet file or a folder of them"})
    eval: str = field(default="", metadata={
        "help": "folder: the evaluation dataset folder ('' = no evaluation); refcoco and "
                "pixmo-points: '' = the same source as train, its eval_split"})
    images: str = field(default="", metadata={
        "help": "refcoco: the COCO image folder ('' = the refer layout's); pixmo-points: the "
                "folder of downloaded images, named by sha256 (required)"})
    dataset: str = field(default="refcoco", metadata={
        "help": "refcoco: refcoco, refcoco+ or refcocog"})
    split_by: str = field(default="", metadata={
        "help": "refcoco: the split's author ('' = unc, umd for refcocog)"})
    train_split: str = field(default="train", metadata={
        "help": "refcoco: the training split; pixmo-points: train (by image hash) or all"})
    eval_split: str = field(default="val", metadata={
        "help": "refcoco: the evaluation split (val, testA, ...); pixmo-points: val"})
    mode: str = field(default="", metadata={
        "help": "the question kind: refcoco rec or rec_pixels ('' = rec); pixmo-points point or "
                "count ('' = point); unused for folders"})
    limit: int | None = field(default=None, metadata={
        "help": "use only the first N training samples (None: all)"})
    eval_limit: int | None = field(default=500, metadata={
        "help": "evaluate on the first N samples of the eval split (None: all)"})

    def __post_init__(self) -> None:
        if self.format not in DATA_FORMATS:
            raise ValueError(f"data.format must be one of {DATA_FORMATS}, got {self.format!r}")
        for name in ("limit", "eval_limit"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):
                raise ValueError(f"data.{name} must be a positive int or None, got {value!r}")
        if self.format == "pixmo-points" and self.train and not self.images:
            raise ValueError("data.images: pixmo-points needs the folder of downloaded images")

    @property
    def has_eval(self) -> bool:
        """Whether the run has an evaluation split."""
        return bool(self.eval) or self.format != "folder"

    def source(self, split: str) -> str:
        """The path the ``split`` ("train" or "eval") reads."""
        if split not in SPLIT_NAMES:
            raise ValueError(f"split must be one of {SPLIT_NAMES}, got {split!r}")
        return self.train if split == "train" or not self.eval else self.eval


class SampleSource:
    """A map-style dataset of `Sample`s: ``len`` and ``source[i]``, each sample built (its image
    read) on access by ``load(item)`` from a light item (a metadata row, a ref, a parquet row)."""

    def __init__(self, items: Sequence[Any], load: Callable[[Any], Sample], name: str) -> None:
        self.items, self.load, self.name = items, load, name

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Sample:
        return self.load(self.items[i])

    def __repr__(self) -> str:
        return f"SampleSource({self.name}, {len(self)} samples)"


def open_split(args: DataArguments, split: str) -> SampleSource:
    """The ``split`` ("train" or "eval") of ``args`` as a `SampleSource`, truncated to its limit.
    A missing or malformed source is an OSError / ValueError naming the ``data.`` argument."""
    path = args.source(split)
    if not path:
        raise ValueError(f"data.{split}: give the {split} data ({args.format})")
    opener = {"folder": _folder, "refcoco": _refcoco, "pixmo-points": _pixmo}[args.format]
    try:
        source = opener(args, split, Path(path))
    except (OSError, ValueError) as err:
        raise type(err)(f"data.{'eval' if split == 'eval' and args.eval else 'train'} "
                        f"{path}: {err}") from None
    limit = args.limit if split == "train" else args.eval_limit
    if limit is not None and limit < len(source):
        source.items = source.items[:limit]
    if not len(source):
        raise ValueError(f"data.{split} {path}: no samples")
    return source


def _folder(args: DataArguments, split: str, path: Path) -> SampleSource:
    from lookhere.data.disk import read_rows, row_sample

    return SampleSource(read_rows(path), lambda row: row_sample(path, row), str(path))


def _refcoco(args: DataArguments, split: str, path: Path) -> SampleSource:
    from lookhere.data.refcoco import RefCoco, to_sample

    split_by = args.split_by or ("umd" if args.dataset == "refcocog" else "unc")
    name = args.train_split if split == "train" else args.eval_split
    refs = RefCoco(path, args.dataset, split_by, name, image_dir=args.images or None)
    mode = args.mode or "rec"
    return SampleSource(list(refs.iter_expressions()), lambda e: to_sample(e, mode=mode),
                        f"{args.dataset} ({split_by}) {name}")


def _pixmo(args: DataArguments, split: str, path: Path) -> SampleSource:
    from lookhere.data.pixmo_points import PixmoPoints, to_sample

    name = args.train_split if split == "train" else args.eval_split
    points = PixmoPoints(path, args.images, split=name)
    mode = args.mode or "point"
    return SampleSource(list(range(len(points))), lambda i: to_sample(points[i], mode=mode),
                        f"pixmo-points {name}")
