"""The fallback adapter on VLM classes lookhere has no adapter for (Mistral3, AyaVision,
Idefics2): the probe against eager attention of the same weights, the lens modules, the square
grid it infers, and the clear errors (naming ``adapter=``) where it cannot find something.

The models are tiny random-weight builds of the real classes from configs; the batches are made
by hand (the images' token blocks where the model scatters its image features), since the
probe needs only ``input_ids`` and the model's image tensors.
"""

from __future__ import annotations

import pytest
import torch
from test_probe import eager_copy, slice_rows

from lookhere.models import UnsupportedModelError, families, get_adapter
from lookhere.models.generic import GenericAdapter
from lookhere.probe import AttentionProbe

IMAGE, SIDE, PATCH = 5, 56, 14  # image token id, image side (px), vision patch
TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, vocab_size=100, max_position_embeddings=512,
            pad_token_id=0, bos_token_id=1, eos_token_id=2)
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
              image_size=SIDE, patch_size=PATCH)


def mistral3():
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    config = Mistral3Config(
        text_config=dict(model_type="mistral", **TEXT),
        vision_config=dict(model_type="pixtral", head_dim=16, **VISION),
        image_token_index=IMAGE, spatial_merge_size=2)
    model = Mistral3ForConditionalGeneration._from_config(config, attn_implementation="sdpa")

    def images(per_sample):  # 56 x 56 px: 4 x 4 patches, merged 2 x 2: 4 tokens
        n = sum(per_sample)
        return dict(pixel_values=torch.randn(n, 3, SIDE, SIDE),
                    image_sizes=torch.tensor([[SIDE, SIDE]] * n)), 4

    return model, images


def aya_vision():
    from transformers import AyaVisionConfig, AyaVisionForConditionalGeneration

    # Cohere2: a sliding-window layer (window 4, inside an image block) and a full one.
    text = dict(model_type="cohere2", layer_types=["sliding_attention", "full_attention"],
                sliding_window=4, **TEXT)
    config = AyaVisionConfig(
        text_config=text, vision_config=dict(model_type="siglip_vision_model", **VISION),
        image_token_index=IMAGE, downsample_factor=2)
    model = AyaVisionForConditionalGeneration._from_config(config, attn_implementation="sdpa")

    def images(per_sample):  # SigLIP 4 x 4 patches, pixel-shuffled 2 x 2: 4 tokens
        return dict(pixel_values=torch.randn(sum(per_sample), 3, SIDE, SIDE)), 4

    return model, images


def idefics2():
    from transformers import Idefics2Config, Idefics2ForConditionalGeneration

    config = Idefics2Config(
        text_config=dict(model_type="mistral", **TEXT), vision_config=VISION,
        perceiver_config=dict(hidden_size=64, resampler_n_latents=9, resampler_depth=1,
                              resampler_n_heads=2, resampler_head_dim=8, num_key_value_heads=1),
        image_token_id=IMAGE)
    model = Idefics2ForConditionalGeneration._from_config(config, attn_implementation="sdpa")

    def images(per_sample):  # the perceiver's 9 latents per image
        pixels = torch.zeros(len(per_sample), max(per_sample), 3, SIDE, SIDE)  # (B, N, 3, H, W)
        for b, n in enumerate(per_sample):  # all-zero images are padding to Idefics2
            pixels[b, :n] = torch.randn(n, 3, SIDE, SIDE)
        return dict(pixel_values=pixels), 9

    return model, images


BUILDERS = {"mistral3": mistral3, "aya_vision": aya_vision, "idefics2": idefics2}
_BUILT: dict = {}


@pytest.fixture(params=list(BUILDERS))
def unregistered(request):
    if request.param not in _BUILT:
        torch.manual_seed(0)
        model, images = BUILDERS[request.param]()
        _BUILT[request.param] = model.eval(), images
    return request.param, *_BUILT[request.param]


