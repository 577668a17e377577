"""The KLAL experiment and the demo end to end on the "test"-size model (seconds, not minutes)."""

import json
from dataclasses import replace
from html import escape as html_escape

import pytest

from lookhere.cli import main
from lookhere.eval.scoring import score_answer
from lookhere.experiment.heads import HeadsExperimentConfig
from lookhere.experiment.klal import (
    TASKS,
    KLALExperimentConfig,
    KLALResult,
    held_out_split,
    train_split,
)
from lookhere.experiment.lens import LensExperimentConfig
from lookhere.experiment.training import TrainSpec
from lookhere.models import tiny
from lookhere.report.demo import run_demo
from lookhere.report.demo_config import DEMO_HEADS
from lookhere.targets import TargetConfig
from lookhere.train import KLALConfig, LLLConfig

TRAIN = dict(size="test96", image_size=112, steps=2, batch_size=2)
TINY = dict(test_samples=4, eval_batch_size=4, max_new_tokens=3, n_maps=1)


def tiny_config(**kw) -> KLALExperimentConfig:
    return KLALExperimentConfig(**{"train": TrainSpec(**TRAIN), **TINY, **kw})


@pytest.fixture(autouse=True)
def test96(monkeypatch):
    """The "test" model at 112 px (Line Tracing needs >= 96 px), 8x8 visual tokens."""
    monkeypatch.setitem(tiny.TINY_SIZES, "test96", replace(tiny.TINY_SIZES["test"],
                                                           image_size=112))


def test_splits_are_disjoint_and_deterministic():
    cfg = tiny_config(tasks=TASKS)
    for task in cfg.tasks:
        train = train_split(cfg, task).samples
        test = held_out_split(cfg, task)
        assert len(train) == cfg.train.steps * cfg.train.batch_size == cfg.train.samples
        assert len(test) == cfg.test_samples
        assert not {s.id for s in train} & {s.id for s in test}
        again = held_out_split(cfg, task)
        assert [s.image.tobytes() for s in again] == [s.image.tobytes() for s in test]
        assert not {s.image.tobytes() for s in train} & {s.image.tobytes() for s in test}


def test_real_data_analogues():
    """``rec`` (RefCOCO's analogue) trains on Shapes boxes, ``point`` (PixMo-Points') on the gold
    point alone, from a Scenes stream pretraining never drew (seed 0 trained the checkpoint);
    every gold answer scores correct on its own sample and a far one does not."""
    cfg = tiny_config(tasks=("rec", "point"))
    rec, point = (train_split(cfg, t).samples for t in cfg.tasks)
    assert all(s.task == "shapes" and s.geometry.boxes for s in rec)
    assert all(s.id.startswith("scenes-s20000-") for s in point)
    for s in point:
        assert s.question.startswith("Point to") and s.geometry.mask is None
        assert s.geometry.points == [tuple(p) for p in s.structured["points"]]
    for task in cfg.tasks:
        for s in held_out_split(cfg, task):
            assert score_answer(s, s.answer).correct
            far = "[0.99, 0.99, 1.00, 1.00]" if task == "rec" else "[0.00, 0.00]"
            assert not score_answer(s, far).correct


def test_point_target_mask_keeps_the_object():
    """``point_target='mask'``: the same point samples, the KLAL target the object's mask that
    the test scores against (its cells, not the gold point's); anything else is refused."""
    points = train_split(tiny_config(tasks=("point",)), "point").samples
    masks = train_split(tiny_config(tasks=("point",), point_target="mask"), "point").samples
    assert [s.id for s in masks] == [s.id for s in points]
    for p, m in zip(points, masks, strict=True):
        assert m.geometry.points == [] and m.geometry.mask is not None
        x, y = p.geometry.points[0]
        assert m.geometry.mask[int(y), int(x)]  # the gold point lies on the object
        assert m.geometry.mask.sum() > 1
    with pytest.raises(ValueError, match="point_target must be one of"):
        tiny_config(point_target="box")


