"""``lookhere data``: make synthetic datasets on disk, and contact sheets of them."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def add_commands(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="synthetic datasets").add_subparsers(dest="data_command",
                                                                           required=True)
    p = data.add_parser("make", help="write a datasets-loadable folder of a synthetic task")
    p.add_argument("task", help="task name (grid_patch, line_intersection, line_tracing, "
                   "shapes, scenes)")
    p.add_argument("--n", type=int, required=True, help="number of samples")
    p.add_argument("--seed", type=int, default=0, help="seed; sample i depends on (seed, i) only")
    p.add_argument("--out", type=Path, required=True, help="new folder to write")
    p.add_argument("--workers", type=int, default=1, help="generator processes")
    _add_set(p)
    p.set_defaults(run=_make)
    p = data.add_parser("convert-refs", help="convert a RefCOCO refs(*).p pickle to JSON/parquet "
                        "with a restricted unpickler (plain data only)")
    p.add_argument("src", type=Path, help="refs(unc).p or similar")
    p.add_argument("dst", type=Path, nargs="?", help="output .json or .parquet (default: .json)")
    p.set_defaults(run=_convert_refs)
    p = data.add_parser("sheet", help="save a contact sheet (PNG) of a task's first samples")
    p.add_argument("task")
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="PNG path")
    _add_set(p)
    p.set_defaults(run=_sheet)


def _add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="task config override, e.g. --set image_size=112 (repeatable)")


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}`` (JSON values where they parse)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
        if isinstance(out[key], list):
            out[key] = tuple(out[key])
    return out


def _make(args: argparse.Namespace) -> int:
    from lookhere.data.disk import write_dataset

    try:
        out = write_dataset(args.task, args.n, args.out, seed=args.seed, workers=args.workers,
                            **parse_overrides(args.set))
    except (ValueError, FileExistsError, TypeError) as err:
        raise SystemExit(f"lookhere data make: {err}") from None
    print(f"wrote {args.n} {args.task} samples to {out}")
    return 0


def _convert_refs(args: argparse.Namespace) -> int:
    from lookhere.data.refcoco import main as refcoco_main

    return refcoco_main(["convert", str(args.src)] + ([str(args.dst)] if args.dst else []))


def _sheet(args: argparse.Namespace) -> int:
    from lookhere.data.synthetic import make_task
    from lookhere.viz import contact_sheet, save_image

    try:
        task = make_task(args.task, seed=args.seed, **parse_overrides(args.set))
    except (ValueError, TypeError) as err:
        raise SystemExit(f"lookhere data sheet: {err}") from None
    save_image(contact_sheet([task.sample(i) for i in range(args.n)]), args.out)
    print(f"wrote {args.out}")
    return 0
