"""The ``lookhere`` command line: one module per command group."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lookhere import __version__
from lookhere.cli import data, eval, experiment, heads, models, pretrain

GROUPS = (models, data, eval, heads, experiment, pretrain)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse and run. Only the chosen command's group builds its full parser: the experiment
    and pretraining options come from dataclasses whose modules import torch, which would make
    ``lookhere --help`` take seconds; the other commands are one-line stubs."""
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    parser = argparse.ArgumentParser(prog="lookhere", description=__doc__)
    parser.add_argument("--version", action="version", version=f"lookhere {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        if chosen in group.COMMANDS:
            group.add_commands(sub)
        else:
            for name, help in group.COMMANDS.items():
                sub.add_parser(name, help=help, add_help=False)
    args = parser.parse_args(argv)
    return args.run(args)