@pytest.mark.slow
def test_demo_writes_report(tmp_path):
    """The demo in two worker processes (spawned, so every part loads the checkpoint from
    disk, as `make demo` loads the shipped one): all parts, merged as one run of each would
    return them, the lens reusing the heads' NTP model, the claims table first."""
    out = tmp_path / "demo"
    model, processor = tiny.build_tiny("llava", replace(tiny.TINY_SIZES["test"], layers=4,
                                                        image_size=112), seed=0)
    tiny.save_tiny(model, processor, tmp_path / "ckpt")
    train = TrainSpec(init=str(tmp_path / "ckpt"), image_size=112, steps=2, batch_size=2)
    heads_config = HeadsExperimentConfig(train=train, search_samples=4,
                                         search_repeats=2, test_samples=3, vqa_samples=2,
                                         eval_batch_size=4, n_maps=2, save_models=True,
                                         baselines=DEMO_HEADS.baselines)
    lens_config = LensExperimentConfig(train=train, test_samples=3,
                                       vqa_samples=2, eval_batch_size=4, n_maps=2)
    report = run_demo(out, tiny_config(train=train), progress=False, command="test",
                      heads_config=heads_config, lens_config=lens_config, workers=2)
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
    # the demo's heads part shows the grid's ceiling, in its table and its claim
    assert "ceiling" in results["heads"]["conditions"]["ntp"]["rec"]["methods"]
    assert html_escape("ceiling (the object's own map)") in html
    assert "the most any attention" in html
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
    assert results["settings"]["lens"]["train"]["steps"] == 2
    assert results["settings"]["workers"] == 2
    timing = results["timing"]
    assert set(timing["jobs"]) == {"heads ntp + lens", "heads untrained", "heads klal",
                                   "klal grid_patch", "klal line_intersection",
                                   "klal line_tracing"}
    assert html.index("The three claims") < html.index("<h2>Results</h2>")
    assert "fine-tuned 2 steps (lr 0.001) from the pretrained checkpoint" in html
    for name in ("attention_maps.png", "attention_ratio.png", "training_curves.png",
                 "heads_maps.png", "heads_each.png", "lens_maps.png", "lens_layers.png"):
        assert (out / name).stat().st_size > 0 and name in html
    assert "| task" in (out / "results.md").read_text()
    with pytest.raises(FileExistsError):
        run_demo(out, tiny_config(), progress=False)


def test_demo_in_one_process(tmp_path):
    """``workers=1`` runs the jobs here, in order; a lens part without a heads part trains its
    own NTP model; bad ``workers`` is refused before anything runs."""
    lens_config = LensExperimentConfig(train=TrainSpec(**TRAIN), test_samples=2,
                                       vqa_samples=2, eval_batch_size=4, n_maps=1,
                                       lens_layers="0")
    report = run_demo(tmp_path / "one", tiny_config(tasks=("grid_patch",)), progress=False,
                      heads_config=None, lens_config=lens_config, workers=1)
    results = json.loads((report.parent / "results.json").read_text())
    assert set(results["timing"]["jobs"]) == {"klal grid_patch", "lens ntp+lll"}
    assert "reused_from" not in results["lens"]["conditions"]["ntp"]["train"]
    with pytest.raises(ValueError, match="workers must be"):
        run_demo(tmp_path / "two", tiny_config(), progress=False, workers=0)


def test_config_errors():
    with pytest.raises(ValueError, match="tasks"):
        KLALExperimentConfig(tasks=("nope",))
    with pytest.raises(ValueError, match="conditions"):
        KLALExperimentConfig(conditions=())
    with pytest.raises(ValueError, match="steps"):
        KLALExperimentConfig(train=TrainSpec(steps=0))
    for bad in (float("nan"), -1.0, 0.0, 1.5):
        with pytest.raises(ValueError, match="lr must be in"):
            TrainSpec(lr=bad)
    with pytest.raises(ValueError, match="warmup_ratio"):
        TrainSpec(warmup_ratio=2.0)
    with pytest.raises(ValueError, match="query"):
        KLALExperimentConfig(klal=KLALConfig(query="first"))
    with pytest.raises(ValueError, match="image_size"):
        KLALExperimentConfig(train=TrainSpec(size="test", image_size=112))


