"""Tables of docs/results.md's logit-lens section from `lookhere experiment lens` JSON; with
``--figures DIR``, the first seed's figures (lens maps NTP vs NTP+LLL, scores by layer).

    .venv/bin/python experiments/summarise_lens.py runs/experiments/lens_seeds --figures docs
"""

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

from lookhere.experiment.lens import LensScore

LABELS = {"ntp": "NTP", "lll": "NTP+LLL"}
#: (key, label) of every score, from the results' own type
METRICS = tuple((f.name, f.metadata["help"]) for f in dataclasses.fields(LensScore)
                if f.name != "n")


def cell(values: list[float]) -> str:
    v = 100 * np.asarray(values)
    return f"{v.mean():.1f}" if len(v) == 1 else f"{v.mean():.1f} ± {v.std(ddof=1):.1f}"


def main(folder: Path, figures: Path | None = None) -> None:
    paths = [folder] if folder.is_file() else sorted(folder.glob("seed?.json"))
    runs = {p.stem: json.loads(p.read_text()) for p in paths}
    if not runs:
        raise SystemExit(f"no seed<N>.json in {folder}")
    first = next(iter(runs.values()))
    conds = [c for c in LABELS if c in first["conditions"]]
    layers = list(first["conditions"][conds[0]]["lens"])
    print(f"seeds: {', '.join(runs)}\n")
    print("| layer | words | metric (%) | " + " | ".join(LABELS[c] for c in conds)
          + " | no model |")
    print("|---|---|---|" + "---:|" * (len(conds) + 1))
    for layer in layers:
        for kind in ("shape", "colour"):
            for key, label in METRICS:
                vals = [cell([r["conditions"][c]["lens"][layer][kind][key]
                              for r in runs.values()]) for c in conds]
                ref = first["reference"][kind]
                chance = {"mIoU": ref["region_share"], "pointing": ref["region_share"],
                          "pointing_object": ref["object_share"]}.get(key)
                tail = "-" if chance is None else f"{100 * chance:.1f}"
                print(f"| {layer} | {kind} | {label} | " + " | ".join(vals) + f" | {tail} |")
    vqa = [cell([r["conditions"][c]["vqa"]["accuracy"] for r in runs.values()]) for c in conds]
    print("| - | - | VQA accuracy | " + " | ".join(vqa) + " | - |")
    for seed, r in runs.items():
        for c in conds:
            print(f"{seed} {LABELS[c]} VQA by type: {r['conditions'][c]['vqa']['by_type']}")
    if figures is not None:
        from lookhere.experiment.lens import LensResult
        from lookhere.report.sections import lens_figures

        typed = LensResult.from_json(first)
        for path in lens_figures(figures, typed.config, typed).values():
            print(f"figure: {path}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", type=Path, help="folder of seed<N>.json files, or one such file")
    p.add_argument("--figures", type=Path, help="write the first seed's figures here")
    args = p.parse_args()
    main(args.folder, args.figures)
