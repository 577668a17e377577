"""The head search against eager attention: S_img, entropies (primary grid, or every grid pooled
by attention mass) and bottom-row maxima from the probe's rows equal those computed from eager
``output_attentions`` maps, for every family; the search resumes from its saved batches."""

import copy
import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from conftest import tiny

from lookhere.data.synthetic import make_task
from lookhere.heads import search
from lookhere.heads.scoring import HeadScores, spatial_entropy
from lookhere.heads.search import find_heads, score_samples
from lookhere.models import build_tiny, get_adapter
from lookhere.models.prompt import prefill_prompt


def samples(n=3):
    task = make_task("shapes", seed=1, image_size=112)
    return [task.sample(i) for i in range(n)]


def test_prefill_prompt_ends_with_the_text(family):
    model, processor = tiny(family)
    adapter = get_adapter(model)
    text = "Where is the star?"
    prompt = prefill_prompt(adapter, processor, text)
    assert prompt.endswith(text)
    assert prompt.count(text) == 1


def eager_reference(model, processor, adapter, sample):
    """The last text token's rows (L, H, K) from eager ``output_attentions`` and the image's
    grids, for one sample (no padding)."""
    ref = copy.deepcopy(model)
    ref.set_attn_implementation("eager")
    images = [[sample.image]]
    batch = adapter.process(processor, [prefill_prompt(adapter, processor, sample.question)],
                            images, padding=True)
    with torch.no_grad():
        att = ref(**batch, output_attentions=True).attentions
    vis = adapter.visual_positions(batch["input_ids"])[0]
    rows = torch.stack([a[0, :, -1, vis].double() for a in att])  # (L, H, K)
    return rows, adapter.layout(batch, images, processor).samples[0].images[0].grids


def pooled_by_hand(maps):
    """Mass-weighted mean of the finite per-grid entropies of one head; inf if none."""
    num = den = 0.0
    for m in maps:
        e = spatial_entropy(m)
        if math.isfinite(e):
            num, den = num + m.sum() * e, den + m.sum()
    return num / den if den > 0 else math.inf


def same(a, b):
    # pooled entropies weigh by masses that differ from eager's in the 8th digit
    return a == pytest.approx(b, rel=1e-6, abs=1e-9) or (math.isinf(a) and math.isinf(b))


def test_scores_match_eager(family):
    model, processor = tiny(family)
    adapter = get_adapter(model)
    ss = samples()
    primary = score_samples(model, processor, adapter, ss, batch_size=2, progress=False)
    every = score_samples(model, processor, adapter, ss, batch_size=2, grids="all",
                          progress=False)
    n_layers, n_heads = adapter.num_layers, adapter.num_heads
    assert primary.s_img.shape == primary.entropy.shape == (3, n_layers, n_heads)
    assert primary.bottom_row.shape == (3, n_layers, n_heads)
    assert primary.sample_ids == tuple(s.id for s in ss)
    agree = total = 0
    for i, s in enumerate(ss):  # one sample at a time: no padding in the reference
        rows, grids = eager_reference(model, processor, adapter, s)
        np.testing.assert_allclose(primary.s_img[i], rows.sum(-1).numpy(), atol=1e-5)
        np.testing.assert_allclose(every.s_img[i], primary.s_img[i], rtol=0, atol=0)
        maps = [g.to_grid(rows).numpy() for g in grids]  # G x (L, H, rows, cols)
        np.testing.assert_allclose(primary.bottom_row[i], maps[0][..., -1, :].max(-1),
                                   atol=1e-6)
        for layer in range(n_layers):
            for head in range(n_heads):
                total += 1
                agree += same(spatial_entropy(maps[0][layer, head]),
                              primary.entropy[i, layer, head]) and same(
                    pooled_by_hand([m[layer, head] for m in maps]), every.entropy[i, layer, head])
    # binarising at the mean is discontinuous: a cell within ~1e-7 of the mean may flip
    assert agree >= 0.95 * total, f"{agree} of {total} entropies agree"
    if len(grids) == 1:  # one grid per image: "all" is exactly "primary"
        np.testing.assert_array_equal(every.entropy, primary.entropy)
    else:  # LLaVA-NeXT base + crops, Idefics3 global + tiles: the other grids count
        assert not np.array_equal(every.entropy, primary.entropy)


def counting(monkeypatch):
    """Replace the search's forward by one that records the sample ids of every batch."""
    calls, real = [], search.prefill_attention

    def prefill_attention(model, processor, adapter, batch, *args, **kwargs):
        calls.append([s.id for s in batch])
        return real(model, processor, adapter, batch, *args, **kwargs)

    monkeypatch.setattr(search, "prefill_attention", prefill_attention)
    return calls


