"""Summarise `lookhere experiment klal` outputs as the markdown tables of docs/results.md.

    python experiments/summarise.py runs/experiments/klal_seeds [more folders ...]

Each folder holds seed<N>.json files; every (task, condition) gets accuracy (mean and sd over
seeds, and each seed's value with its bootstrap 95% interval) and the attention ratio.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from lookhere.experiment.klal import KLALExperimentConfig


def load(folder: Path) -> dict[int, dict]:
    runs = {}
    for path in sorted(folder.glob("seed*.json")):
        runs[int(path.stem[4:])] = json.loads(path.read_text())
    if not runs:
        raise SystemExit(f"{folder}: no seed*.json files")
    return runs


def _mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def table(folder: Path) -> str:
    runs = load(folder)
    seeds = sorted(runs)
    first = runs[seeds[0]]
    config = KLALExperimentConfig.from_json(first["settings"]["klal"])
    train, klal = config.train, config.klal
    lines = [f"### {folder.name}", "",
             f"Settings: family `{train.family}`, size `{train.size}`, "
             f"{train.steps} steps × batch {train.batch_size}, lr "
             f"{train.lr}, λ {klal.weight}, query "
             f"`{klal.query}`, {config.test_samples} test samples per task; "
             f"seeds {', '.join(map(str, seeds))}.", "",
             "| task | condition | accuracy % (mean ± sd) | per seed: accuracy [95% CI] | "
             "attention ratio (mean over seeds) | parse failures % |",
             "|---|---|---|---|---|---|"]
    order = {"ntp": 0, "klal": 1}
    for task, conds in first["tasks"].items():
        for cond in sorted(conds, key=lambda c: order.get(c, 2)):
            entries = [runs[s]["tasks"][task][cond] for s in seeds if cond in
                       runs[s]["tasks"].get(task, {})]
            acc = [e["accuracy"] for e in entries]
            per_seed = "; ".join(f"{100 * e['accuracy']:.1f} [{100 * e['ci95'][0]:.1f}, "
                                 f"{100 * e['ci95'][1]:.1f}]" for e in entries)
            ratios = [e["attention_ratio"]["mean"] for e in entries if e["attention_ratio"]]
            ratio = f"{statistics.mean(ratios):.2f}" if ratios else "—"
            fails = statistics.mean(e["parse_failure_rate"] for e in entries)
            lines.append(f"| {task} | {cond} | {_mean_sd(acc)} | {per_seed} | {ratio} | "
                         f"{100 * fails:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    print("\n".join(table(Path(a)) for a in sys.argv[1:]))
