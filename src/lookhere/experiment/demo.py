"""``make demo``: the papers' claims in miniature on the embedded tiny VLM, as one HTML report.

Part 1 (KLAL): NTP vs NTP+KLAL on Grid Patch, Line Intersection and Line Tracing
(`lookhere.experiment.klal`). Writes ``results.json``, ``results.md``, the figures and
``report.html`` to the output folder.
"""

from __future__ import annotations

import dataclasses
import platform
import time
from pathlib import Path
from typing import Any

import torch

from lookhere.data.sample import Geometry, Sample
from lookhere.experiment import klal
from lookhere.report import (
    plot_attention_maps,
    plot_ratio_bars,
    plot_training_curves,
    write_report,
)


def run_demo(out_dir: str | Path, config: klal.KLALExperimentConfig | None = None,
             progress: bool = True, command: str = "make demo") -> Path:
    """Run every part of the demo into ``out_dir`` (must be new or empty); the report's path."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty; remove it or choose another folder")
    config = config or klal.KLALExperimentConfig()
    start = time.perf_counter()
    results = klal.run(config, out_dir, progress=progress)
    results.update(title="lookhere demo: NTP vs NTP+KLAL on the embedded tiny VLM",
                   command=command, settings=_settings(config),
                   elapsed_s=time.perf_counter() - start,
                   sections=[{"title": "How to read this", "html": _reading(config)}])
    figures = _figures(out_dir, config, results)
    return write_report(out_dir, results, figures)


def _reading(config: klal.KLALExperimentConfig) -> str:
    opts = {t: klal.task_config(config, t) for t in config.tasks}
    chance = []
    if "grid_patch" in opts:
        g = opts["grid_patch"]
        chance.append(f"Grid Patch {100 / (g['grid_rows'] * g['grid_cols']):.1f}% "
                      f"({g['grid_rows']}x{g['grid_cols']} cells)")
    if "line_intersection" in opts:
        chance.append("Line Intersection 50% (balanced yes/no)")
    if "line_tracing" in opts:
        chance.append("Line Tracing about 30% (3-4 curves)")
    return (
        f"<p>Each run trains a fresh tiny {config.family} model (size preset {config.size!r}) "
        f"from scratch for "
        f"{config.steps} steps of {config.batch_size} samples (seed {config.seed}); NTP and "
        f"NTP+KLAL (lambda {config.weight}, query {config.query}) see the same batches from the "
        f"same initial weights. The test split ({config.test_samples} samples per task) comes "
        f"from a different data seed and was never used for any choice. Chance accuracy: "
        f"{'; '.join(chance)}.</p><p>The attention ratio is measured at the same query on a "
        f"teacher-forced forward: 1 means the target tokens get exactly their share of the "
        f"answer token's visual attention. docs/results.md has the 3-seed table, the ablations "
        f"and the discussion.</p>"
    )


def _figures(out_dir: Path, config: klal.KLALExperimentConfig, results: dict[str, Any]
             ) -> dict[str, Path]:
    figures = {
        "The answer token's attention on held-out test images (the KLAL paper's figure 3): "
        "image with the target outlined | NTP model | NTP+KLAL model. Each map is the head "
        "average of the attention renormalised over visual tokens, averaged over layers.":
            plot_attention_maps(_examples(config, results), out_dir / "attention_maps.png"),
        "Attention ratio on the test split (figure 4): mean attention on target tokens / mean "
        "on all visual tokens, from the last answer token. Bars: mean with 95% bootstrap CI; "
        "dots: samples. Above 1 means the target gets more than its share.":
            plot_ratio_bars(results, out_dir / "attention_ratio.png"),
        "Training curves: NTP loss, and the KLAL term (dashed where it is only measured).":
            plot_training_curves(results, out_dir / "training_curves.png"),
    }
    return figures


def _examples(config: klal.KLALExperimentConfig, results: dict[str, Any]) -> list[dict]:
    examples = []
    for task, ex in results["examples"].items():
        test = {s.id: s for s in klal.held_out_split(
            dataclasses.replace(config, test_samples=len(ex["ids"])), task)}
        for sid in ex["ids"]:
            maps = {klal_label(c): ex["maps"][c][sid]["map"] for c in ex["maps"]
                    if sid in ex["maps"][c]}
            extent = next(iter(ex["maps"].values()))[sid]["extent"]
            s = test[sid]
            examples.append({"image": s.image, "title": f"{task}, answer {s.answer}",
                             "maps": maps, "boxes": _boxes(s), "extent": extent})
    return examples


def klal_label(condition: str) -> str:
    return {"ntp": "NTP", "klal": "NTP+KLAL"}.get(condition, condition)


def _boxes(s: Sample) -> list[tuple[float, float, float, float]]:
    g: Geometry = s.geometry
    r = max(2.0, s.image.size[0] / 40)
    return list(g.boxes) + [(x - r, y - r, x + r, y + r) for x, y in g.points]


def _settings(config: klal.KLALExperimentConfig) -> dict[str, Any]:
    import transformers

    return {"klal": config.to_json(), "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available()}
