"""The experiment report: results table, figures and a self-contained HTML page.

The experiment hands over a ``results`` dict (schema below); this module renders it. Extra keys
are ignored; a missing required key raises ValueError naming where it was expected.

    results = {"title": str, "command": str, "settings": JSON, "elapsed_s": float,
               "tasks": {task: {condition: {
                   "accuracy": float, "ci95": [lo, hi], "parse_failure_rate": float, "n": int,
                   "attention_ratio": {"mean": float, "ci95": [lo, hi], "values": [float, ...]},
                   "train": {"steps": int, "seconds": float,
                             "log": [{"step": int, "ntp_loss": float, "klal_loss": float}]}}}},
               "sections": [{"title": str, "html": str}],          # optional, html is trusted
               "lead": {"title": str, "columns": [str, ...],       # optional, shown first
                        "rows": [[str, ...], ...], "note": str}}

Conditions "ntp" and "klal" are labelled "NTP" and "NTP+KLAL"; any other key is its own label.
Percentages are rounded half up from the decimal form of the value (0.3125 -> "31.3"), so the
table reads the way a person would round. Figures are drawn on an explicit Agg canvas
(``matplotlib.figure.Figure``), so no pyplot state is created or leaked.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import MaxNLocator, ScalarFormatter
from PIL import Image

from lookhere.io import atomic_path, write_json
from lookhere.tables import pct, points
from lookhere.viz import new_figure, save_figure

LABELS = {"ntp": "NTP", "klal": "NTP+KLAL"}
DELTA_HEADER = "Δ acc (KLAL − NTP)"
_PALETTE = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
            "tab:pink", "tab:olive", "tab:cyan", "tab:gray"]
_CMAP = "inferno"
_DASH = "—"  # an empty cell: the task has no such condition


def condition_label(key: str) -> str:
    """Display label of a condition key ("ntp" -> "NTP", "klal" -> "NTP+KLAL", else the key)."""
    return LABELS.get(key, key)


# ---------------------------------------------------------------------------------------------
# Validation: each accessor returns checked values or raises naming the offending path.


def _get(d: Any, key: str, where: str) -> Any:
    if not isinstance(d, Mapping):
        raise ValueError(f"{where} must be a dict, got {type(d).__name__}")
    if key not in d:
        raise ValueError(f"{where} is missing required key {key!r}")
    return d[key]


def _number(x: Any, where: str, lo: float = -math.inf, hi: float = math.inf) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)):
        raise ValueError(f"{where} must be a number, got {x!r}")
    v = float(x)
    if not (math.isfinite(v) and lo <= v <= hi):
        raise ValueError(f"{where} must be a finite number in [{lo}, {hi}], got {x!r}")
    return v


def _interval(x: Any, where: str, lo: float = -math.inf, hi: float = math.inf
              ) -> tuple[float, float]:
    if isinstance(x, (str, bytes)) or not isinstance(x, Sequence | np.ndarray) or len(x) != 2:
        raise ValueError(f"{where} must be a [low, high] pair, got {x!r}")
    a, b = _number(x[0], f"{where}[0]", lo, hi), _number(x[1], f"{where}[1]", lo, hi)
    if a > b:
        raise ValueError(f"{where} must have low <= high, got {x!r}")
    return a, b


def _tasks(results: Any) -> Mapping[str, Mapping[str, Mapping]]:
    """results['tasks'] checked: a non-empty dict of task -> non-empty dict of condition -> dict."""
    tasks = _get(results, "tasks", "results")
    if not isinstance(tasks, Mapping) or not tasks:
        raise ValueError(f"results['tasks'] must be a non-empty dict, got {tasks!r}")
    for task, conds in tasks.items():
        if not isinstance(conds, Mapping) or not conds:
            raise ValueError(f"results['tasks'][{task!r}] must be a non-empty dict of conditions")
        for key, cond in conds.items():
            if not isinstance(cond, Mapping):
                raise ValueError(f"results['tasks'][{task!r}][{key!r}] must be a dict")
    return tasks


def _where(task: str, key: str) -> str:
    return f"results['tasks'][{task!r}][{key!r}]"


def _conditions(tasks: Mapping[str, Mapping]) -> list[str]:
    """Condition keys over all tasks, in first-seen order."""
    return list(dict.fromkeys(k for conds in tasks.values() for k in conds))


@dataclass(frozen=True)
class _Ratio:
    mean: float
    lo: float
    hi: float
    values: np.ndarray  # (n,) per-sample ratios


def _ratio(cond: Mapping, cond_where: str, need_values: bool) -> _Ratio:
    r, where = _get(cond, "attention_ratio", cond_where), f"{cond_where}['attention_ratio']"
    mean = _number(_get(r, "mean", where), f"{where}['mean']", lo=0)
    if not need_values:
        return _Ratio(mean, mean, mean, np.zeros(0))
    lo, hi = _interval(_get(r, "ci95", where), f"{where}['ci95']", lo=0)
    tol = 1e-9 * max(1.0, abs(mean))  # bootstrap quantiles may miss the mean by rounding
    if not lo - tol <= mean <= hi + tol:
        raise ValueError(f"{where}['ci95'] {[lo, hi]} does not contain the mean {mean}")
    values = np.asarray(_get(r, "values", where), dtype=np.float64).reshape(-1)
    if not np.isfinite(values).all() or (values < 0).any():
        raise ValueError(f"{where}['values'] must be finite and >= 0 (leave out samples "
                         "without a target)")
    return _Ratio(mean, min(lo, mean), max(hi, mean), values)


# ---------------------------------------------------------------------------------------------
# The table, shared by markdown and HTML.


@dataclass(frozen=True)
class _Table:
    groups: list[tuple[str, int]]  # (header group label, span) over the columns, "" for none
    columns: list[tuple[str, str]]  # (group label, column name)
    rows: list[list[str]]


_SUBCOLUMNS = ("acc % [95% CI]", "attn ratio", "parse fail %")


def _table(results: Mapping) -> _Table:
    tasks = _tasks(results)
    conds = _conditions(tasks)
    delta = any("ntp" in c and "klal" in c for c in tasks.values())
    columns = [("", "task")] + [(condition_label(k), s) for k in conds for s in _SUBCOLUMNS]
    groups = [("", 1)] + [(condition_label(k), len(_SUBCOLUMNS)) for k in conds]
    if delta:
        columns.append(("", DELTA_HEADER))
        groups.append(("", 1))
    rows = []
    for task, by_cond in tasks.items():
        row, acc = [str(task)], {}
        for key in conds:
            if key not in by_cond:
                row += [_DASH] * len(_SUBCOLUMNS)
                continue
            cond, where = by_cond[key], _where(task, key)
            acc[key] = _number(_get(cond, "accuracy", where), f"{where}['accuracy']", 0, 1)
            lo, hi = _interval(_get(cond, "ci95", where), f"{where}['ci95']", 0, 1)
            pfr = _number(_get(cond, "parse_failure_rate", where),
                          f"{where}['parse_failure_rate']", 0, 1)
            ratio = _ratio(cond, where, need_values=False).mean
            row += [f"{pct(acc[key], half_up=True)} [{pct(lo, half_up=True)}, "
                    f"{pct(hi, half_up=True)}]", f"{ratio:.2f}", pct(pfr, half_up=True)]
        if delta:
            row.append(points(acc["klal"], acc["ntp"]) if {"ntp", "klal"} <= acc.keys()
                       else _DASH)
        rows.append(row)
    return _Table(groups, columns, rows)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def results_table(results: Mapping) -> str:
    """A markdown table: one row per task (in dict order); per condition the accuracy % with its
    95% CI ("31.3 [27.0, 35.0]"), the mean attention ratio and the parse failure %; and, when a
    task has both NTP and NTP+KLAL, their accuracy difference in percentage points."""
    t = _table(results)
    head = [f"{g} {c}" if g else c for g, c in t.columns]
    lines = ["| " + " | ".join(map(_md_cell, head)) + " |",
             "|" + "|".join([":---"] + ["---:"] * (len(head) - 1)) + "|"]
    lines += ["| " + " | ".join(map(_md_cell, r)) + " |" for r in t.rows]
    return "\n".join(lines) + "\n"


def _html_table(results: Mapping) -> str:
    t = _table(results)
    e = html.escape
    top = "".join(f'<th colspan="{n}">{e(g)}</th>' if n > 1 else f"<th>{e(g)}</th>"
                  for g, n in t.groups)
    sub = "".join(f"<th>{e(c)}</th>" for _, c in t.columns)
    body = "".join("<tr>" + f'<th scope="row">{e(r[0])}</th>'
                   + "".join(f"<td>{e(c)}</td>" for c in r[1:]) + "</tr>\n" for r in t.rows)
    return (f'<table>\n<thead><tr>{top}</tr>\n<tr>{sub}</tr></thead>\n'
            f"<tbody>\n{body}</tbody>\n</table>")


# ---------------------------------------------------------------------------------------------
# Figures.


def _colours(keys: Iterable[str]) -> dict[str, str]:
    """NTP blue, NTP+KLAL orange, others the next palette colours in order."""
    out = {k: _PALETTE[i] for i, k in enumerate(LABELS)}
    rest = iter(_PALETTE[len(LABELS):])
    return {k: out.get(k) or next(rest, "black") for k in keys}


@dataclass(frozen=True)
class _Example:
    image: np.ndarray  # (H, W) uint8, grayscale
    rgb: np.ndarray  # (H, W, 3) uint8
    title: str
    maps: dict[str, np.ndarray]  # label -> (h, w) float >= 0
    boxes: list[tuple[float, float, float, float]]
    extent: tuple[float, float, float, float]  # x0, y0, x1, y1 pixels
    predicted: dict[str, tuple[float, float, float, float]]  # label -> a predicted box


def _example(ex: Any, i: int) -> _Example:
    where = f"examples[{i}]"
    img = _get(ex, "image", where)
    if not isinstance(img, Image.Image):
        raise TypeError(f"{where}['image'] must be a PIL.Image, got {type(img).__name__}")
    maps = _get(ex, "maps", where)
    if not isinstance(maps, Mapping) or not maps:
        raise ValueError(f"{where}['maps'] must be a non-empty dict of label -> 2-D array")
    checked = {}
    for label, m in maps.items():
        a = np.asarray(m, dtype=np.float64)
        if a.ndim != 2 or a.size == 0:
            raise ValueError(f"{where}['maps'][{label!r}] must be a non-empty 2-D array, "
                             f"got shape {a.shape}")
        if not np.isfinite(a).all() or (a < 0).any():
            raise ValueError(f"{where}['maps'][{label!r}] must be finite and >= 0")
        checked[str(label)] = a
    w, h = img.size
    boxes = [_box(b, f"{where}['boxes'][{j}]") for j, b in enumerate(ex.get("boxes") or [])]
    extent = (0.0, 0.0, float(w), float(h))  # default: the grid covers the whole image
    if ex.get("extent") is not None:
        extent = _box(ex["extent"], f"{where}['extent']")
    if extent[0] >= extent[2] or extent[1] >= extent[3]:
        raise ValueError(f"{where}['extent'] must be x0 < x1, y0 < y1, got {extent}")
    predicted = {str(k): _box(b, f"{where}['predicted'][{k!r}]")
                 for k, b in (ex.get("predicted") or {}).items()}
    return _Example(np.asarray(img.convert("L")), np.asarray(img.convert("RGB")),
                    str(ex.get("title", "")), checked, boxes, extent, predicted)


def _box(b: Any, where: str) -> tuple[float, float, float, float]:
    if isinstance(b, (str, bytes)) or not isinstance(b, Sequence | np.ndarray) or len(b) != 4:
        raise ValueError(f"{where} must be an (x0, y0, x1, y1) box, got {b!r}")
    x0, y0, x1, y1 = (_number(v, where) for v in b)
    return x0, y0, x1, y1


def _outline(ax, boxes, colour: str, style: str = "-") -> None:
    for x0, y0, x1, y1 in boxes:
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=colour,
                               linewidth=1.5, linestyle=style))


def plot_attention_maps(examples: Sequence[Mapping], path: str | Path,
                        title: str = "Attention over the image (targets outlined; each map "
                                     "scaled to its own max)",
                        quantity: str = "attention") -> Path:
    """The KLAL paper's figure 3 analogue: one row per example, the image with its target boxes,
    then each attention map over the faded image at the grid's extent (nearest upsampling),
    each map scaled to its own max (shown in the panel title). An example's optional
    ``predicted`` (label -> box) is drawn dashed on that label's panel. Written atomically."""
    if isinstance(examples, Mapping) or not isinstance(examples, Sequence) or not examples:
        raise ValueError("examples must be a non-empty list of dicts")
    exs = [_example(ex, i) for i, ex in enumerate(examples)]
    labels = list(dict.fromkeys(label for ex in exs for label in ex.maps))
    rows, cols = len(exs), 1 + len(labels)
    fig = new_figure(2.6 * cols + 0.9, 2.7 * rows + 0.4)
    axes = np.asarray(fig.subplots(rows, cols, squeeze=False))  # (rows, cols)
    for r, ex in enumerate(exs):
        h, w = ex.image.shape
        ax = axes[r, 0]
        ax.imshow(ex.rgb, extent=(0, w, h, 0))
        _outline(ax, ex.boxes, "magenta")
        if ex.extent != (0.0, 0.0, float(w), float(h)):
            _outline(ax, [ex.extent], "white", "--")  # the region the maps cover
        ax.set_title(ex.title, fontsize=9)
        for c, label in enumerate(labels, start=1):
            ax = axes[r, c]
            if label not in ex.maps:
                ax.text(0.5, 0.5, _DASH, ha="center", va="center", transform=ax.transAxes)
                ax.set_axis_off()
                continue
            m = ex.maps[label]
            top = float(m.max())
            # Faded image: grey levels squeezed into the light end, so the heatmap dominates.
            ax.imshow(ex.image, cmap="gray", vmin=-255, vmax=255, extent=(0, w, h, 0))
            x0, y0, x1, y1 = ex.extent
            ax.imshow(m / top if top > 0 else m, cmap=_CMAP, vmin=0, vmax=1, alpha=0.65,
                      interpolation="nearest", extent=(x0, x1, y1, y0))
            _outline(ax, ex.boxes, "cyan")
            if label in ex.predicted:
                _outline(ax, [ex.predicted[label]], "white", "--")
            ax.set_xlim(0, w)
            ax.set_ylim(h, 0)
            ax.set_title(f"{label} (max {top:.3g})", fontsize=9)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.colorbar(ScalarMappable(Normalize(0, 1), _CMAP), ax=axes[:, 1:].ravel().tolist(),
                 shrink=0.6, label=f"{quantity} / panel max")
    fig.suptitle(title,
                 fontsize=10)
    return save_figure(fig, path)


