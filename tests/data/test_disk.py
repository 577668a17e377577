"""Datasets on disk: determinism, atomic writes, datasets-loadable, and the CLI."""

import json
from dataclasses import dataclass, field

import datasets
import numpy as np
import pytest
from conftest import FIXTURES
from PIL import Image

from lookhere.cli import main
from lookhere.data.disk import read_info, read_samples, write_dataset
from lookhere.data.sample import Geometry, Sample
from lookhere.data.synthetic import SyntheticTask, register_task


@dataclass(frozen=True)
class _DotConfig:
    image_size: int = field(default=32, metadata={"help": "side, px"})


@register_task
class _Dot(SyntheticTask):
    """A test task: one white pixel block at a random place."""

    name = "_test_dot"
    config_class = _DotConfig

    def sample(self, index: int) -> Sample:
        rng, s = self.rng(index), self.config.image_size
        x, y = (int(v) for v in rng.integers(0, s - 4, 2))
        arr = np.zeros((s, s, 3), np.uint8)
        arr[y:y + 4, x:x + 4] = 255
        return Sample(Image.fromarray(arr), "where?", f"{x},{y}", {"x": x, "y": y},
                      Geometry(boxes=[(x, y, x + 4, y + 4)]), task=self.name,
                      id=self.sample_id(index), meta={"k": [1, 2]})


