"""``lookhere demo`` and ``lookhere experiment klal|heads|lens``: the experiments behind
docs/results.md."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lookhere.cli.common import check_out_dir
from lookhere.cli.options import add_options, build

SEED = ("train.seed",)  # set by --seeds (the demo: 0)


#: the commands this module adds, with their one-line help (`lookhere --help`)
COMMANDS = {
    "demo": ("the embedded-model demo (KLAL, localization heads, the logit lens): "
             "HTML report; these options set the KLAL part"),
    "experiment": "longer experiments",
}


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Each command's options are built when it is parsed or its help printed
    (`cli.common.LazyParser`): its config builds its defaults, which the other commands need not
    pay for."""
    sub.add_parser("demo", help=COMMANDS["demo"], build=_demo_options)
    exp = sub.add_parser("experiment", help=COMMANDS["experiment"]).add_subparsers(
        dest="experiment", required=True)
    exp.add_parser("klal", help="NTP vs NTP+KLAL over seeds (results JSON per seed)",
                   build=_seeded_options(_klal_config, _klal))
    exp.add_parser("heads", help="localization heads of tiny models trained on Shapes VQA "
                   "(NTP, NTP+KLAL, untrained): search, stability, REC vs baselines",
                   build=_seeded_options(_heads_config, _heads))
    exp.add_parser("lens", help="logit-lens segmentation of tiny models trained on Shapes "
                   "VQA with NTP and NTP+LLL: mIoU, pointing, VQA accuracy",
                   build=_seeded_options(_lens_config, _lens))


def _demo_options(p: argparse.ArgumentParser) -> None:
    from lookhere.experiment.config import KLALExperimentConfig
    from lookhere.report.demo_config import DEMO_KLAL

    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="new or empty folder")
    p.add_argument("--workers", type=int, default=2,
                   help="processes of one torch thread each, one per core (1: all in this one)")
    add_options(p, KLALExperimentConfig, skip=SEED, defaults=DEMO_KLAL)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=_demo)


def _seeded_options(config: Callable[[], type], run: Callable[[argparse.Namespace], int]
                    ) -> Callable[[argparse.ArgumentParser], None]:
    """The builder of an experiment command: ``--out``, ``--seeds`` and the options of its
    config class (``config()``, imported when the command is parsed)."""
    def build(p: argparse.ArgumentParser) -> None:
        p.add_argument("--out", type=Path, required=True, help="folder for <seed>.json files")
        p.add_argument("--seeds", type=int, nargs="+", default=[0], help="model/training seeds")
        _add_config_options(p, config())
        p.set_defaults(run=run)
    return build


def _lens_config() -> type:
    from lookhere.experiment.config import LensExperimentConfig

    return LensExperimentConfig


def _heads_config() -> type:
    from lookhere.experiment.config import HeadsExperimentConfig

    return HeadsExperimentConfig


def _klal_config() -> type:
    from lookhere.experiment.config import KLALExperimentConfig

    return KLALExperimentConfig


def _add_config_options(p: argparse.ArgumentParser, cls: type) -> None:
    """One option per field of an experiment config, nested configs included (`cli.options`);
    the seed comes from ``--seeds``."""
    add_options(p, cls, skip=SEED)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _config(args: argparse.Namespace, seed: int = 0, cls: type | None = None, base: Any = None):
    """The config of one seed: ``base`` (``cls()``, `KLALExperimentConfig`), the options given,
    and ``train.seed``."""
    from lookhere.experiment.config import KLALExperimentConfig

    cls = cls or KLALExperimentConfig
    try:
        config = build(args, cls, base=base)
        return dataclasses.replace(config, train=dataclasses.replace(config.train, seed=seed))
    except (ValueError, TypeError) as err:
        raise SystemExit(f"lookhere: {err}") from None


def _demo(args: argparse.Namespace) -> int:
    from lookhere.report.demo import run_demo
    from lookhere.report.demo_config import DEMO_KLAL

    config = _config(args, base=DEMO_KLAL)
    if args.workers < 1:
        raise SystemExit(f"lookhere demo: --workers must be >= 1, got {args.workers}")
    check_out_dir(args.out, "lookhere demo")
    try:
        report = run_demo(args.out, config, progress=not args.quiet, workers=args.workers)
    except FileExistsError as err:
        raise SystemExit(f"lookhere demo: {err}") from None
    print(f"report: {report}")
    print((args.out / "results.md").read_text())
    return 0


def _klal(args: argparse.Namespace) -> int:
    from lookhere.experiment import klal
    from lookhere.io import write_json

    check_out_dir(args.out, "lookhere experiment klal", new=False)  # a rerun skips done seeds
    for seed in args.seeds:
        path = args.out / f"seed{seed}.json"
        if path.exists():
            print(f"{path} exists: skipped (delete it to re-run)")
            continue
        config = _config(args, seed)
        start = time.perf_counter()
        results = klal.run(config, args.out / f"seed{seed}", progress=not args.quiet)
        write_json({**results.to_json(), "settings": {"klal": config.to_json()},
                    "elapsed_s": time.perf_counter() - start}, path)
        print(f"seed {seed}: {klal.summary_line(results)} -> {path}")
    print(json.dumps({"written": str(args.out)}))
    return 0


def _heads(args: argparse.Namespace) -> int:
    from lookhere.experiment import heads

    return _per_condition_seeds(args, heads, heads.HeadsExperimentConfig)


def _lens(args: argparse.Namespace) -> int:
    from lookhere.experiment import lens

    return _per_condition_seeds(args, lens, lens.LensExperimentConfig)


def _per_condition_seeds(args: argparse.Namespace, experiment: Any, cls: type) -> int:
    """Run an experiment module (``run``, a typed result with ``conditions`` and ``to_json``;
    ``summary_line(condition, entry)``) once per seed into ``<out>/seed<N>.json``, skipping
    seeds already written."""
    from lookhere.io import write_json

    check_out_dir(args.out, f"lookhere experiment {args.experiment}", new=False)
    for seed in args.seeds:
        path = args.out / f"seed{seed}.json"
        if path.exists():
            print(f"{path} exists: skipped (delete it to re-run)")
            continue
        config = _config(args, seed, cls)
        start = time.perf_counter()
        results = experiment.run(config, args.out / f"seed{seed}", progress=not args.quiet)
        write_json({**results.to_json(), "elapsed_s": time.perf_counter() - start}, path)
        for condition, entry in results.conditions.items():
            print(f"seed {seed} {condition}: {experiment.summary_line(condition, entry)}")
    print(json.dumps({"written": str(args.out)}))
    return 0
