"""Per-head diagnosis of a saved model's localization heads on held-out Shapes REC prompts.

For every head of layers >= 2: the pointing game of its own map (peak cell inside the gold
box), whether that peak lies on any object, the attention ratio on the gold box's cells (mean
attention on cells the box touches / mean on all cells; 1 = uniform), the box IoU of grounding
with that head alone (and without smoothing), and the predicted box's area relative to the gold
box's. Usage (a model saved by `lookhere experiment heads
--save-models`):

    .venv/bin/python experiments/heads_diagnose.py runs/experiments/heads_seeds/seed2/models/klal
"""

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from lookhere.eval.metrics import box_iou
from lookhere.experiment.heads import HeadsExperimentConfig, held_out_splits
from lookhere.heads.grounding import ground
from lookhere.heads.locate import head_maps
from lookhere.models.loading import load_model


def _mode(cells: list[tuple[int, int]]) -> str:
    values, counts = np.unique(np.array(cells), axis=0, return_counts=True)
    i = int(np.argmax(counts))
    return f"({values[i][0]}, {values[i][1]}) ({100 * counts[i] / len(cells):.0f}%)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="saved model folder")
    p.add_argument("--samples", type=int, default=300, help="held-out REC samples")
    p.add_argument("--results", type=Path, help="the run's seed<N>.json, for its settings "
                   "(default: <model>/../../seed<N>.json, as --save-models lays it out)")
    args = p.parse_args()
    results = args.results or Path(args.model).parents[1].with_suffix(".json")
    settings = json.loads(results.read_text())["config"]
    model, processor, adapter = load_model(args.model, dtype=torch.float32)
    model.eval()
    config = dataclasses.replace(HeadsExperimentConfig.from_json(settings),
                                 test_samples=args.samples, vqa_samples=1)
    rec = held_out_splits(config)[1]
    heads = [(la, h) for la in range(2, adapter.num_layers) for h in range(adapter.num_heads)]
    stats = {h: {k: [] for k in ("pointing", "any", "ratio", "iou", "iou0", "area", "peak")}
             for h in heads}
    for s, (maps, geo) in zip(rec, head_maps(model, processor, adapter, rec, heads, batch_size=50),
                              strict=True):
        gold = s.geometry.boxes[0]
        touched = geo.box_coverage(gold) > 0
        gold_area = (gold[2] - gold[0]) * (gold[3] - gold[1])
        objects = np.any([geo.box_coverage(o["box"]) > 0 for o in s.meta["objects"]], axis=0)
        for h, m in zip(heads, maps, strict=True):
            r, c = np.unravel_index(np.argmax(m), m.shape)
            box = ground(m, geo).box
            stats[h]["pointing"].append(bool(touched[r, c]))
            stats[h]["any"].append(bool(objects[r, c]))
            stats[h]["iou0"].append(box_iou(ground(m, geo, sigma=0).box, gold))
            stats[h]["peak"].append((int(r), int(c)))
            stats[h]["ratio"].append(m[touched].mean() / m.mean())
            stats[h]["iou"].append(box_iou(box, gold))
            stats[h]["area"].append((box[2] - box[0]) * (box[3] - box[1]) / gold_area)
    print("| head | pointing | on any object | attention ratio | box IoU | box IoU, no smoothing "
          "| box area / gold area | most common peak cell (share) |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for h, st in stats.items():
        print(f"| L{h[0]}H{h[1]} | {100 * np.mean(st['pointing']):.1f} | "
              f"{100 * np.mean(st['any']):.1f} | {np.mean(st['ratio']):.2f} | "
              f"{np.mean(st['iou']):.3f} | {np.mean(st['iou0']):.3f} | "
              f"{np.median(st['area']):.1f} | {_mode(st['peak'])} |")
    chance = np.mean([(held.geometry.boxes[0][2] - held.geometry.boxes[0][0])
                      * (held.geometry.boxes[0][3] - held.geometry.boxes[0][1])
                      / (held.image.size[0] * held.image.size[1]) for held in rec])
    print(f"gold box area / image area (mean): {chance:.3f}; pointing by picking one of the "
          f"objects at random: {100 * np.mean([1 / len(x.meta['objects']) for x in rec]):.1f}%")


if __name__ == "__main__":
    main()
