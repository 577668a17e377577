"""The logit lens against a manual unembedding of ``output_hidden_states``, for every family."""

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import noise_image, tiny
from PIL import Image

from lookhere.capture import capture_hidden
from lookhere.data.concepts import concept_ids
from lookhere.lens import (
    LensMap,
    LensMapSet,
    LensResult,
    TokenNorms,
    lens_file,
    lens_log_probs,
    lens_maps,
    token_norms,
)
from lookhere.maps import segment
from lookhere.models import get_adapter
from lookhere.models.adapter import resolve_layers
from lookhere.viz import plot_lens_maps, plot_lens_overlays

pytestmark = pytest.mark.usefixtures("one_thread")

CONCEPTS = ["circle", "red square"]
TOL = 1e-5


def images():
    """Three sizes, so Qwen's grids and LLaVA-NeXT's crops differ and batches are padded."""
    return [noise_image(97, 61, 0), noise_image(45, 83, 1), noise_image(70, 70, 2)]


def manual(model, processor, adapter, image, prompt):
    """(hidden_states, logits, layout) of one image alone, through HF's own outputs."""
    batch = adapter.process(processor, [prompt], [[image]])
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
    assert len(out.hidden_states) == adapter.num_layers + 1
    return out, adapter.layout(batch, [[image]], processor)


def manual_lens(model, adapter, hidden, ids):
    """softmax(lm_head(final_norm(h))) summed over each concept's ids: (C, K)."""
    with torch.no_grad():
        z = adapter.lm_head(model)(adapter.final_norm(model)(hidden)).float()
    return concept_probs(z, ids)


def concept_probs(logits, ids):
    p = torch.softmax(logits.float(), dim=-1)  # (K, V)
    return torch.stack([p[:, list(i)].sum(-1) for i in ids])  # (C, K)


# -- the lens ----------------------------------------------------------------------------------
@pytest.mark.parametrize("rule", ["first", "sum"])
def test_lens_matches_manual_unembedding(family, rule):
    model, processor = tiny(family)
    adapter = get_adapter(model)
    last = adapter.num_layers - 1
    ims = images()
    result = lens_maps(model, processor, adapter, ims, CONCEPTS, layers=[0, -1], rule=rule,
                       batch_size=3)
    assert result.layers == (0, last) and result.concepts == tuple(CONCEPTS)
    ids = result.concept_ids
    assert ids == tuple(tuple(concept_ids(processor.tokenizer, c, rule)) for c in CONCEPTS)
    for i, image in enumerate(ims):
        out, layout = manual(model, processor, adapter, image, result.prompt)
        vis = layout[0].visual_positions
        # Layer 0: hidden_states[1] is the first decoder layer's output, before the final norm.
        p0 = manual_lens(model, adapter, out.hidden_states[1][0, vis], ids)  # (C, K)
        # Last layer: HF's hidden_states[-1] is already normed; the model's own logits are the
        # lens there (final norm, then LM head).
        p_last = concept_probs(out.logits[0, vis], ids)
        grids = layout[0].images[0].grids
        assert len(result.maps[i]) == len(grids)
        for g, grid in enumerate(grids):
            got = result.maps[i][g]  # (L, C, rows, cols)
            assert got.shape == (2, len(CONCEPTS), *grid.shape) and got.dtype == torch.float32
            assert (got[0] - grid.to_grid(p0)).abs().max() <= TOL
            assert (got[1] - grid.to_grid(p_last)).abs().max() <= TOL
            assert result.geometries[i][g] == grid.geometry
        assert torch.equal(result.map(i, -1, "red square"), result.maps[i][0][1, 1])


def test_batched_equals_one_by_one(family):
    model, processor = tiny(family)
    adapter = get_adapter(model)
    ims = images()
    together = lens_maps(model, processor, adapter, ims, CONCEPTS, "all", batch_size=2)
    alone = lens_maps(model, processor, adapter, ims, CONCEPTS, "all", batch_size=1)
    for a, b in zip(together.maps, alone.maps, strict=True):
        for ga, gb in zip(a, b, strict=True):
            assert (ga - gb).abs().max() <= TOL


