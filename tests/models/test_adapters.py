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


def test_resolve_layers_and_heads():
    """The one resolver of layer indices: negative from the end, order kept, duplicates dropped,
    None or "all" for every layer; heads are integer (layer, head) pairs that exist."""
    from lookhere.models.adapter import resolve_heads, resolve_layers

    assert resolve_layers([-1, 0, 3, -4], 4) == (3, 0)
    assert resolve_layers(None, 3) == resolve_layers("all", 3) == (0, 1, 2)
    for bad in ([4], [-5], [True], [1.5], []):
        with pytest.raises(ValueError, match="layer"):
            resolve_layers(bad, 4)
    assert resolve_heads([(-1, 2), (0, 0), [2.0, 1]], 4, 3) == [(3, 2), (0, 0), (2, 1)]
    for bad in ([(2.7, 1)], [(True, 0)], [(0, 3)], [(4, 0)], [(-5, 0)], [], [(1,)]):
        with pytest.raises(ValueError, match="heads"):
            resolve_heads(bad, 4, 3)
