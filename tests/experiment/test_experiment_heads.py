"""The localization-heads experiment end to end on a tiny 4-layer model (seconds)."""

import json
from dataclasses import replace

import pytest

from lookhere.cli import main
from lookhere.experiment import heads
from lookhere.experiment.heads import (
    HeadsExperimentConfig,
    held_out_splits,
    search_split,
    stability,
)
from lookhere.experiment.training import TrainSpec
from lookhere.models import tiny

TINY = dict(search_samples=6, search_repeats=2, test_samples=4, vqa_samples=4, eval_batch_size=4,
            n_maps=2)


def tiny_config(**kw) -> HeadsExperimentConfig:
    return HeadsExperimentConfig(**{"train": TrainSpec(size="test4", steps=2, batch_size=2),
                                    **TINY, **kw})

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def test4(monkeypatch):
    """The "test" model with 4 LLM layers (the search skips 0-1) at 112 px."""
    monkeypatch.setitem(tiny.TINY_SIZES, "test4", replace(tiny.TINY_SIZES["test"], layers=4,
                                                          image_size=112))


def test_splits_are_disjoint():
    cfg = tiny_config()
    vqa, rec = held_out_splits(cfg)
    searches = [search_split(cfg, r) for r in range(3)]
    assert all(s.structured["type"] for s in vqa) and all("box" in s.structured for s in rec)
    images = [{s.image.tobytes() for s in split} for split in [rec, *searches]]
    for i in range(len(images)):
        for j in range(i + 1, len(images)):
            assert not images[i] & images[j], (i, j)
    assert len(searches[1]) == cfg.search_samples
    assert [s.image.tobytes() for s in search_split(cfg, 1)] == \
        [s.image.tobytes() for s in searches[1]]


def test_stability_by_hand():
    a, b, c = [(2, 0), (2, 1), (3, 0)], [(2, 1), (2, 0), (3, 0)], [(2, 0), (3, 3), (3, 2)]
    assert stability([a, b]).to_json() == {
        "heads": [[[2, 0], [2, 1], [3, 0]], [[2, 1], [2, 0], [3, 0]]], "mean_overlap": 1.0,
        "identical": True}  # same set
    # pairs: (a, b) 3/3, (a, c) 1/3, (b, c) 1/3
    assert stability([a, b, c]).mean_overlap == pytest.approx(5 / 9)
    assert stability([a, b, c]).identical is False
    assert stability([a]).mean_overlap == 1.0


@pytest.mark.slow
def test_run_records_every_condition(tmp_path):
    cfg = tiny_config()
    seen = []
    typed = heads.run(cfg, tmp_path, progress=False, on_result=lambda c, e: seen.append(c))
    assert seen == list(heads.CONDITIONS) == list(typed.conditions)
    res = json.loads(json.dumps(typed.to_json()))  # the file the CLI writes
    back = heads.HeadsResult.from_json(res)  # read back: the same result, the same JSON
    assert back.config == cfg and json.loads(json.dumps(back.to_json())) == res
    assert back.conditions["ntp"].spec == typed.conditions["ntp"].spec
    ids = res["examples"]["ids"]
    assert ids == [s.id for s in held_out_splits(cfg)[1][:2]]
    for cond, entry in res["conditions"].items():
        assert len(entry["spec"]["heads"]) == 3 and all(h[0] >= 2 for h in entry["spec"]["heads"])
        assert entry["spec"]["num_samples"] == cfg.search_samples
        assert len(entry["stability"]["heads"]) == 2
        assert entry["stability"]["heads"][0] == [list(h) for h in entry["spec"]["heads"]]
        assert list(entry["rec"]["methods"]) == ["heads", *cfg.baselines]
        assert entry["rec"]["n"] == 4 and entry["vqa"]["n"] == 4
        assert entry["train"]["steps"] == (0 if cond == "untrained" else 2)
        for sid in ids:
            ex = res["examples"][cond][sid]
            assert len(ex["maps"]) == 3 and ex["box"] == pytest.approx(
                entry["rec"]["methods"]["heads"]["boxes"][sid])


def test_config_errors():
    with pytest.raises(ValueError, match="conditions"):
        tiny_config(conditions=("nope",))
    for bad in (-0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="ground_sigma must be finite and >= 0"):
            tiny_config(ground_sigma=bad)
    with pytest.raises(ValueError, match="at least 3"):
        HeadsExperimentConfig(train=TrainSpec(size="demo"))
    with pytest.raises(ValueError, match="baselines"):
        tiny_config(baselines=("oracle",))
    with pytest.raises(ValueError, match="search_repeats"):
        tiny_config(search_repeats=0)
    with pytest.raises(ValueError, match="image_size"):
        TrainSpec(size="heads", image_size=224)


def test_cli(tmp_path, capsys):
    args = ["experiment", "heads", "--out", str(tmp_path), "--seeds", "0", "--quiet",
            "--size", "test4", "--steps", "1", "--batch-size", "2", "--search-samples", "4",
            "--search-repeats", "1", "--test-samples", "2", "--vqa-samples", "2",
            "--conditions", "untrained", "ntp", "--baselines", "centre", "--n-maps", "1",
            "--shapes-options", '{"max_objects": 3}', "--klal-weight", "0.5",
            "--target-neighbour", "0.4"]
    assert main(args) == 0
    data = json.loads((tmp_path / "seed0.json").read_text())
    assert data["config"]["shapes_options"] == {"max_objects": 3}
    assert data["config"]["klal"]["weight"] == 0.5 and data["config"]["klal"]["query"] == \
        "last_answer"  # nested configs: their options are prefixed, the rest keep defaults
    assert data["config"]["target"] == {"target": 1.0, "neighbour": 0.4, "floor": 0.01}
    assert data["config"]["train"]["steps"] == 1 and data["config"]["train"]["seed"] == 0
    assert set(data["conditions"]) == {"untrained", "ntp"}
    assert list(data["conditions"]["ntp"]["rec"]["methods"]) == ["centre", "heads"]  # sorted
    assert "Acc@0.5/pointing" in capsys.readouterr().out
    assert main(args) == 0
    assert "skipped" in capsys.readouterr().out