def test_several_concepts_equal_one_by_one(family):
    model, processor = tiny(family)
    adapter = get_adapter(model)
    ims = images()[:2]
    concepts = ["circle", "red square", "blue"]
    joint = lens_maps(model, processor, adapter, ims, concepts, [-1], rule="sum")
    for c, concept in enumerate(concepts):
        single = lens_maps(model, processor, adapter, ims, [concept], [-1], rule="sum")
        for i in range(len(ims)):
            for g, m in enumerate(single.maps[i]):
                assert (joint.maps[i][g][:, c] - m[:, 0]).abs().max() <= 1e-6


def test_layers_keep_their_order():
    model, processor = tiny("llava")
    adapter = get_adapter(model)
    ims = images()[:1]
    both = lens_maps(model, processor, adapter, ims, ["circle"], [1, 0, -1])
    assert both.layers == (1, 0)
    for layer in (0, 1):
        one = lens_maps(model, processor, adapter, ims, ["circle"], [layer])
        assert torch.equal(both.map(0, layer), one.map(0, layer))


def test_probabilities_sum_over_distinct_ids():
    """"sum" is the summed probability of the "first" ids of each surface form: the lens of
    the sum rule equals the sum of single-id lens maps."""
    model, processor = tiny("llava")
    adapter = get_adapter(model)
    ims = images()[:1]
    ids = concept_ids(processor.tokenizer, "circle", "sum")
    result = lens_maps(model, processor, adapter, ims, ["circle"], [0], rule="sum")
    with capture_hidden(model, adapter, [0]) as cap, torch.no_grad():
        model(**adapter.process(processor, [result.prompt], [ims]))
    logp = lens_log_probs(model, adapter, cap.hidden[0][0], [[i] for i in ids])  # (K, T)
    total = logp.exp().sum(-1)  # (K,)
    grid = adapter.layout(adapter.process(processor, [result.prompt], [ims]), [ims],
                          processor)[0].images[0].grids[0]
    assert (result.map(0, 0) - grid.to_grid(total)).abs().max() <= TOL
    assert float(result.map(0, 0).max()) <= 1


# -- token norms -------------------------------------------------------------------------------
def test_token_norms_match_manual(family):
    model, processor = tiny(family)
    adapter = get_adapter(model)
    ims = images()
    norms = token_norms(model, processor, adapter, ims, "all", batch_size=2)
    assert isinstance(norms, TokenNorms) and norms.layers == tuple(range(adapter.num_layers))
    lm_config = adapter.language_model(model).config
    for i, image in enumerate(ims):
        tied, layout = manual(model, processor, adapter, image, norms.prompt)
        # HF overwrites hidden_states[-1] with the normed state; untie it for the raw output.
        lm_config.tie_last_hidden_states = False
        try:
            raw, _ = manual(model, processor, adapter, image, norms.prompt)
        finally:
            del lm_config.tie_last_hidden_states
        with torch.no_grad():  # the untied state is the final norm's input
            normed = adapter.final_norm(model)(raw.hidden_states[-1])
        assert (normed - tied.hidden_states[-1]).abs().max() <= TOL
        vis = layout[0].visual_positions
        for g, grid in enumerate(layout[0].images[0].grids):
            for li in range(adapter.num_layers):
                want = grid.to_grid(raw.hidden_states[li + 1][0, vis].norm(dim=-1))
                assert (norms.maps[i][g][li] - want).abs().max() <= 1e-4 * want.max()


