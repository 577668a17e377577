"""Registry and per-family structure checks, run for every registered family."""

import importlib.util

import pytest
import torch
from conftest import make_batch, tiny
from transformers import LlamaConfig

from lookhere.models import UnsupportedModelError, families, get_adapter


def test_torchvision_absent():
    # torchvision (CUDA-only here) makes every lazy transformers model import fail.
    assert importlib.util.find_spec("torchvision") is None


def test_registry_order_and_unsupported():
    assert families() == [
        "llava", "qwen2_5_vl", "qwen2_vl", "llava_next", "gemma3", "smolvlm", "idefics3",
    ]
    with pytest.raises(UnsupportedModelError) as err:
        get_adapter(LlamaConfig())
    for fam in families():
        assert fam in str(err.value)


def test_heads_and_modules(family):
    model, _ = tiny(family)
    adapter = get_adapter(model)
    assert adapter.family == family and get_adapter(model.config).family == family
    attn = adapter.attention_modules(model)
    assert len(attn) == adapter.num_layers >= 2
    for i, m in enumerate(attn):
        assert m.layer_idx == i
        assert m.q_proj.out_features == adapter.num_heads * adapter.head_dim
        assert m.k_proj.out_features == adapter.num_kv_heads * adapter.head_dim


def test_layout_positions_hold_image_tokens(family):
    model, processor = tiny(family)
    batch, images = make_batch(family, processor)
    adapter = get_adapter(model)
    layout = adapter.layout(batch, images, processor)
    assert len(layout) == 2
    ids = batch["input_ids"]
    for b, sample in enumerate(layout.samples):
        assert len(sample.images) == len(images[b])
        assert torch.all(ids[b, sample.visual_positions] == adapter.image_token_id)
        seen = []
        for grid in sample.grids:
            rows, cols = grid.shape
            assert grid.positions.shape == grid.key_index.shape == (rows * cols,)
            assert torch.equal(sample.visual_positions[grid.key_index], grid.positions)
            seen += grid.positions.tolist()
        assert len(seen) == len(set(seen)), "grids must not share tokens"
    with pytest.raises(ValueError, match="images"):
        adapter.layout(batch, [images[0], images[0] + images[0] + images[0]], processor)


def test_logit_lens_modules(family):
    """lm_head(final_norm(pre-norm hidden state)) reproduces the logits."""
    model, processor = tiny(family)
    batch, _ = make_batch(family, processor)
    adapter = get_adapter(model)
    captured = {}
    norm = adapter.final_norm(model)
    handle = norm.register_forward_pre_hook(lambda m, a: captured.setdefault("h", a[0]))
    with torch.no_grad():
        try:
            logits = model(**batch).logits
        finally:
            handle.remove()
        lens = adapter.lm_head(model)(norm(captured["h"]))
    torch.testing.assert_close(lens, logits)
