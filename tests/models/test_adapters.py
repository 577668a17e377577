"""Every generic check of an adapter, run for every registered family (the ``family`` fixture
iterates `families()`): a family gets all of them by registering. test_layout.py checks every
family's pixel geometry against its real processor and model and holds the hand-computed cases
particular to a family; test_generic.py covers the fallback for classes without a family."""

import importlib.util
import re

import pytest
import torch
from conftest import ROOT, make_batch, tiny
from transformers import LlamaConfig

from lookhere.models import UnsupportedModelError, adapter_class, families, get_adapter
from lookhere.models.tiny import save_tiny


def test_torchvision_absent():
    # torchvision (CUDA-only here) makes every lazy transformers model import fail.
    assert importlib.util.find_spec("torchvision") is None


def documented_families() -> list[str]:
    """The family column of README.md's families table, in its order (the fallback row, not a
    family, has no code name)."""
    text = (ROOT / "README.md").read_text()
    table = text.split("\n## Families\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `(\w+)` \|", table, flags=re.MULTILINE)


def test_registry_matches_the_documented_families():
    """The registry holds exactly the README's families, in its order: a family is registered
    and documented together. A text-only model is refused with every family named."""
    assert families() == documented_families()
    assert len(set(families())) == len(families()) >= 2
    with pytest.raises(UnsupportedModelError) as err:
        get_adapter(LlamaConfig())
    for fam in families():
        assert fam in str(err.value)


def test_heads_and_modules(family):
    model, _ = tiny(family)
    adapter = get_adapter(model)
    assert adapter.family == family and get_adapter(model.config).family == family
    assert adapter_class(family) is type(adapter) and family in model.config.model_type
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
        assert torch.equal(sample.visual_positions,
                           torch.nonzero(ids[b] == adapter.image_token_id).flatten())
        seen = []
        for grid in sample.grids:
            rows, cols = grid.shape
            assert grid.positions.shape == grid.key_index.shape == (rows * cols,)
            assert torch.equal(sample.visual_positions[grid.key_index], grid.positions)
            seen += grid.positions.tolist()
        assert len(seen) == len(set(seen)), "grids must not share tokens"


def test_wrong_image_count_is_a_clear_error(family):
    model, processor = tiny(family)
    batch, images = make_batch(family, processor)
    adapter = get_adapter(model)
    n = len(images[1])
    fewer = [images[0], images[1][:-1]] if n > 1 else [images[0], images[1] * 2]
    with pytest.raises(ValueError, match=f"sample 1: images lists {len(fewer[1])} images, "
                                         f"the tokens hold {n}"):
        adapter.layout(batch, fewer, processor)
    with pytest.raises(ValueError, match="images has 1 samples but the batch has 2"):
        adapter.layout(batch, images[:1], processor)


def test_batch_without_image_tensors(family):
    """A batch of input_ids alone: the same layout where the family needs only the tokens and
    the processor's settings, else a ValueError naming a tensor the batch lacks (no KeyError)."""
    model, processor = tiny(family)
    batch, images = make_batch(family, processor)
    adapter = get_adapter(model)
    full = adapter.layout(batch, images, processor)
    dropped = [k for k in batch if k not in ("input_ids", "attention_mask", "labels")]
    try:
        bare = adapter.layout({"input_ids": batch["input_ids"]}, images, processor)
    except ValueError as err:
        assert any(k in str(err) for k in dropped), err
    else:
        for s, t in zip(full, bare, strict=True):
            for a, b in zip(s.grids, t.grids, strict=True):
                assert torch.equal(a.positions, b.positions) and a.geometry == b.geometry


def test_forward_runs_and_sees_the_image(family):
    model, processor = tiny(family)
    batch, _ = make_batch(family, processor)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        logits = model(**inputs).logits
        # negated pixels: a different image (an all-zero one reads as padding in Idefics3)
        other = model(**{**inputs, "pixel_values": -inputs["pixel_values"]}).logits
    vocab = get_adapter(model).text_config.vocab_size
    assert logits.shape == (*batch["input_ids"].shape, vocab)
    assert torch.isfinite(logits).all()
    assert not torch.allclose(logits[:, -1], other[:, -1]), "the image does not reach the text"


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


def test_save_load_round_trip(family, tmp_path):
    """save_tiny -> load_model: the same class, batch, logits (bit for bit) and layout."""
    from lookhere.models.loading import load_model

    model, processor = tiny(family)
    batch, images = make_batch(family, processor)
    save_tiny(model, processor, tmp_path)
    loaded, proc2, adapter = load_model(str(tmp_path), dtype=torch.float32)
    assert adapter.family == family and type(loaded) is type(model)
    assert type(proc2) is type(processor)
    batch2, _ = make_batch(family, proc2)
    assert batch.keys() == batch2.keys()
    for key in batch:
        assert torch.equal(batch[key], batch2[key]), key
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(**batch2).logits, model(**batch).logits,
                                   rtol=0, atol=0)
    lay, lay2 = adapter.layout(batch, images, processor), adapter.layout(batch2, images, proc2)
    for s, s2 in zip(lay, lay2, strict=True):
        for a, b in zip(s.grids, s2.grids, strict=True):
            assert torch.equal(a.positions, b.positions) and a.geometry == b.geometry


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
