"""Re-run the head search and REC of a finished `lookhere experiment heads` run on its saved
models (`--save-models`) with other selection settings, without retraining.

    .venv/bin/python experiments/heads_reselect.py runs/experiments/heads_long/seed0.json \
        --per-sample 2

writes ``seed0.per_sample2.json`` beside the input, the same schema with new ``spec``,
``stability`` and ``rec`` per trained condition (VQA and training records are kept).
"""

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from lookhere.experiment.heads import HeadsExperimentConfig, held_out_splits, search_and_ground
from lookhere.io import write_json
from lookhere.models.loading import load_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", type=Path, help="a seed<N>.json of a run with saved models")
    p.add_argument("--per-sample", type=int, required=True, help="heads counted per sample")
    args = p.parse_args()
    results = json.loads(args.results.read_text())
    config = dataclasses.replace(HeadsExperimentConfig.from_json(results["config"]),
                                 per_sample=args.per_sample)
    rec_test = held_out_splits(config)[1]
    models = args.results.with_suffix("") / "models"
    for condition, entry in results["conditions"].items():
        path = models / condition
        if not path.is_dir():
            print(f"{condition}: no saved model at {path}, left as it was")
            continue
        model, processor, _ = load_model(str(path), dtype=torch.float32)
        spec, stable, rec = search_and_ground(config, model.eval(), processor, rec_test, False)
        entry.update(spec=spec.to_json(), stability=stable.to_json(), rec=rec.to_json())
        print(f"{condition}: heads {spec.heads}, pointing "
              + ", ".join(f"{k} {100 * v.pointing:.1f}" for k, v in rec.methods.items()))
    results["config"] = config.to_json()
    out = args.results.with_name(f"{args.results.stem}.per_sample{args.per_sample}.json")
    print(f"written: {write_json(results, out)}")


if __name__ == "__main__":
    main()
