"""The collator's batches for every family: labels, answer mask, KLAL targets aligned with the
probe, generation prompts, chat templates, and the Logit Lens Loss entries (concepts, regions)."""

import copy
import dataclasses

import numpy as np
import pytest
import torch
from conftest import tiny
from trainkit import (
    SHAPES,
    TASK,
    ragged_samples,
    samples,
    shapes_samples,
)

from lookhere.collate import (
    GroundingCollator,
    prompt_batch,
    split_aux,
)
from lookhere.data.concepts import concept_ids, sample_concept, sample_concepts
from lookhere.data.synthetic.shapes import object_mask
from lookhere.losses.config import LLLConfig
from lookhere.models import get_adapter
from lookhere.models.prompt import chat_turn
from lookhere.probe import IGNORE_INDEX, AttentionProbe

pytestmark = pytest.mark.usefixtures("one_thread")


def test_collator_batch(family):
    model, processor = tiny(family)
    adapter, tok = get_adapter(model), processor.tokenizer
    fmt = adapter.chat
    ss = ragged_samples()
    batch = GroundingCollator(processor, adapter)(ss)
    ids, attn, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    answer = batch["lookhere_answer_mask"]
    b, length = ids.shape
    for k in ("attention_mask", "labels", "lookhere_answer_mask"):
        assert batch[k].shape == (b, length), k
    lengths = attn.sum(1)
    assert len(set(lengths.tolist())) > 1, "the samples should need padding"
    assert lengths.max() == length
    for i, s in enumerate(ss):
        n = int(lengths[i])
        # right padding: real tokens first, then pad tokens that are never labels
        assert attn[i, :n].all() and not attn[i, n:].any()
        assert (ids[i, n:] == tok.pad_token_id).all()
        labelled = (labels[i] != IGNORE_INDEX).nonzero().flatten()
        start = int(labelled[0])
        # labels: exactly the tokens after the prompt up to the end of the sample
        assert labelled.tolist() == list(range(start, n))
        assert torch.equal(labels[i, start:n], ids[i, start:n])
        end = fmt.end if fmt.end.strip() else fmt.end + tok.eos_token
        text = tok.decode(ids[i, start:n].tolist(), skip_special_tokens=False)
        assert text == fmt.answer_prefix + s.answer + end
        # the answer mask: the answer's content, not the tokens closing the turn
        marked = answer[i].nonzero().flatten().tolist()
        assert marked == list(range(start, marked[-1] + 1))
        content = tok.decode(ids[i, marked].tolist(), skip_special_tokens=False)
        assert content == fmt.answer_prefix + s.answer
        closing = tok.decode(ids[i, marked[-1] + 1:n].tolist(), skip_special_tokens=False)
        assert closing == end


def test_collator_prompts_match_generation_prompts(family):
    model, processor = tiny(family)
    adapter = get_adapter(model)
    ss = ragged_samples()
    batch = GroundingCollator(processor, adapter)(ss)
    gen = prompt_batch(adapter, processor, ss)
    assert "labels" not in gen
    for i in range(len(ss)):
        n = int(gen["attention_mask"][i].sum())
        # left padding: pads first, the prompt flush with the end (generation starts there)
        assert gen["attention_mask"][i, -n:].all() and not gen["attention_mask"][i, :-n].any()
        start = int((batch["labels"][i] != IGNORE_INDEX).nonzero()[0])
        assert start == n
        assert torch.equal(gen["input_ids"][i, -n:], batch["input_ids"][i, :start])
    torch.testing.assert_close(gen["pixel_values"], batch["pixel_values"], rtol=0, atol=0)


