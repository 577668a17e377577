"""Tables of docs/results.md's localization-heads section from `lookhere experiment heads` JSON;
with ``--figures DIR``, the first seed's figures (summed maps per model, each head's map).

    .venv/bin/python experiments/summarise_heads.py runs/experiments/heads_seeds --figures docs
"""

import argparse
import json
from pathlib import Path

import numpy as np

LABELS = {"untrained": "untrained", "ntp": "NTP", "klal": "NTP+KLAL"}
METRICS = (("acc@0.5", "Acc@0.5"), ("pointing", "pointing"), ("mean_iou", "mean IoU"),
           ("mIoU", "mask mIoU"))


def cell(values: list[float]) -> str:
    v = 100 * np.asarray(values)
    return f"{v.mean():.1f}" if len(v) == 1 else f"{v.mean():.1f} ± {v.std(ddof=1):.1f}"


def main(folder: str, figures: Path | None = None) -> None:
    paths = [Path(folder)] if Path(folder).is_file() else sorted(Path(folder).glob("seed?.json"))
    runs = {p.stem: json.loads(p.read_text()) for p in paths}
    if not runs:
        raise SystemExit(f"no seed*.json in {folder}")
    conds = [c for c in LABELS if c in next(iter(runs.values()))["conditions"]]
    order = ("heads", "all_heads", "random_heads", "centre", "text", "ceiling")
    found = next(iter(runs.values()))["conditions"][conds[0]]["rec"]["methods"]
    methods = [m for m in order if m in found]
    print(f"seeds: {', '.join(runs)}\n")
    print("| metric (%) | method | " + " | ".join(LABELS[c] for c in conds) + " |")
    print("|---|---|" + "---:|" * len(conds))
    for key, label in METRICS:
        for m in methods:
            vals = [cell([r["conditions"][c]["rec"]["methods"][m][key] for r in runs.values()])
                    for c in conds]
            print(f"| {label} | {m} | " + " | ".join(vals) + " |")
    vqa = [cell([r["conditions"][c]["vqa"]["accuracy"] for r in runs.values()]) for c in conds]
    print("| VQA accuracy | (generation) | " + " | ".join(vqa) + " |\n")
    print("| seed | model | VQA by type (%) | heads (layer, head) | tau | search repeats' heads "
          "| mean overlap |")
    print("|---|---|---|---|---:|---|---:|")
    for seed, r in runs.items():
        for c in conds:
            e = r["conditions"][c]
            types = ", ".join(f"{t} {100 * v:.0f}" for t, v in e["vqa"]["by_type"].items())
            heads = " ".join(f"({h[0]},{h[1]})" for h in e["spec"]["heads"])
            reps = " / ".join(" ".join(f"({h[0]},{h[1]})" for h in hs)
                              for hs in e["stability"]["heads"])
            print(f"| {seed} | {LABELS[c]} | {types} | {heads} | {e['spec']['tau']:.3f} | "
                  f"{reps} | {e['stability']['mean_overlap']:.2f} |")


    if figures is not None:
        from lookhere.experiment.heads import HeadsResult
        from lookhere.report.sections import heads_figures

        first = HeadsResult.from_json(next(iter(runs.values())))
        for path in heads_figures(figures, first.config, first).values():
            print(f"figure: {path}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", help="folder of seed<N>.json files, or one such file")
    p.add_argument("--figures", type=Path, help="write the first seed's figures here")
    args = p.parse_args()
    main(args.folder, args.figures)
