"""The lens experiment (NTP vs NTP+LLL, lens segmentation) end to end on a tiny 4-layer model:
every condition, JSON-able results, the LLL weight of each condition, the scores against a hand
recomputation from the trained model, disjoint splits, the figures, config errors, the CLI."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import tiny as tiny_model

from lookhere.cli import main
from lookhere.data.synthetic.shapes import object_mask
from lookhere.experiment import heads, lens
from lookhere.experiment.heads import HeadsExperimentConfig
from lookhere.experiment.klal import KLALExperimentConfig
from lookhere.experiment.lens import (
    LensExperimentConfig,
    concept_regions,
    held_out_splits,
    reference_scores,
    train_split,
)
from lookhere.experiment.training import TrainRecord, TrainSpec
from lookhere.lens import lens_maps
from lookhere.models import get_adapter, tiny
from lookhere.report.sections import lens_figures
from lookhere.train import LLLConfig

MU = 2.0
TRAIN = dict(size="test4", steps=2, batch_size=2)
TINY = dict(test_samples=4, vqa_samples=4, eval_batch_size=4, n_maps=2)


def tiny_config(train: dict | None = None, lll: dict | None = None, **kw) -> LensExperimentConfig:
    """The tiny experiment; ``train`` / ``lll``: changes to its `TrainSpec` / `LLLConfig`."""
    return LensExperimentConfig(train=TrainSpec(**{**TRAIN, **(train or {})}),
                                lll=LLLConfig(**{"weight": MU, **(lll or {})}), **{**TINY, **kw})

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def test4(monkeypatch):
    """The "test" model with 4 LLM layers at 112 px (an 8 x 8 grid of 14 px cells)."""
    monkeypatch.setitem(tiny.TINY_SIZES, "test4", replace(tiny.TINY_SIZES["test"], layers=4,
                                                          image_size=112))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One run of both conditions, and the trained models (caught from `train_one`)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(tiny.TINY_SIZES, "test4", replace(tiny.TINY_SIZES["test"], layers=4,
                                                     image_size=112))
        models = {}
        original = lens.train_one

        def keep(config, condition, *args, **kwargs):
            out = original(config, condition, *args, **kwargs)
            models[condition] = out[:2]
            return out

        mp.setattr(lens, "train_one", keep)
        cfg = tiny_config()
        seen = []
        out = tmp_path_factory.mktemp("lens")
        typed = lens.run(cfg, out, progress=False, on_result=lambda c, e: seen.append(c))
        figures = lens_figures(out, cfg, typed)
    res = json.loads(json.dumps(typed.to_json()))  # the file the CLI writes
    return cfg, res, seen, models, figures, typed


def test_run_records_every_condition(finished):
    cfg, res, seen, _, _, typed = finished
    assert seen == list(lens.CONDITIONS) == list(typed.conditions)
    back = lens.LensResult.from_json(res)  # read back: the same result, the same JSON
    assert back.config == cfg and json.loads(json.dumps(back.to_json())) == res
    assert back.conditions["lll"].lens[3]["all"] == typed.conditions["lll"].lens[3]["all"]
    assert res["layers"] == [0, 1, 2, 3]
    lens_test = held_out_splits(cfg)[1]
    n_kind = {k: sum(r[0] == k for s in lens_test for r in concept_regions(s))
              for k in lens.KINDS}
    for entry in res["conditions"].values():
        assert entry["vqa"]["n"] == 4 and 0 <= entry["vqa"]["accuracy"] <= 1
        assert set(entry["lens"]) == {"0", "1", "2", "3"}
        for per in entry["lens"].values():
            assert [per[k]["n"] for k in ("shape", "colour", "all")] == \
                [n_kind["shape"], n_kind["colour"], n_kind["shape"] + n_kind["colour"]]
            for scores in per.values():
                for name in ("mIoU", "cIoU", "pointing", "pointing_object", "p_in", "p_out"):
                    assert 0 <= scores[name] <= 1, name
                assert scores["pointing"] <= scores["pointing_object"]
    ref = res["reference"]
    assert ref["all"]["n"] == n_kind["shape"] + n_kind["colour"]
    assert 0 < ref["shape"]["region_share"] < ref["shape"]["object_share"] < 1
    # every shape and colour word has its own first token in the "test" tokenizer, but two
    # colours share one: "purple" and "pink" both start with " p"
    assert res["concepts"]["rule"] == "first"
    assert res["concepts"]["shared_ids"] == [["purple", "pink"]]


def test_conditions_train_with_their_lll_weight(finished):
    """Same initial weights and batches: step 1 (before any update) logs the same NTP and LLL in
    both runs; 'ntp' trains on NTP alone (LLL monitored), 'lll' on NTP + mu LLL."""
    _, res, _, _, _, _ = finished
    ntp, lll = (res["conditions"][c]["train"] for c in ("ntp", "lll"))
    assert ntp["lll"]["weight"] == 0 and ntp["lll"]["monitor"] is True
    assert lll["lll"]["weight"] == MU and lll["lll"]["layer"] == -1
    assert all("lll_loss" in r and "ntp_loss" in r for r in ntp["log"] + lll["log"])
    first_ntp, first_lll = ntp["log"][0], lll["log"][0]
    assert first_ntp["step"] == first_lll["step"] == 1
    assert first_ntp["ntp_loss"] == pytest.approx(first_lll["ntp_loss"], rel=1e-5)
    assert first_ntp["lll_loss"] == pytest.approx(first_lll["lll_loss"], rel=1e-5)
    assert first_ntp["lll_loss"] > 0
    assert first_ntp["loss"] == pytest.approx(first_ntp["ntp_loss"], rel=1e-5)
    assert first_lll["loss"] == pytest.approx(first_lll["ntp_loss"] + MU * first_lll["lll_loss"],
                                              rel=1e-5)
    assert ntp["log"][-1]["lll_loss"] != pytest.approx(lll["log"][-1]["lll_loss"])


@pytest.mark.parametrize("condition", lens.CONDITIONS)
def test_scores_match_a_hand_recomputation(finished, condition):
    """From the trained model: the lens maps, then by hand: cells above the map's mean, each a
    14 x 14 pixel block (112 px image, 8 x 8 grid, no resize); IoU with the union of the
    objects carrying the word; the peak cell's centre in that union."""
    cfg, res, _, models, _, _ = finished
    model, processor = models[condition]
    samples = held_out_splits(cfg)[1]
    words = [w for k in lens.KINDS for w in cfg.vocabulary()[k]]
    result = lens_maps(model, processor, get_adapter(model), [s.image for s in samples], words,
                       "all")
    for layer in (0, 3):
        inter = {k: [] for k in lens.KINDS}
        union = {k: [] for k in lens.KINDS}
        hits = {k: [] for k in lens.KINDS}
        touches = {k: [] for k in lens.KINDS}
        on_object = {k: [] for k in lens.KINDS}
        for i, s in enumerate(samples):
            objects = sum(object_mask(o, 112) for o in s.meta["objects"]).astype(bool)
            for kind in lens.KINDS:
                for word in {o[kind] for o in s.meta["objects"]}:
                    gold = np.zeros((112, 112), dtype=bool)
                    for o in s.meta["objects"]:
                        if o[kind] == word:
                            gold |= object_mask(o, 112)
                    heat = result.map(i, layer, word).numpy()
                    pred = np.kron(heat > heat.mean(), np.ones((14, 14))).astype(bool)
                    inter[kind].append((pred & gold).sum())
                    union[kind].append((pred | gold).sum())
                    r, c = np.unravel_index(np.argmax(heat), heat.shape)
                    hits[kind].append(gold[r * 14 + 7, c * 14 + 7])
                    touches[kind].append(gold[r * 14:(r + 1) * 14, c * 14:(c + 1) * 14].any())
                    on_object[kind].append(objects[r * 14 + 7, c * 14 + 7])
        got = res["conditions"][condition]["lens"][str(layer)]
        for kind in lens.KINDS:
            i, u = np.array(inter[kind]), np.array(union[kind])
            assert got[kind]["mIoU"] == pytest.approx(np.mean(i / u))
            assert got[kind]["cIoU"] == pytest.approx(i.sum() / u.sum())
            assert got[kind]["pointing"] == pytest.approx(np.mean(hits[kind]))
            assert got[kind]["pointing_cell"] == pytest.approx(np.mean(touches[kind]))
            assert got[kind]["pointing_object"] == pytest.approx(np.mean(on_object[kind]))
    # the example maps are the lens maps of the first images' first object's shape / colour word
    ex = res["examples"]
    assert [it["id"] for it in ex["items"]] == [s.id for s in samples[:2]]
    for j, it in enumerate(ex["items"]):
        assert (it["kind"], it["concept"]) == (lens.KINDS[j % 2],
                                               samples[j].meta["objects"][0][lens.KINDS[j % 2]])
        kept = ex["maps"][condition][j]
        assert kept["extent"] == [0.0, 0.0, 112.0, 112.0]
        assert np.allclose(kept["maps"]["3"], result.map(j, 3, it["concept"]).numpy())


