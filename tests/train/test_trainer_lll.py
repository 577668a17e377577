"""`GroundingTrainer` with the Logit Lens Loss: the captured layer, the term against a float64
reference, every family, LLL lowering its loss on Shapes, with KLAL, and the equivalences
(off/monitored, gradient accumulation, checkpointing, bf16) and errors."""

import math

import pytest
import torch
from conftest import tiny
from trainkit import (
    LLL_ONLY,
    SGD,
    assert_params_close,
    reference_lll,
    reference_losses,
    shapes_samples,
    step_logs,
    trainable,
    trainer_for,
    unchanged,
)

from lookhere.collate import (
    GroundingCollator,
    split_aux,
)
from lookhere.data.dataset import SampleList
from lookhere.losses.config import LLLConfig
from lookhere.models import build_tiny, get_adapter
from lookhere.train import KLALConfig
from lookhere.train.objective import lll_capture, lll_term

pytestmark = pytest.mark.usefixtures("one_thread")


def test_lll_image_scope_matches_the_reference():
    model, processor = build_tiny("llava", "test", seed=0)
    config = LLLConfig(scope="image", beta=0.5)
    batch = GroundingCollator(processor, get_adapter(model), lll=config)(shapes_samples(4))
    inputs, aux = split_aux(batch)
    assert aux["lll_region"].shape[1] > 1
    with torch.no_grad(), lll_capture(model, inputs, config) as capture:
        model(**inputs)
        lll = lll_term(capture, aux, config)
    assert lll.item() == pytest.approx(reference_lll(model, batch, beta=0.5), rel=1e-5)


def test_lll_capture_reads_the_chosen_layer(family):
    """Layer 0's output is ``hidden_states[1]``; the last layer read through the capture's
    unembedding gives the model's own logits (``hidden_states[-1]`` is already normed)."""
    model, processor = tiny(family)
    batch = GroundingCollator(processor, get_adapter(model), lll=LLLConfig())(shapes_samples(2))
    inputs, _ = split_aux(batch)
    for layer in (0, -1):
        with torch.no_grad(), lll_capture(model, inputs, LLLConfig(layer=layer)) as capture:
            out = model(**inputs, output_hidden_states=True)
            hidden = capture.hidden[capture.layers[0]]
            lens = capture.unembed(hidden)
        for b, pos in enumerate(get_adapter(model).visual_positions(inputs["input_ids"])):
            got = hidden[b, :len(pos)]
            if layer == 0:
                torch.testing.assert_close(got, out.hidden_states[1][b, pos])
            else:
                torch.testing.assert_close(lens[b, :len(pos)], out.logits[b, pos])


def test_lll_reaches_the_visual_path():
    """The LLL term alone (no NTP) has a gradient on the vision tower and the projector."""
    model, processor = build_tiny("llava", "test", seed=0)
    batch = GroundingCollator(processor, get_adapter(model), lll=LLLConfig())(shapes_samples(4))
    inputs, aux = split_aux(batch)
    with lll_capture(model, inputs, LLLConfig()) as capture:
        model(**inputs)
        lll = lll_term(capture, aux, LLLConfig())
    lll.backward()
    assert lll.item() == pytest.approx(reference_lll(model, batch), rel=1e-5)
    for prefix in ("model.vision_tower.", "model.multi_modal_projector."):
        grads = [p.grad for n, p in model.named_parameters()
                 if n.startswith(prefix) and "post_layernorm" not in n]
        assert grads and all(g is not None and g.abs().max() > 0 for g in grads), prefix


