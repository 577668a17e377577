"""What every ``lookhere`` command shares: argument types, exits on bad input, loading a model,
a dataset folder or a HeadSpec the same way."""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from pathlib import Path
from typing import Any


class LazyParser(argparse.ArgumentParser):
    """A command's parser whose arguments ``build(parser)`` adds only when that command is
    parsed or its help printed. The experiment and pretraining options come from config
    dataclasses whose defaults are built and checked (the Shapes generator's settings, the
    shipped checkpoint's config): built for every parser, they would slow down every other
    command. Subparsers of a LazyParser are LazyParsers (argparse's default ``parser_class``),
    without ``build`` unless given one."""

    def __init__(self, *args: Any, build: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._build = build

    def _built(self) -> None:
        if self._build is not None:
            build, self._build = self._build, None
            build(self)

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        self._built()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._built()
        return super().format_help()

    def format_usage(self) -> str:
        self._built()
        return super().format_usage()


def add_device(p: argparse.ArgumentParser, prefix: str = "", suffix: str = "") -> None:
    p.add_argument("--device", metavar="DEV",
                   help=f"{prefix}torch device, e.g. cpu, cuda, cuda:1 (default: cuda if "
                        f"available, else cpu){suffix}")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not 0 <= value < float("inf"):  # NaN fails too
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def add_overwrite(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help="replace output files that exist (default: refuse, before any work)")


def check_outputs(args: argparse.Namespace, names: tuple[str, ...], prog: str) -> None:
    """Before any work: each output file given (``args.<name>``, an option ``--<name>``) must be
    new unless ``--overwrite``, and its folder must exist or be creatable, and be writable."""
    for name in names:
        path = getattr(args, name, None)
        if path is None:
            continue
        flag = "--" + name.replace("_", "-")
        if path.is_dir():
            raise fail(f"{flag} {path} is a folder; give a file name", prog)
        if path.exists() and not getattr(args, "overwrite", False):
            raise fail(f"{flag} {path} exists; pass --overwrite to replace it", prog)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise fail(f"{flag} {path}: cannot create its folder ({err.strerror})", prog) from None
        if not os.access(path.parent, os.W_OK):
            raise fail(f"{flag} {path}: its folder is not writable", prog)


def check_out_dir(path: Path, prog: str, new: bool = True, flag: str = "--out",
                  overwrite: bool | None = None) -> None:
    """Before any work: an output folder must not be a file, must be new or empty when ``new``
    (a folder a rerun resumes passes ``new=False``), and its parent must exist or be creatable,
    and be writable. Folders are never replaced: a full one is refused, with or without
    ``--overwrite``; a command that writes files into a folder (``overwrite`` given: its
    ``--overwrite``) writes into a full one only with ``--overwrite``."""
    if path.exists() and not path.is_dir():
        raise fail(f"{flag} {path} is a file; give a folder", prog)
    full = path.is_dir() and any(path.iterdir())
    if overwrite is not None and full and not overwrite:
        raise fail(f"{flag} {path} exists and is not empty; pass --overwrite to write into it "
                   "(files of the same name are replaced)", prog)
    if new and overwrite is None and full:
        raise fail(f"{flag} {path} exists and is not an empty folder; choose a new one", prog)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise fail(f"{flag} {path}: cannot create its folder ({err.strerror})", prog) from None
    where = path if path.is_dir() else path.parent
    if not os.access(where, os.W_OK | os.X_OK):
        raise fail(f"{flag} {path}: {'it' if where == path else 'its folder'} is not writable",
                   prog)


def fail(message: str, prog: str = "lookhere eval") -> SystemExit:
    """Exit 2 with argparse's message style (bad input, like a usage error)."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    return SystemExit(2)


def check_data(folder: Path, prog: str) -> None:
    """A dataset folder from `lookhere data make`, or exit 2 saying what is wrong."""
    from lookhere.data.disk import read_info

    if not folder.is_dir():
        raise fail(f"--data {folder} is not a folder", prog)
    try:
        read_info(folder)
    except FileNotFoundError as err:
        raise fail(f"--data: {err}; make one with `lookhere data make`", prog) from None
    except ValueError as err:  # a broken lookhere.json
        raise fail(f"--data: {err}", prog) from None


def read_data(folder: Path, limit: int | None, prog: str) -> list[Any]:
    """The first ``limit`` (all if None) samples of a dataset folder."""
    from lookhere.data.disk import read_samples

    check_data(folder, prog)
    try:
        samples = list(itertools.islice(read_samples(folder), limit))
    except ValueError as err:  # a bad row, named by file and line
        raise fail(f"--data: {err}", prog) from None
    if not samples:
        raise fail(f"--data {folder} holds no samples", prog)
    return samples


def read_image(path: Path, prog: str, flag: str = "--image") -> Any:
    """The RGB image at ``path`` as a viewer shows it (a phone photo's orientation tag
    applied), or exit 2 naming ``flag`` and what is wrong (missing, not an image, too large)."""
    from PIL import UnidentifiedImageError

    from lookhere.data.image import open_rgb

    try:
        return open_rgb(path, exif=True)
    except (OSError, UnidentifiedImageError, ValueError) as err:
        message = str(err) if str(err).startswith(str(path)) else f"{path}: {err}"
        raise fail(f"{flag} {message}", prog) from None


def resolve_device(device: str | None) -> str:
    """``device``, or cuda when available, else cpu."""
    if device is not None:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model_for_cli(path: str, device: str | None, prog: str) -> tuple[Any, Any, Any]:
    """``(model, processor, adapter)`` on ``device`` (default cuda if available, else cpu), in
    eval mode; exit 2 when the model cannot be loaded."""
    import torch

    from lookhere.models.loading import load_model

    try:
        dev = torch.device(resolve_device(device))
    except RuntimeError as err:
        raise fail(f"--device {device}: {err}", prog) from None
    if dev.type == "cuda" and not torch.cuda.is_available():  # before loading any weights
        raise fail(f"--device {device}: CUDA is not available here (use --device cpu)", prog)
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise fail(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s)", prog)
    try:
        model, processor, adapter = load_model(path)
    except (OSError, ValueError) as err:  # no such folder, or an unsupported family
        if isinstance(err, OSError) and not Path(path).expanduser().exists():
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise fail(f"--model {path}: no such local folder, and as a hub id it failed: "
                       f"{first}", prog) from None
        raise fail(f"--model {path}: {err}", prog) from None
    return model.to(dev).eval(), processor, adapter


def load_spec(path: Path, adapter: Any, prog: str) -> Any:
    """The HeadSpec at ``path``, checked against the model; exit 2 when it does not fit."""
    import numpy as np

    from lookhere.heads.selection import HeadSpec

    if not path.is_file():
        raise fail(f"--heads {path}: no such file (make one with `lookhere heads find`)", prog)
    try:
        spec = HeadSpec.load(path)
    except (ValueError, TypeError, KeyError) as err:  # JSON errors are ValueErrors
        message = str(err) if str(path) in str(err) else f"{path}: {err}"
        raise fail(f"--heads {message}", prog) from None
    size = (adapter.num_layers, adapter.num_heads)
    found_on = np.shape(spec.counts)
    if len(found_on) == 2 and found_on != size:
        raise fail(f"--heads {path}: found on a model of {found_on[0]} layers x {found_on[1]} "
                   f"heads ({spec.model!r}); --model has {size[0]} x {size[1]}", prog)
    bad = [h for h in spec.heads if not (0 <= h[0] < size[0] and 0 <= h[1] < size[1])]
    if not spec.heads or bad:
        raise fail(f"--heads {path}: heads {bad or '[]'} do not fit --model ({size[0]} layers "
                   f"x {size[1]} heads)", prog)
    return spec


def load_refiner(path: str | None, device: str | None, prog: str) -> Any:
    """A `SamRefiner` from ``path`` (None: no refiner)."""
    if path is None:
        return None
    from lookhere.heads.refine import SamRefiner

    try:
        return SamRefiner.from_pretrained(path, device=resolve_device(device))
    except (OSError, ValueError) as err:
        raise fail(f"--sam {path}: {err}", prog) from None


def parse_grid(text: str) -> str | int:
    """``--grid``: a grid's index when digits, else its name (or "primary")."""
    return int(text) if text.isdigit() else text