def test_resume_recomputes_only_missing_batches(tmp_path, monkeypatch):
    model, processor = build_tiny("llava", {"layers": 4}, seed=0)
    adapter = get_adapter(model)
    ss = samples(7)  # batches of 3, 3 and 1
    kw = {"batch_size": 3, "per_sample": 3, "progress": False}
    fresh = find_heads(model, processor, adapter, ss, **kw)
    folder = tmp_path / "scores"
    assert find_heads(model, processor, adapter, ss, scores_dir=folder, **kw) == fresh
    names = ["batch_000000.npz", "batch_000001.npz", "batch_000002.npz"]
    assert sorted(p.name for p in folder.iterdir()) == [*names, "search.json"]
    saved = HeadScores.concat([HeadScores.load(folder / n) for n in names])
    whole = score_samples(model, processor, adapter, ss, batch_size=3, progress=False)
    for k in ("s_img", "entropy", "bottom_row"):
        np.testing.assert_array_equal(getattr(saved, k), getattr(whole, k))
    assert saved.sample_ids == tuple(s.id for s in ss)

    (folder / names[1]).unlink()  # as if killed while scoring batch 1
    calls = counting(monkeypatch)
    assert find_heads(model, processor, adapter, ss, scores_dir=folder, **kw) == fresh
    assert calls == [[s.id for s in ss[3:6]]]  # only the missing batch ran
    assert (folder / names[1]).exists()
    calls.clear()  # everything on disk: selection options may change, no forward runs
    other = find_heads(model, processor, adapter, ss, scores_dir=folder, top_k=2,
                       bottom_row_limit=0.05, **kw)
    assert calls == [] and other.settings["bottom_row_limit"] == 0.05 and len(other.heads) == 2


def test_scores_dir_refuses_another_search(tmp_path):
    model, processor = build_tiny("llava", {"layers": 4}, seed=0)
    adapter = get_adapter(model)
    ss = samples(4)
    folder = tmp_path / "scores"
    score_samples(model, processor, adapter, ss, batch_size=2, scores_dir=folder,
                  progress=False)
    fingerprint = json.loads((folder / "search.json").read_text())
    assert fingerprint["num_samples"] == 4 and fingerprint["batch_size"] == 2
    for change in ({"threshold": "two_mean"}, {"grids": "all"}, {"batch_size": 1}):
        with pytest.raises(ValueError, match="another search"):
            score_samples(model, processor, adapter, ss, **{"batch_size": 2, **change},
                          scores_dir=folder, progress=False)
    with pytest.raises(ValueError, match="sample_ids_sha256"):  # same count, other order
        score_samples(model, processor, adapter, ss[::-1], batch_size=2, scores_dir=folder,
                      progress=False)
    # new weights in the same folder (same path, same model id) are another search
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)
    with pytest.raises(ValueError, match="weights_sha256"):
        score_samples(model, processor, adapter, ss, batch_size=2, scores_dir=folder,
                      progress=False)
    with torch.no_grad():
        next(model.parameters()).sub_(1e-3)
    # a batch file holding other samples is an error, not silently reused
    first = HeadScores.load(folder / "batch_000000.npz")
    HeadScores(first.s_img, first.entropy, first.bottom_row, ("a", "b")).save(
        folder / "batch_000000.npz")
    with pytest.raises(ValueError, match="holds samples"):
        score_samples(model, processor, adapter, ss, batch_size=2, scores_dir=folder,
                      progress=False)


def test_settings_record_every_option():
    model, processor = build_tiny("llava", {"layers": 4}, seed=0)
    spec = find_heads(model, processor, get_adapter(model), samples(3), grids="all",
                      bottom_row_limit=0.5, threshold="two_mean", weight="mass",
                      tau="per_sample", per_sample=2, top_k=1, skip_layers=(0,), progress=False)
    assert spec.settings == {"grids": "all", "bottom_row_limit": 0.5, "threshold": "two_mean",
                             "weight": "mass", "tau": "per_sample", "per_sample": 2,
                             "top_k": 1, "skip_layers": [0], "batch_size": 8}
    assert len(spec.heads) == 1


def test_errors(tmp_path):
    model, processor = tiny("llava")
    adapter = get_adapter(model)
    for kw, match in [({"batch_size": 0}, "batch_size"), ({"grids": "crops"}, "grids"),
                      ({"threshold": "median"}, "threshold"), ({"weight": "count"}, "weight")]:
        with pytest.raises(ValueError, match=match):
            score_samples(model, processor, adapter, samples(1), **kw)
    with pytest.raises(ValueError, match="samples"):
        score_samples(model, processor, adapter, [])
    unnamed = [dataclasses.replace(s, id="") for s in samples(2)]
    with pytest.raises(ValueError, match="ids"):
        score_samples(model, processor, adapter, unnamed, scores_dir=tmp_path)
    with pytest.raises(ValueError, match="bottom_row_limit"):  # refused before any scoring
        find_heads(model, processor, adapter, samples(1), bottom_row_limit=-1.0)
