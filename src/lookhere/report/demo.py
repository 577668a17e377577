"""``make demo``: the papers' claims in miniature on the embedded tiny VLM, as one HTML report.

Part 1 (KLAL): NTP vs NTP+KLAL on Grid Patch, Line Intersection and Line Tracing
(`lookhere.experiment.klal`). Part 2 (localization heads): the heads of tiny models trained on
Shapes VQA, found training-free and used for REC against baselines
(`lookhere.experiment.heads`, a shorter run than docs/results.md's). Part 3 (the logit lens):
NTP vs NTP+LLL on the same Shapes VQA, the lens maps of every shape and colour word segmented
per layer (`lookhere.experiment.lens`); its NTP model is part 2's, which is the very same
training (saved under ``heads/models/ntp``), so only NTP+LLL is trained. Writes
``results.json``, ``results.md``, the figures and ``report.html`` to the output folder.
"""

from __future__ import annotations

import dataclasses
import platform
import time
from pathlib import Path
from typing import Any

import torch

from lookhere.data.sample import Geometry, Sample
from lookhere.experiment import heads, klal, lens
from lookhere.report.page import (
    plot_attention_maps,
    plot_ratio_bars,
    plot_training_curves,
    write_report,
)
from lookhere.report.sections import heads_figures, heads_section, lens_figures, lens_section

# The demo's heads part: the experiment's settings with fewer samples and steps (~4 minutes).
# Its models are saved, so that the lens part reuses the NTP one.
DEMO_HEADS = heads.HeadsExperimentConfig(
    train=dataclasses.replace(heads.TRAIN, steps=1000), search_samples=500, search_repeats=2,
    test_samples=300, vqa_samples=300, save_models=True)
# The demo's lens part: the training of DEMO_HEADS (so its NTP model is reused).
DEMO_LENS = lens.LensExperimentConfig(train=DEMO_HEADS.train, test_samples=300, vqa_samples=300)


def run_demo(out_dir: str | Path, config: klal.KLALExperimentConfig | None = None,
             progress: bool = True, command: str = "make demo",
             heads_config: heads.HeadsExperimentConfig | None = DEMO_HEADS,
             lens_config: lens.LensExperimentConfig | None = DEMO_LENS) -> Path:
    """Run every part of the demo into ``out_dir`` (must be new or empty); the report's path.
    ``heads_config=None`` / ``lens_config=None`` leave out the localization-heads / lens part.
    The lens part reuses the heads part's NTP model when that part saves its models
    (``save_models``) and trains under the same settings (`lens.ntp_mismatches`); otherwise it
    trains its own."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty; remove it or choose another folder")
    config = config or klal.KLALExperimentConfig()
    start = time.perf_counter()
    results = klal.run(config, out_dir, progress=progress)
    sections = [{"title": "How to read this", "html": _reading(config)}]
    figures = _figures(out_dir, config, results)
    hres = None
    if heads_config is not None:
        hres = heads.run(heads_config, out_dir / "heads", progress=progress)
        results["heads"] = hres
        sections.append({"title": "Localization heads (training-free grounding)",
                         "html": heads_section(heads_config, hres)})
        figures.update(heads_figures(out_dir, heads_config, hres))
    if lens_config is not None:
        trained = reused_ntp(lens_config, heads_config, hres, out_dir / "heads")
        lres = lens.run(lens_config, out_dir / "lens", progress=progress, trained=trained)
        results["lens"] = lres
        sections.append({"title": "The logit lens (NTP vs NTP+LLL)",
                         "html": lens_section(lens_config, lres)})
        figures.update(lens_figures(out_dir, lens_config, lres))
    results.update(title="lookhere demo: KLAL, localization heads and the logit lens on the "
                         "embedded tiny VLM",
                   command=command, settings=_settings(config, heads_config, lens_config),
                   elapsed_s=time.perf_counter() - start, sections=sections)
    return write_report(out_dir, results, figures)


def _reading(config: klal.KLALExperimentConfig) -> str:
    train = config.train
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
        f"<p>Each run is {train.describe('one')}, batches of {train.batch_size} samples "
        f"(seed {train.seed}); NTP and "
        f"NTP+KLAL (lambda {config.klal.weight}, query {config.klal.query}) see the same batches "
        f"from the "
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


def _settings(config: klal.KLALExperimentConfig,
              heads_config: heads.HeadsExperimentConfig | None = None,
              lens_config: lens.LensExperimentConfig | None = None) -> dict[str, Any]:
    import transformers

    return {"klal": config.to_json(),
            "heads": None if heads_config is None else heads_config.to_json(),
            "lens": None if lens_config is None else lens_config.to_json(),
            "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available()}


def reused_ntp(config: lens.LensExperimentConfig, heads_config: heads.HeadsExperimentConfig | None,
               hres: dict[str, Any] | None, heads_dir: Path) -> dict[str, lens.Trained]:
    """``{"ntp": the heads part's saved NTP model}`` for `lens.run`, when it is the lens part's
    NTP training (both run 'ntp', same training settings, models saved); else ``{}``."""
    if (heads_config is None or hres is None or not heads_config.save_models
            or "ntp" not in heads_config.conditions or "ntp" not in config.conditions
            or lens.ntp_mismatches(config, heads_config)):
        return {}
    from lookhere.models.loading import load_model

    model, processor, _ = load_model(str(heads_dir / "models" / "ntp"), dtype=torch.float32)
    model.to("cuda" if torch.cuda.is_available() else "cpu")  # where the Trainer trains
    return {"ntp": lens.Trained(model, processor, hres["conditions"]["ntp"]["train"],
                                heads_config, source="the heads part")}
