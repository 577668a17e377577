"""``lookhere heads find``, ``lookhere ground`` and ``lookhere eval rec`` end to end on a saved tiny
model and a Shapes REC folder: each command's output equals the library called directly, the
centre baseline equals pycocotools, and bad input exits 2 with the command's name (the command
under torchrun: tests/heads/test_heads_distributed.py)."""

import dataclasses
import json

import numpy as np
import pytest
from conftest import FIXTURES
from PIL import Image
from pycocotools import mask as mask_utils

from lookhere.cli import main
from lookhere.data.disk import read_samples
from lookhere.data.refcoco import RefCoco
from lookhere.eval.rec import DEFAULT_BASELINES, ceiling, centre_box
from lookhere.heads.locate import locate
from lookhere.heads.search import find_heads
from lookhere.heads.selection import HeadSpec
from lookhere.models import build_tiny
from lookhere.models.loading import load_model
from lookhere.models.tiny import save_tiny

pytestmark = pytest.mark.usefixtures("one_thread")

REFER = FIXTURES / "refer"
N = 6


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A saved 4-layer tiny LLaVA, its in-memory copy, a Shapes REC folder, a VQA folder and the
    spec `heads find` writes with its defaults."""
    root = tmp_path_factory.mktemp("cli_heads")
    model, processor = build_tiny("llava", {"layers": 4}, seed=0)  # heads skip layers 0-1
    save_tiny(model, processor, root / "model")
    for name, mode, n in [("rec", "rec", N), ("vqa", "vqa", 2)]:
        assert main(["data", "make", "shapes", "--n", str(n), "--out", str(root / name),
                     "--set", "image_size=112", "--set", f"mode={mode}"]) == 0
    assert main(["heads", "find", "--model", str(root / "model"), "--data", str(root / "rec"),
                 "--out", str(root / "heads.json"), "--batch-size", "4", "--quiet"]) == 0
    loaded = load_model(str(root / "model"))
    return root, loaded, list(read_samples(root / "rec"))


def _xywh(b):
    return [b[0], b[1], b[2] - b[0], b[3] - b[1]]


def test_heads_find_equals_the_library(env):
    root, (model, processor, adapter), samples = env
    spec = HeadSpec.load(root / "heads.json")
    direct = find_heads(model, processor, adapter, samples, model_id=str(root / "model"),
                        batch_size=4, progress=False)
    assert len(spec.heads) == 3 and all(layer >= 2 for layer, _ in spec.heads)
    assert spec.heads == direct.heads and spec.counts == direct.counts
    assert spec.num_samples == N and spec.model == str(root / "model")
    # the options reach find_heads
    out = root / "variant.json"
    opts = ["--limit", "4", "--top-k", "2", "--per-sample", "3", "--tau", "per_sample",
            "--threshold", "two_mean", "--weight", "mass", "--skip-layers", "0", "--quiet"]
    assert main(["heads", "find", "--model", str(root / "model"), "--data", str(root / "rec"),
                 "--out", str(out), *opts]) == 0
    variant = HeadSpec.load(out)
    direct = find_heads(model, processor, adapter, samples[:4], top_k=2, per_sample=3,
                        tau="per_sample", threshold="two_mean", weight="mass", skip_layers=[0],
                        progress=False)
    assert variant.heads == direct.heads and variant.counts == direct.counts
    assert variant.num_samples == 4 and variant.settings["skip_layers"] == [0]
    assert {k: variant.settings[k] for k in ("top_k", "tau", "threshold", "weight")} == {
        "top_k": 2, "tau": "per_sample", "threshold": "two_mean", "weight": "mass"}


def test_ground_sigma_reaches_the_rule(env, capsys):
    """--sigma is the maps' smoothing: sigma 0 gives locate's unsmoothed box."""
    root, (model, processor, adapter), samples = env
    spec = HeadSpec.load(root / "heads.json")
    capsys.readouterr()
    assert main(["ground", "--model", str(root / "model"), "--heads", str(root / "heads.json"),
                 "--data", str(root / "rec"), "--limit", "3", "--sigma", "0"]) == 0
    boxes = [json.loads(line)["box"] for line in capsys.readouterr().out.strip().splitlines()]
    for sigma, expected in ((0.0, True), (1.0, False)):
        found = locate(model, processor, adapter, spec, samples[:3], sigma=sigma)
        same = all(b == pytest.approx(list(g.box)) for b, g in zip(boxes, found, strict=True))
        assert same == expected, sigma


def test_ground_image_and_text(env, tmp_path, capsys):
    root, (model, processor, adapter), samples = env
    image = root / "rec" / "images" / "0000002.png"
    capsys.readouterr()
    assert main(["ground", "--model", str(root / "model"), "--heads", str(root / "heads.json"),
                 "--image", str(image), "--text", "the red circle",
                 "--masks-dir", str(tmp_path / "masks")]) == 0
    rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rec["id"] == "0000002" and rec["text"] == "the red circle"
    x0, y0, x1, y1 = rec["box"]
    assert 0 <= x0 < x1 <= 112 and 0 <= y0 < y1 <= 112
    sample = dataclasses.replace(samples[2], question="the red circle")
    g, = locate(model, processor, adapter, HeadSpec.load(root / "heads.json"), [sample])
    assert rec["box"] == pytest.approx(list(g.box))
    png = np.asarray(Image.open(rec["mask"]))
    assert png.shape == (112, 112) and set(np.unique(png)) <= {0, 255}
    np.testing.assert_array_equal(png == 255, g.pixel_mask)
    assert [p.name for p in (tmp_path / "masks").iterdir()] == ["0000002.png"]  # no temp left


def test_ground_data_to_jsonl(env, tmp_path):
    root, (model, processor, adapter), samples = env
    out = tmp_path / "g.jsonl"
    assert main(["ground", "--model", str(root / "model"), "--heads", str(root / "heads.json"),
                 "--data", str(root / "rec"), "--limit", "3", "--out", str(out)]) == 0
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    found = locate(model, processor, adapter, HeadSpec.load(root / "heads.json"), samples[:3])
    assert [r["id"] for r in recs] == [s.id for s in samples[:3]]
    assert [r["text"] for r in recs] == [s.question for s in samples[:3]]
    assert [r["box"] for r in recs] == [pytest.approx(list(g.box)) for g in found]
    assert all(set(r) == {"id", "text", "box"} for r in recs)


def test_ground_with_sam(env, tmp_path, capsys):
    from tinysam import tiny_sam

    from lookhere.heads.refine import SamRefiner

    root, _, samples = env
    sam_model, sam_processor = tiny_sam()
    sam_model.save_pretrained(tmp_path / "sam")
    sam_processor.save_pretrained(tmp_path / "sam")
    capsys.readouterr()
    assert main(["ground", "--model", str(root / "model"), "--heads", str(root / "heads.json"),
                 "--data", str(root / "rec"), "--limit", "2", "--masks-dir",
                 str(tmp_path / "masks"), "--sam", str(tmp_path / "sam")]) == 0
    recs = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    refiner = SamRefiner(sam_model, sam_processor)
    for rec, s in zip(recs, samples[:2], strict=True):
        png = np.asarray(Image.open(rec["mask"])) == 255
        np.testing.assert_array_equal(png, refiner(s.image, tuple(rec["box"])))


def test_eval_rec_on_shapes(env, tmp_path, capsys):
    root, _, samples = env
    out = tmp_path / "rec.json"
    capsys.readouterr()
    assert main(["eval", "rec", "--model", str(root / "model"), "--heads",
                 str(root / "heads.json"), "--data", str(root / "rec"), "--out", str(out),
                 "--max-new-tokens", "4", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("| method | n | Acc@0.5 |")
    result = json.loads(out.read_text())
    assert set(result["methods"]) == {"heads", *DEFAULT_BASELINES} and result["n"] == N
    assert result["source"] == f"--data {root / 'rec'}"
    heads = HeadSpec.load(root / "heads.json").heads
    assert result["methods"]["heads"]["heads"] == [list(h) for h in heads]
    ground_out = tmp_path / "g.jsonl"
    assert main(["ground", "--model", str(root / "model"), "--heads", str(root / "heads.json"),
                 "--data", str(root / "rec"), "--out", str(ground_out)]) == 0
    boxes = {r["id"]: r["box"] for r in map(json.loads, ground_out.read_text().splitlines())}
    got = result["methods"]["heads"]["boxes"]
    assert set(got) == set(boxes) and all(got[i] == pytest.approx(boxes[i]) for i in boxes)
    c = result["methods"]["centre"]
    ious = [mask_utils.iou([_xywh(centre_box(s.image.size))], [_xywh(s.geometry.boxes[0])],
                           [0])[0, 0] for s in samples]
    assert c["mean_iou"] == pytest.approx(np.mean(ious))
    assert c["acc@0.5"] == pytest.approx(np.mean(np.array(ious) >= 0.5))
    assert all(m["n_masks"] == N for m in result["methods"].values())


def test_eval_rec_on_refcoco_fixtures(env, tmp_path):
    root, (model, processor, adapter), _ = env
    out = tmp_path / "rec.json"
    assert main(["eval", "rec", "--model", str(root / "model"), "--heads",
                 str(root / "heads.json"), "--refcoco", str(REFER), "--dataset", "refcoco",
                 "--split-by", "unc", "--split", "val", "--baselines", "centre", "ceiling",
                 "--sigma", "0.5", "--out", str(out), "--quiet"]) == 0
    result = json.loads(out.read_text())
    samples = list(RefCoco(REFER, "refcoco", "unc", "val").iter_samples())
    assert result["ids"] == [s.id for s in samples] and result["n"] == len(samples) == 4
    assert set(result["methods"]) == {"heads", "centre", "ceiling"}
    assert result["settings"]["sigma"] == 0.5
    c = result["methods"]["centre"]
    spec = HeadSpec.load(root / "heads.json")
    for s in samples:
        # the ceiling: the rule at --sigma on the object's own map, on the heads' grid
        geometry = locate(model, processor, adapter, spec, [s])[0].geometry
        assert result["methods"]["ceiling"]["boxes"][s.id] == pytest.approx(
            list(ceiling(s, geometry, 0.5).box))
        ref = mask_utils.iou([_xywh(centre_box(s.image.size))], [_xywh(s.geometry.boxes[0])],
                             [0])[0, 0]
        assert c["ious"][s.id] == pytest.approx(ref)
        w, h = s.image.size
        x0, y0, x1, y1 = result["methods"]["heads"]["boxes"][s.id]
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
    assert c["n_masks"] == 4 and 0 <= c["cIoU"] <= 1


def _spec_file(path, heads, layers, n_heads=4):
    spec = HeadSpec("other", heads, 0.1, 1, [[0] * n_heads] * layers,
                    [[0.0] * n_heads] * layers, [[None] * n_heads] * layers)
    return spec.save(path)


@pytest.mark.parametrize("case", ["no_heads_file", "spec_too_deep", "head_out_of_range",
                                  "non_rec_eval", "non_rec_find", "no_model", "text_missing",
                                  "sam_without_masks", "text_with_data", "not_a_folder",
                                  "bad_json"])
def test_errors_exit_2(env, tmp_path, capsys, case):
    root = env[0]
    model, heads, rec, vqa = (str(root / "model"), str(root / "heads.json"), str(root / "rec"),
                              str(root / "vqa"))
    image = str(root / "rec" / "images" / "0000000.png")
    deep = str(_spec_file(tmp_path / "deep.json", [(7, 0)], layers=8))
    wide = str(_spec_file(tmp_path / "wide.json", [(2, 9)], layers=4, n_heads=10))
    (tmp_path / "bad.json").write_text("{not json")
    argv, prog, message = {
        "no_heads_file": (["ground", "--model", model, "--heads", str(tmp_path / "x.json"),
                           "--image", image, "--text", "a"], "ground", "no such file"),
        "spec_too_deep": (["eval", "rec", "--model", model, "--heads", deep, "--data", rec],
                          "eval rec", "found on a model of 8 layers x 4 heads"),
        "head_out_of_range": (["ground", "--model", model, "--heads", wide, "--data", rec],
                              "ground", "found on a model of 4 layers x 10 heads"),
        "non_rec_eval": (["eval", "rec", "--model", model, "--heads", heads, "--data", vqa],
                         "eval rec", "must be REC samples"),
        "non_rec_find": (["heads", "find", "--model", model, "--data", vqa, "--out",
                          str(tmp_path / "h.json")], "heads find", "must be REC samples"),
        "no_model": (["heads", "find", "--model", str(tmp_path / "nope"), "--data", rec,
                      "--out", str(tmp_path / "h.json")], "heads find", "--model"),
        "text_missing": (["ground", "--model", model, "--heads", heads, "--image", image],
                         "ground", "--image needs --text"),
        "sam_without_masks": (["ground", "--model", model, "--heads", heads, "--image", image,
                               "--text", "a", "--sam", "x"], "ground", "--sam only applies"),
        "text_with_data": (["ground", "--model", model, "--heads", heads, "--data", rec,
                            "--text", "a"], "ground", "--text only applies with --image"),
        "not_a_folder": (["eval", "rec", "--model", model, "--heads", heads, "--data",
                          str(tmp_path / "nope")], "eval rec", "is not a folder"),
        "bad_json": (["eval", "rec", "--model", model, "--heads", str(tmp_path / "bad.json"),
                      "--data", rec], "eval rec", "bad.json"),
    }[case]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and f"lookhere {prog}: error: " in err and message in err, err
    if case == "non_rec_eval":
        assert "shapes-s0-0000000" in err  # the offending samples are named


def test_ground_data_resumes_after_an_interruption(env, tmp_path, monkeypatch, capsys):
    """`ground --data --out` appends each chunk's records to a hidden partial file as it goes;
    interrupted after the first chunk (a KeyboardInterrupt, which the CLI does not catch, stands
    in for a kill), the rerun grounds only the rest and writes what one uninterrupted run
    writes. A line cut short is grounded again; a partial run of other heads is refused."""
    import importlib

    import lookhere.cli.heads as cli_heads

    locate_module = importlib.import_module("lookhere.heads.locate")  # the package re-exports

    root = env[0]
    base = ["ground", "--model", root / "model", "--heads", root / "heads.json", "--data",
            root / "rec", "--batch-size", "1"]
    whole = tmp_path / "whole.jsonl"
    assert main([str(a) for a in [*base, "--out", whole]]) == 0
    monkeypatch.setattr(cli_heads, "GROUND_CHUNK_BATCHES", 2)  # chunks of 2 samples
    real, calls = locate_module.locate, []

    def interrupted(model, processor, adapter, spec, samples, **kw):
        calls.append([s.id for s in samples])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(model, processor, adapter, spec, samples, **kw)

    out = tmp_path / "g.jsonl"
    partial = tmp_path / ".g.jsonl.partial"
    monkeypatch.setattr(locate_module, "locate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main([str(a) for a in [*base, "--out", out]])
    assert not out.exists() and len(partial.read_text().splitlines()) == 1 + 2
    with open(partial, "a") as f:
        f.write('{"id": "cut sho')  # as a kill in the middle of a write leaves it
    calls.clear()
    monkeypatch.setattr(locate_module, "locate", lambda *a, **kw: calls.append(
        [s.id for s in a[4]]) or real(*a, **kw))
    assert main([str(a) for a in [*base, "--out", out]]) == 0
    assert sum(len(c) for c in calls) == N - 2  # only what the first run had not finished
    assert out.read_text() == whole.read_text() and not partial.exists()
    assert "(2 from an interrupted run)" in capsys.readouterr().out
    # a partial run made with other heads is never mixed in
    partial.write_text(json.dumps({"fingerprint": {"heads_sha256": "other"}}) + "\n")
    out.unlink()
    err = main_error([str(a) for a in [*base, "--out", out]], capsys)
    assert "holds an interrupted run with other weights, heads" in err


def main_error(argv, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    return capsys.readouterr().err