def make_batch(images, per_sample=(1, 2), pad=3):
    """Samples of text, image blocks and text, left padded (by ``pad`` or more); labels on the last
    3 tokens. ``images(per_sample)`` gives the model's image tensors and tokens per image."""
    torch.manual_seed(1)
    tensors, tokens = images(per_sample)
    rows = []
    for n in per_sample:
        ids = [1, *torch.randint(10, 100, (4,)).tolist()]
        for _ in range(n):
            ids += [IMAGE] * tokens + torch.randint(10, 100, (3,)).tolist()
        rows.append(ids + torch.randint(10, 100, (5,)).tolist())
    width = max(len(r) for r in rows) + pad
    input_ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for b, r in enumerate(rows):  # left padding
        input_ids[b, width - len(r):], mask[b, width - len(r):] = torch.tensor(r), 1
    labels = torch.full_like(input_ids, -100)
    labels[:, -3:] = input_ids[:, -3:]
    return dict(input_ids=input_ids, attention_mask=mask, labels=labels, **tensors)


def test_no_family_claims_them(unregistered):
    name, model, _ = unregistered
    adapter = get_adapter(model)
    assert type(adapter) is GenericAdapter and adapter.family not in families()
    assert adapter.image_token_id == IMAGE and adapter.num_layers == 2
    attn = adapter.attention_modules(model)
    assert [m.layer_idx for m in attn] == [0, 1]
    assert adapter.language_model(model) is model.model.get_decoder()


@pytest.mark.parametrize("queries", ["last_text", "all_answer"])
def test_probe_matches_eager(unregistered, queries):
    _, model, images = unregistered
    batch = make_batch(images)
    with torch.no_grad(), AttentionProbe(model, queries=queries) as probe:
        model(**batch)
    with torch.no_grad():
        ref = slice_rows(eager_copy(model)(**batch, output_attentions=True).attentions, probe)
    assert sorted(probe.rows) == [0, 1]
    assert probe.key_mask.sum(1).tolist() == [(batch["input_ids"][b] == IMAGE).sum().item()
                                              for b in range(len(batch["input_ids"]))]
    assert sum(rows.sum() for rows in probe.rows.values()) > 0  # the images are seen
    for layer, rows in probe.rows.items():
        assert rows.shape[1] == 4
        assert (rows - ref[layer]).abs().max() <= 1e-5, f"layer {layer}"


def test_lens_modules(unregistered):
    """lm_head(final_norm(pre-norm hidden state)) reproduces the logits."""
    _, model, images = unregistered
    batch = make_batch(images)
    adapter = get_adapter(model)
    norm, seen = adapter.final_norm(model), {}
    handle = norm.register_forward_pre_hook(lambda m, a: seen.setdefault("h", a[0]))
    with torch.no_grad():
        try:
            logits = model(**batch).logits
        finally:
            handle.remove()
        torch.testing.assert_close(adapter.lm_head(model)(norm(seen["h"])), logits)


def test_square_grid_over_the_whole_image():
    model, images = _BUILT.get("mistral3") or mistral3()
    batch = make_batch(images)
    layout = get_adapter(model).layout(batch, [[(56, 56)], [(56, 56), (80, 40)]], None)
    ids = batch["input_ids"]
    for b, sample in enumerate(layout):
        assert torch.equal(sample.visual_positions, torch.nonzero(ids[b] == IMAGE).flatten())
        for grid in sample.grids:
            assert grid.shape == (2, 2) and (ids[b, grid.positions] == IMAGE).all()
    geo = layout[1].images[1].primary.geometry  # 80 x 40 squashed onto 2 x 2 cells
    assert geo.cell_boxes()[1, 0].tolist() == [0, 20, 40, 40]
    assert geo.point_to_cell(79, 1) == (0, 1) and geo.image_fraction().min() == 1


