"""How well a run's vision stage learned its dense labels, on held-out Scenes.

Loads the vision stage's last Trainer checkpoint (the tower *with* its per-patch heads, which
``vision/final`` drops), labels fresh scenes of a seed the recipe never draws (data seed + 10,000)
and reports, per label map, the accuracy over the cells that lie on something (label != 0) and
over all cells. For the box maps it also reports the mean absolute error in bins (1 bin = 1/24 of
the side).

    python experiments/pretrain_vision_accuracy.py --run runs/pretrain4 --n 200
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from lookhere.data.dataset import TaskDataset
from lookhere.data.synthetic import make_task
from lookhere.models.tiny import build_tiny
from lookhere.pretrain.recipe import PretrainConfig
from lookhere.pretrain.vision import LABEL_CLASSES, DensePatchCollator, DensePatchObjective


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="run folder of `lookhere pretrain train`")
    parser.add_argument("--n", type=int, default=200, help="held-out scenes")
    args = parser.parse_args()
    torch.set_num_threads(1)
    run = Path(args.run)
    config = PretrainConfig.from_json(json.loads((run / "config.json").read_text()))
    ckpts = sorted((run / "vision").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    if not ckpts:
        raise SystemExit(f"{run / 'vision'} has no Trainer checkpoint (it holds the heads)")
    model, processor = build_tiny(config.family, config.size, seed=config.seed)
    tower = model.model.vision_tower
    objective = DensePatchObjective(tower, tower.config.hidden_size,
                                    attribute_layer=config.attribute_layer)
    objective.load_state_dict(load_file(str(ckpts[-1] / "model.safetensors")))
    objective.eval()
    task = make_task("scenes", seed=config.data_seed + 10_000, **config.scenes("vision"))
    samples = list(TaskDataset(task, args.n).materialise().samples)
    side = tower.config.image_size // tower.config.patch_size
    batch = DensePatchCollator(processor.image_processor, side * side)(samples)
    with torch.no_grad():
        hidden = tower(batch["pixel_values"], output_hidden_states=True).hidden_states
        print(f"{ckpts[-1]}: {args.n} held-out scenes (seed {config.data_seed + 10_000})")
        print("| map | accuracy on objects % | accuracy on all cells % | mean |error| bins |")
        print("|---|---|---|---|")
        for name in LABEL_CLASSES:
            feats = hidden[objective.layer_of(name)][:, 1:]  # (B, K, D)
            pred = objective.heads[name](feats).argmax(-1)  # (B, K)
            gold = batch[f"labels_{name}"]
            on = gold != 0
            acc_on = (pred[on] == gold[on]).float().mean().item()
            acc_all = (pred == gold).float().mean().item()
            err = ((pred[on] - gold[on]).abs().float().mean().item()
                   if name.startswith("box_") else float("nan"))
            print(f"| {name} | {100 * acc_on:.1f} | {100 * acc_all:.1f} | "
                  f"{'' if err != err else f'{err:.2f}'} |")


if __name__ == "__main__":
    main()
