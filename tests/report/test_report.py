"""The experiment report: table numbers against hand computation, figures, page and files."""

import copy
import json
import re

import numpy as np
import pytest
from PIL import Image

from lookhere.report.page import (
    plot_attention_maps,
    plot_ratio_bars,
    plot_training_curves,
    ratio_scale,
    results_table,
    write_report,
)


def _cond(acc, lo, hi, pfr, ratio, values, klal_weight=None, seed=0):
    log = [{"step": s, "loss": 3.0 / s, "ntp_loss": 2.0 / s, "klal_loss": 1.0 + 1.0 / s}
           for s in (10, 20, 30)]
    train = {"steps": 30, "seconds": 1.5, "log": log}
    if klal_weight is not None:
        train["klal_weight"] = klal_weight
    v = np.asarray(values, dtype=float)
    return {"accuracy": acc, "ci95": [lo, hi], "parse_failure_rate": pfr, "n": len(values),
            "attention_ratio": {"mean": ratio, "median": float(np.median(v)),
                                "ci95": [ratio * 0.9, ratio * 1.1], "values": list(values)},
            "train": train, "extra_key": "ignored"}


def _results(title="NTP vs NTP+KLAL"):
    rng = np.random.default_rng(0)
    return {
        "title": title,
        "command": "make demo",
        "settings": {"steps": 30, "lr": 1e-3, "tasks": ["grid_patch", "line_tracing"]},
        "elapsed_s": 812.3,
        "tasks": {
            "grid_patch": {
                "ntp": _cond(0.3125, 0.27, 0.35, 0.0, 0.934, rng.uniform(0.5, 1.4, 40)),
                "klal": _cond(0.4, 0.355, 0.445, 0.0125, 2.5, rng.uniform(1.5, 3.5, 40)),
            },
            "line_tracing": {  # only one condition: the Δ cell is a dash
                "ntp": _cond(0.5, 0.45, 0.55, 0.1, 1.0, rng.uniform(0.8, 1.2, 40)),
            },
        },
        "sections": [{"title": "Probe", "html": "<p id='trusted'>probe <b>ok</b></p>"}],
        "unknown_top_level": 1,
    }


def _cells(md):
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in md.strip().split("\n")]


def test_table_numbers_and_delta():
    rows = _cells(results_table(_results()))
    head, sep, grid, line = rows
    assert head == ["task", "NTP acc % [95% CI]", "NTP attn ratio", "NTP parse fail %",
                    "NTP+KLAL acc % [95% CI]", "NTP+KLAL attn ratio", "NTP+KLAL parse fail %",
                    "Δ acc (KLAL − NTP)"]
    # Rounded half up from the decimal value: 31.25 -> 31.3, 1.25 -> 1.3; Δ 8.75 -> +8.8.
    assert grid == ["grid_patch", "31.3 [27.0, 35.0]", "0.93", "0.0",
                    "40.0 [35.5, 44.5]", "2.50", "1.3", "+8.8"]
    assert line == ["line_tracing", "50.0 [45.0, 55.0]", "1.00", "10.0", "—", "—", "—", "—"]


def test_table_negative_delta_other_conditions_and_no_delta():
    r = _results()
    r["tasks"]["grid_patch"]["klal"]["accuracy"] = 0.2985  # Δ -1.4 points
    r["tasks"]["grid_patch"]["klal"]["ci95"] = [0.25, 0.35]
    r["tasks"]["grid_patch"]["ablation_x"] = copy.deepcopy(r["tasks"]["grid_patch"]["ntp"])
    rows = _cells(results_table(r))
    assert rows[0][7:10] == ["ablation_x acc % [95% CI]", "ablation_x attn ratio",
                             "ablation_x parse fail %"]
    assert rows[2][-1] == "-1.4"
    del r["tasks"]["grid_patch"]["klal"]
    assert "Δ" not in results_table(r)


@pytest.mark.parametrize("path, key", [
    ((), "tasks"),
    (("tasks", "grid_patch", "ntp"), "accuracy"),
    (("tasks", "grid_patch", "klal"), "ci95"),
    (("tasks", "grid_patch", "klal"), "parse_failure_rate"),
    (("tasks", "line_tracing", "ntp"), "attention_ratio"),
])
def test_missing_keys_name_the_key(path, key):
    r = _results()
    d = r
    for p in path:
        d = d[p]
    del d[key]
    with pytest.raises(ValueError, match=re.escape(repr(key))):
        results_table(r)


