"""Tiny models: real classes and sizes (the save -> load round trip is test_adapters.py's)."""

import pytest
import torch
from conftest import tiny

from lookhere.models import TinySize, adapter_class, build_tiny
from lookhere.models.tiny import param_count, resolve_size


def test_test_size_is_small(family):
    model, _ = tiny(family)
    assert 5e4 < param_count(model) < 1e6
    assert type(model).__module__.startswith("transformers.models.")


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
