"""``lookhere eval``: score answers on a dataset folder, from a predictions file or a model;
``lookhere eval rec``: referring-expression comprehension with localization heads and baselines.

``lookhere eval --data DIR (--predictions FILE | --model PATH)`` is the plain form; ``rec`` is an
optional subcommand, so the plain form needs no subcommand name.
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lookhere.cli.common import (
    add_device,
    add_overwrite,
    check_data,
    check_outputs,
    fail,
    load_model_for_cli,
    load_refiner,
    load_spec,
    parse_grid,
    positive_int,
    read_data,
)
from lookhere.data.formats import STYLES
from lookhere.report.tables import format_table, rec_table

# Model-branch options: None means "not given", so giving one with --predictions is an error.
_MODEL_ONLY = ("limit", "batch_size", "max_new_tokens", "predictions_out", "device")
_DEFAULTS = {"batch_size": 16, "max_new_tokens": 32}  # eval.runner.MAX_NEW_TOKENS


#: the commands this module adds, with their one-line help (`lookhere --help`)
COMMANDS = {
    "eval": ("score answers on a dataset folder (from `lookhere data make`); "
             "`lookhere eval rec`: REC with localization heads"),
}


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help=COMMANDS["eval"], description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    # --data and the source are required, checked in _eval: `eval rec` has its own options.
    p.add_argument("--data", type=Path, metavar="DIR", help="dataset folder (required)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--predictions", type=Path, metavar="FILE",
                     help="an outside model's answers: JSONL {id, answer} or one JSON id->answer")
    src.add_argument("--model", metavar="PATH",
                     help="model folder (or hub name) to generate answers with")
    p.add_argument("--style", default="plain", choices=STYLES, help="box/point answer style")
    p.add_argument("--out", type=Path, metavar="FILE", help="write the metrics here as JSON")
    add_overwrite(p)
    p.add_argument("--missing", choices=("error", "wrong"),  # scoring.MISSING, not imported: torch
                   help="with --predictions: a sample without an answer is an error (default) "
                        "or counted wrong")
    p.add_argument("--limit", type=positive_int, metavar="N",
                   help="with --model: first N samples only")
    p.add_argument("--batch-size", type=positive_int, metavar="N",
                   help=f"with --model: generation batch size (default {_DEFAULTS['batch_size']})")
    p.add_argument("--max-new-tokens", type=positive_int, metavar="N",
                   help=f"with --model: answer length cap (default {_DEFAULTS['max_new_tokens']})")
    p.add_argument("--predictions-out", type=Path, metavar="FILE",
                   help="with --model: write the generated answers here as JSONL")
    add_device(p, "with --model: ")
    p.set_defaults(run=_eval)
    modes = p.add_subparsers(dest="eval_command", required=False, metavar="{rec}")
    _add_rec(modes)


def _add_rec(modes: argparse._SubParsersAction) -> None:
    p = modes.add_parser("rec", help="REC: localization heads vs baselines (Acc@0.5, IoU, "
                         "cIoU/mIoU)", description=_REC_DESCRIPTION)
    p.add_argument("--model", required=True, metavar="PATH", help="model folder (or hub name)")
    p.add_argument("--heads", required=True, type=Path, metavar="FILE",
                   help="HeadSpec JSON from `lookhere heads find`")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", type=Path, metavar="DIR",
                     help="REC dataset folder (`lookhere data make shapes`, mode rec)")
    src.add_argument("--refcoco", type=Path, metavar="ROOT",
                     help="refer data folder: ROOT/<dataset>/refs(<split-by>).json|.parquet, "
                          "ROOT/<dataset>/instances.json, ROOT/images/mscoco/images/train2014")
    p.add_argument("--dataset", default="refcoco", choices=("refcoco", "refcoco+", "refcocog"),
                   help="with --refcoco (default refcoco)")
    p.add_argument("--split-by", default=None, metavar="NAME",
                   help="with --refcoco: unc, google or umd (default unc; umd for refcocog)")
    p.add_argument("--split", default="val", metavar="NAME",
                   help="with --refcoco: val, testA, testB, test, train (default val)")
    p.add_argument("--limit", type=positive_int, metavar="N", help="first N samples only")
    p.add_argument("--baselines", nargs="*", metavar="NAME", default=None,
                   help="baselines beside the heads, any of all_heads random_heads centre text "
                        "(default: all; give none for the heads alone)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random heads (default 0)")
    p.add_argument("--batch-size", type=positive_int, default=8, metavar="N",
                   help="batch size of the forwards and of generation (default 8)")
    p.add_argument("--grid", default="primary", metavar="NAME",
                   help="grid of the image to ground on: primary (default) or a grid's name")
    p.add_argument("--style", default="plain", choices=STYLES,
                   help="box style of the text baseline's answers (default plain)")
    p.add_argument("--max-new-tokens", type=positive_int, default=32, metavar="N",
                   help="answer length cap of the text baseline (default 32)")
    p.add_argument("--sam", metavar="PATH", help="refine the heads' masks with this SAM model")
    add_device(p)
    p.add_argument("--out", type=Path, metavar="FILE", help="write the results here as JSON")
    add_overwrite(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=_eval_rec)


_REC_DESCRIPTION = """Referring-expression comprehension with a HeadSpec's localization heads
and, in the same table, the baselines: all_heads (the mean map of every head outside the spec's
skip_layers), random_heads (as many random heads as the spec has, drawn with --seed), centre (a
centred box of half the image's width and height, no label used) and text (the model writes the
box; --style). Prints a markdown table; --out writes every number and box as JSON."""


def _eval(args: argparse.Namespace) -> int:
    if args.data is None:
        raise fail("the following arguments are required: --data")
    if args.predictions is None and args.model is None:
        raise fail("one of the arguments --predictions --model is required")
    check_data(args.data, "lookhere eval")
    check_outputs(args, ("out", "predictions_out"), "lookhere eval")
    if args.predictions is not None:
        given = [f"--{k.replace('_', '-')}" for k in _MODEL_ONLY if getattr(args, k) is not None]
        if given:
            raise fail(f"{', '.join(given)} only apply with --model")
        return _eval_predictions(args)
    if args.missing is not None:
        raise fail("--missing only applies with --predictions")
    return _eval_model(args)


def _eval_predictions(args: argparse.Namespace) -> int:
    from lookhere.data.disk import read_samples
    from lookhere.eval.scoring import read_predictions, score_predictions

    try:
        predictions = read_predictions(args.predictions)
        scores = score_predictions(read_samples(args.data), predictions, style=args.style,
                                   missing=args.missing or "error")
    except (OSError, ValueError, TypeError) as err:
        raise fail(str(err)) from None
    print(format_table(scores.tasks))
    if args.out is not None:
        _write(args.out, {"data": str(args.data), "predictions": str(args.predictions),
                          **scores.to_json()})
    return 0


def _eval_model(args: argparse.Namespace) -> int:
    from lookhere.eval.runner import evaluate
    from lookhere.eval.scoring import write_predictions

    opts = {k: getattr(args, k) if getattr(args, k) is not None else v
            for k, v in _DEFAULTS.items()}
    samples = read_data(args.data, args.limit, "lookhere eval")
    model, processor, adapter = load_model_for_cli(args.model, args.device, "lookhere eval")
    result = evaluate(model, processor, adapter, samples, style=args.style, progress=True, **opts)
    if args.predictions_out is not None:
        write_predictions(args.predictions_out, result.predictions)
    print(format_table(result.scores.tasks))
    for task, r in sorted(result.attention_ratio.items()):
        lo, hi = r.ci95
        print(f"attention ratio {task}: mean {r.mean:.3f} [{lo:.3f}, {hi:.3f}], "
              f"median {r.median:.3f}")
    if args.out is not None:
        _write(args.out, {"data": str(args.data), "model": str(args.model), **result.to_json()})
    return 0


def _eval_rec(args: argparse.Namespace) -> int:
    from lookhere.eval.rec import BASELINES, check_rec_samples, evaluate_rec

    prog = "lookhere eval rec"
    check_outputs(args, ("out",), prog)
    baselines = list(BASELINES) if args.baselines is None else args.baselines
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise fail(f"--baselines: unknown {unknown}; choose from {' '.join(BASELINES)}", prog)
    samples, source = _rec_samples(args, prog)
    if isinstance(samples, list):  # a --data folder: every sample checked before any forward
        try:
            check_rec_samples(samples)
        except ValueError as err:
            raise fail(f"{source}: {err}", prog) from None
    model, processor, adapter = load_model_for_cli(args.model, args.device, prog)
    spec = load_spec(args.heads, adapter, prog)
    refiner = load_refiner(args.sam, args.device, prog)
    try:
        result = evaluate_rec(model, processor, adapter, samples, spec, baselines=baselines,
                              seed=args.seed, batch_size=args.batch_size, refiner=refiner,
                              progress=not args.quiet, grid=parse_grid(args.grid), style=args.style,
                              max_new_tokens=args.max_new_tokens)
    except (OSError, ValueError) as err:  # e.g. a missing COCO image, a grid the model lacks
        raise fail(str(err), prog) from None
    print(rec_table(result))
    methods = result.methods
    print(f"heads {_pairs(methods['heads'].heads)}"
          + (f"; random heads (seed {args.seed}) {_pairs(methods['random_heads'].heads)}"
             if "random_heads" in methods else ""))
    if args.out is not None:
        _write(args.out, {"model": str(args.model), "heads_file": str(args.heads),
                          "source": source, **result.to_json()})
    return 0


def _rec_samples(args: argparse.Namespace, prog: str) -> tuple[Iterable[Any], str]:
    """The samples of ``--data`` (a list) or ``--refcoco`` (an iterator: a split's images and
    masks are loaded a chunk at a time), and where they came from."""
    if args.data is not None:
        return read_data(args.data, args.limit, prog), f"--data {args.data}"
    from lookhere.data.refcoco import RefCoco

    split_by = args.split_by or ("umd" if args.dataset == "refcocog" else "unc")
    try:
        refs = RefCoco(args.refcoco, args.dataset, split_by, args.split)
    except (OSError, ValueError) as err:
        raise fail(f"--refcoco {args.refcoco}: {err}", prog) from None
    samples = itertools.islice(refs.iter_samples(mode="rec"), args.limit)
    return samples, f"--refcoco {args.refcoco} ({args.dataset}, {split_by}, {args.split})"


def _pairs(heads: list[list[int]]) -> str:
    return ", ".join(f"({layer}, {head})" for layer, head in heads)


def _write(path: Path, obj: dict[str, Any]) -> None:
    from lookhere.io import write_json

    write_json(obj, path)
    print(f"wrote {path}")
