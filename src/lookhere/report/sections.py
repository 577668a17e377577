"""The demo report's sections: HTML and figures of the localization-heads and logit-lens parts
(the KLAL part's table and figures are `lookhere.report.page`'s)."""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lookhere.experiment import heads, lens
from lookhere.experiment.lens import (
    CONDITIONS,
    KINDS,
    LABELS,
    LensExperimentConfig,
    held_out_splits,
)
from lookhere.models.adapter import resolve_layers
from lookhere.report.page import plot_attention_maps
from lookhere.tables import pct

HEADS_LABELS = {"untrained": "untrained", "ntp": "NTP", "klal": "NTP+KLAL"}
METHOD_LABELS = {"heads": "localization heads", "all_heads": "all heads (mean)",
                 "random_heads": "random heads", "centre": "centre box", "text": "box as text",
                 "ceiling": "ceiling (the object's own map)"}


def heads_section(config: heads.HeadsExperimentConfig, hres: heads.HeadsResult) -> str:
    """The heads part's HTML: what was run, then one REC table per model."""
    e = html.escape
    conds = hres.conditions
    methods = list(next(iter(conds.values())).rec.methods)
    head = "".join(f"<th>{e(HEADS_LABELS.get(c, c))}</th>" for c in conds)
    rows = []
    for metric, label in (("acc_at_iou", "Acc@0.5"), ("pointing", "pointing game"),
                          ("mean_iou", "mean box IoU"), ("miou", "mask mIoU")):
        for m in methods:
            cells = "".join(f"<td>{pct(getattr(conds[c].rec.methods[m], metric))}</td>"
                            for c in conds)
            rows.append(f"<tr><th>{e(label)}: {e(METHOD_LABELS.get(m, m))}</th>{cells}</tr>")
    extra = [("VQA accuracy (held-out)", lambda c: pct(c.vqa.accuracy)),
             ("heads found (layer, head)", lambda c: e(str([tuple(h) for h in c.spec.heads]))),
             ("tau (S_img knee)", lambda c: f"{c.spec.tau:.3f}"),
             ("search repeats agreeing (mean overlap)",
              lambda c: f"{c.stability.mean_overlap:.2f}")]
    for label, fn in extra:
        rows.append(f"<tr><th>{e(label)}</th>" + "".join(f"<td>{fn(conds[c])}</td>"
                                                          for c in conds) + "</tr>")
    table = (f"<table><thead><tr><th>in %</th>{head}</tr></thead><tbody>{''.join(rows)}"
             "</tbody></table>")
    train = config.train
    start = ("the checkpoint itself (frozen)" if train.init else "random weights")
    return (f"<p>Three models: {e(start)}; {e(train.describe('the same'))} on Shapes VQA with "
            f"NTP; the same with NTP+KLAL (lambda {config.klal.weight}). Then, "
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


def heads_figures(out_dir: Path, config: heads.HeadsExperimentConfig, hres: heads.HeadsResult
                  ) -> dict[str, Path]:
    """The summed maps per model, and each found head's map (the paper's figure 1)."""
    ex = hres.examples
    test = {s.id: s for s in heads.held_out_splits(
        dataclasses.replace(config, test_samples=len(hres.example_ids), vqa_samples=1))[1]}
    conds = [c for c in hres.conditions if c in ex]
    summed, per_head = [], []
    for sid in hres.example_ids:
        s = test[sid]
        title = s.structured["expression"]
        summed.append({"image": s.image, "title": title, "boxes": list(s.geometry.boxes),
                       "maps": {HEADS_LABELS[c]: ex[c][sid].heatmap for c in conds},
                       "predicted": {HEADS_LABELS[c]: ex[c][sid].box for c in conds}})
        best = "klal" if "klal" in conds else conds[-1]
        spec = hres.conditions[best].spec
        per_head.append({"image": s.image, "title": title, "boxes": list(s.geometry.boxes),
                         "maps": {f"{HEADS_LABELS[best]} L{h[0]}H{h[1]}": m
                                  for h, m in zip(spec.heads, ex[best][sid].maps,
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


def lens_section(config: lens.LensExperimentConfig, lres: lens.LensResult) -> str:
    """The lens part's HTML: what was run, a table per concept type (mIoU and pointing per layer
    and model, and the no-model reference), and VQA accuracy."""
    e = html.escape
    conds = [c for c in lens.CONDITIONS if c in lres.conditions]
    train = config.train
    trained_layer = config.trained_layer
    ntp = lres.conditions.get("ntp")
    source = ntp.train.reused_from if ntp is not None else None
    ntp_from = (f"reused from {e(source)}: the same initial weights, batches and "
                "steps, so the very same model" if source else "trained here")
    tables = "".join(_lens_table(kind, lres, conds, trained_layer) for kind in lens.KINDS)
    vqa = "".join(f"<tr><th>{e(lens.LABELS.get(c, c))}</th>"
                  f"<td>{pct(lres.conditions[c].vqa.accuracy)}</td></tr>"
                  for c in conds)
    shared = lres.concepts.shared_ids if lres.concepts is not None else []
    shared_note = ("" if not shared else " Words that share their first token (so their maps "
                   "coincide): " + "; ".join(e(" / ".join(ws)) for ws in shared) + ".")
    rule = ": the cells above the map's mean" if config.threshold == "mean" else ""
    return (f"<p>{e(train.describe('Two'))} on Shapes VQA, from the same "
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


def _lens_table(kind: str, lres: lens.LensResult, conds: list[str], trained_layer: int) -> str:
    e = html.escape
    head = "".join(f"<th>{e(lens.LABELS.get(c, c))} {m}</th>" for c in conds
                   for m in ("mIoU", "pointing"))
    rows = []
    for layer in lres.layers:
        name = f"L{layer}" + (" (LLL layer)" if layer == trained_layer else "")
        cells = "".join(f"<td>{pct(getattr(lres.conditions[c].lens[layer][kind], m, None))}</td>"
                        for c in conds for m in ("mIoU", "pointing"))
        rows.append(f"<tr><th>{e(name)}</th>{cells}</tr>")
    share = pct(lres.reference[kind].region_share)
    rows.append("<tr><th>no model (whole image / random peak)</th>"
                + f"<td>{share}</td>" * (2 * len(conds)) + "</tr>")
    return (f"<table><thead><tr><th>{e(kind)} words, in %</th>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def lens_figures(out_dir: str | Path, config: LensExperimentConfig, results: lens.LensResult,
                 layers: Sequence[int] | None = None) -> dict[str, Path]:
    """Caption -> figure path: the example lens maps (image | NTP | NTP+LLL at ``layers``,
    default the middle reported layer and the LLL layer) and mIoU / pointing by layer."""
    out_dir = Path(out_dir)
    figures: dict[str, Path] = {}
    chosen = _figure_layers(config, results, layers)
    if results.items:
        test = {s.id: s for s in held_out_splits(
            dataclasses.replace(config, test_samples=len(results.items), vqa_samples=1))[1]}
        conds = [c for c in CONDITIONS if c in results.maps]  # NTP first, whatever ran first
        rows = []
        for j, item in enumerate(results.items):
            s = test[item.id]
            maps = {f"{LABELS.get(c, c)} L{layer}": results.maps[c][j].maps[layer]
                    for layer in chosen for c in conds}
            extent = results.maps[conds[0]][j].extent
            rows.append({"image": s.image, "title": f"{item.concept} ({item.kind} word)",
                         "boxes": item.boxes, "maps": maps, "extent": extent})
        figures["Logit-lens maps p(word | visual token) on held-out Shapes images, per model "
                f"and layer (L{', L'.join(map(str, chosen))}; the LLL trains layer "
                f"{config.trained_layer}). The objects "
                f"carrying the "
                "word are outlined; each map is scaled to its own max (in its title)."] = \
            plot_attention_maps(rows, out_dir / "lens_maps.png",
                                "Logit-lens probability of the concept (its objects outlined; "
                                "each map scaled to its own max)", "lens probability")
    figures["Lens segmentation mIoU and pointing game by layer, per model and concept type, "
            f"threshold {config.threshold!r}; dotted: a whole-image mask (mIoU) and a random "
            "peak (pointing)."] = plot_layer_scores(results, out_dir / "lens_layers.png")
    return figures


def _figure_layers(config: LensExperimentConfig, results: lens.LensResult,
                   layers: Sequence[int] | None) -> list[int]:
    reported = list(results.layers)
    n = config.train.shape.layers
    if layers is not None:
        chosen = list(resolve_layers(layers, n))
        missing = [x for x in chosen if x not in reported]
        if missing:
            raise ValueError(f"layers {missing} were not reported (reported: {reported})")
        return chosen
    trained = config.trained_layer
    last = trained if trained in reported else reported[-1]
    return list(dict.fromkeys([reported[(len(reported) - 1) // 2], last]))


def plot_layer_scores(results: lens.LensResult, path: str | Path) -> Path:
    """Two panels (mIoU, pointing) against the layer: one line per (condition, concept type)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from lookhere.io import atomic_path

    layers = list(results.layers)
    fig = Figure(figsize=(9, 3.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    styles = {"shape": "-", "colour": "--"}
    for ax, metric in zip(axes, ("mIoU", "pointing"), strict=True):
        for c, entry in results.conditions.items():
            colour = "tab:blue" if c == "ntp" else "tab:orange"
            for kind in KINDS:
                ys = [100 * getattr(entry.lens[x][kind], metric, np.nan) for x in layers]
                ax.plot(layers, ys, styles[kind], color=colour, marker="o",
                        label=f"{LABELS.get(c, c)}, {kind} words")
        ax.axhline(100 * results.reference["all"].region_share, color="grey",
                   linestyle=":")
        ax.set_xticks(layers)
        ax.set_xlabel("layer")
        ax.set_ylabel(f"{metric} (%)")
        ax.set_ylim(0, 100)
    axes[1].legend(fontsize=7)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix[1:].lower() or "png", dpi=110)
    return path
