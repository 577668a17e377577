"""The ``lookhere`` command line: one module per command group."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lookhere import __version__
from lookhere.cli import data, eval, experiment, heads, lens, models, pretrain, train, view
from lookhere.cli.common import LazyParser, fail

GROUPS = (models, data, eval, heads, lens, view, train, experiment, pretrain)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse and run. A command whose options come from config dataclasses in torch-importing
    modules builds them only when it is the command given (`LazyParser`), so that
    ``lookhere --help`` and the other commands' help stay quick."""
    argv = list(sys.argv[1:] if argv is None else argv)
    root = parser()
    args, extra = root.parse_known_args(argv)
    if extra and not getattr(args, "extra_args", False):
        root.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra  # `lookhere train`: the TrainingArguments options
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


def parser() -> argparse.ArgumentParser:
    """The ``lookhere`` parser: every command of every group (`GROUPS`)."""
    root = argparse.ArgumentParser(prog="lookhere", description=__doc__)
    root.add_argument("--version", action="version", version=f"lookhere {__version__}")
    root.add_argument("--debug", action="store_true",
                      help="show the full traceback when a command fails")
    sub = root.add_subparsers(dest="command", required=True, parser_class=LazyParser)
    for group in GROUPS:
        group.add_commands(sub)
    return root


def _fail(command: str, message: str) -> SystemExit:
    """One ``lookhere <command>: error: ...`` line (a message that names its command already is
    printed as it is); exit status 2."""
    if message.startswith("lookhere"):
        print(message, file=sys.stderr)
        return SystemExit(2)
    return fail(message, f"lookhere {command}")
