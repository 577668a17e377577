"""The probe against eager ``output_attentions`` on the same weights, for every family."""

import copy

import pytest
import torch
from conftest import make_batch, tiny

from lookhere.models import get_adapter
from lookhere.probe import (
    _ACTIVE,
    QUERY_ROLES,
    AttentionProbe,
    Positions,
    ProbeError,
    attention_rows,
    query_positions,
    visual_positions,
)


def slice_rows(attentions, probe):
    """The probe's rows sliced out of full eager attention maps: {layer: (B, H, Q, K)}."""
    rows = {}
    mask = probe.query_mask[:, None, :, None] & probe.key_mask[:, None, None, :]
    for layer in probe.rows:
        a = attentions[layer]  # (B, H, L, L)
        per = [a[b][:, probe.query_positions[b]][:, :, probe.key_positions[b]]
               for b in range(a.shape[0])]
        rows[layer] = torch.stack(per) * mask
    return rows


def eager_copy(model):
    ref = copy.deepcopy(model)
    ref.set_attn_implementation("eager")
    return ref


@pytest.mark.parametrize("queries", ["last_text", "all_answer"])
def test_rows_match_eager(family, queries):
    model, processor = tiny(family)
    batch, _ = make_batch(family, processor)
    assert (batch["attention_mask"][:, 0] == 0).any(), "the batch must be left padded"
    with torch.no_grad(), AttentionProbe(model, queries=queries) as probe:
        model(**batch)
    with torch.no_grad():
        ref = slice_rows(eager_copy(model)(**batch, output_attentions=True).attentions, probe)
    assert len(probe.rows) >= 2
    for layer, rows in probe.rows.items():
        b, h = rows.shape[:2]
        assert h == get_adapter(model).num_heads and b == 2
        assert (rows - ref[layer]).abs().max() <= 1e-5, f"layer {layer}"
        assert rows.sum(-1).max() <= 1 + 1e-5  # visual share of a probability row


def test_log_probs_match_eager(family):
    """log_probs rows are the log of eager's rows: -inf at padding and at keys the mask hides
    (Gemma3's sliding window), finite elsewhere."""
    model, processor = tiny(family)
    batch, _ = make_batch(family, processor)
    with torch.no_grad(), AttentionProbe(model, queries="all_answer", log_probs=True) as probe:
        model(**batch)
    with torch.no_grad():
        ref = slice_rows(eager_copy(model)(**batch, output_attentions=True).attentions, probe)
    valid = probe.query_mask[:, None, :, None] & probe.key_mask[:, None, None, :]
    for layer, rows in probe.rows.items():
        v = valid.expand_as(rows)
        assert torch.isneginf(rows[~v]).all()
        assert torch.isfinite(rows[v & (ref[layer] > 0)]).all()
        assert (rows[v].exp() - ref[layer][v]).abs().max() <= 1e-5, f"layer {layer}"


def test_log_probs_match_eager_on_training_batches(family):
    """The trainer's batches (GroundingCollator: right padded), where transformers may pass no
    mask at all (only the causal rule): log rows equal eager's too."""
    from trainkit import ragged_samples

    from lookhere.collate import GroundingCollator, split_aux

    model, processor = tiny(family)
    inputs, _ = split_aux(GroundingCollator(processor, get_adapter(model))(ragged_samples()))
    with torch.no_grad(), AttentionProbe(model, queries="all_answer", log_probs=True) as probe:
        model(**inputs)
    with torch.no_grad():
        ref = slice_rows(eager_copy(model)(**inputs, output_attentions=True).attentions, probe)
    valid = probe.query_mask[:, None, :, None] & probe.key_mask[:, None, None, :]
    for layer, rows in probe.rows.items():
        v = valid.expand_as(rows)
        assert torch.isneginf(rows[~v]).all()
        assert (rows[v].exp() - ref[layer][v]).abs().max() <= 1e-5, f"layer {layer}"


def test_gradients_match_eager(family):
    model, processor = tiny(family)
    batch, _ = make_batch(family, processor)
    weights = {}

    def loss_of(rows):
        total = 0.0
        for layer, r in sorted(rows.items()):
            g = torch.Generator().manual_seed(layer)
            weights.setdefault(layer, torch.rand(r.shape, generator=g))
            total = total + (r * weights[layer]).sum()
        return total

    m1 = copy.deepcopy(model)
    with AttentionProbe(m1, queries="all_answer") as probe:
        m1(**batch)
        loss_of(probe.rows).backward()
    m2 = eager_copy(model)
    rows = slice_rows(m2(**batch, output_attentions=True).attentions, probe)
    loss_of(rows).backward()
    g1 = {n: p.grad for n, p in m1.named_parameters() if p.grad is not None}
    g2 = {n: p.grad for n, p in m2.named_parameters() if p.grad is not None}
    assert g1.keys() == g2.keys() and g1
    scale = max(g.abs().max() for g in g2.values())
    for name in g2:
        # Relative per parameter; gradients that are exactly zero in theory (e.g. a key bias under
        # softmax) are pure rounding noise, so they are held to the global scale instead.
        ref = max(g2[name].abs().max(), 1e-3 * scale)
        rel = (g1[name] - g2[name]).abs().max() / ref
        assert rel <= 1e-4, f"{name}: relative gradient difference {rel:.2e}"