def test_configs_compose_and_read_their_json():
    """The experiments nest one `TrainSpec` and the loss and target configs; ``from_json`` reads
    the nested JSON, and the flat layout of results files written before the nesting."""
    cfg = KLALExperimentConfig(train=TrainSpec(steps=7, seed=3), tasks=("grid_patch",),
                               klal=KLALConfig(weight=0.5, layers=(1,)),
                               target=TargetConfig(1.0, 0.3, 0.02))
    assert cfg.klal_config("klal") == cfg.klal
    assert cfg.klal_config("ntp") == KLALConfig(weight=0.0, layers=(1,), monitor=True)
    assert KLALExperimentConfig.from_json(json.loads(json.dumps(cfg.to_json()))) == cfg
    flat = {"family": "llava", "size": "demo", "tasks": ["grid_patch"], "image_size": 112,
            "steps": 7, "batch_size": 8, "lr": 0.001, "warmup_ratio": 0.05, "weight": 0.5,
            "query": "last_answer", "target": {"target": 1.0, "neighbour": 0.3, "floor": 0.02},
            "seed": 3, "data_seed": 0, "save_models": False}
    assert KLALExperimentConfig.from_json(flat) == replace(cfg, klal=KLALConfig(weight=0.5))
    lcfg = LensExperimentConfig.from_json({"size": "heads", "steps": 3, "mu": 0.5, "layer": -2,
                                           "concept": ["colour"], "conditions": ["lll"]})
    assert lcfg == LensExperimentConfig(train=replace(LensExperimentConfig().train, steps=3),
                                        lll=LLLConfig(weight=0.5, layer=-2, concept=("colour",)),
                                        conditions=("lll",))
    with pytest.raises(ValueError, match="unknown key 'nope'"):
        KLALExperimentConfig.from_json({"nope": 1})


def test_cli_experiment(tmp_path, capsys, cli_error):
    args = ["experiment", "klal", "--out", str(tmp_path), "--seeds", "0", "--quiet",
            "--size", "test96", "--image-size", "112", "--steps", "1", "--batch-size", "2",
            "--test-samples", "2", "--tasks", "line_intersection", "--n-maps", "1"]
    assert main(args) == 0
    data = json.loads((tmp_path / "seed0.json").read_text())
    assert data["settings"]["klal"]["tasks"] == ["line_intersection"]
    assert set(data["tasks"]["line_intersection"]) == {"ntp", "klal"}
    back = KLALResult.from_json(data)  # the typed result reads its file back, to the same JSON
    assert json.loads(json.dumps(back.to_json())) == {k: data[k] for k in ("tasks", "examples")}
    entry = back.tasks["line_intersection"]["klal"]
    assert entry.train.steps == 1 and entry.n == 2 and "klal_loss" in entry.train.log[0]
    assert main(args) == 0  # an existing seed file is skipped, not overwritten
    assert "skipped" in capsys.readouterr().out
    assert "weight" in cli_error(["demo", "--out", tmp_path / "d", "--klal-weight", "-1"])


def test_fine_tunes_a_checkpoint(tmp_path):
    """``init`` starts every condition from the checkpoint's weights (not the seed's random
    ones), reads its shape from its config, and refuses what is not a model folder."""
    import torch

    from lookhere.experiment.klal import train_one

    model, processor = tiny.build_tiny("llava", "test96", seed=5)
    tiny.save_tiny(model, processor, tmp_path / "ckpt")
    spec = TrainSpec(**{**TRAIN, "steps": 1, "lr": 1e-9, "init": str(tmp_path / "ckpt")})
    assert spec.shape.layers == model.config.text_config.num_hidden_layers
    assert spec.shape.image_size == 112 and spec.model_name == str(tmp_path / "ckpt")
    cfg = tiny_config(train=spec, tasks=("grid_patch",))
    trained, _, record = train_one(cfg, "klal", train_split(cfg, "grid_patch"), tmp_path / "run",
                                   progress=False)
    saved = dict(model.named_parameters())
    name = next(n for n in saved if "embed_tokens" in n)
    # lr 1e-9: one step leaves the checkpoint's weights (AdamW moves each by <= ~lr)
    assert torch.allclose(dict(trained.named_parameters())[name].detach().cpu(), saved[name],
                          atol=1e-6)
    fresh, _ = TrainSpec(**TRAIN).build_model()  # seed 0's random weights differ
    assert not torch.allclose(dict(fresh.named_parameters())[name], saved[name], atol=1e-3)
    assert record.steps == 1
    # the weights are fixed, so the seed orders the batches: seeds 0 and 1 are two runs
    pool = train_split(tiny_config(train=replace(spec, steps=20)), "grid_patch")  # 40 samples
    logs = [train_one(tiny_config(train=replace(spec, lr=1e-3, steps=2, seed=seed),
                                  tasks=("grid_patch",)), "ntp", pool, tmp_path / f"s{seed}",
                      progress=False)[2].log[0]["loss"] for seed in (0, 1, 0)]
    assert logs[0] != logs[1] and logs[0] == logs[2]
    with pytest.raises(ValueError, match="init .*not a checkpoint"):
        TrainSpec(**{**TRAIN, "init": str(tmp_path / "missing")})
    with pytest.raises(ValueError, match="image_size 96 must equal"):
        TrainSpec(**{**TRAIN, "image_size": 96, "init": str(tmp_path / "ckpt")})
