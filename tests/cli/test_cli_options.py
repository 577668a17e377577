"""Options generated from config dataclasses (`lookhere.cli.options`): one per field, nested
configs prefixed (or not, with ``metadata["prefix"] = ""``), the config built back from them."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

from lookhere.cli.options import add_options, build


@dataclass(frozen=True)
class Run:
    steps: int = field(default=10, metadata={"help": "optimizer steps"})
    lr: float = 1e-3


@dataclass(frozen=True)
class Term:
    weight: float = 1.0
    layers: tuple[int, ...] | None = None
    pairs: tuple[tuple[int, int], ...] | None = None
    threshold: float | None = None
    monitor: bool = False


@dataclass(frozen=True)
class Outer:
    run: Run = field(default_factory=lambda: Run(steps=20), metadata={"prefix": ""})
    loss_term: Term = field(default_factory=Term)
    name: str = "x"
    tags: tuple[str, ...] = ("a", "b")
    options: dict[str, Any] = field(default_factory=dict)


def parser(**kw: Any) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_options(p, Outer, **kw)
    return p


def test_one_option_per_field_nested_ones_prefixed():
    flags = {s for a in parser(skip=("run.lr",))._actions for s in a.option_strings}
    assert flags == {"-h", "--help", "--steps", "--loss-term-weight", "--loss-term-layers",
                     "--loss-term-pairs", "--loss-term-threshold", "--loss-term-monitor",
                     "--no-loss-term-monitor", "--name", "--tags", "--options"}
    assert "(default: 20)" in parser().format_help()  # the default instance's value


def test_given_options_replace_fields_and_the_rest_keep_the_base():
    p = parser()
    assert build(p.parse_args([]), Outer) == Outer()
    args = p.parse_args(["--steps", "5", "--loss-term-weight", "0.5", "--loss-term-layers", "1",
                         "-1", "--loss-term-pairs", "[[2, 1]]", "--loss-term-threshold", "0.3",
                         "--loss-term-monitor", "--tags", "c", "--options", '{"k": 1}'])
    cfg = build(args, Outer, name="fixed")
    assert cfg.run == Run(steps=5) and cfg.name == "fixed"
    assert cfg.loss_term == Term(weight=0.5, layers=(1, -1), pairs=[[2, 1]], threshold=0.3,
                                 monitor=True)
    assert cfg.tags == ("c",) and cfg.options == {"k": 1}
    base = Outer(run=Run(steps=7, lr=0.1), name="base")
    assert build(p.parse_args(["--lr", "0.2"]), Outer, base=base) == \
        Outer(run=Run(steps=7, lr=0.2), name="base")
