"""The head search against eager attention: S_img and entropies from the probe's rows equal
those computed from eager ``output_attentions`` maps, for every family."""

import copy

import numpy as np
import pytest
import torch
from conftest import tiny

from lookhere.data.prompt import prefill_prompt
from lookhere.data.synthetic import make_task
from lookhere.heads.scoring import spatial_entropy
from lookhere.heads.search import score_samples
from lookhere.models import get_adapter


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


def test_scores_match_eager(family):
    model, processor = tiny(family)
    adapter = get_adapter(model)
    ss = samples()
    s_img, ent = score_samples(model, processor, adapter, ss, batch_size=2, progress=False)
    n_layers, n_heads = adapter.num_layers, adapter.num_heads
    assert s_img.shape == ent.shape == (3, n_layers, n_heads)
    ref = copy.deepcopy(model)
    ref.set_attn_implementation("eager")
    agree = total = 0
    for i, s in enumerate(ss):  # one sample at a time: no padding in the reference
        images = [[s.image]]
        batch = adapter.process(processor, [prefill_prompt(adapter, processor, s.question)],
                                images, padding=True)
        with torch.no_grad():
            att = ref(**batch, output_attentions=True).attentions
        vis = adapter.visual_positions(batch["input_ids"])[0]
        grid = adapter.layout(batch, images, processor).samples[0].images[0].primary
        for layer in range(n_layers):
            rows = att[layer][0, :, -1, vis].double()  # (H, K), last text token
            np.testing.assert_allclose(s_img[i, layer], rows.sum(-1).numpy(), atol=1e-5)
            maps = grid.to_grid(rows).numpy()
            for head in range(n_heads):
                want = spatial_entropy(maps[head])
                total += 1
                agree += want == pytest.approx(ent[i, layer, head], abs=1e-9) or (
                    np.isinf(want) and np.isinf(ent[i, layer, head]))
    # binarising at the mean is discontinuous: a cell within ~1e-7 of the mean may flip
    assert agree >= 0.95 * total, f"{agree} of {total} entropies agree"


def test_errors():
    model, processor = tiny("llava")
    with pytest.raises(ValueError, match="batch_size"):
        score_samples(model, processor, get_adapter(model), samples(1), batch_size=0)
