"""The ``lookhere`` command line: one module per command group."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lookhere import __version__
from lookhere.cli import data, eval, experiment, heads, models, pretrain
from lookhere.cli.common import fail

GROUPS = (models, data, eval, heads, experiment, pretrain)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse and run. Only the chosen command's group builds its full parser: the experiment
    and pretraining options come from dataclasses whose modules import torch, which would make
    ``lookhere --help`` take seconds; the other commands are one-line stubs."""
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    parser = argparse.ArgumentParser(prog="lookhere", description=__doc__)
    parser.add_argument("--version", action="version", version=f"lookhere {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback when a command fails")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        if chosen in group.COMMANDS:
            group.add_commands(sub)
        else:
            for name, help in group.COMMANDS.items():
                sub.add_parser(name, help=help, add_help=False)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except SystemExit as stop:
        if isinstance(stop.code, str):  # a message: one line on stderr, exit 2 as argparse does
            raise _fail(args.command, stop.code.removeprefix("lookhere: ")) from None
        raise
    except Exception as err:  # noqa: BLE001 - the CLI's last line of defence; --debug re-raises
        if args.debug:
            raise
        raise _fail(args.command, f"{err} ({type(err).__name__}; --debug shows where)") from None


def _fail(command: str, message: str) -> SystemExit:
    """One ``lookhere <command>: error: ...`` line (a message that names its command already is
    printed as it is); exit status 2."""
    if message.startswith("lookhere"):
        print(message, file=sys.stderr)
        return SystemExit(2)
    return fail(message, f"lookhere {command}")
