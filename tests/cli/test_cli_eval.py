"""``lookhere eval`` on predictions files, against datasets made with ``lookhere data make``."""

import json

import pytest
from conftest import FIXTURES
from pycocotools import mask as mask_utils

from lookhere.cli import main
from lookhere.data.disk import read_samples
from lookhere.eval.scoring import write_predictions

N = 12
SETTINGS = {"grid_patch": ["image_size=64", "grid_rows=4", "grid_cols=4"],
            "shapes": ["image_size=112", "max_objects=3"]}
WRONG = {"grid_patch": "row 9, column 9", "shapes": "[0.00, 0.00, 0.01, 0.01]"}


@pytest.fixture(scope="module", params=sorted(SETTINGS))
def dataset(request, tmp_path_factory):
    task = request.param
    out = tmp_path_factory.mktemp("data") / task
    sets = [arg for s in SETTINGS[task] for arg in ("--set", s)]
    assert main(["data", "make", task, "--n", str(N), "--out", str(out), *sets]) == 0
    return task, out, list(read_samples(out))


def _xywh(b):
    return [b[0], b[1], b[2] - b[0], b[3] - b[1]]


def _half_right(samples):
    """Gold answers for the first half; then wrong answers, and last a quarter unparseable."""
    task = samples[0].task
    preds = {}
    for i, s in enumerate(samples):
        preds[s.id] = s.answer if i < N // 2 else WRONG[task] if i < 3 * N // 4 else "no idea"
    return preds


