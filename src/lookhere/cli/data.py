"""``lookhere data``: make synthetic datasets on disk, import a user's JSONL as one, and contact
sheets of them."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from lookhere.cli.common import add_overwrite, check_out_dir, check_outputs, fail, positive_int

#: the commands this module adds, with their one-line help (`lookhere --help`)
COMMANDS = {
    "data": "datasets on disk: synthetic tasks, your own data (import), contact sheets",
}


def add_commands(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help=COMMANDS["data"]).add_subparsers(dest="data_command",
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
    p = data.add_parser("import", help="a plain JSONL of your samples (image, question, answer, "
                        "boxes / points / mask) as a dataset folder; format in "
                        "lookhere.data.jsonl and docs/datasets.md")
    p.add_argument("src", type=Path, help="the JSONL file, one sample per line")
    p.add_argument("--out", type=Path, required=True, help="new folder to write")
    p.add_argument("--images", type=Path, default=None,
                   help="folder the rows' image and mask paths are relative to (default: the "
                   "JSONL's folder)")
    p.set_defaults(run=_import)
    p = data.add_parser("convert-refs", help="convert a RefCOCO refs(*).p pickle to JSON/parquet "
                        "with a restricted unpickler (plain data only)")
    p.add_argument("src", type=Path, help="refs(unc).p or similar")
    p.add_argument("dst", type=Path, nargs="?", help="output .json or .parquet (default: .json)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.set_defaults(run=_convert_refs)
    p = data.add_parser("sheet", help="save a contact sheet (PNG) of a task's first samples")
    p.add_argument("task")
    p.add_argument("--out", type=Path, default=None,
                   help="PNG path (required unless --docs: docs/sheet_<task>.png)")
    p.add_argument("--docs", action="store_true",
                   help="the docs' sheet of the task (settings in lookhere.viz.DOC_SHEETS; "
                   "run from the repository root; it replaces that figure); the options "
                   "below change it")
    p.add_argument("--n", type=int, default=None, help="samples (default 16)")
    p.add_argument("--seed", type=int, default=None, help="seed (default 0)")
    p.add_argument("--cols", type=positive_int, default=None,
                   help="samples per row (default 4)")
    p.add_argument("--cell", type=positive_int, default=None,
                   help="cell side in px (default 256)")
    p.add_argument("--mix", type=json.loads, action="append", default=None, metavar="JSON",
                   help="config overrides that share the sheet in order, e.g. --mix "
                   "'{\"mode\": \"rec\"}' --mix '{\"mode\": \"vqa\"}' (repeatable)")
    add_overwrite(p)
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

    check_out_dir(args.out, "lookhere data make")
    try:
        out = write_dataset(args.task, args.n, args.out, seed=args.seed, workers=args.workers,
                            **parse_overrides(args.set))
    except (ValueError, FileExistsError, TypeError) as err:
        raise SystemExit(f"lookhere data make: {err}") from None
    print(f"wrote {args.n} {args.task} samples to {out}")
    return 0


def _import(args: argparse.Namespace) -> int:
    from lookhere.data.jsonl import import_jsonl

    prog = "lookhere data import"
    check_out_dir(args.out, prog)
    if not args.src.is_file():
        raise fail(f"{args.src}: no such file", prog)
    try:
        n = import_jsonl(args.src, args.out, args.images)
    except (OSError, ValueError) as err:
        raise fail(str(err), prog) from None
    print(f"wrote {n} samples to {args.out}")
    return 0


def _convert_refs(args: argparse.Namespace) -> int:
    from lookhere.data import safe_pickle
    from lookhere.data.refcoco import convert_refs_pickle

    try:
        out = convert_refs_pickle(args.src, args.dst, overwrite=args.overwrite)
    except (OSError, ValueError, safe_pickle.UnsafePickleError) as err:
        raise fail(str(err), "lookhere data convert-refs") from None
    print(out)
    return 0


def _sheet(args: argparse.Namespace) -> int:
    from lookhere.viz import DOC_SHEETS, save_image, task_sheet

    if args.docs and args.task not in DOC_SHEETS:
        raise SystemExit(f"lookhere data sheet: no docs sheet for {args.task!r}; "
                         f"docs sheets: {', '.join(DOC_SHEETS)}")
    if args.out is None and not args.docs:
        raise SystemExit("lookhere data sheet: --out is required (or --docs)")
    kw = dict(DOC_SHEETS[args.task]) if args.docs else {}
    kw.update({k: v for k in ("n", "seed", "cols", "cell", "mix")
               if (v := getattr(args, k)) is not None})
    kw["overrides"] = {**kw.get("overrides", {}), **parse_overrides(args.set)}
    out = args.out or Path("docs") / f"sheet_{args.task}.png"
    if args.out is not None:  # --docs alone regenerates the shipped figure
        check_outputs(args, ("out",), "lookhere data sheet")
    try:
        sheet = task_sheet(args.task, **kw)
    except (ValueError, TypeError) as err:
        raise SystemExit(f"lookhere data sheet: {err}") from None
    save_image(sheet, out)
    print(f"wrote {out}")
    return 0