def test_bad_values_are_rejected(tmp_path):
    r = _results()
    r["tasks"]["grid_patch"]["ntp"]["accuracy"] = 31.25  # a percentage, not a share
    with pytest.raises(ValueError, match="accuracy"):
        results_table(r)
    r = _results()
    r["tasks"]["grid_patch"]["ntp"]["attention_ratio"]["values"][3] = float("nan")
    with pytest.raises(ValueError, match="values"):
        plot_ratio_bars(r, tmp_path / "x.png")
    r = _results()
    del r["tasks"]["grid_patch"]["ntp"]["train"]["log"][1]["step"]
    with pytest.raises(ValueError, match="'step'"):
        plot_training_curves(r, tmp_path / "x.png")
    with pytest.raises(ValueError, match="suffix"):
        plot_ratio_bars(_results(), tmp_path / "x.notanimage")
    assert list(tmp_path.iterdir()) == []


def _examples():
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8))
    return [
        {"image": img, "title": "grid_patch: cell (2, 3)",
         "maps": {"NTP": rng.uniform(0, 0.03, (6, 8)), "NTP+KLAL": rng.uniform(0, 0.2, (6, 8))},
         "boxes": [(48, 32, 64, 48)]},
        {"image": img.convert("L"), "title": "padded grid",
         "maps": {"NTP": rng.uniform(0, 1, (3, 4)), "NTP+KLAL": np.zeros((3, 4))},
         "extent": (0, 8, 128, 88)},
    ]


def _png_size(path):
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()
        return im.size


def test_attention_maps_png(tmp_path):
    path = plot_attention_maps(_examples(), tmp_path / "maps.png")
    w, h = _png_size(path)
    assert w > 300 and h > 300 and h > w / 3  # 3 columns, 2 rows
    one = _png_size(plot_attention_maps(_examples()[:1], tmp_path / "one.png"))
    assert one[1] < h  # one row is shorter than two
    assert sorted(p.name for p in tmp_path.iterdir()) == ["maps.png", "one.png"]


@pytest.mark.slow
def test_attention_maps_draw_predicted_boxes(tmp_path):
    ex = _examples()
    plain = np.asarray(Image.open(plot_attention_maps(ex, tmp_path / "a.png")).convert("RGB"))
    ex[0]["predicted"] = {"NTP+KLAL": (10, 10, 60, 50)}
    drawn = np.asarray(Image.open(plot_attention_maps(ex, tmp_path / "b.png")).convert("RGB"))
    assert plain.shape == drawn.shape and (plain != drawn).any()
    titled = np.asarray(Image.open(plot_attention_maps(ex, tmp_path / "t.png", "Lens maps",
                                                       "lens probability")).convert("RGB"))
    assert titled.shape == drawn.shape and (titled != drawn).any()
    ex[0]["predicted"] = {"NTP": (1, 2, 3)}
    with pytest.raises(ValueError, match="predicted"):
        plot_attention_maps(ex, tmp_path / "c.png")


def test_attention_maps_bad_input(tmp_path):
    ex = _examples()
    ex[0]["maps"]["NTP"] = np.ones(5)
    with pytest.raises(ValueError, match="2-D"):
        plot_attention_maps(ex, tmp_path / "m.png")
    ex = _examples()
    ex[1]["maps"]["NTP"][0, 0] = -0.1
    with pytest.raises(ValueError, match=">= 0"):
        plot_attention_maps(ex, tmp_path / "m.png")
    ex = _examples()
    ex[1]["extent"] = (10, 0, 5, 10)
    with pytest.raises(ValueError, match="extent"):
        plot_attention_maps(ex, tmp_path / "m.png")
    with pytest.raises(ValueError, match="non-empty"):
        plot_attention_maps([], tmp_path / "m.png")
    assert list(tmp_path.iterdir()) == []


def test_ratio_scale_switches_at_30x(tmp_path):
    r = _results()  # values from 0.5 to 3.5: linear
    assert ratio_scale(r) == "linear"
    r["tasks"]["grid_patch"]["klal"]["attention_ratio"]["values"][0] = 0.5 * 30 * 1.01
    assert ratio_scale(r) == "log"
    w, h = _png_size(plot_ratio_bars(r, tmp_path / "bars.png"))
    assert w > 300 and h > 200
    assert _png_size(plot_ratio_bars(_results(), tmp_path / "lin.png"))[0] > 300


def test_training_curves_png(tmp_path):
    r = _results()
    r["tasks"]["grid_patch"]["klal"]["train"]["klal_weight"] = 1.0
    w, h = _png_size(plot_training_curves(r, tmp_path / "curves.png"))
    assert w > 300 and h > 300
    for cond in r["tasks"].values():  # no klal_loss logged anywhere: one row of panels
        for c in cond.values():
            for e in c["train"]["log"]:
                del e["klal_loss"]
    h1 = _png_size(plot_training_curves(r, tmp_path / "curves1.png"))[1]
    assert h1 < h


