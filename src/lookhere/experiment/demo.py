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
import html
import platform
import time
from pathlib import Path
from typing import Any

import torch

from lookhere.data.sample import Geometry, Sample
from lookhere.experiment import heads, klal, lens
from lookhere.models.tiny import resolve_size
from lookhere.report import (
    plot_attention_maps,
    plot_ratio_bars,
    plot_training_curves,
    write_report,
)
from lookhere.tables import pct

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
        figures.update(lens.lens_figures(out_dir, lens_config, lres))
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
        f"<p>Each run trains a fresh tiny {train.family} model (size preset {train.size!r}) "
        f"from scratch for "
        f"{train.steps} steps of {train.batch_size} samples (seed {train.seed}); NTP and "
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


HEADS_LABELS = {"untrained": "untrained", "ntp": "NTP", "klal": "NTP+KLAL"}
METHOD_LABELS = {"heads": "localization heads", "all_heads": "all heads (mean)",
                 "random_heads": "random heads", "centre": "centre box", "text": "box as text"}


def heads_section(config: heads.HeadsExperimentConfig, hres: dict[str, Any]) -> str:
    """The heads part's HTML: what was run, then one REC table per model."""
    e = html.escape
    conds = hres["conditions"]
    methods = list(next(iter(conds.values()))["rec"]["methods"])
    head = "".join(f"<th>{e(HEADS_LABELS.get(c, c))}</th>" for c in conds)
    rows = []
    for metric, label in (("acc@0.5", "Acc@0.5"), ("pointing", "pointing game"),
                          ("mean_iou", "mean box IoU"), ("mIoU", "mask mIoU")):
        for m in methods:
            cells = "".join(f"<td>{pct(conds[c]['rec']['methods'][m].get(metric))}</td>"
                            for c in conds)
            rows.append(f"<tr><th>{e(label)}: {e(METHOD_LABELS.get(m, m))}</th>{cells}</tr>")
    extra = [("VQA accuracy (held-out)", lambda c: pct(c["vqa"]["accuracy"])),
             ("heads found (layer, head)", lambda c: e(str([tuple(h) for h in
                                                            c["spec"]["heads"]]))),
             ("tau (S_img knee)", lambda c: f"{c['spec']['tau']:.3f}"),
             ("search repeats agreeing (mean overlap)",
              lambda c: f"{c['stability']['mean_overlap']:.2f}")]
    for label, fn in extra:
        rows.append(f"<tr><th>{e(label)}</th>" + "".join(f"<td>{fn(conds[c])}</td>"
                                                          for c in conds) + "</tr>")
    table = (f"<table><thead><tr><th>in %</th>{head}</tr></thead><tbody>{''.join(rows)}"
             "</tbody></table>")
    train = config.train
    size = resolve_size(train.size)
    return (f"<p>Three tiny {e(train.family)} models (preset {e(train.size)}, "
            f"{size.layers} LLM layers of {size.heads} heads): random weights; trained "
            f"{train.steps} steps from scratch on Shapes VQA with NTP; the same with "
            f"NTP+KLAL (lambda {config.klal.weight}). Then, "
            f"training-free, the top-{config.top_k} localization heads are searched on "
            f"{config.search_samples} Shapes REC prompts (prefill: image, then \"Where is "
            f"&lt;expression&gt;?\"; layers 0-1 skipped), repeated on {config.search_repeats} "
            f"disjoint sample sets, and {config.test_samples} held-out expressions are "
            f"grounded.</p>{table}<p>Pointing game: the peak of the summed map (or a box's "
            f"centre) lies in the gold box. What to look for: NTP+KLAL's heads point at the "
            f"referred object far more often than NTP's, the untrained control's and the centre "
            f"box; no method reaches IoU 0.5, because the heads light up every object and the "
            f"8 x 8 grid makes the boxes large. docs/results.md has the 3-seed numbers, a "
            f"per-head diagnosis and the discussion.</p>")


def heads_figures(out_dir: Path, config: heads.HeadsExperimentConfig, hres: dict[str, Any]
                  ) -> dict[str, Path]:
    """The summed maps per model, and each found head's map (the paper's figure 1)."""
    ex = hres["examples"]
    test = {s.id: s for s in heads.held_out_splits(
        dataclasses.replace(config, test_samples=len(ex["ids"]), vqa_samples=1))[1]}
    conds = [c for c in hres["conditions"] if c in ex]
    summed, per_head = [], []
    for sid in ex["ids"]:
        s = test[sid]
        title = s.structured["expression"]
        summed.append({"image": s.image, "title": title, "boxes": list(s.geometry.boxes),
                       "maps": {HEADS_LABELS[c]: ex[c][sid]["heatmap"] for c in conds},
                       "predicted": {HEADS_LABELS[c]: ex[c][sid]["box"] for c in conds}})
        best = "klal" if "klal" in conds else conds[-1]
        spec = hres["conditions"][best]["spec"]
        per_head.append({"image": s.image, "title": title, "boxes": list(s.geometry.boxes),
                         "maps": {f"{HEADS_LABELS[best]} L{h[0]}H{h[1]}": m
                                  for h, m in zip(spec["heads"], ex[best][sid]["maps"],
                                                  strict=True)}})
    return {
        "Localization heads on held-out Shapes expressions: the found heads' smoothed maps "
        "summed, per model; gold box outlined, the predicted box dashed.":
            plot_attention_maps(summed, out_dir / "heads_maps.png",
                                "Found heads' smoothed maps, summed (gold box outlined, predicted "
                                "box dashed; each map scaled to its own max)"),
        "Each localization head's own attention (the paper's figure 1 analogue), from the "
        "last token of the prefill prompt.":
            plot_attention_maps(per_head, out_dir / "heads_each.png",
                                "Each localization head's attention from the prompt's last token "
                                "(gold box outlined; each map scaled to its own max)"),
    }


