"""``lookhere eval``: score answers on a dataset folder, from a predictions file or a model."""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path
from typing import Any

from lookhere.data.formats import STYLES

# Model-branch options: None means "not given", so giving one with --predictions is an error.
_MODEL_ONLY = ("limit", "batch_size", "max_new_tokens", "predictions_out")
_DEFAULTS = {"batch_size": 16, "max_new_tokens": 16}


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="score answers on a dataset folder (from `lookhere data make`)",
                       description=__doc__)
    p.add_argument("--data", type=Path, required=True, metavar="DIR", help="dataset folder")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--predictions", type=Path, metavar="FILE",
                     help="an outside model's answers: JSONL {id, answer} or one JSON id->answer")
    src.add_argument("--model", metavar="PATH",
                     help="model folder (or hub name) to generate answers with")
    p.add_argument("--style", default="plain", choices=STYLES, help="box/point answer style")
    p.add_argument("--out", type=Path, metavar="FILE", help="write the metrics here as JSON")
    p.add_argument("--missing", choices=("error", "wrong"),  # scoring.MISSING, not imported: torch
                   help="with --predictions: a sample without an answer is an error (default) "
                        "or counted wrong")
    p.add_argument("--limit", type=_positive_int, metavar="N",
                   help="with --model: first N samples only")
    p.add_argument("--batch-size", type=_positive_int, metavar="N",
                   help=f"with --model: generation batch size (default {_DEFAULTS['batch_size']})")
    p.add_argument("--max-new-tokens", type=_positive_int, metavar="N",
                   help=f"with --model: answer length cap (default {_DEFAULTS['max_new_tokens']})")
    p.add_argument("--predictions-out", type=Path, metavar="FILE",
                   help="with --model: write the generated answers here as JSONL")
    p.set_defaults(run=_eval)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _fail(message: str) -> SystemExit:
    """Exit 2 with argparse's message style (bad input, like a usage error)."""
    print(f"lookhere eval: error: {message}", file=sys.stderr)
    return SystemExit(2)


def _eval(args: argparse.Namespace) -> int:
    from lookhere.data.disk import read_info

    if not args.data.is_dir():
        raise _fail(f"--data {args.data} is not a folder")
    try:
        read_info(args.data)
    except FileNotFoundError as err:
        raise _fail(f"--data: {err}; make one with `lookhere data make`") from None
    if args.predictions is not None:
        given = [f"--{k.replace('_', '-')}" for k in _MODEL_ONLY if getattr(args, k) is not None]
        if given:
            raise _fail(f"{', '.join(given)} only apply with --model")
        return _eval_predictions(args)
    if args.missing is not None:
        raise _fail("--missing only applies with --predictions")
    return _eval_model(args)


def _eval_predictions(args: argparse.Namespace) -> int:
    from lookhere.data.disk import read_samples
    from lookhere.eval.scoring import read_predictions, score_predictions

    try:
        predictions = read_predictions(args.predictions)
        scores = score_predictions(read_samples(args.data), predictions, style=args.style,
                                   missing=args.missing or "error")
    except (OSError, ValueError, TypeError) as err:
        raise _fail(str(err)) from None
    print(format_table(scores.tasks))
    if args.out is not None:
        _write(args.out, {"data": str(args.data), "predictions": str(args.predictions),
                          **scores.to_json()})
    return 0


def _eval_model(args: argparse.Namespace) -> int:
    from lookhere.data.disk import read_samples
    from lookhere.eval.runner import evaluate
    from lookhere.eval.scoring import write_predictions
    from lookhere.models.loading import load_model

    opts = {k: getattr(args, k) if getattr(args, k) is not None else v
            for k, v in _DEFAULTS.items()}
    samples = list(itertools.islice(read_samples(args.data), args.limit))
    try:
        model, processor, adapter = load_model(args.model)
    except (OSError, ValueError) as err:  # no such folder, or an unsupported family
        raise _fail(f"--model {args.model}: {err}") from None
    result = evaluate(model, processor, adapter, samples, style=args.style, progress=True, **opts)
    if args.predictions_out is not None:
        write_predictions(args.predictions_out, result.predictions)
    print(format_table(result.scores.tasks))
    for task, r in sorted(result.attention_ratio.items()):
        lo, hi = r["ci95"]
        print(f"attention ratio {task}: mean {r['mean']:.3f} [{lo:.3f}, {hi:.3f}], "
              f"median {r['median']:.3f}")
    if args.out is not None:
        _write(args.out, {"data": str(args.data), "model": str(args.model), **result.to_json()})
    return 0


def format_table(tasks: dict[str, dict[str, Any]]) -> str:
    """One line per task: n, accuracy with its 95% CI, parse failures, mean IoU (box tasks)."""
    lines = [f"{'task':<18} {'n':>6}  {'accuracy':>8}  {'95% CI':<16}  {'parse fail':>10}  "
             f"{'mean IoU':>8}"]
    for task, t in tasks.items():
        lo, hi = t["ci95"]
        iou = f"{t['mean_iou']:.3f}" if "mean_iou" in t else "-"
        lines.append(f"{task:<18} {t['n']:>6}  {t['accuracy']:>8.3f}  "
                     f"{f'[{lo:.3f}, {hi:.3f}]':<16}  {t['parse_failure_rate']:>10.1%}  {iou:>8}")
    return "\n".join(lines)


def _write(path: Path, obj: dict[str, Any]) -> None:
    from lookhere.io import write_json

    write_json(obj, path)
    print(f"wrote {path}")