def test_lens_scores_every_family(family):
    """Any registered family: the scores of an untrained "test" model (56 px, 2 layers) on its
    first grid, one row per (image, word), each in range; the examples' maps cover the image."""
    model, processor = tiny_model(family)
    cfg = LensExperimentConfig(train=TrainSpec(family=family, size="test", image_size=56),
                               test_samples=3, n_maps=2, shapes_options={"max_objects": 3})
    samples = held_out_splits(cfg)[1]
    scores, examples = lens.lens_scores(cfg, model, processor, samples)
    n = {k: sum(r[0] == k for s in samples for r in concept_regions(s)) for k in lens.KINDS}
    assert set(scores) == {0, 1}
    for per in scores.values():
        assert per["all"].n == n["shape"] + n["colour"] and per["shape"].n == n["shape"]
        assert all(0 <= getattr(per[k], m) <= 1 for k in per for m in ("mIoU", "cIoU",
                                                                          "pointing"))
    assert len(examples) == 2
    for ex in examples:
        x0, y0, x1, y1 = ex.extent
        assert x0 <= 0 and y0 <= 0 and x1 >= 56 and y1 >= 56
        assert np.asarray(ex.maps[1]).ndim == 2


def test_figures(finished):
    _, _, _, _, figures, _ = finished
    assert len(figures) == 2
    for caption, path in figures.items():
        assert caption and path.exists() and path.stat().st_size > 1000
    assert any("L1, L3" in c for c in figures)  # default layers: the middle and the LLL layer


