"""Shipped checkpoints by name (`lookhere:<name>`): the loader, `load_model` and the CLI resolve
the package's weights folder; a missing or unknown checkpoint is a clear error. The folder here
holds a saved test-size model (no pretrained weights are committed yet: docs/results.md §6)."""

import json

import pytest
import torch

from lookhere.cli import main
from lookhere.config import shipped
from lookhere.models import build_tiny, load_pretrained
from lookhere.models.loading import load_model
from lookhere.models.tiny import save_tiny


@pytest.fixture()
def weights(tmp_path, monkeypatch):
    model, processor = build_tiny("llava", "test", seed=3)
    save_tiny(model, processor, tmp_path / "llava-mini")
    monkeypatch.setattr(shipped, "WEIGHTS", tmp_path)
    return model


def test_loads_by_name(weights):
    model, _ = load_pretrained("llava-mini")
    assert not model.training
    same, _, adapter = load_model("lookhere:llava-mini")
    assert adapter.family == "llava"
    for a, b, c in zip(model.parameters(), same.parameters(), weights.parameters(), strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)


def test_cli_takes_it_as_model(weights, tmp_path):
    data = tmp_path / "vqa"
    assert main(["data", "make", "shapes", "--n", "4", "--out", str(data), "--set", "mode=vqa",
                 "--set", "image_size=56", "--set", "small_radius=0.1",
                 "--set", "large_radius=0.16"]) == 0
    out = tmp_path / "m.json"
    assert main(["eval", "--data", str(data), "--model", "lookhere:llava-mini", "--out",
                 str(out), "--max-new-tokens", "2"]) == 0
    assert json.loads(out.read_text())["scores"]["tasks"]["shapes"]["n"] == 4


def test_missing_and_unknown(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(shipped, "WEIGHTS", tmp_path)
    with pytest.raises(FileNotFoundError, match="missing"):
        load_pretrained("llava-mini")
    with pytest.raises(ValueError, match="unknown shipped checkpoint"):
        load_model("lookhere:llava-huge")
    with pytest.raises(SystemExit) as e:
        main(["eval", "--data", str(tmp_path), "--model", "lookhere:llava-huge"])
    assert e.value.code == 2


def test_plain_paths_are_untouched():
    assert shipped.resolve("llava-hf/llava-1.5-7b-hf") == "llava-hf/llava-1.5-7b-hf"
    assert shipped.resolve("runs/model") == "runs/model"