# -- capture_hidden and lens_log_probs -----------------------------------------------------------
def test_capture_all_positions_and_hooks_removed(family):
    model, processor = tiny(family)
    adapter = get_adapter(model)
    ims = images()[:1]
    batch = adapter.process(processor, [_prompt(adapter, processor)], [ims])
    block = adapter.decoder_layers(model)[0]
    before = (len(block._forward_hooks), len(model._forward_pre_hooks))
    with torch.no_grad(), capture_hidden(model, adapter, [0], positions="all") as cap:
        out = model(**batch, output_hidden_states=True)
    assert (len(block._forward_hooks), len(model._forward_pre_hooks)) == before
    assert list(cap.hidden) == [0]  # only the layer asked for is kept
    assert torch.equal(cap.hidden[0], out.hidden_states[1])
    with torch.no_grad(), capture_hidden(model, adapter, [-1]) as vis:
        model(**batch)
    pos = adapter.visual_positions(batch["input_ids"])[0]
    layer = adapter.num_layers - 1
    assert vis.hidden[layer].shape == (1, len(pos), out.hidden_states[1].shape[-1])
    assert torch.equal(vis.positions[0], pos) and bool(vis.mask.all())
    assert resolve_layers([np.int64(-1), 0], adapter.num_layers) == (layer, 0)
    lm = adapter.language_model(model)
    with torch.no_grad(), capture_hidden(model, adapter, [0]):
        with pytest.raises(ValueError, match="inner module"):
            lm(inputs_embeds=torch.zeros(1, 3, out.hidden_states[1].shape[-1]))


def test_lens_log_probs_chunks_and_manual():
    model, _ = tiny("llava")
    adapter = get_adapter(model)
    torch.manual_seed(0)
    h = torch.randn(2, 5, model.config.text_config.hidden_size)
    ids = [[3, 7], [11]]
    with torch.no_grad():
        whole = lens_log_probs(model, adapter, h, ids, chunk_size=256)
        chunked = lens_log_probs(model, adapter, h, ids, chunk_size=3)
        logits = adapter.lm_head(model)(adapter.final_norm(model)(h)).float()
    want = torch.stack([concept_probs(logits[b], ids).T for b in range(2)]).log()  # (2, 5, 2)
    assert whole.shape == (2, 5, 2) and whole.dtype == torch.float32
    assert (whole - want).abs().max() <= 1e-5 and (chunked - whole).abs().max() <= 1e-6
    with pytest.raises(ValueError, match="outside the LM head"):
        lens_log_probs(model, adapter, h, [[10**6]])
    with pytest.raises(ValueError, match="distinct"):
        lens_log_probs(model, adapter, h, [[3, 3]])


def test_lens_log_probs_gradient_matches_autograd():
    """Chunked (and checkpointed) lens log-probs give the gradient of the plain computation."""
    model, _ = tiny("llava")
    adapter = get_adapter(model)
    torch.manual_seed(0)
    h = torch.randn(7, model.config.text_config.hidden_size, requires_grad=True)
    ids = [[3, 7], [11]]
    lens_log_probs(model, adapter, h, ids, chunk_size=3).sum().backward()
    got, h.grad = h.grad, None
    logits = adapter.lm_head(model)(adapter.final_norm(model)(h)).float()
    concept_probs(logits, ids).log().sum().backward()
    assert (got - h.grad).abs().max() <= 1e-5
    model.zero_grad()


def test_bf16_model_gives_fp32_probabilities():
    model, processor = tiny("llava")
    model = copy.deepcopy(model).to(torch.bfloat16)
    adapter = get_adapter(model)
    ims = images()[:1]
    result = lens_maps(model, processor, adapter, ims, CONCEPTS, [-1])
    out, layout = manual(model, processor, adapter, ims[0], result.prompt)
    assert out.logits.dtype == torch.bfloat16
    grid = layout[0].images[0].grids[0]
    want = grid.to_grid(concept_probs(out.logits[0, layout[0].visual_positions],
                                      result.concept_ids))
    got = result.maps[0][0][0]
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    assert (got - want).abs().max() <= 1e-3 * want.max()