def test_write_report(tmp_path):
    out = tmp_path / "run"
    r = _results(title="<script>alert(1)</script> & co")
    r["settings"]["note"] = "<b>not html</b>"
    r["tasks"]["grid_patch"]["ntp"]["attention_ratio"]["values"] = np.asarray(
        r["tasks"]["grid_patch"]["ntp"]["attention_ratio"]["values"])  # numpy goes to JSON too
    figs = {
        "Attention maps <fig 3>": plot_attention_maps(_examples(), out / "fig" / "maps.png"),
        "Attention ratio": plot_ratio_bars(r, out / "ratio.png"),
        "Training curves": plot_training_curves(r, out / "curves.png"),
    }
    path = write_report(out, r, figs)
    assert path == out / "report.html"
    page = path.read_text()
    for rel in ("fig/maps.png", "ratio.png", "curves.png"):
        assert f'src="{rel}"' in page
    assert str(tmp_path) not in page  # relative links only: the folder can be moved
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in page
    assert "Attention maps &lt;fig 3&gt;" in page
    assert "&lt;b&gt;not html&lt;/b&gt;" in page  # settings escaped
    assert "<p id='trusted'>probe <b>ok</b></p>" in page  # sections are trusted html
    assert "<td>31.3 [27.0, 35.0]</td>" in page and "<td>+8.8</td>" in page
    assert "<details>" in page and "make demo" in page and "13 min 32 s" in page
    assert "http" not in page.replace("http-equiv", "")  # no external assets

    back = json.loads((out / "results.json").read_text())
    expected = copy.deepcopy(r)
    vals = expected["tasks"]["grid_patch"]["ntp"]["attention_ratio"]["values"]
    expected["tasks"]["grid_patch"]["ntp"]["attention_ratio"]["values"] = vals.tolist()
    assert back == expected

    md = (out / "results.md").read_text()
    assert md.startswith("# <script>alert(1)</script> & co\n")
    assert results_table(r) in md and '"lr": 0.001' in md

    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    assert names == ["curves.png", "fig", "fig/maps.png", "ratio.png", "report.html",
                     "results.json", "results.md"]  # no temporary files left behind


def test_write_report_relative_figure_paths(tmp_path, monkeypatch):
    out = tmp_path / "run"
    plot_ratio_bars(_results(), out / "ratio.png")
    monkeypatch.chdir(tmp_path)
    page = write_report("run", _results(), {"a": "ratio.png", "b": "run/ratio.png"}).read_text()
    assert page.count('src="ratio.png"') == 2


def test_write_report_rejects_bad_input(tmp_path):
    out = tmp_path / "run"
    outside = plot_ratio_bars(_results(), tmp_path / "outside.png")
    with pytest.raises(ValueError, match="inside out_dir"):
        write_report(out, _results(), {"x": outside})
    with pytest.raises(FileNotFoundError, match="missing"):
        write_report(out, _results(), {"missing": out / "nope.png"})
    for key in ("title", "command", "settings", "elapsed_s"):
        r = _results()
        del r[key]
        with pytest.raises(ValueError, match=repr(key)):
            write_report(out, r, {})
    r = _results()
    r["sections"] = [{"title": "no html"}]
    with pytest.raises(ValueError, match="'html'"):
        write_report(out, r, {})
    assert not out.exists()  # nothing written when the input is bad


def test_lead_table_comes_first_in_both_formats(tmp_path):
    """``results["lead"]``: a table before the results, in report.html (escaped) and in
    results.md (pipes escaped); rows of the wrong width are refused before anything is
    written."""
    r = _results()
    r["lead"] = {"title": "The claims", "columns": ["claim", "paper", "ours"],
                 "rows": [["KLAL <helps>", "+16.3", "a | b"]], "note": "n"}
    page = write_report(tmp_path / "a", r, {}).read_text()
    assert page.index("The claims") < page.index("<h2>Results</h2>")
    assert "<th>KLAL &lt;helps&gt;</th><td>+16.3</td><td>a | b</td>" in page
    md = (tmp_path / "a" / "results.md").read_text()
    assert "| KLAL <helps> | +16.3 | a \\| b |" in md
    assert md.index("## The claims") < md.index(results_table(r))
    r["lead"]["rows"] = [["only two", "cells"]]
    with pytest.raises(ValueError, match="lists of 3 cells"):
        write_report(tmp_path / "b", r, {})
    assert not (tmp_path / "b").exists()
