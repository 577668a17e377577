"""Bad input across the whole CLI: every case exits with status 2 and one clear error line (no
traceback) naming what was wrong, before any training or search starts. Issue 17's matrix; the
fragments are the start of each message, so a changed or lost message fails here."""

import re

import pytest

from lookhere.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

#: command prefixes the cases below share
EVAL_REC = ["eval", "rec", "--model", "{W}/model", "--heads", "{W}/heads.json"]
FIND = ["heads", "find", "--model", "{W}/model"]
GROUND = ["ground", "--model", "{W}/model", "--heads", "{W}/heads.json"]
KLAL = ["experiment", "klal", "--out"]
TRAIN = ["pretrain", "train", "--out"]

CASES = [
    ([*GROUND, "--image", "{W}/huge.png", "--text", "x"],
     "--image {W}/huge.png: 12000x9000 pixels is over the limit"),
    (["tiny", "--family", "nosuch", "--out", "{W}/t1"],
     "unknown family 'nosuch'; supported: llava, q"),
    (["tiny", "--family", "llava", "--size", "huge", "--out", "{W}/t2"],
     "--size 'huge' is not a preset; choose from t"),
    (["tiny", "--family", "llava", "--out", "{W}/model"],
     "--out {W}/model exists and is not an empty f"),
    (["tiny", "--family", "llava", "--seed", "abc", "--out", "{W}/t3"],
     "argument --seed: invalid int value: 'abc'"),
    (["tiny", "--family", "llava", "--out", "/proc/nowhere/m"],
     "--out /proc/nowhere/m: cannot create its fol"),
    (["tiny", "--family", "llava", "--out", "{W}/exists.json"],
     "--out {W}/exists.json is a file; give a fold"),
    (["data", "make", "nosuch", "--n", "2", "--out", "{W}/d1"],
     "lookhere data make: unknown task 'nosuch'; a"),
    (["data", "make", "shapes", "--n", "0", "--out", "{W}/d2"],
     "lookhere data make: n must be a positive int"),
    (["data", "make", "shapes", "--n", "-3", "--out", "{W}/d3"],
     "lookhere data make: n must be a positive int"),
    (["data", "make", "shapes", "--n", "abc", "--out", "{W}/d4"],
     "argument --n: invalid int value: 'abc'"),
    (["data", "make", "shapes", "--n", "2", "--set", "image_size=abc", "--out", "{W}/d5"],
     "lookhere data make: shapes setting 'image_si"),
    (["data", "make", "shapes", "--n", "2", "--set", "nosuch=1", "--out", "{W}/d6"],
     "lookhere data make: unknown shapes settings"),
    (["data", "make", "shapes", "--n", "2", "--set", "image_size", "--out", "{W}/d7"],
     "--set expects KEY=VALUE, got 'image_size'"),
    (["data", "make", "shapes", "--n", "2", "--workers", "-1", "--out", "{W}/d8"],
     "lookhere data make: workers must be >= 1, go"),
    (["data", "make", "shapes", "--n", "2", "--out", "{W}/data"],
     "lookhere data make: error: --out {W}/data exists and is not an empty folder"),
    (["data", "make", "shapes", "--n", "2", "--out", "{W}/exists.json"],
     "lookhere data make: error: --out {W}/exists.json is a file; give a folder"),
    (["data", "make", "shapes", "--n", "2", "--set", "image_size=-5", "--out", "{W}/d9"],
     "lookhere data make: image_size must be in [5"),
    (["data", "make", "shapes", "--n", "2", "--out", "/proc/nowhere/d"],
     "--out /proc/nowhere/d: cannot create its fol"),
    (["data", "sheet", "shapes", "--n", "1", "--out", "{W}/exists.json"],
     "--out {W}/exists.json exists; pass --overwri"),
    (["data", "sheet", "shapes", "--n", "1", "--out", "/proc/nowhere/s.png"],
     "--out /proc/nowhere/s.png: cannot create its"),
    (["data", "sheet", "nosuch", "--out", "{W}/s1.png"],
     "lookhere data sheet: unknown task 'nosuch';"),
    (["data", "sheet", "shapes", "--n", "0", "--out", "{W}/s2.png"],
     "lookhere data sheet: a sheet needs n >= 1 an"),
    (["data", "sheet", "shapes", "--cols", "0", "--out", "{W}/s3.png"],
     "argument --cols: expected an integer >= 1, g"),
    (["data", "sheet", "shapes", "--cell", "0", "--out", "{W}/s4.png"],
     "argument --cell: expected an integer >= 1, g"),
    (["data", "sheet", "shapes", "--mix", "notjson", "--out", "{W}/s5.png"],
     "argument --mix: invalid loads value: 'notjso"),
    (["data", "sheet", "shapes", "--mix", "{\"nosuch\": 1}", "--out", "{W}/s6.png"],
     "lookhere data sheet: unknown shapes settings"),
    (["data", "convert-refs", "{W}/missing.p"],
     "pickle file not found: {W}/missing.p"),
    (["data", "convert-refs", "{W}/notpickle.p"],
     "not a readable pickle in {W}/notpickle.p: at"),
    (["eval"],
     "the following arguments are required: --data"),
    (["eval", "--data", "{W}/missing"],
     "one of the arguments --predictions --model -"),
    (["eval", "--data", "{W}/notpickle.p", "--predictions", "{W}/preds.json"],
     "--data {W}/notpickle.p is not a folder"),
    (["eval", "--data", "{W}/empty"],
     "one of the arguments --predictions --model -"),
    (["eval", "--data", "{W}/data", "--predictions", "{W}/missing.json"],
     "[Errno 2] No such file or directory: '{W}/missing.json'"),
    (["eval", "--data", "{W}/data", "--predictions", "{W}/notjson.json"],
     "{W}/notjson.json:1: not valid JSON (Expectin"),
    (["eval", "--data", "{W}/data", "--predictions", "{W}/list.json"],
     "{W}/list.json: expected JSONL objects or one"),
    (["eval", "--data", "{W}/data", "--predictions", "{W}/preds.json", "--limit", "0"],
     "argument --limit: expected an integer >= 1,"),
    (["eval", "--data", "{W}/data", "--model", "{W}/model", "--batch-size", "0"],
     "argument --batch-size: expected an integer >"),
    (["eval", "--data", "{W}/data", "--model", "{W}/model", "--max-new-tokens", "0"],
     "argument --max-new-tokens: expected an integ"),
    (["eval", "--data", "{W}/data", "--predictions", "{W}/preds.json", "--style", "bad"],
     "argument --style: invalid choice: 'bad' (cho"),
    (["eval", "--data", "{W}/data", "--predictions", "{W}/preds.json", "--missing", "bad"],
     "argument --missing: invalid choice: 'bad' (c"),
    (["eval", "--data", "{W}/data", "--predictions", "{W}/preds.json", "--out", "{W}/exists.json"],
     "--out {W}/exists.json exists; pass --overwri"),
    (["eval", "--data", "{W}/data", "--model", "{W}/missing-model"],
     "--model {W}/missing-model: no such local fol"),
    (["eval", "--data", "{W}/data", "--model", "{W}/model", "--device", "cuda"],
     "--device cuda: CUDA is not available here (u"),
    (["eval", "--data", "{W}/data", "--model", "{W}/model", "--device", "tpu"],
     "--device tpu"),
    (["eval", "rec", "--model", "{W}/model", "--heads", "{W}/missing.json", "--data", "{W}/rec"],
     "--heads {W}/missing.json: no such file (make"),
    (["eval", "rec", "--model", "{W}/model", "--heads", "{W}/notjson.json", "--data", "{W}/rec"],
     "--heads {W}/notjson.json: Expecting property"),
    (["eval", "rec", "--model", "{W}/model", "--heads", "{W}/badheads.json", "--data", "{W}/rec"],
     "--heads {W}/badheads.json: heads must be a l"),
    ([*EVAL_REC, "--data", "{W}/missing"],
     "--data {W}/missing is not a folder"),
    ([*EVAL_REC, "--refcoco", "{W}/missing"],
     "--refcoco {W}/missing: no refs(unc).json/.pa"),
    ([*EVAL_REC, "--data", "{W}/rec", "--limit", "0"],
     "argument --limit: expected an integer >= 1,"),
    ([*EVAL_REC, "--data", "{W}/rec", "--baselines", "nosuch"],
     "--baselines: unknown ['nosuch']; choose from"),
    ([*EVAL_REC, "--data", "{W}/rec", "--grid", "nosuch"],
     "grid must be 'primary', an index below 1 or"),
    ([*EVAL_REC, "--data", "{W}/rec", "--batch-size", "0"],
     "argument --batch-size: expected an integer >"),
    ([*EVAL_REC, "--data", "{W}/rec", "--sam", "{W}/missing-sam"],
     "--sam {W}/missing-sam"),
    (["heads", "find", "--model", "{W}/missing-model", "--data", "{W}/rec", "--out", "{W}/h1.json"],
     "--model {W}/missing-model: no such local fol"),
    ([*FIND, "--data", "{W}/missing", "--out", "{W}/h2.json"],
     "--data {W}/missing is not a folder"),
    ([*FIND, "--data", "{W}/rec", "--out", "{W}/exists.json"],
     "--out {W}/exists.json exists; pass --overwri"),
    ([*FIND, "--data", "{W}/rec", "--out", "{W}/h3.json", "--top-k", "0"],
     "argument --top-k: expected an integer >= 1,"),
    ([*FIND, "--data", "{W}/rec", "--out", "{W}/h4.json", "--per-sample", "0"],
     "argument --per-sample: expected an integer >"),
    ([*FIND, "--data", "{W}/rec", "--out", "{W}/h5.json", "--bottom-row-limit", "-1"],
     "bottom_row_limit must be None or a finite nu"),
    ([*FIND, "--data", "{W}/rec", "--out", "{W}/h6.json", "--bottom-row-limit", "nan"],
     "bottom_row_limit must be None or a finite nu"),
    ([*FIND, "--data", "{W}/rec", "--out", "{W}/h7.json", "--skip-layers", "99"],
     "skip_layers names layer 99 of a 4-layer mode"),
    ([*FIND, "--data", "{W}/rec", "--out", "{W}/h8.json", "--batch-size", "0"],
     "argument --batch-size: expected an integer >"),
    ([*FIND, "--data", "{W}/rec", "--out", "{W}/h9.json", "--limit", "0"],
     "argument --limit: expected an integer >= 1,"),
    ([*FIND, "--data", "{W}/rec", "--out", "{W}/h10.json", "--tau", "bad"],
     "argument --tau: invalid choice: 'bad' (choos"),
    ([*FIND, "--data", "{W}/rec", "--out", "{W}/h11.json", "--top-k", "99"],
     "skip_layers leaves 8 heads; top_k=99 and the"),
    ([*GROUND, "--image", "{W}/missing.png", "--text", "the cat"],
     "--image {W}/missing.png: [Errno 2] No such f"),
    ([*GROUND, "--image", "{W}/notpickle.p", "--text", "the cat"],
     "--image {W}/notpickle.p: cannot identify ima"),
    ([*GROUND, "--image", "{W}/img.png"],
     "--image needs --text, a non-empty referring"),
    ([*GROUND, "--image", "{W}/img.png", "--text", ""],
     "--image needs --text, a non-empty referring"),
    (["ground", "--model", "{W}/model", "--heads", "{W}/badheads.json", "--image", "{W}/img.png",
      "--text", "x"],
     "--heads {W}/badheads.json: heads must be a l"),
    ([*GROUND, "--data", "{W}/rec", "--limit", "0"],
     "argument --limit: expected an integer >= 1,"),
    ([*GROUND, "--data", "{W}/rec", "--masks-dir", "{W}/exists.json"],
     "--masks-dir {W}/exists.json is a file, not a"),
    ([*GROUND, "--data", "{W}/rec", "--out", "{W}/exists.json"],
     "--out {W}/exists.json exists; pass --overwri"),
    ([*GROUND, "--data", "{W}/rec", "--grid", "nosuch"],
     "grid must be 'primary', an index below 1 or"),
    ([*GROUND, "--image", "{W}/img.png", "--text", "x", "--batch-size", "0"],
     "argument --batch-size: expected an integer >"),
    ([*KLAL, "{W}/e1", "--steps", "0"],
     "steps must be >= 1, got 0"),
    ([*KLAL, "{W}/e2", "--lr", "nan"],
     "lr must be in (0, 1), got nan"),
    ([*KLAL, "{W}/e3", "--lr", "2"],
     "lr must be in (0, 1), got 2.0"),
    ([*KLAL, "{W}/e4", "--tasks", "nosuch"],
     "tasks must be a non-empty subset of ('grid_p"),
    ([*KLAL, "{W}/e5", "--conditions", "nosuch"],
     "conditions must be a non-empty subset of ('n"),
    ([*KLAL, "{W}/e6", "--klal-weight", "-1"],
     "KLALConfig.weight must be finite and >= 0, g"),
    ([*KLAL, "{W}/e7", "--klal-weight", "nan"],
     "KLALConfig.weight must be finite and >= 0, g"),
    ([*KLAL, "{W}/e8", "--klal-query", "bad"],
     "KLALConfig.query must be one of ('last_answe"),
    ([*KLAL, "{W}/e9", "--klal-layers", "99"],
     "layers: 99 is not a layer of this 2-layer la"),
    (["experiment", "heads", "--out", "{W}/e9h", "--klal-layers", "-9"],
     "layers: -9 is not a layer of this 4-layer la"),
    ([*KLAL, "{W}/e10", "--klal-heads", "notjson"],
     "argument --klal-heads: invalid loads value:"),
    ([*KLAL, "{W}/e11", "--size", "huge"],
     "size must be one of ['demo', 'heads', 'mini'"),
    ([*KLAL, "{W}/e12", "--family", "nosuch"],
     "unknown family 'nosuch'; supported: llava, q"),
    ([*KLAL, "{W}/e13", "--warmup-ratio", "1.5"],
     "warmup_ratio must be in [0, 1), got 1.5"),
    ([*KLAL, "{W}/e14", "--image-size", "0"],
     "image_size 0 must equal the 'tiny-llava-demo"),
    ([*KLAL, "{W}/e15", "--batch-size", "0"],
     "batch_size must be >= 1, got 0"),
    ([*KLAL, "{W}/e16", "--seeds"],
     "argument --seeds: expected at least one argu"),
    (["experiment", "heads", "--out", "{W}/e17", "--top-k", "0"],
     "top_k must be >= 1, got 0"),
    (["experiment", "heads", "--out", "{W}/e18", "--conditions", "nosuch"],
     "conditions must be a non-empty subset of ('u"),
    (["experiment", "heads", "--out", "{W}/e19", "--size", "test"],
     "image_size 112 must equal the 'tiny-llava-test' m"),
    (["experiment", "lens", "--out", "{W}/e20", "--threshold", "bad"],
     "threshold must be one of ('mean', 'two_mean'"),
    ([*TRAIN, "{W}/p1", "--vision-steps", "0"],
     "steps must be an int >= 1, got 0"),
    ([*TRAIN, "{W}/p2", "--align-lr", "nan"],
     "lr must be in (0, 1), got nan"),
    ([*TRAIN, "{W}/p3", "--size", "huge"],
     "size must be one of ['demo', 'heads', 'mini'"),
    ([*TRAIN, "{W}/p4", "--tower-stages", "vision"],
     "tower_stages must be among ('align', 'instru"),
    ([*TRAIN, "{W}/p5", "--tower-lr-scale", "0"],
     "tower_lr_scale must be in (0, 1], got 0.0"),
    ([*TRAIN, "{W}/p6", "--box-weight", "-1"],
     "box_weight must be >= 0, got -1.0"),
    ([*TRAIN, "{W}/p7", "--attribute-layer", "0"],
     "attribute_layer must be an int in [-4, -1] ("),
    ([*TRAIN, "{W}/p8", "--projector-init", "zeros"],
     "projector_init must be one of ('heads', 'ran"),
    ([*TRAIN, "{W}/p9", "--threads", "0"],
     "--threads must be >= 1, got 0"),
    ([*TRAIN, "{W}/p10", "--turns", "0"],
     "save_steps and turns must be >= 1 and worker"),
    ([*TRAIN, "{W}/p11", "--stages", "nosuch"],
     "argument --stages: invalid choice: 'nosuch'"),
    (["pretrain", "eval", "--model", "{W}/model", "--out", "{W}/exists.json"],
     "--out {W}/exists.json exists; pass --overwri"),
    (["pretrain", "eval", "--model", "{W}/model", "--out", "/proc/nowhere/e.json"],
     "--out /proc/nowhere/e.json: cannot create it"),
    ([*TRAIN, "{W}/exists.json"],
     "--out {W}/exists.json is a file; give a fold"),
    ([*TRAIN, "/proc/nowhere/p"],
     "--out /proc/nowhere/p: cannot create its fol"),
    (["pretrain", "card", "--run", "{W}/p1", "--eval", "{W}/exists.json", "--out", "{W}/model"],
     "--out {W}/model exists and is not an empty f"),
    (["pretrain", "eval", "--model", "{W}/missing-model", "--out", "{W}/pe1.json"],
     "--model {W}/missing-model: no such local fol"),
    (["pretrain", "eval", "--model", "lookhere:nosuch", "--out", "{W}/pe2.json"],
     "--model lookhere:nosuch: unknown shipped che"),
    (["pretrain", "eval", "--model", "{W}/model", "--out", "{W}/pe3.json", "--vqa-samples", "0"],
     "vqa_samples must be an int >= 1, got 0"),
    (["pretrain", "eval", "--model", "{W}/model", "--out", "{W}/pe4.json", "--top-k", "0"],
     "top_k must be an int >= 1, got 0"),
    (["pretrain", "eval", "--model", "{W}/model", "--out", "{W}/pe5.json", "--batch-size", "0"],
     "batch_size must be an int >= 1, got 0"),
    (["pretrain", "card", "--run", "{W}/p1", "--eval", "{W}/missing.json", "--out", "{W}/c1"],
     "--eval {W}/missing.json: not a `pretrain eva"),
    (["pretrain", "card", "--run", "{W}/p1", "--eval", "{W}/notjson.json", "--out", "{W}/c2"],
     "--eval {W}/notjson.json: not a `pretrain eva"),
    (["pretrain", "card", "--run", "{W}/missing", "--eval", "{W}/exists.json", "--out", "{W}/c3"],
     "--eval {W}/exists.json: not a `pretrain eval"),
    (["demo", "--steps", "0", "--out", "{W}/demo1"],
     "steps must be >= 1, got 0"),
    (["demo", "--lr", "-1", "--out", "{W}/demo2"],
     "lr must be in (0, 1), got -1.0"),
    (["demo", "--workers", "0", "--out", "{W}/demo3"],
     "--workers must be >= 1, got 0"),
    (["demo", "--init", "{W}/missing", "--out", "{W}/demo4"],
     "init '{W}/missing': not a checkpoint of a s"),
    (["demo", "--out", "/proc/nowhere/demo"],
     "--out /proc/nowhere/demo: cannot create its"),
    (["demo", "--out", "{W}/model"],
     "--out {W}/model exists and is not an empty f"),
    ([*KLAL, "/proc/nowhere/k"],
     "--out /proc/nowhere/k: cannot create its fol"),
    (["experiment", "heads", "--out", "{W}/exists.json"],
     "--out {W}/exists.json is a file; give a fold"),
    (["experiment", "lens", "--out", "/proc/nowhere/l"],
     "--out /proc/nowhere/l: cannot create its fol"),
    (["eval", "--data", "{W}/badinfo", "--predictions", "{W}/preds.json"],
     "--data: {W}/badinfo/lookhere.json:1: not valid JSON (Expecting"),
    ([*EVAL_REC, "--data", "{W}/nanbox"],
     "--data: {W}/nanbox/metadata.jsonl:1: box (nan, nan, nan, nan) must be 4 finite"),
    ([*EVAL_REC, "--data", "{W}/inverted"],
     "--data: {W}/inverted/metadata.jsonl:1: box (30, 30, 10, 10) is empty"),
    ([*EVAL_REC, "--data", "{W}/outside"],
     "--data: {W}/outside/metadata.jsonl:1: box (500, 500, 600, 600) lies outside the"),
    ([*FIND, "--data", "{W}/dotdot", "--out", "{W}/h12.json"],
     "--data: {W}/dotdot/metadata.jsonl:1: file_name '../../etc/passwd' lies outside"),
    ([*GROUND, "--data", "{W}/wrongtype"],
     "--data: {W}/wrongtype/metadata.jsonl:1: field 'question' must be a str, got int"),
    ([*GROUND, "--data", "{W}/nokey"],
     "--data: {W}/nokey/metadata.jsonl:1: field 'answer' is missing"),
    ([*EVAL_REC, "--data", "{W}/short"],
     "--data: {W}/short/metadata.jsonl has 5 rows, its lookhere.json says n = 6"),
    (["nosuch"],
     "argument command: invalid choice: 'nosuch' ("),
]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny model, a Shapes VQA and a REC folder, its heads, and a few broken files."""
    import json

    from PIL import Image

    w = tmp_path_factory.mktemp("bad")
    (w / "empty").mkdir()
    assert main(["tiny", "--family", "llava", "--out", str(w / "model")]) == 0
    assert main(["data", "make", "shapes", "--n", "4", "--out", str(w / "data")]) == 0
    assert main(["data", "make", "shapes", "--n", "6", "--set", "mode=rec", "--out",
                 str(w / "rec")]) == 0
    assert main(["heads", "find", "--model", str(w / "model"), "--data", str(w / "rec"),
                 "--out", str(w / "heads.json"), "--quiet"]) == 0
    heads = json.loads((w / "heads.json").read_text())
    (w / "badheads.json").write_text(json.dumps({**heads, "heads": [[2.7, 1.2]]}))
    rows = [json.loads(line) for line in (w / "data" / "metadata.jsonl").read_text().split("\n")
            if line]
    (w / "preds.json").write_text(json.dumps({r["id"]: r["answer"] for r in rows}))
    (w / "notpickle.p").write_text("not a pickle")
    (w / "notjson.json").write_text("{bad")
    (w / "list.json").write_text("[1, 2]")
    (w / "exists.json").write_text("{}")
    Image.new("RGB", (64, 48), "white").save(w / "img.png")
    Image.new("1", (12000, 9000)).save(w / "huge.png")  # 108 M pixels in a small file
    _broken_copies(w)
    return w


def _broken_copies(w):
    """Copies of the REC folder, each with one broken lookhere.json or metadata row."""
    import json
    import shutil

    def first_box(box):
        return lambda rows: [{**rows[0], "geometry": json.dumps(
            {**json.loads(rows[0]["geometry"]), "boxes": [box]})}, *rows[1:]]

    changes = {
        "nanbox": first_box([float("nan")] * 4), "inverted": first_box([30, 30, 10, 10]),
        "outside": first_box([500, 500, 600, 600]),
        "dotdot": lambda rows: [{**rows[0], "file_name": "../../etc/passwd"}, *rows[1:]],
        "wrongtype": lambda rows: [{**rows[0], "question": 5}, *rows[1:]],
        "nokey": lambda rows: [{k: v for k, v in rows[0].items() if k != "answer"}, *rows[1:]],
        "short": lambda rows: rows[:-1], "badinfo": lambda rows: rows,
    }
    for name, change in changes.items():
        shutil.copytree(w / "rec", w / name)
        meta = w / name / "metadata.jsonl"
        rows = [json.loads(line) for line in meta.read_text().splitlines() if line]
        meta.write_text("".join(json.dumps(r) + "\n" for r in change(rows)))
    (w / "badinfo" / "lookhere.json").write_text("{bad")


def _names_argument(argv: list[str], message: str) -> bool:
    """The message names an option (``--x``), the field an option sets (``--klal-weight`` ->
    ``weight``, ``--bottom-row-limit`` -> ``bottom_row_limit``), or a file or value given."""
    if "--" in message:
        return True
    for a in argv:
        if a.startswith("--"):
            name = a[2:]
            names = {name, name.replace("-", "_"), name.split("-")[-1]}
            if any(re.search(rf"\b{re.escape(n)}\b", message) for n in names):
                return True
        elif len(a) > 2 and a in message:
            return True
    return False


def test_names_argument_check_can_fail():
    assert not _names_argument(["data", "make", "--n", "0"], "must be a positive int")
    assert not _names_argument(["eval", "--limit", "0"], "expected an integer >= 1, got 0")


def test_matrix_is_large():
    assert len(CASES) >= 80


@pytest.mark.parametrize(("argv", "message"), CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_message_names_the_argument_or_file(argv, message):
    assert _names_argument(argv, message)


@pytest.mark.parametrize(("argv", "message"), CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_bad_input_is_one_clear_error(workspace, cli_error, argv, message):
    before = sorted(p.name for p in workspace.iterdir())
    line = cli_error([a.replace("{W}", str(workspace)) for a in argv])
    assert message.replace("{W}", str(workspace)) in line
    assert sorted(p.name for p in workspace.iterdir()) == before  # nothing written
