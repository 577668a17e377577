"""``lookhere eval``: score answers on a dataset folder, from a predictions file, a model or an
OpenAI-compatible API; ``lookhere eval rec``: referring-expression comprehension with
localization heads and baselines.

``lookhere eval --data DIR (--predictions FILE | --model PATH | --api URL --api-model NAME)`` is
the plain form; ``rec`` is an optional subcommand, so the plain form needs no subcommand name.
With ``--api``, the answers are appended to ``--api-answers`` as they come and a rerun resumes
from it; the key is read from the environment variable ``--api-key-env`` only.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import sys
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
    non_negative_float,
    parse_grid,
    positive_int,
    read_data,
)
from lookhere.data.formats import STYLES
from lookhere.eval.api import ApiConfig  # torch-free, stdlib only at import
from lookhere.report.tables import format_table, rec_table

# Model-branch options: None means "not given", so giving one with --predictions is an error.
_MODEL_ONLY = ("limit", "batch_size", "max_new_tokens", "predictions_out", "device")
_DEFAULTS = {"batch_size": 16, "max_new_tokens": 32}  # eval.runner.MAX_NEW_TOKENS
#: ApiConfig fields given as --api-<field> (None when not given: the config's default applies)
_API_FIELDS = ("key_env", "concurrency", "timeout", "max_retries", "backoff", "max_tokens",
               "temperature")


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
    src.add_argument("--api", metavar="URL",
                     help="an OpenAI-compatible API's base URL, e.g. https://api.openai.com/v1: "
                          "ask URL/chat/completions for every sample's answer (--api-* below)")
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
    _add_api(p)
    p.set_defaults(run=_eval)
    modes = p.add_subparsers(dest="eval_command", required=False, metavar="{rec}")
    _add_rec(modes)


def _add_api(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("with --api", "Answers are appended to --api-answers as they "
                             "come; a rerun resumes and asks no sample twice.\nThe key is read "
                             "from the environment only and written nowhere.")
    g.add_argument("--api-model", metavar="NAME", help="model name sent with each request "
                   "(required with --api)")
    g.add_argument("--api-answers", type=Path, metavar="FILE",
                   help="JSONL of the answers (a --predictions file too); an existing one is "
                        "resumed, never replaced (default: --out with suffix .answers.jsonl)")
    fields = {f.name: f for f in dataclasses.fields(ApiConfig)}
    kinds = {"key_env": (str, "NAME"), "concurrency": (positive_int, "N"),
             "timeout": (_seconds, "S"), "max_retries": (_count, "N"), "backoff": (_seconds, "S"),
             "max_tokens": (positive_int, "N"), "temperature": (float, "T")}
    for name in _API_FIELDS:
        kind, metavar = kinds[name]
        f = fields[name]
        g.add_argument(f"--api-{name.replace('_', '-')}", dest=f"api_{name}", type=kind,
                       metavar=metavar, help=f"{f.metadata['help']} (default "
                       f"{'not sent' if f.default is None else f.default})")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return int(text)


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
                        "ceiling (default: all but ceiling; give none for the heads alone)")
    p.add_argument("--sigma", type=non_negative_float, default=1.0, metavar="CELLS",
                   help="smoothing of the maps before the box, in grid cells (default 1, the "
                        "paper's; see the ceiling baseline)")
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
box; --style); ceiling, asked for by name, feeds the heads' rule the object's own map: what any
attention can reach on this grid at this --sigma. Prints a markdown table; --out writes every
number and box as JSON."""


def _eval(args: argparse.Namespace) -> int:
    if args.data is None:
        raise fail("the following arguments are required: --data")
    if args.predictions is None and args.model is None and args.api is None:
        raise fail("one of the arguments --predictions --model --api is required")
    api_given = [f"--api-{k.replace('_', '-')}" for k in ("model", "answers", *_API_FIELDS)
                 if getattr(args, f"api_{k}") is not None]
    if api_given and args.api is None:
        raise fail(f"{', '.join(api_given)} only apply with --api")
    check_data(args.data, "lookhere eval")
    check_outputs(args, ("out", "predictions_out"), "lookhere eval")
    if args.model is None:  # --predictions or --api; --api takes --limit too
        allowed = ("limit",) if args.api is not None else ()
        given = [f"--{k.replace('_', '-')}" for k in _MODEL_ONLY
                 if getattr(args, k) is not None and k not in allowed]
        if given:
            raise fail(f"{', '.join(given)} only apply with --model")
    if args.predictions is not None:
        return _eval_predictions(args)
    if args.missing is not None:
        raise fail("--missing only applies with --predictions")
    return _eval_api(args) if args.api is not None else _eval_model(args)