def test_outputs_identical_and_no_trace(family):
    model, processor = tiny(family)
    batch, _ = make_batch(family, processor)
    configs = {id(m.config): m.config for m in get_adapter(model).attention_modules(model)}
    before = {k: c._attn_implementation for k, c in configs.items()}
    with torch.no_grad():
        plain = model(**batch).logits
        with AttentionProbe(model, layers=[0, -1]) as probe:
            probed = model(**batch).logits
        after = model(**batch).logits
    assert torch.equal(plain, probed) and torch.equal(plain, after)
    assert sorted(probe.rows) == [0, get_adapter(model).num_layers - 1]
    assert {k: c._attn_implementation for k, c in configs.items()} == before
    assert not model._forward_hooks and not model._forward_pre_hooks
    assert not any(m in _ACTIVE for m in get_adapter(model).attention_modules(model))


def test_gradient_checkpointing(family):
    model, processor = tiny(family)
    batch, _ = make_batch(family, processor)
    grads, n = [], get_adapter(model).num_layers
    for ckpt in (False, True):
        m = copy.deepcopy(model).train()
        if ckpt:
            m.activation_checkpointing_enable()
        with AttentionProbe(m, queries="last_answer") as probe:
            # checkpointing turns the KV cache off; do the same without it, so both runs feed
            # identically laid-out keys to the same fp32 arithmetic
            m(**batch, use_cache=False)
            sum(r.sum() for r in probe.rows.values()).backward()
        # the layers ran again in backward (so checkpointing was on) without replacing the rows
        assert probe._calls == (2 * n if ckpt else n)
        assert all(r.grad_fn is not None for r in probe.rows.values())
        grads.append({n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-7)


def test_refuses_reentrant_checkpointing(family):
    model, processor = tiny(family)
    batch, _ = make_batch(family, processor)
    m = copy.deepcopy(model).train()
    m.activation_checkpointing_enable({"use_reentrant": True})
    with pytest.raises(ProbeError, match="reentrant"), AttentionProbe(m):
        m(**batch)


def test_refuses_unprobeable(family):
    model, _ = tiny(family)
    cfg = get_adapter(model).attention_modules(model)[0].config
    saved = cfg._attn_implementation
    cfg._attn_implementation = "flash_attention_2"
    try:
        with pytest.raises(ProbeError, match="sdpa"), AttentionProbe(model):
            pass
    finally:
        cfg._attn_implementation = saved
    with pytest.raises(ValueError, match="layers"):
        AttentionProbe(model, layers=[99])
    with pytest.raises(ValueError, match="queries"):
        AttentionProbe(model, queries="middle")


def test_attention_rows_reference():
    """GQA, causal (mask None), sliding window and bool masks against a plain softmax."""
    torch.manual_seed(0)
    b, h, h_kv, n, d = 2, 4, 2, 7, 8
    q, k = torch.randn(b, h, n, d), torch.randn(b, h_kv, n, d)
    kk = k.repeat_interleave(h // h_kv, dim=1)
    qpos, kpos = torch.tensor([[6, 3], [5, 0]]), torch.tensor([[0, 2, 4], [1, 3, 5]])
    i, j = torch.arange(n)[:, None], torch.arange(n)[None]
    for window in (None, 3):
        allowed = (j <= i) & ((i - j < window) if window else True)
        full = (q @ kk.transpose(-1, -2) * d**-0.5).masked_fill(~allowed, float("-inf"))
        full = full.softmax(-1)
        expect = torch.stack([full[bi][:, qpos[bi]][:, :, kpos[bi]] for bi in range(b)])
        got = attention_rows(q, k, None, qpos, kpos, sliding_window=window)
        torch.testing.assert_close(got, expect)
        got = attention_rows(q, k, None, qpos, kpos, sliding_window=window, log=True)
        torch.testing.assert_close(got, expect.log())
        got = attention_rows(q, k, allowed.expand(b, 1, n, n), qpos, kpos)
        if window is None:
            torch.testing.assert_close(got, expect)
    # a query row with no allowed key gives zeros, not NaN
    none = torch.zeros(b, 1, n, n, dtype=torch.bool)
    assert torch.equal(attention_rows(q, k, none, qpos, kpos), torch.zeros(b, h, 2, 3))
    with pytest.raises(ProbeError, match="outside"):
        attention_rows(q, k, None, torch.tensor([[n]]).expand(b, 1), kpos)


def test_additive_mask_and_softcap_reference():
    """Eager's additive masks hide a key with the dtype's minimum: probability 0 as in eager,
    and log-probability -inf (not a finite -3.4e38); soft-capping caps the scores first."""
    torch.manual_seed(0)
    b, h, n, d = 1, 2, 5, 4
    q, k = torch.randn(b, h, n, d) * 3, torch.randn(b, h, n, d) * 3
    allowed = torch.ones(n, n, dtype=torch.bool).tril()
    additive = torch.zeros(b, 1, n, n).masked_fill(~allowed, torch.finfo(torch.float32).min)
    qpos, kpos = torch.tensor([[1, 4]]), torch.arange(n)[None]
    for cap in (None, 2.0):
        scores = q @ k.transpose(-1, -2) * d**-0.5
        scores = scores if cap is None else torch.tanh(scores / cap) * cap
        expect = scores.masked_fill(~allowed, float("-inf")).log_softmax(-1)[:, :, [1, 4]]
        got = attention_rows(q, k, additive, qpos, kpos, softcap=cap, log=True)
        torch.testing.assert_close(got, expect)
        assert torch.isneginf(got[:, :, 0, 2:]).all()
        torch.testing.assert_close(attention_rows(q, k, additive, qpos, kpos, softcap=cap),
                                   expect.exp())


def test_query_roles():
    ids = torch.tensor([[0, 0, 5, 6, 7, 8, 2], [5, 6, 7, 8, 9, 2, 0]])
    attn = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 0]])
    labels = torch.full_like(ids, -100)
    labels[0, 4:] = ids[0, 4:]  # answer "7 8 <eos=2>"
    labels[1, 3:6] = ids[1, 3:6]  # answer "8 9 <eos>"
    pos, mask = query_positions("last_text", ids, attn)
    assert pos.tolist() == [[6], [5]] and mask.all()
    pos, _ = query_positions("last_answer", ids, attn, labels, {2})
    assert pos.tolist() == [[5], [4]]
    pos, _ = query_positions("answer_start", ids, attn, labels, {2})
    assert pos.tolist() == [[3], [2]]
    pos, mask = query_positions("all_answer", ids, attn, labels, {2})
    assert pos.tolist() == [[4, 5], [3, 4]] and mask.all()
    labels[1] = -100  # no answer in sample 1: a masked query, not a wrong one
    pos, mask = query_positions("last_answer", ids, attn, labels, {2})
    assert mask.tolist() == [[True], [False]]
    with pytest.raises(ProbeError, match="labels"):
        query_positions("last_answer", ids, attn)


