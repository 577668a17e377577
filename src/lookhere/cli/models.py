"""``lookhere families`` and ``lookhere tiny``: the supported families and tiny offline models."""

from __future__ import annotations

import argparse
from pathlib import Path

#: the commands this module adds, with their one-line help (`lookhere --help`)
COMMANDS = {
    "families": "list the supported model families",
    "tiny": "build a tiny random-weight model + processor and save it",
}


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("families", help=COMMANDS["families"])
    p.set_defaults(run=_families)
    p = sub.add_parser("tiny", help=COMMANDS["tiny"])
    p.add_argument("--family", required=True, help="a family from `lookhere families`")
    p.add_argument("--size", default="heads",
                   help="tiny size preset: heads (default: 4 language layers, enough for "
                   "`heads find`, which skips layers 0-1), test, demo, mini or small (random "
                   "weights; the pretrained mini model is --model lookhere:llava-mini)")
    p.add_argument("--seed", type=int, default=0, help="seed for the random weights")
    p.add_argument("--out", required=True, type=Path, help="folder to save_pretrained into")
    p.set_defaults(run=_tiny)


def _families(args: argparse.Namespace) -> int:
    from lookhere.models import adapter_class, families

    for fam in families():
        print(f"{fam:12s} model_type: {', '.join(adapter_class(fam).model_types)}")
    return 0


def _tiny(args: argparse.Namespace) -> int:
    from lookhere.models import build_tiny
    from lookhere.models.tiny import TINY_SIZES, param_count, save_tiny

    if args.size not in TINY_SIZES:
        raise SystemExit(f"lookhere tiny: error: --size {args.size!r} is not a preset; choose "
                         f"from {', '.join(TINY_SIZES)}")
    from lookhere.cli.common import check_out_dir

    check_out_dir(args.out, "lookhere tiny")
    model, processor = build_tiny(args.family, size=args.size, seed=args.seed)
    save_tiny(model, processor, args.out)
    print(f"saved {args.family} ({param_count(model) / 1e6:.2f}M parameters) to {args.out}")
    return 0
