"""Datasets on disk: determinism, atomic writes, datasets-loadable, and the CLI."""

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


def test_cli(tmp_path, capsys):
    assert main(["data", "make", "_test_dot", "--n", "4", "--out", str(tmp_path / "d"),
                 "--set", "image_size=40"]) == 0
    assert read_info(tmp_path / "d")["config"] == {"image_size": 40}
    assert main(["data", "sheet", "_test_dot", "--n", "4", "--out", str(tmp_path / "s.png")]) == 0
    assert Image.open(tmp_path / "s.png").size[0] > 0
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        main(["data", "make", "_test_dot", "--n", "2", "--out", str(tmp_path / "e"),
              "--set", "oops"])


def test_task_sheet_mix_and_docs_cli(tmp_path, monkeypatch):
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
    with pytest.raises(SystemExit, match="--out is required"):
        main(["data", "sheet", "shapes"])
    with pytest.raises(SystemExit, match="no docs sheet"):
        main(["data", "sheet", "_test_dot", "--docs"])


def test_cli_convert_refs(tmp_path):
    import shutil

    src = tmp_path / "refs(unc).p"
    shutil.copy(FIXTURES / "refer/refcoco/refs(unc).p", src)
    assert main(["data", "convert-refs", str(src), str(tmp_path / "refs(unc).json")]) == 0
    assert (tmp_path / "refs(unc).json").exists()