def ratio_scale(results: Mapping) -> str:
    """'log' when the positive attention ratios (means, CIs, per-sample values) span more than
    30x, else 'linear'. Zeros are left out: they cannot be placed on a log axis anyway."""
    vals = [np.array([r.mean, r.lo, r.hi]) for r in _ratios(results).values()]
    vals += [r.values for r in _ratios(results).values()]
    v = np.concatenate(vals)
    v = v[v > 0]
    return "log" if v.size and v.max() / v.min() > 30 else "linear"


def _ratios(results: Mapping) -> dict[tuple[str, str], _Ratio]:
    tasks = _tasks(results)
    return {(t, k): _ratio(c, _where(t, k), need_values=True)
            for t, conds in tasks.items() for k, c in conds.items()}


def plot_ratio_bars(results: Mapping, path: str | Path) -> Path:
    """The KLAL paper's figure 4 analogue: per task one bar per condition (mean attention ratio,
    95% CI error bars) over its jittered per-sample values, with a dashed line at the uniform
    share (ratio 1). Log y when the values span more than 30x. Written atomically."""
    tasks = _tasks(results)
    ratios = _ratios(results)
    conds = _conditions(tasks)
    colour = _colours(conds)
    width = 0.8 / len(conds)
    fig = new_figure(max(5.5, 2.4 + 0.55 * len(conds) * len(tasks)), 4.0)
    ax = fig.subplots()
    for i, task in enumerate(tasks):
        for j, key in enumerate(conds):
            if (task, key) not in ratios:
                continue
            r, x = ratios[task, key], i + (j - (len(conds) - 1) / 2) * width
            ax.bar(x, r.mean, width * 0.9, color=colour[key], alpha=0.35, edgecolor=colour[key],
                   yerr=[[r.mean - r.lo], [r.hi - r.mean]], capsize=4,
                   error_kw={"elinewidth": 1.5, "ecolor": "black"})
            # Golden-ratio jitter: deterministic, even, and unrelated to the values' order.
            jitter = ((np.arange(r.values.size) * 0.618034) % 1 - 0.5) * 0.6 * width
            ax.scatter(x + jitter, r.values, s=5, color=colour[key], alpha=0.3, linewidths=0)
    ax.axhline(1.0, color="gray", linestyle="--", linewidth=1)
    scale = ratio_scale(results)
    ax.set_yscale(scale)
    if scale == "linear":
        ax.set_ylim(bottom=0)
    else:
        ax.yaxis.set_major_formatter(ScalarFormatter())  # "10", not "10^1"
    ax.set_xticks(range(len(tasks)), [str(t) for t in tasks],
                  rotation=20 if len(tasks) > 4 else 0)
    ax.set_ylabel("attention ratio (target / visual mean)")
    fig.suptitle("Attention on the target (bars: mean, 95% CI; dots: samples)", fontsize=10)
    handles = [Patch(facecolor=colour[k], alpha=0.5, label=condition_label(k)) for k in conds]
    handles.append(Line2D([], [], color="gray", linestyle="--", label="uniform share"))
    fig.legend(handles=handles, fontsize=8, loc="outside right center")
    return save_figure(fig, path)