@pytest.mark.slow
def test_lll_decreases_on_shapes(tmp_path):
    model, processor = build_tiny("llava", "test", seed=0)
    ss = shapes_samples(8)
    config = LLLConfig(weight=1.0)
    batch = GroundingCollator(processor, get_adapter(model), lll=config)(ss)
    lll0 = reference_lll(model.train(), batch)
    before = trainable(model)
    trainer = trainer_for(model, processor, tmp_path, klal=LLL_ONLY, lll=config,
                          data=SampleList(ss), max_steps=20, per_device_train_batch_size=8,
                          learning_rate=1e-2)
    trainer.train()
    logs = step_logs(trainer)
    assert logs[0]["lll_loss"] == pytest.approx(lll0, rel=1e-5)  # the same fixed batch
    assert "klal_loss" not in logs[0]
    for e in logs:
        assert e["loss"] == pytest.approx(e["ntp_loss"] + e["lll_loss"], rel=1e-5), e
    assert logs[-1]["lll_loss"] < 0.5 * logs[0]["lll_loss"], [e["lll_loss"] for e in logs]
    assert reference_lll(model.eval(), batch) < 0.5 * lll0
    moved = set(before) - set(unchanged(before, model))
    assert any(n.startswith("model.vision_tower.") for n in moved)
    assert any(n.startswith("model.multi_modal_projector.") for n in moved)


def test_train_every_family_with_lll(family, tmp_path):
    model, processor = build_tiny(family, "test", seed=1)
    config = LLLConfig(weight=0.5, beta=2.0)
    trainer = trainer_for(model, processor, tmp_path, lll=config, data=SampleList(
        shapes_samples(2)), max_steps=1, per_device_train_batch_size=2)
    trainer.train()
    (e,) = step_logs(trainer)
    assert all(math.isfinite(e[k]) for k in ("loss", "ntp_loss", "klal_loss", "lll_loss")), e
    assert e["lll_loss"] > 0 and e["klal_loss"] > 0
    assert e["loss"] == pytest.approx(
        e["ntp_loss"] + e["klal_loss"] + 0.5 * e["lll_loss"], rel=1e-5), e


def test_klal_and_lll_together(tmp_path):
    model, processor = build_tiny("llava", "test", seed=0)
    ss = shapes_samples(4)
    batch = GroundingCollator(processor, get_adapter(model), lll=LLLConfig())(ss)
    ntp0, klal0 = reference_losses(model.train(), batch)
    lll0 = reference_lll(model, batch, beta=0.5)
    trainer = trainer_for(model, processor, tmp_path, klal=KLALConfig(weight=2.0),
                          lll=LLLConfig(weight=3.0, beta=0.5), data=SampleList(ss), max_steps=3)
    trainer.train()
    logs = step_logs(trainer)
    assert len(logs) == 3
    first = logs[0]
    assert (first["ntp_loss"], first["klal_loss"], first["lll_loss"]) == pytest.approx(
        (ntp0, klal0, lll0), rel=1e-5)
    for e in logs:
        assert e["loss"] == pytest.approx(
            e["ntp_loss"] + 2.0 * e["klal_loss"] + 3.0 * e["lll_loss"], rel=1e-5), e


@pytest.mark.slow
def test_lll_off_or_monitored_leaves_training_unchanged(tmp_path):
    """lll=None (the current behaviour), LLL at weight 0, and LLL monitored give the same
    updates and losses on the same LLL batches; only the monitored run logs lll_loss."""
    runs = {}
    for name, config in [("none", None), ("zero", LLLConfig(weight=0)),
                         ("monitor", LLLConfig(weight=0, monitor=True))]:
        model, processor = build_tiny("llava", "test", seed=0)
        trainer = trainer_for(model, processor, tmp_path / name, lll=config, max_steps=2,
                              data=SampleList(shapes_samples(8)), **SGD)
        trainer.train()
        runs[name] = (step_logs(trainer), trainable(model))
    logs, params = runs["none"]
    assert all("lll_loss" not in e for e in logs + runs["zero"][0])
    assert all(e["lll_loss"] > 0 for e in runs["monitor"][0])
    for name in ("zero", "monitor"):
        other_logs, other = runs[name]
        for a, b in zip(logs, other_logs, strict=True):
            for k in ("loss", "ntp_loss", "klal_loss"):
                assert a[k] == b[k], (name, k)
        for n in params:
            torch.testing.assert_close(other[n], params[n], rtol=0, atol=0, msg=n)