def test_collator_targets_align_with_probe(family):
    model, processor = tiny(family)
    adapter = get_adapter(model)
    ss = ragged_samples()
    batch = GroundingCollator(processor, adapter)(ss)
    inputs, aux = split_aux(batch)
    with torch.no_grad(), AttentionProbe(model, queries="last_answer", keys="visual") as probe:
        model(**inputs)
    target, has, cells = aux["target"], aux["has_target"], aux["target_cells"]
    assert target.shape == cells.shape == probe.key_mask.shape
    assert has.tolist() == [True, True, True, False]
    key_ids = inputs["input_ids"].gather(1, probe.key_positions)
    assert (key_ids[probe.key_mask] == adapter.image_token_id).all()
    assert (target[~probe.key_mask] == 0).all() and not cells[~probe.key_mask].any()
    torch.testing.assert_close(target[has].sum(1), torch.ones(3), rtol=0, atol=1e-5)
    assert (target[~has] == 0).all() and not cells[~has].any()
    # target cells: the tokens whose pixel box overlaps the geometry's box (by area)
    layout = adapter.layout(batch, [[s.image] for s in ss], processor)
    for i, s in enumerate(ss[:3]):
        x0, y0, x1, y1 = s.geometry.boxes[0]
        expected = torch.zeros_like(cells[i])
        for grid in layout[i].images[0].grids:
            boxes = torch.as_tensor(grid.geometry.cell_boxes()).view(-1, 4)
            w = (torch.minimum(boxes[:, 2], torch.tensor(x1))
                 - torch.maximum(boxes[:, 0], torch.tensor(x0)))
            h = (torch.minimum(boxes[:, 3], torch.tensor(y1))
                 - torch.maximum(boxes[:, 1], torch.tensor(y0)))
            expected[grid.key_index] = (w > 1e-6) & (h > 1e-6)
        assert expected.any()
        assert torch.equal(cells[i], expected), f"sample {i}"


def test_collator_target_peaks_on_target_cells(family):
    """docs/methods.md: "a barely touched cell is never below the ring", so no token gets more
    mass than the most weighted token that holds the target."""
    model, processor = tiny(family)
    batch = GroundingCollator(processor, get_adapter(model))(samples(3))
    target, cells = batch["lookhere_target"], batch["lookhere_target_cells"]
    on_cells = torch.where(cells, target, 0).max(1).values
    assert (on_cells == target.max(1).values).all(), (
        f"{family}: the KLAL target puts more mass on the neighbour ring than on the partly "
        f"covered target tokens (targets.cell_weights leaves touched cells out of the ring):\n"
        f"{target}\n{cells}")


def test_collator_llava_target_cell_is_the_answer_cell():
    """LLaVA's 4x4 token grid is the task's 4x4 grid: the target is the answer's token."""
    model, processor = tiny("llava")
    ss = samples(4)
    batch = GroundingCollator(processor, get_adapter(model))(ss)
    for i, s in enumerate(ss):
        k = (s.structured["row"] - 1) * 4 + s.structured["col"] - 1
        assert batch["lookhere_target_cells"][i].nonzero().flatten().tolist() == [k]
        assert int(batch["lookhere_target"][i].argmax()) == k


LLAVA_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}USER: "
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %} "
    "{% else %}ASSISTANT: {% for c in m['content'] %}{{ c['text'] }}{% endfor %}</s>"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def test_chat_template_path():
    model, plain = tiny("llava")
    adapter = get_adapter(model)
    templated = copy.deepcopy(plain)
    templated.chat_template = LLAVA_TEMPLATE
    turn = chat_turn(adapter, templated, "find the star", "row 1, column 2")
    assert turn.prompt == "USER: <image>\nfind the star ASSISTANT:"
    assert (turn.answer, turn.end) == (" row 1, column 2", "</s>")
    assert chat_turn(adapter, templated, "find the star").prompt == turn.prompt
    # the template mirrors LLaVA's ChatFormat, so both paths build the same batch
    ss = ragged_samples()
    a = GroundingCollator(templated, adapter)(ss)
    b = GroundingCollator(plain, adapter)(ss)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("template", [
    # the reply's header differs from the generation prompt's
    LLAVA_TEMPLATE.replace("{% else %}ASSISTANT: {% for", "{% else %}BOT: {% for"),
    # the reply drops the answer
    LLAVA_TEMPLATE.replace("{{ c['text'] }}{% endfor %}</s>", "{% endfor %}</s>"),
])
def test_chat_template_inconsistent(template):
    model, plain = tiny("llava")
    templated = copy.deepcopy(plain)
    templated.chat_template = template
    with pytest.raises(ValueError, match="chat template"):
        chat_turn(get_adapter(model), templated, "find the star", "row 1, column 2")
    with pytest.raises(ValueError, match="chat template"):
        GroundingCollator(templated, get_adapter(model))(samples(2))