def test_eval_predictions(dataset, tmp_path, capsys):
    task, data, samples = dataset
    preds = write_predictions(tmp_path / "p.jsonl", _half_right(samples))
    out = tmp_path / "metrics.json"
    capsys.readouterr()
    assert main(["eval", "--data", str(data), "--predictions", str(preds),
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    row = next(line for line in printed.splitlines() if line.startswith(task))
    assert row.split()[1:3] == [str(N), "0.500"] and "25.0%" in row
    metrics = json.loads(out.read_text())
    t = metrics["tasks"][task]
    assert t["n"] == N and t["accuracy"] == 0.5 and t["parse_failure_rate"] == 0.25
    assert t["ci95"][0] < 0.5 < t["ci95"][1]
    assert len(metrics["samples"]) == N and metrics["style"] == "plain"
    if task == "shapes":  # the gold text is the box rounded to 2 decimals: IoU just below 1
        ious = [mask_utils.iou([_xywh([v * 112 for v in json.loads(s.answer)])],
                               [_xywh(s.structured["box"])], [0])[0, 0] for s in samples[:N // 2]]
        assert t["mean_iou"] == pytest.approx(sum(ious) / N)
        assert 0.4 < t["mean_iou"] < 0.5


def test_eval_missing(dataset, tmp_path, capsys):
    task, data, samples = dataset
    preds = _half_right(samples)
    del preds[samples[0].id]
    path = write_predictions(tmp_path / "p.jsonl", preds)
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--data", str(data), "--predictions", str(path)])
    assert exc.value.code == 2
    assert samples[0].id in capsys.readouterr().err
    out = tmp_path / "m.json"
    assert main(["eval", "--data", str(data), "--predictions", str(path), "--missing", "wrong",
                 "--out", str(out)]) == 0
    t = json.loads(out.read_text())["tasks"][task]
    assert t["accuracy"] == pytest.approx(5 / N) and t["missing"] == 1


@pytest.mark.parametrize("extra,message", [
    (["--limit", "3"], "--limit only apply with --model"),
    (["--batch-size", "8"], "--batch-size only apply with --model"),
])
def test_eval_model_only_options(dataset, tmp_path, capsys, extra, message):
    _, data, samples = dataset
    path = write_predictions(tmp_path / "p.jsonl", _half_right(samples))
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--data", str(data), "--predictions", str(path), *extra])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_eval_bad_data_folder(tmp_path, capsys):
    preds = write_predictions(tmp_path / "p.jsonl", {"a": "yes"})
    for data, message in [(tmp_path / "nope", "is not a folder"),
                          (tmp_path, "is not a lookhere dataset folder")]:
        with pytest.raises(SystemExit) as exc:
            main(["eval", "--data", str(data), "--predictions", str(preds)])
        assert exc.value.code == 2 and message in capsys.readouterr().err


def test_eval_bad_predictions(dataset, tmp_path, capsys):
    _, data, samples = dataset
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"id": samples[0].id, "answer": "x"}) + "\n{oops\n")
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--data", str(data), "--predictions", str(path)])
    assert exc.value.code == 2 and "p.jsonl:2: not valid JSON" in capsys.readouterr().err
    write_predictions(path, {**_half_right(samples), "ghost-1": "x"})
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--data", str(data), "--predictions", str(path)])
    assert exc.value.code == 2 and "ghost-1" in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["--predictions", "p.jsonl", "--model", "m"], "not allowed with argument"),
    (["--model", "m", "--limit", "0"], "expected an integer >= 1, got 0"),
    (["--model", "m", "--limit", "two"], "expected an integer >= 1, got 'two'"),
    ([], "one of the arguments --predictions --model --api is required"),
])
def test_eval_argument_errors(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--data", str(tmp_path), *args])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_eval_model(tmp_path, capsys):
    """--model: a saved tiny model generates; its predictions file scores the same as the run."""
    data = tmp_path / "data"
    assert main(["data", "make", "grid_patch", "--n", "5", "--out", str(data),
                 "--set", "image_size=56", "--set", "grid_rows=4", "--set", "grid_cols=4"]) == 0
    assert main(["tiny", "--family", "llava", "--size", "test", "--out",
                 str(tmp_path / "model")]) == 0
    out, preds = tmp_path / "metrics.json", tmp_path / "preds.jsonl"
    assert main(["eval", "--data", str(data), "--model", str(tmp_path / "model"), "--limit", "4",
                 "--max-new-tokens", "3", "--out", str(out), "--predictions-out", str(preds)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["scores"]["tasks"]["grid_patch"]["n"] == 4
    ratio = metrics["attention_ratio"]["grid_patch"]
    assert len(ratio["values"]) == 4
    again = tmp_path / "again.json"
    assert main(["eval", "--data", str(data), "--predictions", str(preds), "--missing", "wrong",
                 "--out", str(again)]) == 0
    rescored = json.loads(again.read_text())["tasks"]["grid_patch"]
    assert rescored["n"] == 5 and rescored["missing"] == 1  # --limit 4 of 5 samples
    assert rescored["accuracy"] * 5 == pytest.approx(
        metrics["scores"]["tasks"]["grid_patch"]["accuracy"] * 4)


def test_eval_needs_data_without_a_subcommand(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--predictions", str(tmp_path / "p.jsonl")])
    assert exc.value.code == 2
    assert "lookhere eval: error: the following arguments are required: --data" in \
        capsys.readouterr().err


REFER = str(FIXTURES / "refer")


@pytest.mark.parametrize("args,message", [
    (["--model", "m", "--data", "d"], "the following arguments are required: --heads"),
    (["--model", "m", "--heads", "h"], "one of the arguments --data --refcoco is required"),
    (["--model", "m", "--heads", "h", "--data", "d", "--refcoco", "r"],
     "not allowed with argument"),
    (["--model", "m", "--heads", "h", "--data", "d", "--baselines", "oracle", "centre"],
     "--baselines: unknown ['oracle']"),
    (["--model", "m", "--heads", "h", "--data", "d", "--sigma", "-1"],
     "argument --sigma: expected a finite number >= 0, got '-1'"),
    (["--model", "m", "--heads", "h", "--data", "d", "--sigma", "nan"],
     "argument --sigma: expected a finite number >= 0, got 'nan'"),
    (["--model", "m", "--heads", "h", "--refcoco", REFER, "--split", "testC"],
     "split for refcoco (unc) must be one of"),
    (["--model", "m", "--heads", "h", "--refcoco", "/nonexistent"], "--refcoco /nonexistent"),
])
def test_eval_rec_argument_errors(capsys, args, message):
    """Checked before any model is loaded (the model path "m" does not exist)."""
    with pytest.raises(SystemExit) as exc:
        main(["eval", "rec", *args])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "lookhere eval rec: error: " in err and message in err, err


def test_outputs_are_never_overwritten_without_asking(dataset, tmp_path, capsys):
    """An existing --out (or --predictions-out) is refused before any work, untouched; with
    --overwrite it is replaced. The same helper guards eval rec, heads find and ground."""
    _, data, samples = dataset
    preds = write_predictions(tmp_path / "p.jsonl", _half_right(samples))
    out = tmp_path / "metrics.json"
    out.write_text("mine")
    cases = [["eval", "--data", str(data), "--predictions", str(preds), "--out", str(out)],
             ["eval", "--data", str(data), "--model", "no/such/model", "--predictions-out",
              str(out)],
             ["eval", "rec", "--model", "no/such/model", "--heads", "h.json", "--data",
              str(data), "--out", str(out)],
             ["heads", "find", "--model", "no/such/model", "--data", str(data), "--out",
              str(out)],
             ["ground", "--model", "no/such/model", "--heads", "h.json", "--data", str(data),
              "--out", str(out)]]
    for argv in cases:
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and f"{out} exists; pass --overwrite" in err, argv
        assert out.read_text() == "mine"
    with pytest.raises(SystemExit) as e:
        main(["eval", "--data", str(data), "--predictions", str(preds), "--out", str(tmp_path)])
    assert e.value.code == 2 and "is a folder" in capsys.readouterr().err
    assert main(["eval", "--data", str(data), "--predictions", str(preds), "--out", str(out),
                 "--overwrite"]) == 0
    assert json.loads(out.read_text())["tasks"]


def test_scoring_a_predictions_file_loads_no_torch(dataset, tmp_path):
    """Scoring text needs no tensors: ``eval --predictions`` (and ``--api``, the same modules)
    imports neither torch nor transformers, so it starts in a fraction of a second."""
    import subprocess
    import sys

    task, data, samples = dataset
    preds = write_predictions(tmp_path / "p.jsonl", _half_right(samples))
    argv = ["eval", "--data", str(data), "--predictions", str(preds)]
    code = (f"import sys\nfrom lookhere.cli import main\nassert main({argv!r}) == 0\n"
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip().splitlines()[-1] == "[]" and task in out
