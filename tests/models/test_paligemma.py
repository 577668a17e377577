"""PaliGemma's attention as transformers computes it, and the probe following it.

PaliGemma's text config asks for bidirectional attention over the prefix (images and prompt):
its attention modules have ``is_causal=False``. These tests pin down what SDPA (PaliGemma 1's
Gemma) and eager (PaliGemma 2's Gemma 2, which transformers runs only on eager) compute, and
that the probe's rows are those, not a causal textbook version:

- with ``token_type_ids`` (0 prefix, 1 suffix), both build a block mask: the prefix attends both
  ways, the suffix causally;
- without them and without padding, SDPA gets no mask and attends every token to every token,
  while eager builds a causal mask: the probe follows SDPA (the registry-wide probe tests
  compare it with eager on padded batches, where both get the same explicit mask);
- Gemma 2's attention and final logit soft caps are applied by the probe and the lens.
"""

from __future__ import annotations

import copy

import torch
from conftest import make_batch, noise_image, tiny
from test_probe import eager_copy, slice_rows
from trainkit import samples

from lookhere.collate import GroundingCollator
from lookhere.models import get_adapter
from lookhere.probe import AttentionProbe

FAMILY = "paligemma"


def paligemma1():
    """The tiny PaliGemma with PaliGemma 1's language model (Gemma), which runs on SDPA."""
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration

    model, processor = tiny(FAMILY)
    text = model.config.text_config
    keep = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "vocab_size", "pad_token_id", "bos_token_id",
            "eos_token_id")
    config = PaliGemmaConfig(
        text_config=dict(model_type="gemma", **{k: getattr(text, k) for k in keep}),
        vision_config=model.config.vision_config.to_dict(), vocab_size=text.vocab_size,
        image_token_index=model.config.image_token_index, hidden_size=text.hidden_size,
        projection_dim=text.hidden_size)
    torch.manual_seed(0)
    gemma = PaliGemmaForConditionalGeneration._from_config(config, attn_implementation="sdpa")
    assert gemma.model.language_model.config._attn_implementation == "sdpa"
    assert config.text_config.use_bidirectional_attention
    return gemma.eval(), processor


def all_rows(model, batch):
    """Probe rows of every query over every key: {layer: (B, H, L, L)}."""
    n = batch["input_ids"].shape[1]
    everything = torch.arange(n).expand(len(batch["input_ids"]), n)
    with torch.no_grad(), AttentionProbe(model, queries=everything, keys="all") as probe:
        model(**batch)
    return probe.rows


def test_tiny_paligemma2_runs_on_eager_with_a_bidirectional_prefix():
    model, _ = tiny(FAMILY)
    text = model.config.text_config
    assert text.model_type == "gemma2" and text.use_bidirectional_attention
    assert model.model.language_model.config._attn_implementation == "eager"
    assert get_adapter(model).attn_implementation["text_config"] == "eager"
    assert not any(m.is_causal for m in get_adapter(model).attention_modules(model))


def test_probe_follows_sdpa_without_token_type_ids():
    """No token_type_ids, no padding: SDPA attends all to all, eager causally; the probe's rows
    are SDPA's, which equal eager's when every token is declared prefix."""
    model, processor = paligemma1()
    adapter = get_adapter(model)
    images = [[noise_image(45, 83, 1), noise_image(70, 70, 2)]]
    batch = adapter.process(processor, [adapter.tiny_prompt(processor, "find the star", 2)],
                            images)
    one = {"input_ids": batch["input_ids"], "pixel_values": batch["pixel_values"]}
    rows = all_rows(model, one)
    eager = eager_copy(model)
    prefix = {**one, "token_type_ids": torch.zeros_like(one["input_ids"])}
    with torch.no_grad():
        sdpa_logits = model(**one).logits
        bidir = eager(**prefix, output_attentions=True)
        causal = eager(**one, output_attentions=True)
    torch.testing.assert_close(sdpa_logits, bidir.logits)  # what SDPA computes
    assert (sdpa_logits - causal.logits).abs().max() > 1e-3  # ... which eager does not
    n = one["input_ids"].shape[1]
    future = torch.ones(n, n, dtype=torch.bool).triu(1)
    for layer, r in rows.items():
        torch.testing.assert_close(r, bidir.attentions[layer], rtol=0, atol=1e-5)
        assert r[..., future].min() > 0  # every token sees the ones after it
        assert causal.attentions[layer][..., future].max() == 0


def test_prefix_bidirectional_suffix_causal():
    """Collated training batches (right padded): the answer is the causal suffix
    (token_type_ids 1), the prompt a bidirectional prefix, on eager (PaliGemma 2) and SDPA
    (PaliGemma 1), and the probe's rows equal eager attention's on the same batch."""
    _, processor = tiny(FAMILY)
    for model in (tiny(FAMILY)[0], paligemma1()[0]):
        batch = GroundingCollator(processor, get_adapter(model))(samples(2))
        types, labels = batch["token_type_ids"], batch["labels"]
        real = batch["attention_mask"].bool()
        assert torch.equal(types.bool() & real, labels != -100)  # suffix = the answer
        inputs = {k: v for k, v in batch.items() if not k.startswith("lookhere_")}
        rows = all_rows(model, inputs)
        with torch.no_grad():
            ref = eager_copy(model)(**inputs, output_attentions=True).attentions
        for layer, r in rows.items():
            mask = real[:, None, :, None] & real[:, None, None, :]
            torch.testing.assert_close(r * mask, ref[layer] * mask, rtol=0, atol=1e-5)
        last = rows[max(rows)]  # the full-attention layer
        for b in range(len(types)):
            prompt = torch.nonzero(real[b] & (types[b] == 0)).flatten()
            answer = torch.nonzero(types[b] == 1).flatten()
            # the first prompt token sees the last; no answer token sees the next one
            assert last[b, :, prompt[0], prompt[-1]].min() > 0
            assert last[b, :, answer[:-1], answer[1:]].max() == 0


def test_soft_caps_in_probe_and_lens():
    """Gemma 2 caps attention scores and final logits; with caps small enough to bite, the
    probe still matches eager and lm_head(final_norm(h)) still gives the logits."""
    model, processor = tiny(FAMILY)
    capped = copy.deepcopy(model)
    adapter = get_adapter(capped)
    for m in adapter.attention_modules(capped):
        m.attn_logit_softcapping = 0.02  # the tiny scores are ~0.1
    capped.config.text_config.final_logit_softcapping = 0.3  # the tiny logits are ~0.6
    batch, _ = make_batch(FAMILY, processor)
    with torch.no_grad(), AttentionProbe(capped, queries="all_answer") as probe:
        logits = capped(**batch).logits
    with torch.no_grad():
        ref = slice_rows(eager_copy(capped)(**batch, output_attentions=True).attentions, probe)
        plain = model(**batch).logits
    assert (logits - plain).abs().max() > 0.1, "the caps must change the model"
    for layer, r in probe.rows.items():
        assert (r - ref[layer]).abs().max() <= 1e-5
    seen = {}
    norm = adapter.final_norm(capped)
    handle = norm.register_forward_pre_hook(lambda m, a: seen.setdefault("h", a[0]))
    with torch.no_grad():
        try:
            capped(**batch)
        finally:
            handle.remove()
        torch.testing.assert_close(adapter.lm_head(capped)(norm(seen["h"])), logits)