def test_collator_lll_entries():
    model, processor = tiny("llava")
    ss = shapes_samples(6)
    batch = GroundingCollator(processor, get_adapter(model), lll=LLLConfig(scope="target"))(ss)
    region, valid = batch["lookhere_lll_region"], batch["lookhere_lll_valid"]
    assert region.shape == (6, 1, 16)  # scope "target": one concept per sample
    assert valid.shape == batch["lookhere_target"].shape == (6, 16)
    assert valid.all()  # LLaVA: every visual token is a cell of the 4x4 grid
    tok = processor.tokenizer
    for i, s in enumerate(ss):
        word, _ = sample_concept(s)
        objs = s.meta["objects"]
        targets = s.structured.get("objects", [s.structured.get("object")])
        assert word in {objs[t]["shape"] for t in targets} | {objs[t]["colour"] for t in targets}
        # the concept id is the word's own token (the tiny BPE splits off the space)
        ids = batch["lookhere_lll_concepts"][i, 0][batch["lookhere_lll_concepts_mask"][i, 0]]
        assert ids.tolist() == [tok.convert_tokens_to_ids(word)] == concept_ids(tok, word)
        # region: the fraction of each 28x28 px block (the 56 px input's 14 px patches) covered
        # by every object with that word, targets or not (targets samples 8x8 points per cell)
        attr = "shape" if word in {o["shape"] for o in objs} else "colour"
        mask = sum(object_mask(o, 112) for o in objs if o[attr] == word).astype(float)
        blocks = torch.from_numpy(mask).view(4, 28, 4, 28).mean((1, 3)).flatten()
        torch.testing.assert_close(region[i, 0], blocks.float(), rtol=0, atol=0.1)
        assert bool(batch["lookhere_has_concept"][i])


def test_collator_lll_image_scope():
    """scope "image": every shape word and colour word of the image, each with the blocks of
    all its objects; padding concepts have no id and no region."""
    model, processor = tiny("llava")
    ss = shapes_samples(6)
    batch = GroundingCollator(processor, get_adapter(model), lll=LLLConfig(scope="image"))(ss)
    region, ids, mask = (batch[f"lookhere_lll_{k}"] for k in ("region", "concepts",
                                                                "concepts_mask"))
    words = [[o[a] for a in ("shape", "colour") for o in s.meta["objects"]] for s in ss]
    words = [list(dict.fromkeys(w)) for w in words]  # distinct, shapes first
    assert region.shape == (6, max(map(len, words)), 16)
    tok = processor.tokenizer
    for i, s in enumerate(ss):
        objs = s.meta["objects"]
        for j in range(region.shape[1]):
            if j >= len(words[i]):
                assert not mask[i, j].any() and (region[i, j] == 0).all()
                continue
            word = words[i][j]
            assert ids[i, j][mask[i, j]].tolist() == concept_ids(tok, word)
            mask_px = sum(object_mask(o, 112) for o in objs
                          if word in (o["shape"], o["colour"])).astype(bool).astype(float)
            blocks = torch.from_numpy(mask_px).view(4, 28, 4, 28).mean((1, 3)).flatten()
            torch.testing.assert_close(region[i, j], blocks.float(), rtol=0, atol=0.1)
    assert batch["lookhere_has_concept"].all()
    ((word, geo),) = sample_concepts(ss[0], scope="target")
    assert word == sample_concept(ss[0])[0]
    assert np.array_equal(geo.mask, sample_concept(ss[0])[1].mask)
    assert sample_concepts(TASK.sample(0), scope="image") == []  # no objects, no concept
    with pytest.raises(ValueError, match="scope"):
        sample_concepts(ss[0], scope="all")
    with pytest.raises(ValueError, match="scope"):
        LLLConfig(scope="all")