def test_bf16_rows_and_outputs(family):
    model, processor = tiny(family)
    batch, _ = make_batch(family, processor)
    half = copy.deepcopy(model).to(torch.bfloat16)
    batch16 = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in batch.items()}
    with torch.no_grad():
        plain = half(**batch16).logits
        with AttentionProbe(half) as p16:
            probed = half(**batch16).logits
        with AttentionProbe(model) as p32:
            model(**batch)
    assert torch.equal(plain, probed)
    for layer, rows in p16.rows.items():
        assert rows.dtype == torch.float32 and torch.isfinite(rows).all()
        assert (rows - p32.rows[layer]).abs().max() < 0.05


def test_under_ddp_wrapper(tmp_path):
    """The probe sees through DistributedDataParallel (one gloo process) and keeps gradients."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    model, processor = tiny("llava")
    batch, _ = make_batch("llava", processor)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        m = copy.deepcopy(model)
        ddp = DistributedDataParallel(m, find_unused_parameters=True)
        with AttentionProbe(ddp, queries="last_answer") as probe:
            ddp(**batch)
            sum(r.sum() for r in probe.rows.values()).backward()
        assert probe.model is m and len(probe.rows) == get_adapter(m).num_layers
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())
    finally:
        dist.destroy_process_group()


def test_fp32_scores_saves_low_precision_inputs():
    from lookhere.probe import _Fp32Scores

    torch.manual_seed(0)
    q = torch.randn(2, 3, 4, 8, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(2, 3, 9, 8, dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(2, 3, 4, 9)
    out = _Fp32Scores.apply(q, k)
    assert out.dtype == torch.float32
    assert out.grad_fn.saved_tensors[1].dtype == torch.bfloat16  # no fp32 key copy kept
    (out * w).sum().backward()
    q2, k2 = q.detach().float().requires_grad_(), k.detach().float().requires_grad_()
    ref = q2 @ k2.transpose(-1, -2)
    torch.testing.assert_close(out, ref.detach())
    (ref * w).sum().backward()
    torch.testing.assert_close(q.grad, q2.grad.bfloat16())
    torch.testing.assert_close(k.grad, k2.grad.bfloat16())


def reference_queries(role, ids, attn, labels, ends):
    """Per-sample lists of query positions, by plain Python loops."""
    out = []
    for row, real, lab in zip(ids.tolist(), attn.tolist(), labels.tolist(), strict=True):
        answer = [i for i, (r, x) in enumerate(zip(real, lab, strict=True)) if r and x != -100]
        content = [i for i in answer if row[i] not in ends]
        if role == "last_text":
            out.append([max(i for i, r in enumerate(real) if r)] if any(real) else [])
        elif role == "last_answer":
            out.append(content[-1:])
        elif role == "answer_start":
            out.append([answer[0] - 1] if answer and answer[0] > 0 else [])
        else:
            out.append(content)
    return out


@pytest.mark.parametrize("role", QUERY_ROLES)
def test_query_positions_match_per_sample_loops(role):
    """The batched roles against loops over samples: random padding (left and right), answers
    anywhere (at position 0 too), end tokens inside them, samples without an answer."""
    g = torch.Generator().manual_seed(QUERY_ROLES.index(role))
    for _ in range(20):
        b, n = 5, 9
        ids = torch.randint(0, 6, (b, n), generator=g)
        attn = torch.ones(b, n, dtype=torch.long)
        labels = torch.full((b, n), -100)
        for i in range(b):
            lo, hi = sorted(torch.randint(0, n + 1, (2,), generator=g).tolist())
            labels[i, lo:hi] = ids[i, lo:hi]
            pad = int(torch.randint(0, 3, (1,), generator=g))
            if i % 2:
                attn[i, :pad] = 0  # left padding
            elif pad:
                attn[i, n - pad:] = 0  # right padding
        pos, mask = query_positions(role, ids, attn, labels, {2, 3})
        expected = reference_queries(role, ids, attn, labels, {2, 3})
        assert pos.dtype == torch.long and mask.shape == pos.shape
        assert pos.shape[1] == max([1, *map(len, expected)])
        got = [p[m].tolist() for p, m in zip(pos, mask, strict=True)]
        assert got == expected
        assert (pos[~mask] == 0).all()


def test_visual_positions_match_the_adapter(family):
    """The batched visual positions equal the adapter's per-sample ones; a known width (the
    trainer's, from the target) gives the same without the host sync, wider pads with 0."""
    model, processor = tiny(family)
    batch, _ = make_batch(family, processor)
    adapter, ids = get_adapter(model), batch["input_ids"]
    rows = adapter.visual_positions(ids)
    pos, mask = visual_positions(adapter, ids)
    assert pos.shape[1] == max(len(r) for r in rows)
    assert [p[m].tolist() for p, m in zip(pos, mask, strict=True)] == [r.tolist() for r in rows]
    same = visual_positions(adapter, ids, pos.shape[1])
    assert torch.equal(same[0], pos) and torch.equal(same[1], mask)
    wide = visual_positions(adapter, ids, pos.shape[1] + 3)
    assert torch.equal(wide[0][:, :-3], pos) and not wide[1][:, -3:].any()
    assert (wide[0][:, -3:] == 0).all()


