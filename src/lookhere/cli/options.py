"""Command-line options generated from a config dataclass, and the config built back from them.

One option per field, named after it (``batch_size`` -> ``--batch-size``), typed by its
annotation, helped by its ``metadata["help"]`` and the default of the config's default instance:

- ``bool``: ``--name`` / ``--no-name``;
- ``int``, ``float``, ``str`` (or one of them ``| None``): one value;
- ``tuple[X, ...]`` of those: one or more values;
- anything else (``dict``, tuples of pairs): one JSON value;
- a nested config dataclass: its own fields' options, prefixed with the field's name
  (``klal: KLALConfig`` -> ``--klal-weight``, ``--klal-query``, ...), or with
  ``metadata["prefix"]`` when the field sets one (``""``: the nested options keep their bare
  names, ``train: TrainSpec`` -> ``--steps``).

An option that is not given leaves the field as it is in the base config (the default instance
unless another is passed), so defaults live in the dataclasses only. Fields are named by their
dotted path (``klal.weight``), in ``skip`` as in the parsed namespace.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from typing import Any

_SCALARS = (int, float, str)


def add_options(parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = (),
                defaults: Any = None) -> None:
    """Add one option per (nested) field of ``cls`` to ``parser``; ``skip``: dotted field paths
    the caller sets itself. ``defaults``: the instance whose values the help shows (``cls()``)."""
    _add(parser, cls, cls() if defaults is None else defaults, "", "", skip)


def build(args: argparse.Namespace, cls: type, *, base: Any = None, **fixed: Any) -> Any:
    """``base`` (``cls()``) with the given options replacing its fields, and ``fixed`` (top-level
    fields the caller sets, e.g. from another option) on top. Raises what the dataclasses raise
    on invalid values (ValueError, TypeError)."""
    base = cls() if base is None else base
    return dataclasses.replace(base, **_changes(args, base, ""), **fixed)


def _add(parser: argparse.ArgumentParser, cls: type, defaults: Any, path: str, prefix: str,
         skip: tuple[str, ...]) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        dest, hint = path + f.name, hints[f.name]
        if dest in skip:
            continue
        default = getattr(defaults, f.name)
        if _is_config(hint):
            sub = f.metadata.get("prefix", f.name.replace("_", "-"))
            _add(parser, hint, default, dest + ".", _join(prefix, sub), skip)
            continue
        flag = "--" + _join(prefix, f.name.replace("_", "-"))
        metavar = flag[2:].upper().replace("-", "_")
        help_ = f.metadata.get("help", "")
        kind, item = _kind(hint)
        if kind == "bool":
            parser.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction,
                                default=None, help=f"{help_} (default: {default})")
        elif kind == "scalar":
            parser.add_argument(flag, dest=dest, type=item, default=None, metavar=metavar,
                                help=f"{help_} (default: {default})")
        elif kind == "tuple":
            shown = "none" if default is None else " ".join(map(str, default))
            parser.add_argument(flag, dest=dest, type=item, nargs="+", default=None,
                                metavar=metavar, help=f"{help_} (default: {shown})")
        else:
            parser.add_argument(flag, dest=dest, type=json.loads, default=None, metavar="JSON",
                                help=f"{help_} (JSON; default: {json.dumps(default)})")


def _changes(args: argparse.Namespace, base: Any, path: str) -> dict[str, Any]:
    hints = typing.get_type_hints(type(base))
    out: dict[str, Any] = {}
    for f in dataclasses.fields(base):
        dest, current = path + f.name, getattr(base, f.name)
        if _is_config(hints[f.name]):
            sub = _changes(args, current, dest + ".")
            if sub:
                out[f.name] = dataclasses.replace(current, **sub)
        elif (value := getattr(args, dest, None)) is not None:
            out[f.name] = tuple(value) if _kind(hints[f.name])[0] == "tuple" else value
    return out


def _is_config(hint: Any) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def _kind(hint: Any) -> tuple[str, Any]:
    """("bool" | "scalar" | "tuple" | "json", the item type) of an annotation."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        hint = args[0]  # X | None: given as X
        args = list(typing.get_args(hint))
    if hint is bool:
        return "bool", bool
    if hint in _SCALARS:
        return "scalar", hint
    if typing.get_origin(hint) is tuple and len(args) == 2 and args[1] is Ellipsis \
            and args[0] in _SCALARS:
        return "tuple", args[0]
    return "json", None


def _join(prefix: str, name: str) -> str:
    return f"{prefix}-{name}" if prefix and name else prefix or name
