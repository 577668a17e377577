"""`lookhere data import`: a plain JSONL as a dataset folder, read back as the same samples, and
scored by each row's kind; every bad row is an error naming file and line, before anything is
written."""

import json

import numpy as np
import pytest
from PIL import Image

from lookhere.data.disk import read_samples
from lookhere.data.jsonl import import_jsonl
from lookhere.eval.scoring import score_predictions


@pytest.fixture
def src(tmp_path):
    Image.new("RGB", (64, 48), "white").save(tmp_path / "a.png")
    Image.new("RGB", (80, 80), "black").save(tmp_path / "b.jpg")
    mask = np.zeros((48, 64), np.uint8)
    mask[10:30, 12:40] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    rows = [
        {"image": "a.png", "question": "Where is it?", "answer": "[0.19, 0.21, 0.62, 0.62]",
         "boxes": [[12, 10, 40, 30]], "mask": "m.png", "kind": "box"},
        {"image": "b.jpg", "question": "Point to them.", "answer": "[[0.25, 0.25], [0.75, 0.75]]",
         "points": [[20, 20], [60, 60]], "kind": "points", "id": "two"},
        {"image": "b.jpg", "question": "What colour is it?", "answer": "Black."},
    ]
    path = tmp_path / "s.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_round_trip(src, tmp_path):
    assert import_jsonl(src, tmp_path / "ds", progress=False) == 3
    samples = list(read_samples(tmp_path / "ds"))
    assert [s.id for s in samples] == ["1", "two", "3"]  # the line number where none is given
    assert [s.task for s in samples] == ["custom"] * 3
    box, points, text = samples
    assert box.geometry.boxes == [(12.0, 10.0, 40.0, 30.0)]
    expected = np.zeros((48, 64), bool)
    expected[10:30, 12:40] = True
    assert np.array_equal(box.geometry.mask, expected)
    assert points.geometry.points == [(20.0, 20.0), (60.0, 60.0)]
    assert text.geometry.is_empty() and text.answer == "Black."
    copied = sorted((tmp_path / "ds" / "images").iterdir())
    assert [p.read_bytes() for p in copied][1] == (tmp_path / "b.jpg").read_bytes()


@pytest.mark.parametrize("answers, correct", [
    (["[0.19, 0.21, 0.62, 0.62]", "[[0.75, 0.75], [0.25, 0.26]]", " black "], [1, 1, 1]),
    # IoU of (12, 10, 28, 30) with (12, 10, 40, 30) = 16 / 28 = 0.57 >= 0.5; (12, 10, 26, 30): 0.5
    (["[0.19, 0.21, 0.44, 0.62]", "[[0.25, 0.25]]", "white"], [1, 0, 0]),
    (["[0.19, 0.21, 0.39, 0.62]", "[[0.5, 0.5], [0.25, 0.25]]", "Black"], [0, 0, 1]),
])
def test_scored_by_kind(src, tmp_path, answers, correct):
    import_jsonl(src, tmp_path / "ds", progress=False)
    samples = list(read_samples(tmp_path / "ds"))
    scores = score_predictions(samples, dict(zip(["1", "two", "3"], answers, strict=True)))
    got = [scores.outcomes[s.id].correct for s in samples]
    assert got == [bool(c) for c in correct]


@pytest.mark.parametrize("row, message", [
    ("not json", "not valid JSON"),
    ('["a.png"]', "expected a JSON object"),
    ('{"image": "a.png", "question": "q"}', "field 'answer' is missing"),
    ('{"image": "a.png", "question": "q", "answer": 3}', "field 'answer' has the wrong type"),
    ('{"image": "a.png", "question": "q", "answer": "a", "box": [1, 2, 3, 4]}',
     "unknown field(s) ['box']"),
    ('{"image": "nope.png", "question": "q", "answer": "a"}', "nope.png"),
    ('{"image": "a.png", "question": "q", "answer": "a", "boxes": [[1, 2, 3]]}',
     "list of 4 numbers"),
    ('{"image": "a.png", "question": "q", "answer": "a", "boxes": [[1, 2, 300, 4]]}', "outside"),
    ('{"image": "a.png", "question": "q", "answer": "a", "boxes": [[5, 2, 1, 4]]}', "empty"),
    ('{"image": "a.png", "question": "q", "answer": "a", "kind": "box"}',
     "needs exactly one box"),
    ('{"image": "a.png", "question": "q", "answer": "a", "kind": "poly"}', "kind must be one of"),
    ('{"image": "a.png", "question": "q", "answer": "a", "mask": "b.jpg"}', "the image 64x48"),
    ('{"image": "a.png", "question": "q", "answer": "a", "id": 1}', "id '1' is used twice"),
])
def test_bad_rows_name_file_and_line(src, tmp_path, row, message):
    src.write_text(src.read_text() + row + "\n")
    with pytest.raises(ValueError) as err:
        import_jsonl(src, tmp_path / "ds", progress=False)
    assert f"{src}:4: " in str(err.value) and message in str(err.value), str(err.value)
    assert not (tmp_path / "ds").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_cli(src, tmp_path, capsys, cli_error):
    from lookhere.cli import main

    assert main(["data", "import", str(src), "--out", str(tmp_path / "ds")]) == 0
    assert "wrote 3 samples" in capsys.readouterr().out
    line = cli_error(["data", "import", str(src), "--out", str(tmp_path / "ds")])
    assert "ds" in line  # an existing folder is never overwritten
    line = cli_error(["data", "import", str(tmp_path / "none.jsonl"), "--out",
                      str(tmp_path / "x")])
    assert "none.jsonl: no such file" in line