def test_write_read_and_load_with_datasets(tmp_path):
    out = write_dataset("_test_dot", 5, tmp_path / "d", seed=3, progress=False)
    assert read_info(out)["seed"] == 3 and read_info(out)["n"] == 5
    samples = list(read_samples(out))
    task = _Dot(seed=3)
    for i, s in enumerate(samples):
        ref = task.sample(i)
        assert s.image.tobytes() == ref.image.tobytes() and s.answer == ref.answer
        assert s.geometry.boxes == [tuple(map(float, ref.geometry.boxes[0]))]
    ds = datasets.load_dataset("imagefolder", data_dir=str(out), split="train")
    assert len(ds) == 5 and set(ds.column_names) >= {"image", "question", "answer", "geometry"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_parallel_equals_serial_and_refuses_overwrite(tmp_path):
    a = write_dataset("_test_dot", 300, tmp_path / "a", seed=1, progress=False)
    b = write_dataset("_test_dot", 300, tmp_path / "b", seed=1, workers=2, progress=False)
    assert (a / "metadata.jsonl").read_text() == (b / "metadata.jsonl").read_text()
    assert (a / "images/0000299.png").read_bytes() == (b / "images/0000299.png").read_bytes()
    with pytest.raises(FileExistsError):
        write_dataset("_test_dot", 3, a, progress=False)
    with pytest.raises(ValueError, match="unknown task"):
        write_dataset("nope", 3, tmp_path / "c", progress=False)
    with pytest.raises(ValueError, match="unknown _test_dot settings"):
        write_dataset("_test_dot", 3, tmp_path / "c", progress=False, size=3)


def test_cli(tmp_path, capsys, cli_error):
    assert main(["data", "make", "_test_dot", "--n", "4", "--out", str(tmp_path / "d"),
                 "--set", "image_size=40"]) == 0
    assert read_info(tmp_path / "d")["config"] == {"image_size": 40}
    assert main(["data", "sheet", "_test_dot", "--n", "4", "--out", str(tmp_path / "s.png")]) == 0
    assert Image.open(tmp_path / "s.png").size[0] > 0
    assert "KEY=VALUE" in cli_error(["data", "make", "_test_dot", "--n", "2", "--out",
                                     tmp_path / "e", "--set", "oops"])


def test_task_sheet_mix_and_docs_cli(tmp_path, monkeypatch, cli_error):
    from lookhere.data.synthetic import make_task
    from lookhere.viz import DOC_SHEETS, contact_sheet, task_sheet

    # the mix shares the sheet in order: the Shapes docs sheet is REC, then VQA on next indices
    rec, vqa = (make_task("shapes", image_size=112, mode=m) for m in ("rec", "vqa"))
    want = contact_sheet([rec.sample(0), rec.sample(1), vqa.sample(2), vqa.sample(3)], cell=64)
    got = task_sheet("shapes", n=4, cell=64, overrides={"image_size": 112},
                     mix=DOC_SHEETS["shapes"]["mix"])
    assert got.tobytes() == want.tobytes()
    monkeypatch.chdir(tmp_path)
    assert main(["data", "sheet", "shapes", "--docs", "--n", "4", "--set", "image_size=112"]) == 0
    assert Image.open(tmp_path / "docs" / "sheet_shapes.png").size == (4 * 336, 336 + 56)
    assert "--out is required" in cli_error(["data", "sheet", "shapes"])
    assert "no docs sheet" in cli_error(["data", "sheet", "_test_dot", "--docs"])


def test_cli_convert_refs(tmp_path):
    import shutil

    src = tmp_path / "refs(unc).p"
    shutil.copy(FIXTURES / "refer/refcoco/refs(unc).p", src)
    assert main(["data", "convert-refs", str(src), str(tmp_path / "refs(unc).json")]) == 0
    assert (tmp_path / "refs(unc).json").exists()


def _corrupt(folder, edit):
    """Rewrite row 2 of metadata.jsonl with ``edit(row)`` (a dict, or a raw string)."""
    path = folder / "metadata.jsonl"
    rows = path.read_text().splitlines()
    new = edit(json.loads(rows[1]))
    rows[1] = new if isinstance(new, str) else json.dumps(new)
    path.write_text("\n".join(rows) + "\n")


def _geometry(row, **change):
    g = json.loads(row["geometry"])
    g.update(change)
    return {**row, "geometry": json.dumps(g)}


BAD_ROWS = {
    "not JSON": (lambda r: "{oops", "not valid JSON"),
    "a list": (lambda r: "[1, 2]", "expected a JSON object"),
    "no question": (lambda r: {k: v for k, v in r.items() if k != "question"},
                    "field 'question' is missing"),
    "answer a number": (lambda r: {**r, "answer": 3}, "field 'answer' must be a str"),
    "path outside": (lambda r: {**r, "file_name": "../../etc/passwd"},
                     "lies outside the dataset folder"),
    "missing image": (lambda r: {**r, "file_name": "images/nope.png"}, "No such file"),
    "NaN box": (lambda r: _geometry(r, boxes=[[float("nan"), 0, 4, 4]]), "4 finite numbers"),
    "inverted box": (lambda r: _geometry(r, boxes=[[4, 4, 1, 1]]), "is empty"),
    "box outside": (lambda r: _geometry(r, boxes=[[0, 0, 400, 4]]), "lies outside"),
    "inf point": (lambda r: _geometry(r, points=[[float("inf"), 1]]), "must be finite"),
}


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_read_samples_rejects_bad_rows(tmp_path, case):
    """Each bad row is a ValueError naming metadata.jsonl:2 and what is wrong, never a wrong
    sample (a NaN gold box once scored Acc@0.5 near 100%) or a file read outside the folder."""
    out = write_dataset("_test_dot", 3, tmp_path / "d", seed=0, progress=False)
    edit, message = BAD_ROWS[case]
    _corrupt(out, edit)
    with pytest.raises(ValueError, match=r"metadata\.jsonl:2: .*" + message):
        list(read_samples(out))


def test_read_samples_checks_the_count(tmp_path):
    out = write_dataset("_test_dot", 3, tmp_path / "d", seed=0, progress=False)
    path = out / "metadata.jsonl"
    path.write_text("\n".join(path.read_text().splitlines()[:2]) + "\n\n")  # a blank line is fine
    with pytest.raises(ValueError, match="has 2 rows, its lookhere.json says n = 3"):
        list(read_samples(out))


def test_read_info_names_the_file_and_line(tmp_path):
    """A broken lookhere.json was a bare JSONDecodeError naming neither (issue 17)."""
    assert main(["data", "make", "_test_dot", "--n", "2", "--out", str(tmp_path / "d")]) == 0
    (tmp_path / "d" / "lookhere.json").write_text('{\n  "n": 2,\n  bad\n}')
    with pytest.raises(ValueError, match=r"d/lookhere\.json:3: not valid JSON"):
        read_info(tmp_path / "d")
    (tmp_path / "d" / "lookhere.json").write_text('{"n": "2"}')
    with pytest.raises(ValueError, match=r"lookhere\.json: expected a JSON object whose 'n'"):
        read_info(tmp_path / "d")


def test_samples_digest_keys_on_content_not_on_paths(tmp_path):
    """The digest a resumed run checks: equal for the same samples read from two folders, and
    different when one pixel, a question or the order changes (each alone)."""
    from lookhere.data.sample import samples_digest

    for name in ("a", "b"):
        assert main(["data", "make", "shapes", "--n", "3", "--out", str(tmp_path / name),
                     "--set", "image_size=112"]) == 0
    a, b = (list(read_samples(tmp_path / n)) for n in ("a", "b"))
    digest = samples_digest(a)
    assert samples_digest(b) == digest and len(digest) == 64
    pixels = np.array(b[1].image)
    pixels[0, 0, 0] ^= 1
    changed = [b[0], Sample(**{**vars(b[1]), "image": Image.fromarray(pixels)}), b[2]]
    asked = [b[0], Sample(**{**vars(b[1]), "question": b[1].question + " "}), b[2]]
    assert len({digest, samples_digest(changed), samples_digest(asked),
                samples_digest(b[::-1])}) == 4
