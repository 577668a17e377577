"""Summarise `lookhere experiment klal` outputs as the markdown tables of docs/results.md.

    python experiments/summarise.py runs/experiments/klal_seeds [more folders ...]

Each folder holds seed<N>.json files; every (task, condition) gets accuracy (mean and sd over
seeds, and each seed's value with its bootstrap 95% interval) and the attention ratio; every
task with both conditions, the difference KLAL - NTP per seed and its mean with a 95%
t-interval over seeds (paired: the same seed's two runs share weights and batches).
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
             f"Settings: {_model(train)}, "
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
    diffs = [_difference(task, [runs[s]["tasks"].get(task, {}) for s in seeds])
             for task in first["tasks"]]
    return "\n".join(lines + [""] + [d for d in diffs if d]) + "\n"


def _model(train) -> str:
    if train.init:
        return f"fine-tuned from `{train.init}` ({train.image_size} px)"
    return f"family `{train.family}`, size `{train.size}`"


# two-sided 97.5% quantiles of Student's t for 1..9 degrees of freedom
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262)


def _difference(task: str, per_seed: list[dict]) -> str:
    """``KLAL - NTP`` per seed and the mean with its 95% t-interval (points)."""
    d = [100 * (c["klal"]["accuracy"] - c["ntp"]["accuracy"]) for c in per_seed
         if {"ntp", "klal"} <= set(c)]
    if not d:
        return ""
    text = f"{task}: KLAL − NTP per seed {', '.join(f'{x:+.1f}' for x in d)} points"
    if 2 <= len(d) <= len(_T975) + 1:
        half = _T975[len(d) - 2] * statistics.stdev(d) / len(d) ** 0.5
        text += (f"; mean {statistics.mean(d):+.1f}, 95% t-interval "
                 f"[{statistics.mean(d) - half:+.1f}, {statistics.mean(d) + half:+.1f}]")
    return text + "."


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    print("\n".join(table(Path(a)) for a in sys.argv[1:]))
