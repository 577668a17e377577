"""Find heads on a tiny model, save and reload the spec, and ground with it; the boxes equal
those from eager attention maps of the same heads."""

import copy

import numpy as np
import pytest
import torch

from lookhere.data.prompt import prefill_prompt
from lookhere.data.synthetic import make_task
from lookhere.heads.grounding import ground
from lookhere.heads.locate import locate
from lookhere.heads.search import find_heads
from lookhere.heads.selection import HeadSpec
from lookhere.models import build_tiny, get_adapter


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_find_and_locate(family, tmp_path):
    model, processor = build_tiny(family, {"layers": 4}, seed=0)  # layers 0-1 are skipped
    adapter = get_adapter(model)
    task = make_task("shapes", seed=2, image_size=112)
    ss = [task.sample(i) for i in range(6)]
    spec = find_heads(model, processor, adapter, ss, model_id="tiny", batch_size=4,
                      progress=False)
    assert len(spec.heads) == 3 and all(layer >= 2 for layer, _ in spec.heads)
    assert spec.num_samples == 6 and 0 <= spec.tau <= 1
    spec = HeadSpec.load(spec.save(tmp_path / "heads.json"))
    found = locate(model, processor, adapter, spec, ss[:3], batch_size=2)
    assert len(found) == 3
    ref = copy.deepcopy(model)
    ref.set_attn_implementation("eager")
    for s, g in zip(ss[:3], found, strict=True):
        x0, y0, x1, y1 = g.box
        assert 0 <= x0 < x1 <= s.image.size[0] and 0 <= y0 < y1 <= s.image.size[1]
        batch = adapter.process(processor, [prefill_prompt(adapter, processor, s.question)],
                                [[s.image]], padding=True)
        with torch.no_grad():
            att = ref(**batch, output_attentions=True).attentions
        vis = adapter.visual_positions(batch["input_ids"])[0]
        grid = adapter.layout(batch, [[s.image]], processor).samples[0].images[0].primary
        maps = np.stack([grid.to_grid(att[layer][0, head, -1, vis].double()).numpy()
                         for layer, head in spec.heads])
        assert ground(maps, grid.geometry).box == pytest.approx(g.box)


def test_spec_must_fit_the_model(tmp_path):
    model, processor = build_tiny("llava", "test", seed=0)
    spec = HeadSpec("x", [(5, 0)], 0.1, 1, [[0] * 4] * 6, [[0.0] * 4] * 6, [[None] * 4] * 6)
    task = make_task("shapes", seed=2, image_size=112)
    with pytest.raises(ValueError, match="do not fit"):
        locate(model, processor, get_adapter(model), spec, [task.sample(0)])
