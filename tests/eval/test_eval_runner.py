"""The evaluation loop: generation matches a manual greedy decode, and the attention ratio
matches one computed from eager attention maps."""

import copy
import json

import numpy as np
import pytest
import torch
from conftest import tiny

from lookhere.collate import GroundingCollator, prompt_batch, split_aux
from lookhere.data.synthetic import make_task
from lookhere.eval.metrics import attention_ratio
from lookhere.eval.runner import answer_attention, evaluate, generate_answers
from lookhere.models import get_adapter


def samples(n=5):
    task = make_task("grid_patch", seed=3, image_size=56, grid_rows=4, grid_cols=4)
    return [task.sample(i) for i in range(n)]


def test_attention_ratio_matches_eager(family):
    model, processor = tiny(family)
    adapter = get_adapter(model)
    ss = samples(3)
    ratios, maps = answer_attention(model, processor, adapter, ss, batch_size=2, n_maps=2,
                                    progress=False)
    # Reference: eager attention of the same teacher-forced batch, last answer content token.
    ref = copy.deepcopy(model)
    ref.set_attn_implementation("eager")
    batch = GroundingCollator(processor, adapter)(ss)
    inputs, aux = split_aux(batch)
    with torch.no_grad():
        att = ref(**inputs, output_attentions=True).attentions  # L x (B, H, S, S)
    vis = adapter.visual_positions(inputs["input_ids"])
    for b in range(len(ss)):
        q = int(torch.nonzero(aux["answer_mask"][b]).max())
        per_layer = []
        for a in att:
            rows = a[b, :, q, vis[b]]  # (H, K)
            rows = rows[rows.sum(-1) > 0]  # heads that see no visual key leave the average
            if len(rows):  # (Gemma3's sliding-window layers may see none at all)
                per_layer.append((rows / rows.sum(-1, keepdim=True)).mean(0))
        mean = torch.stack(per_layer).mean(0)
        cells = aux["target_cells"][b, : len(vis[b])]
        want = attention_ratio(mean, cells)
        assert ratios[b] == pytest.approx(float(want), rel=1e-4)
    assert len(maps) == 2
    for m in maps.values():
        assert m.map.ndim == 2 and np.isfinite(m.map).all()
        x0, y0, x1, y1 = m.extent
        assert 0 <= x0 < x1 and 0 <= y0 < y1


def test_generation_matches_manual_greedy():
    model, processor = tiny("llava")
    adapter = get_adapter(model)
    ss = samples(3)
    got = generate_answers(model, processor, adapter, ss, batch_size=2, max_new_tokens=4,
                           progress=False)
    tok = processor.tokenizer
    for s in ss:  # one at a time, no padding, argmax loop without cache
        batch = prompt_batch(adapter, processor, [s])
        ids = batch["input_ids"]
        extra = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask")}
        with torch.no_grad():
            for _ in range(4):
                logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), **extra).logits
                nxt = logits[:, -1].argmax(-1, keepdim=True)
                ids = torch.cat([ids, nxt], 1)
                if int(nxt) == tok.eos_token_id:
                    break
        new = ids[0, batch["input_ids"].shape[1]:]
        assert got[s.id] == tok.decode(new, skip_special_tokens=True).strip()


def test_evaluate_scores_and_restores_mode():
    model, processor = tiny("llava")
    model = copy.deepcopy(model).train()
    ss = samples(4)
    res = evaluate(model, processor, get_adapter(model), ss, batch_size=3, max_new_tokens=3,
                   progress=False)
    assert model.training
    assert set(res.predictions) == {s.id for s in ss}
    scores = res.scores.tasks["grid_patch"]
    assert scores.n == 4 and 0 <= scores.accuracy <= 1
    ratio = res.attention_ratio["grid_patch"]
    assert len(ratio.values) == 4 and ratio.ci95[0] <= ratio.mean <= ratio.ci95[1]
    assert ratio.median == pytest.approx(np.median(ratio.values)) and ratio.n == 4
    js = json.loads(json.dumps(res.to_json()))
    assert js["attention_ratio"]["grid_patch"]["mean"] == ratio.mean


def test_bad_arguments():
    model, processor = tiny("llava")
    adapter = get_adapter(model)
    with pytest.raises(ValueError, match="samples"):
        generate_answers(model, processor, adapter, [], progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        generate_answers(model, processor, adapter, samples(1), batch_size=0, progress=False)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate_answers(model, processor, adapter, samples(1), max_new_tokens=0,
                         progress=False)
    twice = samples(1) * 2  # the same id twice: one answer would silently replace the other
    with pytest.raises(ValueError, match="ids must be unique"):
        generate_answers(model, processor, adapter, twice, progress=False)


def test_default_answer_length_fits_a_box():
    """A normalised box is written digit by digit in the tiny and shipped tokenizers: the
    default answer cap (the CLI's and the library's, one value) holds the longest box the
    shapes REC answers produce, which 16 cut short."""
    import inspect

    from lookhere.cli.eval import _DEFAULTS
    from lookhere.data.formats import render_box
    from lookhere.eval.runner import MAX_NEW_TOKENS
    from lookhere.models import load_pretrained

    for fn in (generate_answers, evaluate):
        assert inspect.signature(fn).parameters["max_new_tokens"].default == MAX_NEW_TOKENS
    assert _DEFAULTS["max_new_tokens"] == MAX_NEW_TOKENS
    rng = np.random.default_rng(0)
    corners = [(*sorted(rng.uniform(1, 111, 2)), *sorted(rng.uniform(1, 111, 2)))
               for _ in range(50)]
    boxes = ["[0.12, 0.34, 0.56, 0.78]",
             *(render_box((x0, y0, x1, y1), (112, 112)) for x0, x1, y0, y1 in corners)]
    for processor in (load_pretrained("llava-mini")[1], tiny("llava")[1]):
        lengths = [len(processor.tokenizer(b, add_special_tokens=False)["input_ids"])
                   for b in boxes]
        assert max(lengths) <= MAX_NEW_TOKENS, lengths
        assert max(lengths) > 16  # the old default truncated it
