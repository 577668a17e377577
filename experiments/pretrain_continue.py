"""Diagnostic: would more instruction steps reach the targets? Continues a run's
``instruct/final`` on fresh Scenes conversations (the indices after the run's own), then
`pretrain_binding.py`'s check.

    python experiments/pretrain_continue.py --run runs/pretrain3 --out runs/pretrain3_more \
        --steps 1500 --lr 5e-4
"""

import argparse
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

from lookhere.data.dataset import TaskDataset
from lookhere.data.synthetic import make_task
from lookhere.models.tiny import save_tiny
from lookhere.pretrain.recipe import (
    STAGE_START,
    PretrainConfig,
    StageConfig,
    load_stage_model,
    ntp_trainer,
    training_args,
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--lr", type=float, default=5e-4)
    args = p.parse_args()
    run = PretrainConfig.from_json(json.loads((args.run / "config.json").read_text()))
    more = StageConfig(args.steps, args.lr, run.instruct.batch_size)
    cfg = dataclasses.replace(run, instruct=more, save_steps=10**6)
    model, processor = load_stage_model(args.run / "instruct" / "final")
    task = make_task("scenes", seed=cfg.data_seed, **cfg.scenes("instruct"))
    seen = run.instruct.steps * run.instruct.batch_size
    data = TaskDataset(task, args.steps * cfg.instruct.batch_size,
                       start=STAGE_START["instruct"] + seen)
    ntp_trainer(model, processor, data, training_args(cfg, "instruct", args.out, True)).train()
    model.eval()
    save_tiny(model, processor, args.out / "final")
    subprocess.run([sys.executable, str(Path(__file__).with_name("pretrain_binding.py")),
                    "--model", str(args.out / "final"), "--n", "200"], check=True)


if __name__ == "__main__":
    main()
