"""``lookhere pretrain train|eval|card``: make, evaluate and package a pretrained miniature VLM.

- ``train --out DIR``: LLaVA-1.5's stages in miniature (`lookhere.pretrain.recipe`); rerun the
  same command to resume (each stage continues from its last Trainer checkpoint). Runs under
  ``torchrun`` / ``accelerate launch`` unchanged.
- ``eval --model M --out FILE``: the checkpoint's evaluation (`lookhere.experiment.pretrained`);
  ``--model lookhere:llava-mini`` is the shipped checkpoint.
- ``card --run DIR --eval FILE --out FOLDER``: the final model, its processor and a model card
  (recipe, command, steps, wall time, evaluation, sha256) in one new folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lookhere.cli.common import add_overwrite, check_out_dir, check_outputs
from lookhere.cli.options import add_options, build

PROG = "lookhere pretrain"


#: the commands this module adds, with their one-line help (`lookhere --help`)
COMMANDS = {
    "pretrain": "pretrain a miniature VLM (LLaVA-1.5's recipe), evaluate it, package it",
}


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Each command's options are built when it is parsed or its help printed
    (`cli.common.LazyParser`)."""
    cmds = sub.add_parser("pretrain", help=COMMANDS["pretrain"]).add_subparsers(
        dest="pretrain", required=True)
    cmds.add_parser("train", help="run (or resume) the vision, align and instruct stages",
                    build=_train_options)
    cmds.add_parser("eval", help="VQA per type, skills, REC as text and localization heads "
                    "on held-out data", build=_eval_options)
    cmds.add_parser("card", help="package a finished run with its model card",
                    build=_card_options)


def _train_options(p: argparse.ArgumentParser) -> None:
    from lookhere.pretrain.config import STAGES, PretrainConfig

    p.add_argument("--out", type=Path, required=True, help="run folder (rerun to resume)")
    p.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES),
                   help="stages to run, in order (default: all)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    add_options(p, PretrainConfig)  # the stages' fields: --vision-steps, --align-lr, ...
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=_train)


def _eval_options(p: argparse.ArgumentParser) -> None:
    from lookhere.experiment.config import PretrainedEvalConfig

    p.add_argument("--model", required=True, help="model folder, or lookhere:llava-mini")
    p.add_argument("--out", type=Path, required=True, help="new JSON file for the results")
    add_overwrite(p)
    add_options(p, PretrainedEvalConfig)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=_eval)


def _card_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", dest="run_dir", type=Path, required=True,
                   help="the `pretrain train` run folder")
    p.add_argument("--eval", type=Path, required=True, help="`pretrain eval` JSON of its model")
    p.add_argument("--out", type=Path, required=True, help="new folder for model and card")
    p.add_argument("--command", default=None, help="the training command, for the card")
    p.add_argument("--machine", default=None, help="where it ran, for the card")
    p.set_defaults(run=_card)


def fail(message: str) -> SystemExit:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return SystemExit(2)


def _threads(n: int | None) -> None:
    if n is not None:
        if n < 1:
            raise fail(f"--threads must be >= 1, got {n}")
        import torch

        torch.set_num_threads(n)


def _train(args: argparse.Namespace) -> int:
    from lookhere.pretrain.recipe import STAGES, PretrainConfig, run

    _threads(args.threads)
    check_out_dir(args.out, PROG + " train", new=False)  # a rerun resumes
    try:
        config = build(args, PretrainConfig)
    except (TypeError, ValueError) as err:
        raise fail(str(err)) from None
    try:
        records = run(config, args.out, stages=args.stages, progress=not args.quiet)
    except (FileNotFoundError, ValueError) as err:
        raise fail(str(err)) from None
    for r in records:
        last = r.log[-1]["loss"] if r.log else float("nan")
        print(f"[pretrain] {r.stage}: {r.steps} steps in {r.seconds:.0f} s, last loss {last:.3f}")
    print(f"[pretrain] model: {args.out / STAGES[-1] / 'final'}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from lookhere.experiment.pretrained import (
        PretrainedEvalConfig,
        evaluate_pretrained,
        summary_table,
    )
    from lookhere.io import write_json

    _threads(args.threads)
    check_outputs(args, ("out",), PROG + " eval")
    try:
        config = build(args, PretrainedEvalConfig)
    except ValueError as err:
        raise fail(str(err)) from None
    from lookhere.cli.common import load_model_for_cli

    model, processor, _ = load_model_for_cli(args.model, None, PROG + " eval")
    result = evaluate_pretrained(model, processor, config, model_id=args.model,
                                 progress=not args.quiet)
    write_json(result.to_json(), args.out)
    print(summary_table(result))
    print(f"wrote {args.out}")
    return 0


def _card(args: argparse.Namespace) -> int:
    from lookhere.experiment.model_card import write_card
    from lookhere.experiment.pretrained import PretrainedEval

    check_out_dir(args.out, PROG + " card")
    try:
        evaluation = PretrainedEval.from_json(json.loads(args.eval.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise fail(f"--eval {args.eval}: not a `pretrain eval` result ({err!r})") from None
    try:
        path = write_card(args.run_dir, evaluation, args.out, command=args.command,
                          machine=args.machine)
    except (OSError, ValueError) as err:
        raise fail(str(err)) from None
    print(f"wrote {path}")
    return 0
