"""Tiny models: real classes, sizes, and the save_pretrained -> from_pretrained round trip."""

import pytest
import torch
from conftest import make_batch, tiny

from lookhere.models import TinySize, adapter_class, build_tiny
from lookhere.models.loading import load_model
from lookhere.models.tiny import param_count, resolve_size, save_tiny


def test_test_size_is_small(family):
    model, _ = tiny(family)
    assert 5e4 < param_count(model) < 1e6
    assert type(model).__module__.startswith("transformers.models.")


def test_round_trip(family, tmp_path):
    model, processor = tiny(family)
    batch, _ = make_batch(family, processor)
    save_tiny(model, processor, tmp_path)
    loaded, proc2, adapter = load_model(str(tmp_path), dtype=torch.float32)
    assert adapter.family == family and type(loaded) is type(model)
    proc2.tokenizer.padding_side = "left"
    batch2, _ = make_batch(family, proc2)
    for key in batch:
        assert torch.equal(batch[key], batch2[key]), key
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(**batch2).logits, model(**batch).logits,
                                   rtol=0, atol=0)


def test_sizes_validate():
    with pytest.raises(ValueError, match="size"):
        resolve_size("huge")
    with pytest.raises(ValueError, match="unknown"):
        resolve_size({"hiddden": 3})
    with pytest.raises(ValueError):
        TinySize(hidden=30, heads=4)


def test_seeded_build_is_deterministic():
    a, _ = build_tiny("llava", seed=3)
    b, _ = build_tiny("llava", seed=3)
    for (n, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q), n
    assert adapter_class("llava").family == "llava"