def test_figure_columns_put_ntp_first(finished, tmp_path, monkeypatch):
    """image | NTP | NTP+LLL for each layer, whichever condition ran first."""
    import lookhere.report.sections as sections

    cfg, res, _, _, _, typed = finished
    seen = []
    monkeypatch.setattr(sections, "plot_attention_maps",
                        lambda rows, path, *a, **k: seen.append(rows) or path)
    maps = typed.maps
    flipped = replace(typed, maps={"lll": maps["lll"], "ntp": maps["ntp"]})
    sections.lens_figures(tmp_path, cfg, flipped)
    assert list(seen[0][0]["maps"]) == ["NTP L1", "NTP+LLL L1", "NTP L3", "NTP+LLL L3"]
    assert seen[0][1]["maps"]["NTP+LLL L3"] == res["examples"]["maps"]["lll"][1]["maps"]["3"]


def test_heads_ntp_model_is_the_lens_ntp_model(finished, tmp_path):
    """The heads experiment's NTP run (KLAL monitored, KLAL targets in the batches) with the same
    training settings trains the very same model as this experiment's (LLL monitored): equal
    parameters; given to `run` as ``trained``, it gives the same scores as training here."""
    cfg, res, _, models, _, _ = finished
    hcfg = HeadsExperimentConfig(train=TrainSpec(**TRAIN), search_samples=4,
                                 search_repeats=1, test_samples=2, vqa_samples=2)
    assert lens.ntp_mismatches(cfg, hcfg) == []
    model, processor, record = heads.prepare_model(hcfg, "ntp", heads.train_split(hcfg),
                                                   tmp_path, progress=False)
    assert "klal_loss" in record.log[0] and "lll_loss" not in record.log[0]
    ours = dict(models["ntp"][0].named_parameters())
    theirs = dict(model.named_parameters())
    init = dict(tiny.build_tiny("llava", "test4", seed=0)[0].named_parameters())
    assert set(theirs) == set(ours) == set(init)
    assert all(torch.equal(theirs[n], ours[n]) for n in ours)
    assert sum(not torch.equal(ours[n], init[n]) for n in ours) > len(ours) // 2  # it trained
    given = lens.Trained(model, processor, record, hcfg, source="heads")
    again = lens.run(replace(cfg, conditions=("ntp",)), tmp_path / "lens", progress=False,
                     trained={"ntp": given})
    again = json.loads(json.dumps(again.to_json()))
    entry, trained_here = again["conditions"]["ntp"], res["conditions"]["ntp"]
    assert entry["lens"] == trained_here["lens"] and entry["vqa"] == trained_here["vqa"]
    assert again["examples"]["maps"]["ntp"] == res["examples"]["maps"]["ntp"]
    assert entry["train"]["reused_from"] == "heads" and entry["train"]["log"] == record.log
    assert entry["train"]["lll"]["weight"] == 0 and entry["train"]["lll"]["monitor"] is False