def _trains_klal(key: str, cond: Mapping) -> bool:
    """Whether a condition trains on the KL attention loss: its train['klal_weight'] > 0 when
    given, else every condition except plain "ntp"."""
    weight = cond.get("train", {}).get("klal_weight")
    return key != "ntp" if weight is None else float(weight) > 0


def _series(log: Sequence[Mapping], metric: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of the log entries that carry ``metric``; every entry needs a step."""
    pts = []
    for i, e in enumerate(log):
        step = _number(_get(e, "step", f"{where}[{i}]"), f"{where}[{i}]['step']")
        if metric in e:  # a loss may be NaN (divergence): plotted as a gap, not hidden
            pts.append((step, float(e[metric])))
    a = np.asarray(pts, dtype=np.float64).reshape(-1, 2)  # (entries, 2)
    return a[:, 0], a[:, 1]


def plot_training_curves(results: Mapping, path: str | Path) -> Path:
    """Per task a column of panels: ntp_loss (top) and klal_loss (bottom) over steps, one colour
    per condition; a klal_loss that was measured but not trained on is dashed. Atomic write."""
    tasks = _tasks(results)
    conds = _conditions(tasks)
    colour = _colours(conds)
    logs = {}
    for task, by_cond in tasks.items():
        for key, cond in by_cond.items():
            where = _where(task, key)
            log = _get(_get(cond, "train", where), "log", f"{where}['train']")
            where += "['train']['log']"
            if isinstance(log, (str, bytes, Mapping)) or not isinstance(log, Sequence):
                raise ValueError(f"{where} must be a list of dicts")
            logs[task, key] = {m: _series(log, m, where) for m in ("ntp_loss", "klal_loss")}
    metrics = ["ntp_loss"] + (["klal_loss"] if any(s["klal_loss"][0].size
                                                    for s in logs.values()) else [])
    fig = new_figure(max(4.0, 3.4 * len(tasks)), 2.6 * len(metrics) + 0.3)
    axes = np.asarray(fig.subplots(len(metrics), len(tasks), squeeze=False))  # (metrics, tasks)
    for c, (task, by_cond) in enumerate(tasks.items()):
        for r, metric in enumerate(metrics):
            ax = axes[r, c]
            for key, cond in by_cond.items():
                steps, vals = logs[task, key][metric]
                dashed = metric == "klal_loss" and not _trains_klal(key, cond)
                ax.plot(steps, vals, color=colour[key], linestyle="--" if dashed else "-",
                        linewidth=1.3, label=condition_label(key))
            ax.set_title(f"{task}: {metric}", fontsize=9)
            ax.set_xlabel("step", fontsize=8)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=colour[k], label=condition_label(k)) for k in conds]
    if "klal_loss" in metrics:
        handles.append(Line2D([], [], color="gray", linestyle="--",
                              label="klal_loss measured, not trained on"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 4),
               fontsize=8)
    return save_figure(fig, path)


# ---------------------------------------------------------------------------------------------
# The report files.


def _jsonable(obj: Any) -> Any:
    """Typed results (``to_json``), numpy scalars and arrays, tuples and Paths as plain JSON
    types."""
    if hasattr(obj, "to_json"):
        return _jsonable(obj.to_json())
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _duration(seconds: float) -> str:
    s = round(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def _sections(results: Mapping) -> list[tuple[str, str]]:
    secs = results.get("sections") or []
    if isinstance(secs, Mapping) or not isinstance(secs, Sequence):
        raise ValueError("results['sections'] must be a list of {'title', 'html'} dicts")
    out = []
    for i, s in enumerate(secs):
        where = f"results['sections'][{i}]"
        title, body = _get(s, "title", where), _get(s, "html", where)
        if not isinstance(title, str) or not isinstance(body, str):
            raise ValueError(f"{where} title and html must be strings")
        out.append((title, body))
    return out


def _figure_paths(out_dir: Path, figures: Mapping[str, str | Path]) -> list[tuple[str, str]]:
    """(caption, POSIX path relative to out_dir). A relative figure path is taken as given
    (relative to the working folder) when that lands inside out_dir, else relative to out_dir."""
    if not isinstance(figures, Mapping):
        raise ValueError("figures must be a dict of caption -> path")
    root, out = out_dir.resolve(), []
    for caption, p in figures.items():
        p = Path(p)
        full = p.resolve()
        if not full.is_relative_to(root) and not p.is_absolute():
            full = (out_dir / p).resolve()
        if not full.is_relative_to(root):
            raise ValueError(f"figure {caption!r} at {str(p)!r} must lie inside out_dir "
                             f"{str(out_dir)!r}, so the report folder can be moved")
        if not full.is_file():
            raise FileNotFoundError(f"figure {caption!r}: no file at {str(full)!r}")
        out.append((str(caption), full.relative_to(root).as_posix()))
    return out


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.8em; }
code, pre { font-family: ui-monospace, monospace; background: #f4f4f4; }
pre { padding: 0.8em; overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.9em; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; }
td { text-align: right; font-variant-numeric: tabular-nums; }
thead th { background: #f0f0f0; } tbody th { text-align: left; font-weight: normal; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.9em; color: #555; }
.meta { color: #555; }
"""

_NOTE = ("Accuracy in % with its 95% CI; attention ratio = mean attention on target tokens / "
         "mean on all visual tokens (1 = uniform share); Δ in percentage points.")


def _markdown(results: Mapping, figures: list[tuple[str, str]]) -> str:
    settings = json.dumps(_jsonable(results["settings"]), indent=2)
    figs = "".join(f"![{c}]({quote(p)})\n\n" for c, p in figures)
    return (f"# {results['title']}\n\n`{results['command']}`, "
            f"{_duration(float(results['elapsed_s']))}\n\n{_lead_markdown(results)}"
            f"{results_table(results)}\n"
            f"{_NOTE}\n\n{figs}## Settings\n\n```json\n{settings}\n```\n")


def _lead(results: Mapping) -> dict[str, Any] | None:
    """The optional table shown first (``results["lead"]``, a mapping or a typed table with
    ``to_json``), validated."""
    lead = _jsonable(results.get("lead"))
    if lead is None:
        return None
    for key in ("title", "columns", "rows", "note"):
        _get(lead, key, "results['lead']")
    width = len(lead["columns"])
    if any(not isinstance(r, list | tuple) or len(r) != width for r in lead["rows"]):
        raise ValueError(f"results['lead']['rows'] must be lists of {width} cells (the columns)")
    return lead


def _lead_html(results: Mapping) -> str:
    lead = _lead(results)
    if lead is None:
        return ""
    e = html.escape
    head = "".join(f"<th>{e(str(c))}</th>" for c in lead["columns"])
    rows = "".join("<tr><th>" + e(str(r[0])) + "</th>"
                   + "".join(f"<td>{e(str(c))}</td>" for c in r[1:]) + "</tr>"
                   for r in lead["rows"])
    return (f"<h2>{e(str(lead['title']))}</h2>\n<table><thead><tr>{head}</tr></thead><tbody>"
            f"{rows}</tbody></table>\n<p class=\"meta\">{e(str(lead['note']))}</p>\n")


def _lead_markdown(results: Mapping) -> str:
    lead = _lead(results)
    if lead is None:
        return ""
    cell = lambda c: str(c).replace("|", "\\|")  # noqa: E731
    rows = "".join("| " + " | ".join(cell(c) for c in r) + " |\n" for r in lead["rows"])
    return (f"## {lead['title']}\n\n| " + " | ".join(cell(c) for c in lead["columns"])
            + " |\n|" + "---|" * len(lead["columns"]) + f"\n{rows}\n{lead['note']}\n\n")


def _html(results: Mapping, figures: list[tuple[str, str]]) -> str:
    e = html.escape
    title = e(str(results["title"]))
    figs = "".join(f'<figure><img src="{e(quote(p))}" alt="{e(c)}">'
                   f"<figcaption>{e(c)}</figcaption></figure>\n" for c, p in figures)
    secs = "".join(f"<h2>{e(t)}</h2>\n{body}\n" for t, body in _sections(results))
    settings = e(json.dumps(_jsonable(results["settings"]), indent=2))
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{title}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            f"<h1>{title}</h1>\n"
            f'<p class="meta">Command: <code>{e(str(results["command"]))}</code> &middot; '
            f"elapsed {e(_duration(float(results['elapsed_s'])))}</p>\n"
            + _lead_html(results)
            + f"<h2>Results</h2>\n{_html_table(results)}\n<p class=\"meta\">{e(_NOTE)}</p>\n"
            + (f"<h2>Figures</h2>\n{figs}" if figs else "") + secs
            + f"<h2>Settings</h2>\n<details><summary>Settings (JSON)</summary>\n"
            f"<pre>{settings}</pre>\n</details>\n</body>\n</html>\n")


def write_report(out_dir: str | Path, results: Mapping, figures: Mapping[str, str | Path]
                 ) -> Path:
    """Write results.json, results.md and a self-contained report.html into ``out_dir``, each
    atomically; ``figures`` maps caption -> image path inside out_dir (linked relatively, so the
    folder can be moved). Returns the report.html path."""
    out_dir = Path(out_dir)
    for key in ("title", "command", "settings", "elapsed_s"):
        _get(results, key, "results")
    _number(results["elapsed_s"], "results['elapsed_s']", lo=0)
    _table(results)  # validates the tasks before anything is written
    _sections(results)
    _lead(results)
    figs = _figure_paths(out_dir, figures)
    write_json(_jsonable(results), out_dir / "results.json")
    with atomic_path(out_dir / "results.md") as tmp:
        tmp.write_text(_markdown(results, figs), encoding="utf-8")
    path = out_dir / "report.html"
    with atomic_path(path) as tmp:
        tmp.write_text(_html(results, figs), encoding="utf-8")
    return path
