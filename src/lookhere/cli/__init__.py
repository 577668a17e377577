"""The ``lookhere`` command line: one module per command group."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from lookhere.cli import data, eval, experiment, heads, models, pretrain


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lookhere", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    models.add_commands(sub)
    data.add_commands(sub)
    eval.add_commands(sub)
    heads.add_commands(sub)
    experiment.add_commands(sub)
    pretrain.add_commands(sub)
    args = parser.parse_args(argv)
    return args.run(args)
