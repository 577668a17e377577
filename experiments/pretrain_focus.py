"""Diagnostic: is binding (answering about *the named* object) learnable from the aligned model
when the instruction data ask only for it? Instruction-tunes a pretraining run's ``align/final``
on Scenes colour and shape questions alone, then measures held-out Shapes colour and shape
accuracy (experiments/pretrain_binding.py's numbers).

    python experiments/pretrain_focus.py --run runs/pretrain --out runs/pretrain_focus \
        --steps 1500 --lr 1e-3
"""

import argparse
import subprocess
import sys
from pathlib import Path

from transformers import Trainer

from lookhere.data.collate import GroundingCollator
from lookhere.data.dataset import TaskDataset
from lookhere.data.synthetic import make_task
from lookhere.models import get_adapter
from lookhere.models.tiny import save_tiny
from lookhere.pretrain.recipe import (
    STAGE_START,
    NTPCollator,
    PretrainConfig,
    StageConfig,
    load_stage_model,
    training_args,
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max-objects", type=int, default=4)
    args = p.parse_args()
    model, processor = load_stage_model(args.run / "align" / "final")
    model.model.vision_tower.requires_grad_(False)
    cfg = PretrainConfig(instruct=StageConfig(args.steps, args.lr, 16), save_steps=10**6)
    task = make_task("scenes", seed=0, mode="instruct", image_size=96, patch_size=8,
                     max_objects=args.max_objects, skills=("colour", "shape"))
    data = TaskDataset(task, args.steps * 16, start=STAGE_START["instruct"])
    collate = NTPCollator(GroundingCollator(processor, get_adapter(model), targets=False))
    model.train()
    Trainer(model=model, args=training_args(cfg, "instruct", args.out, True),
            train_dataset=data, data_collator=collate).train()
    model.eval()
    save_tiny(model, processor, args.out / "final")
    subprocess.run([sys.executable, str(Path(__file__).parent / "pretrain_binding.py"),
                    "--model", str(args.out / "final")], check=True)


if __name__ == "__main__":
    main()