def test_gradient_flows_to_the_vision_side(family):
    """capture_hidden keeps the graph: a loss on the lens reaches the vision encoder/projector
    (what the Logit Lens Loss needs)."""
    model, processor = tiny(family)
    model = copy.deepcopy(model)
    adapter = get_adapter(model)
    batch = adapter.process(processor, [_prompt(adapter, processor)], [images()[:1]])
    with capture_hidden(model, adapter, [-1]) as cap:
        model(**batch)
        h = cap.hidden[adapter.num_layers - 1]  # (1, K, D)
        loss = -lens_log_probs(model, adapter, h, [[5]]).mean()
        loss.backward()
    visual = [p.grad for n, p in model.named_parameters()
              if any(k in n for k in ("vision", "visual", "projector", "connector"))]
    assert any(g is not None and g.abs().sum() > 0 for g in visual)


def test_capture_under_gradient_checkpointing():
    """Records survive backward under activation checkpointing (transformers checkpoints
    ``forward``, so the layer hooks run once; the hook also ignores calls made in backward, for
    wrappers that checkpoint ``__call__``)."""
    model, processor = tiny("llava")
    model = copy.deepcopy(model)
    model.activation_checkpointing_enable()
    model.train()
    adapter = get_adapter(model)
    batch = adapter.process(processor, [_prompt(adapter, processor)], [images()[:1]])
    with capture_hidden(model, adapter, [0]) as cap:
        model(**batch)
        h = cap.hidden[0]
        lens_log_probs(model, adapter, h, [[5]]).sum().backward()
    assert cap.hidden[0] is h
    assert model.lm_head.weight.grad is not None


# -- concept tokens ----------------------------------------------------------------------------
class _SentencePieceLike:
    """A hand-written SentencePiece-style tokenizer: dummy prefix "▁", spaces become "▁",
    greedy longest match. Enough to check the mid-sentence encoding by hand."""

    vocab = {"▁a": 1, "▁cat": 2, "cat": 3, "▁Cat": 4, "▁": 5, "c": 6, "a": 7, "t": 8, "C": 9}
    all_special_ids = [0]

    def encode(self, text, add_special_tokens=False):
        s, out = "▁" + text.replace(" ", "▁"), []
        while s:
            piece = max((p for p in self.vocab if s.startswith(p)), key=len)
            out.append(self.vocab[piece])
            s = s[len(piece):]
        return out

    def decode(self, ids):
        inv = {v: k for k, v in self.vocab.items()}
        return "".join(inv[i] for i in ids).replace("▁", " ")


def test_concept_ids_by_hand():
    sp = _SentencePieceLike()
    assert concept_ids(sp, "cat", "first") == [2]  # "▁a▁cat" minus "▁a" is "▁cat"
    assert concept_ids(sp, "  cat ", "first") == [2]
    # forms cat / Cat, each mid-sentence and line-initial (the dummy prefix makes them equal)
    assert concept_ids(sp, "cat", "sum") == [2, 4]
    _, processor = tiny("llava")
    tok = processor.tokenizer
    tid = tok.convert_tokens_to_ids
    # The tiny BPE splits " circle" into "Ġ" + "circle"; the space alone is skipped.
    assert tok.convert_ids_to_tokens(tok.encode(" circle", add_special_tokens=False)) == [
        "Ġ", "circle"]
    assert concept_ids(tok, "circle", "first") == [tid("circle")]
    assert concept_ids(tok, "Circle", "first") == [tid("ĠC")]
    assert concept_ids(tok, "circle", "sum") == [tid("circle"), tid("ĠC"), tid("C")]
    assert concept_ids(tok, "red square", "first") == [tid("red")]


def test_concept_ids_every_family(family):
    _, processor = tiny(family)
    tok = processor.tokenizer
    for concept in ("circle", "Red square", "zebra"):
        first = concept_ids(tok, concept, "first")
        total = concept_ids(tok, concept, "sum")
        assert len(first) == 1 and first[0] in total and len(set(total)) == len(total)
        piece = tok.decode(first).strip()
        assert piece and concept.lower().startswith(piece.lower())


