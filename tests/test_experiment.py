"""The KLAL experiment and the demo end to end on the "test"-size model (seconds, not minutes)."""

import json
from dataclasses import replace

import pytest

from lookhere.cli import main
from lookhere.experiment.demo import run_demo
from lookhere.experiment.heads import HeadsExperimentConfig
from lookhere.experiment.klal import KLALExperimentConfig, held_out_split, train_split
from lookhere.experiment.lens import LensExperimentConfig
from lookhere.models import tiny

TINY = dict(size="test96", image_size=112, steps=2, batch_size=2, test_samples=4,
            eval_batch_size=4, max_new_tokens=3, n_maps=1)


@pytest.fixture(autouse=True)
def test96(monkeypatch):
    """The "test" model at 112 px (Line Tracing needs >= 96 px), 8x8 visual tokens."""
    monkeypatch.setitem(tiny.TINY_SIZES, "test96", replace(tiny.TINY_SIZES["test"],
                                                           image_size=112))


def test_splits_are_disjoint_and_deterministic():
    cfg = KLALExperimentConfig(**TINY)
    for task in cfg.tasks:
        train = train_split(cfg, task).samples
        test = held_out_split(cfg, task)
        assert len(train) == cfg.steps * cfg.batch_size and len(test) == cfg.test_samples
        assert not {s.id for s in train} & {s.id for s in test}
        again = held_out_split(cfg, task)
        assert [s.image.tobytes() for s in again] == [s.image.tobytes() for s in test]
        assert not {s.image.tobytes() for s in train} & {s.image.tobytes() for s in test}


def test_demo_writes_report(tmp_path, monkeypatch):
    out = tmp_path / "demo"
    monkeypatch.setitem(tiny.TINY_SIZES, "test4", replace(tiny.TINY_SIZES["test"], layers=4,
                                                          image_size=112))
    heads_config = HeadsExperimentConfig(size="test4", steps=2, batch_size=2, search_samples=4,
                                         search_repeats=2, test_samples=3, vqa_samples=2,
                                         eval_batch_size=4, n_maps=2, save_models=True)
    lens_config = LensExperimentConfig(size="test4", steps=2, batch_size=2, test_samples=3,
                                       vqa_samples=2, eval_batch_size=4, n_maps=2)
    report = run_demo(out, KLALExperimentConfig(**TINY), progress=False, command="test",
                      heads_config=heads_config, lens_config=lens_config)
    assert report == out / "report.html"
    results = json.loads((out / "results.json").read_text())
    assert set(results["tasks"]) == {"grid_patch", "line_intersection", "line_tracing"}
    for conds in results["tasks"].values():
        assert set(conds) == {"ntp", "klal"}
        for entry in conds.values():
            assert entry["n"] == 4 and 0 <= entry["accuracy"] <= 1
            assert len(entry["train"]["log"]) >= 1
            assert "klal_loss" in entry["train"]["log"][-1]  # NTP runs monitor KLAL too
    html = report.read_text()
    assert set(results["heads"]["conditions"]) == {"untrained", "ntp", "klal"}
    assert "Localization heads" in html and "localization heads" in html
    # the lens part: NTP is the heads part's model (its training record), NTP+LLL trained here
    lres = results["lens"]
    assert set(lres["conditions"]) == {"ntp", "lll"}
    ntp, lll = (lres["conditions"][c]["train"] for c in ("ntp", "lll"))
    assert ntp["reused_from"] == "the heads part"
    assert ntp["log"] == results["heads"]["conditions"]["ntp"]["train"]["log"]
    # the same model on the same held-out questions (both parts draw them alike)
    assert lres["conditions"]["ntp"]["vqa"] == results["heads"]["conditions"]["ntp"]["vqa"]
    assert "reused_from" not in lll and lll["lll"]["weight"] > 0
    assert "The logit lens (NTP vs NTP+LLL)" in html and "reused from the heads part" in html
    assert "shape words, in %" in html and "colour words, in %" in html
    assert results["settings"]["lens"]["steps"] == 2
    for name in ("attention_maps.png", "attention_ratio.png", "training_curves.png",
                 "heads_maps.png", "heads_each.png", "lens_maps.png", "lens_layers.png"):
        assert (out / name).stat().st_size > 0 and name in html
    assert "| task" in (out / "results.md").read_text()
    with pytest.raises(FileExistsError):
        run_demo(out, KLALExperimentConfig(**TINY), progress=False)


def test_config_errors():
    with pytest.raises(ValueError, match="tasks"):
        KLALExperimentConfig(tasks=("nope",))
    with pytest.raises(ValueError, match="conditions"):
        KLALExperimentConfig(conditions=())
    with pytest.raises(ValueError, match="steps"):
        KLALExperimentConfig(steps=0)
    with pytest.raises(ValueError, match="query"):
        KLALExperimentConfig(query="first")
    with pytest.raises(ValueError, match="image_size"):
        KLALExperimentConfig(size="test", image_size=112)


def test_cli_experiment(tmp_path, capsys):
    args = ["experiment", "klal", "--out", str(tmp_path), "--seeds", "0", "--quiet",
            "--size", "test96", "--image-size", "112", "--steps", "1", "--batch-size", "2",
            "--test-samples", "2", "--tasks", "line_intersection", "--n-maps", "1"]
    assert main(args) == 0
    data = json.loads((tmp_path / "seed0.json").read_text())
    assert data["settings"]["klal"]["tasks"] == ["line_intersection"]
    assert set(data["tasks"]["line_intersection"]) == {"ntp", "klal"}
    assert main(args) == 0  # an existing seed file is skipped, not overwritten
    assert "skipped" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="weight"):
        main(["demo", "--out", str(tmp_path / "d"), "--weight", "-1"])