def test_positions_are_taken_as_given():
    """`Positions` (unchecked) record the same rows as per-sample lists (checked)."""
    model, processor = tiny("llava")
    batch, _ = make_batch("llava", processor)
    adapter, ids = get_adapter(model), batch["input_ids"]
    lists = [[ids.shape[1] - 1], [ids.shape[1] - 2, ids.shape[1] - 1]]
    index = torch.tensor([[ids.shape[1] - 1, 0], [ids.shape[1] - 2, ids.shape[1] - 1]])
    queries = Positions(index, torch.tensor([[True, False], [True, True]]))
    keys = Positions(*visual_positions(adapter, ids))
    with torch.no_grad():
        with AttentionProbe(model, queries=lists) as checked:
            model(**batch)
        with AttentionProbe(model, queries=queries, keys=keys) as given:
            model(**batch)
    for layer, rows in checked.rows.items():
        assert torch.equal(rows, given.rows[layer])
    with pytest.raises(ValueError, match="Positions.mask"):
        Positions(index, torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="Positions.index"):
        Positions(index.float(), queries.mask)
    with pytest.raises(ProbeError, match="outside"):  # lists and tensors are still checked
        with AttentionProbe(model, queries=[[ids.shape[1]], [0]]), torch.no_grad():
            model(**batch)