@pytest.mark.parametrize("concept", ["", "   ", None, 3])
def test_concept_ids_rejects_empty(concept):
    _, processor = tiny("llava")
    with pytest.raises(ValueError, match="concept"):
        concept_ids(processor.tokenizer, concept)


def test_concept_ids_rejects_unencodable():
    _, processor = tiny("llava")
    with pytest.raises(ValueError, match="special"):
        concept_ids(processor.tokenizer, processor.tokenizer.pad_token)
    with pytest.raises(ValueError, match="rule"):
        concept_ids(processor.tokenizer, "circle", "mean")

    class Blank(_SentencePieceLike):
        def decode(self, ids):
            return " "

    with pytest.raises(ValueError, match="cannot encode"):
        concept_ids(Blank(), "cat")


# -- bad input -----------------------------------------------------------------------------------
@pytest.mark.parametrize("layers", [[2], [-3], [], "last", [0.5], [True]])
def test_unknown_layer(layers):
    model, processor = tiny("llava")
    with pytest.raises(ValueError, match="layer"):
        lens_maps(model, processor, get_adapter(model), images()[:1], ["circle"], layers)
    with pytest.raises(ValueError, match="layer"):
        resolve_layers(layers, 2)


@pytest.mark.parametrize("concepts", [[], "circle", [""], ["circle", "  "]])
def test_bad_concepts(concepts):
    model, processor = tiny("llava")
    with pytest.raises(ValueError, match="concept"):
        lens_maps(model, processor, get_adapter(model), images()[:1], concepts, [0])


@pytest.mark.parametrize("ims", [[], noise_image(20, 20, 0), [np.zeros((8, 8, 3))],
                                 [[noise_image(20, 20, 0)]], None])
def test_bad_images(ims):
    model, processor = tiny("llava")
    with pytest.raises(ValueError, match="images"):
        lens_maps(model, processor, get_adapter(model), ims, ["circle"], [0])


def test_bad_options():
    model, processor = tiny("llava")
    adapter = get_adapter(model)
    with pytest.raises(ValueError, match="batch_size"):
        lens_maps(model, processor, adapter, images()[:1], ["circle"], [0], batch_size=0)
    with pytest.raises(ValueError, match="rule"):
        lens_maps(model, processor, adapter, images()[:1], ["circle"], [0], rule="mean")
    with pytest.raises(ValueError, match="positions"):
        capture_hidden(model, adapter, [0], positions="text")
    result = lens_maps(model, processor, adapter, images()[:1], ["circle"], [0])
    with pytest.raises(ValueError, match="layer"):
        result.map(0, 1)
    with pytest.raises(ValueError, match="concept"):
        result.map(0, 0, "square")


def test_state_restored():
    model, processor = tiny("qwen2_vl")
    model.train()
    processor.tokenizer.padding_side = "left"
    try:
        lens_maps(model, processor, get_adapter(model), images()[:2], ["circle"], [0])
        assert model.training and processor.tokenizer.padding_side == "left"
    finally:
        model.eval()


# -- figures -------------------------------------------------------------------------------------
def test_plot_lens_maps(tmp_path):
    model, processor = tiny("llava_next")
    adapter = get_adapter(model)
    ims = images()[:2]
    result = lens_maps(model, processor, adapter, ims, CONCEPTS, "all")
    assert isinstance(result, LensResult)
    path = plot_lens_maps(result, ims, tmp_path / "lens.png", layers=[-1], grid=1,
                          scale="shared")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 200
    norms = token_norms(model, processor, adapter, ims, [0])
    plot_lens_maps(norms, ims, tmp_path / "norms.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lens.png", "norms.png"]  # no temps
    with pytest.raises(ValueError, match="suffix"):
        plot_lens_maps(result, ims, tmp_path / "lens.txt")
    with pytest.raises(ValueError, match="concepts"):
        plot_lens_maps(result, ims, tmp_path / "x.png", concepts=["star"])
    with pytest.raises(ValueError, match="images"):
        plot_lens_maps(result, ims[:1], tmp_path / "x.png")
    with pytest.raises(ValueError, match="grid"):
        plot_lens_maps(result, ims, tmp_path / "x.png", grid=5)