# --------------------------------------------------------------------------- the lens part


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


def lens_section(config: lens.LensExperimentConfig, lres: dict[str, Any]) -> str:
    """The lens part's HTML: what was run, a table per concept type (mIoU and pointing per layer
    and model, and the no-model reference), and VQA accuracy."""
    e = html.escape
    conds = [c for c in lens.CONDITIONS if c in lres["conditions"]]
    train = config.train
    n_layers = resolve_size(train.size).layers
    trained_layer = config.lll.layer % n_layers
    ntp = lres["conditions"].get("ntp", {}).get("train", {})
    ntp_from = (f"reused from {e(ntp['reused_from'])}: the same initial weights, batches and "
                "steps, so the very same model" if ntp.get("reused_from") else "trained here")
    tables = "".join(_lens_table(kind, lres, conds, trained_layer) for kind in lens.KINDS)
    vqa = "".join(f"<tr><th>{e(lens.LABELS.get(c, c))}</th>"
                  f"<td>{pct(lres['conditions'][c]['vqa']['accuracy'])}</td></tr>"
                  for c in conds)
    shared = lres.get("concepts", {}).get("shared_ids", [])
    shared_note = ("" if not shared else " Words that share their first token (so their maps "
                   "coincide): " + "; ".join(e(" / ".join(ws)) for ws in shared) + ".")
    rule = ": the cells above the map's mean" if config.threshold == "mean" else ""
    return (f"<p>Two tiny {e(train.family)} models (preset {e(train.size)}, {n_layers} LLM "
            f"layers), trained {train.steps} steps from scratch on Shapes VQA from the same "
            f"initial weights on the same batches: NTP ({ntp_from}), and NTP + LLL (mu "
            f"{config.lll.weight}, beta {config.lll.beta}, on the output of layer "
            f"{trained_layer}; "
            f"{_lll_concept(config)}). On {config.test_samples} held-out images, for every "
            f"shape word and every colour word of the image's objects, the logit-lens map "
            f"p(word | visual token) of each layer is segmented (threshold "
            f"{e(repr(config.threshold))}{rule}) and scored against the union mask of the "
            f"objects carrying the word.{shared_note}</p>{tables}"
            f"<table><thead><tr><th>in %</th><th>VQA accuracy ({config.vqa_samples} held-out "
            f"questions)</th></tr></thead><tbody>{vqa}</tbody></table>"
            f"<p>mIoU: mean over (image, word) of the IoU of the segmented map with the word's "
            f"objects; pointing game: the map's peak cell lies on them. The no-model row is the "
            f"share of the image those objects cover: the mIoU of a whole-image mask and the "
            f"pointing game of a random peak. What to look for: whether NTP+LLL's maps at the "
            f"trained layer (L{trained_layer}) point at the word's objects more often than "
            f"NTP's and than the no-model row, and at which layers the lens of either model "
            f"says anything about the image.</p>")


def _lll_concept(config: lens.LensExperimentConfig) -> str:
    lll = config.lll_config("lll")
    if lll.scope == "image":
        return "every shape and colour word of the image is a concept, its region its objects"
    return (f"a question's concept is the first of its objects' attributes "
            f"({', '.join(map(html.escape, lll.concept))}) that they share, the region every "
            f"object carrying that word")


def _lens_table(kind: str, lres: dict[str, Any], conds: list[str], trained_layer: int) -> str:
    e = html.escape
    head = "".join(f"<th>{e(lens.LABELS.get(c, c))} {m}</th>" for c in conds
                   for m in ("mIoU", "pointing"))
    rows = []
    for layer in lres["layers"]:
        name = f"L{layer}" + (" (LLL layer)" if layer == trained_layer else "")
        cells = "".join(f"<td>{pct(lres['conditions'][c]['lens'][str(layer)][kind].get(m))}</td>"
                        for c in conds for m in ("mIoU", "pointing"))
        rows.append(f"<tr><th>{e(name)}</th>{cells}</tr>")
    share = pct(lres["reference"][kind]["region_share"])
    rows.append("<tr><th>no model (whole image / random peak)</th>"
                + f"<td>{share}</td>" * (2 * len(conds)) + "</tr>")
    return (f"<table><thead><tr><th>{e(kind)} words, in %</th>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")