def test_errors_name_the_adapter_argument():
    model, images = _BUILT.get("mistral3") or mistral3()
    adapter = get_adapter(model)
    # a 6-token image (a non-square Pixtral grid): no grid, but the probe still works
    batch = make_batch(lambda per_sample: (images(per_sample)[0], 6))
    with pytest.raises(ValueError, match=r"sample 0, image 0: .* 6 image tokens .*adapter="):
        adapter.layout(batch, [[(80, 56)], [(80, 56), (80, 56)]], None)
    # Pixtral's row breaks: one image's tokens in two blocks
    two_rows = batch["input_ids"].clone()
    two_rows[0, torch.nonzero(two_rows[0] == IMAGE).flatten()[3]] = 50
    with pytest.raises(ValueError, match=r"sample 0: 1 images .* 2 contiguous blocks.*adapter="):
        adapter.layout({"input_ids": two_rows}, [[(80, 56)], [(80, 56), (80, 56)]], None)


def test_text_only_model_is_refused():
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in TEXT.items() if k != "head_dim"}))
    with pytest.raises(UnsupportedModelError, match=r"image_token_id.*adapter=.*llava"):
        AttentionProbe(model)


def test_no_decoder_layers_found():
    """Decoder layers where the fallback does not look (``.blocks``), and a decoder without
    ``.norm``: each error says what the fallback looked for and what to pass instead."""
    model, _ = _BUILT.get("mistral3") or mistral3()
    adapter = get_adapter(model)
    lm = model.model.language_model
    layers, norm = lm.layers, lm.norm
    try:
        del lm.layers
        lm.blocks = layers
        with pytest.raises(UnsupportedModelError,
                           match=r"Mistral3ForConditionalGeneration: no module holds .*adapter=.*"
                                 r"language_model\(model\)"):
            AttentionProbe(model)
        del lm.blocks
        lm.layers = layers
        del lm.norm
        with pytest.raises(UnsupportedModelError, match=r"final norm .*adapter=.*final_norm"):
            adapter.final_norm(model)
    finally:
        lm.layers, lm.norm = layers, norm
        if hasattr(lm, "blocks"):
            del lm.blocks


def test_klal_and_the_lens_through_the_fallback():
    """KLAL's pieces (layout -> target over visual keys, the probe's log rows, the loss and its
    gradient) and the lens (captured hidden states -> concept log-probabilities that match the
    model's own logits) run on a class without a family."""
    from lookhere.capture import capture_hidden
    from lookhere.data.sample import Geometry
    from lookhere.lens import lens_log_probs
    from lookhere.losses.config import KLALConfig
    from lookhere.targets import batch_targets
    from lookhere.train.objective import klal_probe, klal_term

    model, images = _BUILT.get("mistral3") or mistral3()
    adapter = get_adapter(model)
    batch = make_batch(images)
    layout = adapter.layout(batch, [[(56, 56)], [(56, 56), (80, 40)]], None)
    # the box covers the top-left cell of each sample's first 2 x 2 grid: the target's peak
    target, has = batch_targets(layout, [Geometry(boxes=[(0, 0, 28, 28)])] * 2)
    assert has.all() and (target.argmax(1) == 0).all()
    torch.testing.assert_close(target.sum(1), torch.ones(2))
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    aux = {"answer_mask": batch["labels"] != -100, "target": target, "has_target": has}
    model.zero_grad()
    with klal_probe(model, inputs, aux, KLALConfig(weight=1.0)) as probe:
        model(**inputs)
        loss = klal_term(probe, aux, KLALConfig(weight=1.0))
        loss.backward()
    assert torch.isfinite(loss) and loss > 0
    grads = [p.grad for p in adapter.language_model(model).parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    model.zero_grad()
    with torch.no_grad(), capture_hidden(model, adapter, [-1], positions="all") as cap:
        logits = model(**inputs).logits
    ids = [[7], [8, 9]]
    got = lens_log_probs(model, adapter, cap.hidden[1], ids)  # (B, L, 2)
    logp = logits.float().log_softmax(-1)
    torch.testing.assert_close(got[..., 0], logp[..., 7], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got[..., 1], logp[..., 8:10].logsumexp(-1), rtol=1e-4, atol=1e-5)