def test_collator_lll_concept_rules():
    s = SHAPES.sample(0)
    objs = s.meta["objects"]
    # REC: one target object; its shape word first, the colour word when asked for
    rec = dataclasses.replace(s, structured={"object": 0})
    assert sample_concept(rec)[0] == objs[0]["shape"]
    assert sample_concept(rec, ("colour",))[0] == objs[0]["colour"]
    # targets without a shared shape fall back to a shared colour, else no concept
    i, j = next((i, j) for i in range(len(objs)) for j in range(len(objs))
                if objs[i]["shape"] != objs[j]["shape"])
    two = dataclasses.replace(s, structured={"objects": [i, j]})
    same_colour = objs[i]["colour"] == objs[j]["colour"]
    assert (sample_concept(two) is not None) == same_colour
    assert sample_concept(two, ("shape",)) is None
    # samples without objects or structured targets have no concept
    assert sample_concept(TASK.sample(0)) is None
    assert sample_concept(dataclasses.replace(s, structured={})) is None
    model, processor = tiny("llava")
    target = LLLConfig(concept=("shape",), scope="target")
    batch = GroundingCollator(processor, get_adapter(model), lll=target)([two, samples(1)[0], rec])
    assert batch["lookhere_has_concept"].tolist() == [False, False, True]
    assert not batch["lookhere_lll_concepts_mask"][:2].any()
    assert batch["lookhere_lll_region"].shape[1] == 1
    assert (batch["lookhere_lll_region"][:2] == 0).all()
    summed = GroundingCollator(processor, get_adapter(model),
                               lll=LLLConfig(token_rule="sum", scope="target"))([rec])
    ids = summed["lookhere_lll_concepts"][0, 0][summed["lookhere_lll_concepts_mask"][0, 0]].tolist()
    assert ids == concept_ids(processor.tokenizer, objs[0]["shape"], "sum")
    assert len(ids) > 1


def test_concept_token_ids_rules():
    _, processor = tiny("smolvlm")  # its BPE splits "hexagon" into two tokens
    tok = processor.tokenizer
    (first,) = concept_ids(tok, "hexagon")
    assert tok.decode([first]) == tok.convert_ids_to_tokens(first) == "hexag"  # not the space
    forms = {tok(f, add_special_tokens=False)["input_ids"][0] for f in ("Circle", "circle")}
    forms.add(tok.convert_tokens_to_ids("circle"))  # mid-sentence, after the space token
    assert set(concept_ids(tok, "circle", "sum")) == forms
    with pytest.raises(ValueError, match="rule"):
        concept_ids(tok, "hexagon", "last")
    with pytest.raises(ValueError, match="concept"):
        concept_ids(tok, " ")


def test_collator_lll_off_leaves_batches_unchanged(family):
    model, processor = tiny(family)
    adapter = get_adapter(model)
    ss = shapes_samples(3)
    plain = GroundingCollator(processor, adapter)(ss)
    with_lll = GroundingCollator(processor, adapter, lll=LLLConfig())(ss)
    assert not any("lll" in k or "concept" in k for k in plain)
    extra = {"lookhere_lll_region", "lookhere_lll_valid", "lookhere_lll_concepts",
             "lookhere_lll_concepts_mask", "lookhere_has_concept"}
    assert set(with_lll) == set(plain) | extra
    for k in plain:
        assert torch.equal(plain[k], with_lll[k]), k