def test_trained_errors(finished):
    cfg, _, _, models, _, _ = finished
    hcfg = HeadsExperimentConfig(train=TrainSpec(**TRAIN))
    given = lens.Trained(*models["ntp"], TrainRecord(steps=2), hcfg)
    other_data = replace(hcfg, train=replace(hcfg.train, data_seed=1))
    cases = [({"lll": given}, cfg, "only the 'ntp'"),
             ({"ntp": given}, replace(cfg, conditions=("lll",)), "not in config.conditions"),
             ({"ntp": replace(given, config=other_data)}, cfg, "data_seed: 1"),
             ({"ntp": replace(given, config=replace(hcfg, shapes_options={"max_objects": 3}))},
              cfg, "Shapes VQA settings"),
             ({"ntp": replace(given, config=KLALExperimentConfig(train=TrainSpec(**TRAIN)))},
              cfg, "Shapes experiment's config .heads or lens., got KLALExperimentConfig"),
             ({"ntp": replace(given, config=object())}, cfg, "got object")]
    for trained, config, match in cases:
        with pytest.raises((ValueError, TypeError), match=match):
            lens.run(config, "unused", progress=False, trained=trained)


def test_concept_regions_and_reference_by_hand():
    s = held_out_splits(tiny_config())[1][0]
    objs = s.meta["objects"]
    regions = concept_regions(s)
    assert [r[0] for r in regions] == ["shape"] * len({o["shape"] for o in objs}) + \
        ["colour"] * len({o["colour"] for o in objs})
    for o in objs:  # every object lies in its shape word's and its colour word's region
        m = object_mask(o, s.image.size)
        for kind in lens.KINDS:
            region = next(r[2] for r in regions if r[:2] == (kind, o[kind]))
            assert (region | m == region).all()
    total = sum(object_mask(o, s.image.size).sum() for o in objs)  # objects never overlap
    assert sum(r[2].sum() for r in regions if r[0] == "shape") == total
    ref = reference_scores([s])
    assert ref["colour"].region_share == pytest.approx(
        np.mean([r[2].mean() for r in regions if r[0] == "colour"]))
    assert ref["all"].object_share == pytest.approx(total / 112**2)


def test_splits_are_disjoint():
    cfg = tiny_config(train={"steps": 4})
    train = {s.image.tobytes() for s in train_split(cfg).samples}
    vqa, images = held_out_splits(cfg)
    assert len(train) == 8 and len(images) == 4
    assert not train & {s.image.tobytes() for s in vqa + images}
    assert all(len(s.meta["objects"]) >= 2 for s in images)


def test_config_errors():
    cases = [({"conditions": ("klal",)}, "conditions"), ({"conditions": ()}, "conditions"),
             ({"lens_layers": "x"}, "lens_layers"), ({"lens_layers": "0,4"}, "lens_layers"),
             ({"threshold": "median"}, "threshold"), ({"threshold": "1.5"}, "threshold"),
             ({"lll": {"layer": 4}}, "layer 4"), ({"lll": {"weight": -1.0}}, "weight"),
             ({"lll": {"beta": -1.0}}, "beta"), ({"lll": {"token_rule": "all"}}, "token_rule"),
             ({"lll": {"concept": ("size",)}}, "concept"), ({"train": {"steps": 0}}, "steps"),
             ({"smooth_sigma": -1.0}, "smooth_sigma"), ({"n_maps": -1}, "n_maps"),
             ({"train": {"image_size": 224}}, "image_size"),
             ({"shapes_options": {"max_objects": 9}}, "max_objects")]
    for change, match in cases:
        with pytest.raises(ValueError, match=match):
            tiny_config(**change)
    assert tiny_config(lens_layers="-1,1").layers() == (3, 1)
    assert LensExperimentConfig().layers() == (0, 1, 2, 3)  # the "heads" size: 4 layers


def test_cli(tmp_path, capsys, cli_error):
    args = ["experiment", "lens", "--out", str(tmp_path), "--seeds", "0", "--quiet",
            "--size", "test4", "--steps", "1", "--batch-size", "2", "--test-samples", "2",
            "--vqa-samples", "2", "--conditions", "lll", "--n-maps", "1", "--lll-weight", "0.5",
            "--lens-layers", "-1", "--threshold", "0.5", "--largest-component",
            "--save-models", "--shapes-options", '{"max_objects": 3}', "--lll-concept", "colour",
            "shape"]
    assert main(args) == 0
    data = json.loads((tmp_path / "seed0.json").read_text())
    assert data["config"]["shapes_options"] == {"max_objects": 3}
    assert data["config"]["threshold"] == "0.5" and data["config"]["largest_component"] is True
    assert list(data["conditions"]) == ["lll"] and data["layers"] == [3]
    assert data["conditions"]["lll"]["train"]["lll"]["weight"] == 0.5
    assert data["conditions"]["lll"]["train"]["lll"]["concept"] == ["colour", "shape"]
    assert (tmp_path / "seed0" / "models" / "lll" / "config.json").exists()
    assert "lens mIoU/pointing" in capsys.readouterr().out
    assert main(args) == 0
    assert "skipped" in capsys.readouterr().out
    assert "threshold" in cli_error([*args[:3], tmp_path / "bad", "--size", "test4",
                                     "--threshold", "median"])
