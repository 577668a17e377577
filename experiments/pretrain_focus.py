"""Diagnostic: is binding (answering about *the named* object) learnable from the aligned model
when the instruction data ask only for it? Instruction-tunes a pretraining run's ``align/final``
on Scenes colour and shape questions alone, then measures held-out Shapes colour and shape
accuracy (experiments/pretrain_binding.py's numbers).

    python experiments/pretrain_focus.py --run runs/pretrain --out runs/pretrain_focus \
        --steps 1500 --lr 1e-3
"""

import argparse
from pathlib import Path

from pretrain_language import finish, tune  # this folder's sibling script

from lookhere.pretrain.recipe import load_stage_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max-objects", type=int, default=4)
    args = p.parse_args()
    model, processor = load_stage_model(args.run / "align" / "final")
    tune(model, processor, args.out, "instruct", args.steps, args.lr,
         max_objects=args.max_objects, skills=("colour", "shape"))
    finish(model, processor, args.out)

if __name__ == "__main__":
    main()