# -- records of maps, for `lookhere lens` --------------------------------------------------------
def test_records_pick_and_segment(family):
    """`LensResult.records` holds each image's chosen words at every layer of the first grid,
    the values of `map`; `pick` is one image's result; `segment` is `maps.segment` of `map`."""
    model, processor = tiny(family)
    ims = images()[:2]
    result = lens_maps(model, processor, get_adapter(model), ims, ["circle", "red"], [0, -1])
    last = result.layers[1]
    recs = result.records(["a", "b"], [["red"], ["circle", "red"]])
    assert [(r.image, r.word, r.layer) for r in recs] == [
        ("a", "red", 0), ("a", "red", last), ("b", "circle", 0), ("b", "circle", last),
        ("b", "red", 0), ("b", "red", last)]
    for r in recs:
        i = "ab".index(r.image)
        want = result.maps[i][0][result.layers.index(r.layer), result.concepts.index(r.word)]
        assert r.grid == list(want.shape) and torch.equal(torch.tensor(r.probs), want)
    assert len(result.records(["a", "b"])) == 2 * 2 * 2  # default: every concept
    alone = result.pick(1)
    assert len(alone.maps) == 1 and alone.geometries[0] == result.geometries[1]
    assert torch.equal(alone.map(0, -1, "red"), result.map(1, -1, "red"))
    seg = result.segment(1, 0, "circle", threshold=0.5)
    want = segment(result.map(1, 0, "circle").numpy(), result.geometries[1][0], 0.5)
    assert np.array_equal(seg.pixel_mask, want.pixel_mask)
    assert seg.pixel_mask.shape == ims[1].size[::-1]
    with pytest.raises(ValueError, match="one entry per image"):
        result.records(["a"])
    with pytest.raises(ValueError, match="out of range"):
        result.pick(2)


def test_lens_map_set_round_trip(tmp_path):
    maps = [LensMap("img/1", "red square", 3, [2, 3], [[0.1, 0.2, 0.3], [0.0, 1.0, 1e-9]])]
    saved = LensMapSet("m", "sum", "USER: <image>", [3], {"red square": [7, 9]}, maps)
    path = saved.save(tmp_path / "maps.json")
    assert LensMapSet.load(path) == saved
    assert LensMapSet.from_json(json.loads(json.dumps(saved.to_json()))) == saved
    assert [p.name for p in tmp_path.iterdir()] == ["maps.json"]  # written atomically
    with pytest.raises(ValueError, match="2 rows of 3"):
        LensMap("img", "red", 0, [2, 3], [[0.1, 0.2, 0.3]])
    assert lens_file("img/1", "red square", 3) == Path("img_1/red_square_L3.png")
    assert lens_file("..", "a", 0, ".json") == Path("_../a_L0.json")


def test_plot_lens_overlays(tmp_path):
    model, processor = tiny("llava")
    ims = images()[:2]
    result = lens_maps(model, processor, get_adapter(model), ims, ["circle", "red"], [0, 1])
    paths = plot_lens_overlays(result, ims, tmp_path, ["x", "y"], [["red"], []])
    assert paths == [tmp_path / "x" / "red_L0.png", tmp_path / "x" / "red_L1.png"]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["red_L0.png", "red_L1.png", "x"]
    with Image.open(paths[0]) as im:
        assert im.format == "PNG"
    with pytest.raises(ValueError, match="one entry per image"):
        plot_lens_overlays(result, ims, tmp_path, ["x"])


def _prompt(adapter, processor):
    from lookhere.models.prompt import chat_turn

    return chat_turn(adapter, processor, "Describe the image.").prompt
