"""How much of the visual tokens' variance each label explains, for one or more pretrained runs.

For each run, the vision tower of ``vision/final`` (the layers LLaVA reads, concatenated, and
each alone when it reads more than one) and, once the run has one, the projector of
``instruct/final`` (what the language model reads) embed vision-mode scenes of a seed pretraining
never draws (``--seed``, default 30,000, no evaluation's either); over the cells
that lie on an object, the share of the features' total variance that lies between the classes
of a label (trace of the between-class scatter / trace of the total scatter, an R^2) is printed
per label map. A label whose share is small is present but quiet: the language model, trained
from scratch, has to find it among louder directions.

    python experiments/pretrain_feature_share.py runs/pretrain3 runs/pretrain4 --n 100 --seed 10000
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from lookhere.data.dataset import TaskDataset
from lookhere.data.synthetic import make_task
from lookhere.models.loading import load_model
from lookhere.pretrain.projector import image_features
from lookhere.pretrain.recipe import PretrainConfig
from lookhere.pretrain.vision import DensePatchCollator

LABELS = ("colour", "shape", "size", "box_x0", "box_y0")


def between_share(x: torch.Tensor, y: torch.Tensor) -> float:
    """trace(between-class scatter) / trace(total scatter) of features ``x`` (N, D), labels y."""
    x = x.double() - x.double().mean(0)
    total = (x ** 2).sum()
    between = sum((y == c).sum() * (x[y == c].mean(0) ** 2).sum() for c in y.unique())
    return float(between / total)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run folders of `lookhere pretrain train`")
    parser.add_argument("--n", type=int, default=100, help="held-out scenes")
    parser.add_argument("--seed", type=int, default=30_000, help="Scenes data seed")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| run | features | " + " | ".join(LABELS) + " |")
    print("|---|---|" + "---|" * len(LABELS))
    for run in map(Path, args.runs):
        config = PretrainConfig.from_json(json.loads((run / "config.json").read_text()))
        final = run / "instruct" / "final"
        has_projector = (final / "config.json").is_file()
        model, processor, _ = load_model(str(final if has_projector else run / "vision" / "final"),
                                         dtype="float32")
        tower = model.model.vision_tower
        task = make_task("scenes", seed=args.seed, **config.scenes("vision"))
        samples = list(TaskDataset(task, args.n).materialise().samples)
        side = tower.config.image_size // tower.config.patch_size
        batch = DensePatchCollator(processor.image_processor, side * side)(samples)
        layers = model.config.vision_feature_layer
        layers = [layers] if isinstance(layers, int) else list(layers)
        with torch.no_grad():
            read = [image_features(tower, batch["pixel_values"], [i]) for i in layers]
            feats = torch.cat(read, dim=-1)  # (B, K, D * len(layers)), as LLaVA reads them
            proj = model.model.multi_modal_projector(feats)  # (B, K, hidden)
        on = batch["labels_colour"] != 0
        rows = [("tower", feats)]
        if len(layers) > 1:
            rows += [(f"tower layer {i}", x) for i, x in zip(layers, read, strict=True)]
        if has_projector:
            rows.append(("projector", proj))
        for name, x in rows:
            shares = []
            for label in LABELS:
                key = f"labels_{label}"
                shares.append(between_share(x[on], batch[key][on]) if key in batch else None)
            cells = " | ".join("-" if s is None else f"{100 * s:.1f}" for s in shares)
            print(f"| {run.name} | {name} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