@pytest.mark.slow
def test_lll_gradient_accumulation_and_checkpointing_match(tmp_path):
    """transformers checkpoints a layer's forward, not its call, so the capture's hook sees the
    checkpointed output even under reentrant checkpointing."""
    runs = []
    for batch_size, ga, ckpt in [(4, 1, None), (2, 2, None), (4, 1, False), (4, 1, True)]:
        model, processor = build_tiny("llava", "test", seed=0)
        before = trainable(model)
        extra = {"activation_checkpointing": True,
                 "activation_checkpointing_kwargs": {"use_reentrant": ckpt}} \
            if ckpt is not None else {}
        trainer = trainer_for(model, processor, tmp_path / f"{ga}{ckpt}", klal=LLL_ONLY,
                              lll=LLLConfig(weight=5.0), data=SampleList(shapes_samples(4)),
                              max_steps=1, per_device_train_batch_size=batch_size,
                              gradient_accumulation_steps=ga, learning_rate=0.5,
                              train_sampling_strategy="sequential", **SGD, **extra)
        trainer.train()
        runs.append((step_logs(trainer), trainable(model)))
    (full_logs, full), *others = runs
    for logs, params in others:
        assert_params_close(params, full, before)
        assert logs[0]["lll_loss"] == pytest.approx(full_logs[0]["lll_loss"], rel=1e-5)
        assert logs[0]["loss"] == pytest.approx(full_logs[0]["loss"], rel=1e-5)


def test_lll_bf16(tmp_path):
    model, processor = build_tiny("llava", "test", seed=0)
    trainer = trainer_for(model, processor, tmp_path, lll=LLLConfig(),
                          data=SampleList(shapes_samples(4)), max_steps=2, bf16=True)
    trainer.train()
    for e in step_logs(trainer):
        assert all(math.isfinite(e[k]) for k in ("loss", "ntp_loss", "lll_loss")), e
        assert e["lll_loss"] > 0


@pytest.mark.parametrize("kwargs, match", [
    ({"weight": -1.0}, "weight"),
    ({"weight": float("inf")}, "weight"),
    ({"beta": float("nan")}, "beta"),
    ({"layer": 1.5}, "layer"),
    ({"region_threshold": 0.0}, "region_threshold"),
    ({"region_threshold": 1.5}, "region_threshold"),
    ({"concept": ("size",)}, "concept"),
    ({"concept": ()}, "concept"),
    ({"token_rule": "last"}, "token_rule"),
    ({"chunk_size": 0}, "chunk_size"),
])
def test_lll_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LLLConfig(**kwargs)


def test_lll_config_normalises():
    assert LLLConfig(concept="colour").concept == ("colour",)
    assert LLLConfig(concept=["colour", "shape"]).concept == ("colour", "shape")
    assert not LLLConfig(weight=0).active and LLLConfig(weight=0, monitor=True).active


def test_lll_region_threshold(tmp_path):
    model, processor = tiny("llava")
    batch = GroundingCollator(processor, get_adapter(model), lll=LLLConfig())(shapes_samples(4))
    inputs, aux = split_aux(batch)
    values = {}
    for t in (None, 0.5, 1e-6):
        with torch.no_grad(), lll_capture(model, inputs, LLLConfig()) as capture:
            model(**inputs)
            values[t] = lll_term(capture, aux, LLLConfig(region_threshold=t)).item()
    assert len(set(values.values())) == 3  # the threshold changes the regions
    # any touched cell inside == a binary region built by hand
    hard = dict(aux, lll_region=(aux["lll_region"] > 0).float())
    with torch.no_grad(), lll_capture(model, inputs, LLLConfig()) as capture:
        model(**inputs)
        assert lll_term(capture, hard, LLLConfig()).item() == pytest.approx(values[1e-6])


def test_lll_errors(tmp_path):
    model, processor = build_tiny("llava", "test", seed=0)
    with pytest.raises(ValueError, match="layer"):
        lll_capture(model, {"input_ids": torch.zeros(1, 3, dtype=torch.long)}, LLLConfig(layer=2))
    # LLL on, but the collator was not asked for its entries
    trainer = trainer_for(model, processor, tmp_path, max_steps=1, lll=LLLConfig())
    trainer.data_collator = GroundingCollator(processor, get_adapter(model))
    with pytest.raises(KeyError, match="lll_region"):
        trainer.train()