def _eval_predictions(args: argparse.Namespace) -> int:
    from lookhere.data.disk import read_samples
    from lookhere.eval.scoring import read_predictions

    try:
        predictions = read_predictions(args.predictions)
        samples = list(read_samples(args.data))
    except (OSError, ValueError, TypeError) as err:
        raise fail(str(err)) from None
    return _score(args, samples, predictions, {"predictions": str(args.predictions)},
                  args.missing or "error")


def _eval_api(args: argparse.Namespace) -> int:
    """Ask the API for every sample without a saved answer, then score as --predictions does."""
    from lookhere.eval.api import ApiError, ask_all, read_key

    if args.api_model is None:
        raise fail("--api needs --api-model NAME")
    answers = _answers_path(args)
    try:
        config = ApiConfig(url=args.api, model=args.api_model, **{
            k: getattr(args, f"api_{k}") for k in _API_FIELDS
            if getattr(args, f"api_{k}") is not None})
        key = read_key(config.key_env)
    except ValueError as err:  # "<field>: ..." -> the field's option
        field, _, message = str(err).partition(": ")
        flag = "--api" if field == "url" else f"--api-{field.replace('_', '-')}"
        raise fail(f"{flag}: {message}") from None
    samples = read_data(args.data, args.limit, "lookhere eval")
    try:
        run = ask_all(samples, config, answers, key=key)
    except KeyboardInterrupt:  # the answers in flight were saved first
        print(f"lookhere eval: interrupted; the answers received are saved in {answers}; "
              f"rerun the same command to resume", file=sys.stderr)
        raise SystemExit(130) from None
    except (ApiError, OSError) as err:
        raise fail(str(err)) from None
    except ValueError as err:  # the answers file does not fit (names itself)
        raise fail(f"--api-answers {err}" if str(err).startswith(str(answers)) else str(err)
                   ) from None
    print(f"answers: {run.asked} asked, {run.resumed} resumed from {answers}, "
          f"{run.retries} retries")
    return _score(args, samples, run.answers, {"api": args.api, "api_model": args.api_model,
                                                "answers": str(answers)})


def _answers_path(args: argparse.Namespace) -> Path:
    """--api-answers, or --out's path with the suffix .answers.jsonl; its folder checked."""
    path = args.api_answers
    if path is None and args.out is None:
        raise fail("--api needs --api-answers FILE (or --out FILE, beside which the answers "
                   "are saved as FILE.answers.jsonl)")
    path = path if path is not None else args.out.with_suffix(".answers.jsonl")
    if args.out is not None and path.resolve() == args.out.resolve():
        raise fail(f"--api-answers {path} is also --out; give two files")
    if path.is_dir():
        raise fail(f"--api-answers {path} is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise fail(f"--api-answers {path}: cannot create its folder ({err.strerror})") from None
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise fail(f"--api-answers {path}: not writable")
    return path


def _score(args: argparse.Namespace, samples: list[Any], predictions: dict[str, str],
           source: dict[str, str], missing: str = "error") -> int:
    """Score, print the table and write --out: the same for every source of answers."""
    from lookhere.eval.scoring import score_predictions

    try:
        scores = score_predictions(samples, predictions, style=args.style, missing=missing)
    except (ValueError, TypeError) as err:
        raise fail(str(err)) from None
    print(format_table(scores.tasks))
    if args.out is not None:
        _write(args.out, {"data": str(args.data), **source, **scores.to_json()})
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
    from lookhere.eval.rec import BASELINES, DEFAULT_BASELINES, check_rec_samples, evaluate_rec

    prog = "lookhere eval rec"
    check_outputs(args, ("out",), prog)
    baselines = list(DEFAULT_BASELINES) if args.baselines is None else args.baselines
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
                              max_new_tokens=args.max_new_tokens, sigma=args.sigma)
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
