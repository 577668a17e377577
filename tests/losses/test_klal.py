"""KL Attention Loss: hand cases, a float64 loop reference built on F.kl_div, properties,
input forms, head selection, numerics (underflow, dead heads/queries, bf16), gradients, errors."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from lookhere.losses.config import KLALConfig
from lookhere.losses.klal import klal_loss, klal_per_sample

NEG_INF = float("-inf")


# --------------------------------------------------------------------------- reference


def reference_per_sample(layers, target, key_mask=None, query_mask=None, sample_mask=None,
                         heads=None):
    """Brute-force float64 KLAL: explicit loops over samples, layers, queries and heads.

    layers: dict layer -> (B, H, Q, K). heads: dict layer -> head list (None = all heads of all
    layers). Returns (per_sample (B,) float64 with 0 where invalid, valid (B,) bool); keeps the
    autograd graph to the float64 view of the inputs.
    """
    b_n, h_n, q_n, k_n = next(iter(layers.values())).shape
    key_mask = torch.ones(b_n, k_n, dtype=torch.bool) if key_mask is None else key_mask
    query_mask = torch.ones(b_n, q_n, dtype=torch.bool) if query_mask is None else query_mask
    sample_mask = torch.ones(b_n, dtype=torch.bool) if sample_mask is None else sample_mask
    chosen = {layer: list(range(h_n)) for layer in layers} if heads is None else heads
    values, valid = [], []
    for b in range(b_n):
        keys = key_mask[b].nonzero()[:, 0]
        p = target[b, keys].double()
        layer_kls = []
        for layer, hs in chosen.items():
            query_kls = []
            for q in range(q_n):
                if not query_mask[b, q]:
                    continue
                alphas = []
                for h in hs:
                    row = layers[layer][b, h, q, keys].double()
                    if torch.isneginf(row).all():  # this head sees no valid key
                        continue
                    alphas.append(torch.softmax(row, 0))  # renormalised over valid keys
                if not alphas:
                    continue
                q_dist = torch.stack(alphas).mean(0)  # head average in probability space
                # over P's support: kl_div gives 0 * (-inf) = NaN where P = Q = 0 (a key no head
                # sees), a term that is 0 in KL(P || Q)
                on = p > 0
                query_kls.append(F.kl_div(q_dist[on].log(), p[on], reduction="sum"))
            if query_kls:
                layer_kls.append(torch.stack(query_kls).mean())
        ok = bool(sample_mask[b]) and bool(layer_kls)
        values.append(torch.stack(layer_kls).mean() if ok else torch.zeros((), dtype=torch.float64))
        valid.append(ok)
    return torch.stack(values), torch.tensor(valid)


def reference_loss(*args, **kwargs):
    per_sample, valid = reference_per_sample(*args, **kwargs)
    return per_sample[valid].mean() if valid.any() else torch.zeros((), dtype=torch.float64)


def random_case(seed, b=3, n_layers=3, h=4, q=3, k=7, pad=True, dead=True):
    """Random (L, B, H, Q, K) fp32 log-probs with key/query/sample padding and dead head rows."""
    g = torch.Generator().manual_seed(seed)
    log_attn = torch.randn(n_layers, b, h, q, k, generator=g) * 2 - 3
    key_mask = torch.rand(b, k, generator=g) > (0.3 if pad else -1.0)
    key_mask[:, 0] = True
    query_mask = torch.rand(b, q, generator=g) > (0.3 if pad else -1.0)
    query_mask[:, 0] = True
    sample_mask = torch.rand(b, generator=g) > (0.3 if pad else -1.0)
    sample_mask[0] = True
    if pad:  # large values on padded keys: they must not leak into the renormalisation
        log_attn = log_attn.masked_fill(~key_mask[None, :, None, None, :], 5.0)
    if dead:
        # whole rows at -inf, and rows finite only on padded keys: both see no valid key
        all_dead = torch.rand(n_layers, b, h, q, generator=g) < 0.15
        log_attn = log_attn.masked_fill(all_dead[..., None], NEG_INF)
        valid_dead = torch.rand(n_layers, b, h, q, generator=g) < 0.1
        log_attn = log_attn.masked_fill(valid_dead[..., None] & key_mask[None, :, None, None, :],
                                        NEG_INF)
    w = torch.rand(b, k, generator=g) * key_mask * (torch.rand(b, k, generator=g) > 0.3)
    w[:, 0] += 0.1  # key 0 is valid: every row has mass
    target = w / w.sum(1, keepdim=True)
    return log_attn, target, key_mask, query_mask, sample_mask


def as_dict(stacked):
    return dict(enumerate(stacked))


# --------------------------------------------------------------------------- 1. hand case


# head 0 gives [0.1, 0.2, 0.1] to the visual keys (the rest goes to text): alpha = [1/4, 1/2, 1/4]
# head 1 gives [0.3, 0.1, 0.2]:                                           alpha = [1/2, 1/6, 1/3]
# Q = mean = [3/8, 1/3, 7/24]
HAND_PROBS = [[0.1, 0.2, 0.1], [0.3, 0.1, 0.2]]
HAND_Q = [3 / 8, 1 / 3, 7 / 24]


@pytest.mark.parametrize("p, expected", [
    # 0.5 ln(0.5 / (3/8)) + 0.5 ln(0.5 / (1/3)) + 0 (0 log 0 = 0) = 0.5 ln(4/3 * 3/2) = 0.5 ln 2
    ([0.5, 0.5, 0.0], 0.5 * math.log(2.0)),
    ([0.5, 0.25, 0.25], 0.5 * math.log(0.5 / HAND_Q[0]) + 0.25 * math.log(0.25 / HAND_Q[1])
     + 0.25 * math.log(0.25 / HAND_Q[2])),
])
def test_hand_computed_kl(p, expected):
    log_attn = torch.tensor(HAND_PROBS).log().reshape(1, 2, 1, 3)  # (B=1, H=2, Q=1, K=3)
    loss = klal_loss({0: log_attn}, torch.tensor([p]))
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected, rel=1e-6, abs=1e-7)
    # a head average in log space (geometric mean) would give a different number
    geo = [math.exp(0.5 * (math.log(1 / 4) + math.log(1 / 2))), math.sqrt(1 / 2 * 1 / 6),
           math.sqrt(1 / 4 * 1 / 3)]
    geo = [g / sum(geo) for g in geo]
    wrong = sum(pk * math.log(pk / gk) for pk, gk in zip(p, geo, strict=True) if pk > 0)
    assert abs(loss.item() - wrong) > 1e-3


# --------------------------------------------------------------------------- 2. vs F.kl_div


@pytest.mark.parametrize("seed", range(6))
def test_matches_kl_div_reference(seed):
    log_attn, target, key_mask, query_mask, sample_mask = random_case(seed)
    masks = dict(key_mask=key_mask, query_mask=query_mask, sample_mask=sample_mask)
    loss = klal_loss(log_attn, target, **masks)
    expected = reference_loss(as_dict(log_attn), target, **masks)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- 3. properties


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), b=st.integers(1, 3), n_layers=st.integers(1, 3),
       h=st.integers(1, 4), q=st.integers(1, 3), k=st.integers(1, 8),
       scale=st.floats(0.0, 30.0))
def test_loss_is_nonnegative(seed, b, n_layers, h, q, k, scale):
    log_attn, target, key_mask, query_mask, sample_mask = random_case(seed, b, n_layers, h, q, k)
    # from flat rows to very peaked ones (-inf stays -inf: 0 * -inf would be NaN)
    log_attn = torch.where(torch.isinf(log_attn), log_attn, log_attn * scale)
    masks = dict(key_mask=key_mask, query_mask=query_mask, sample_mask=sample_mask)
    loss = klal_loss(log_attn, target, **masks)
    per_sample, valid = klal_per_sample(log_attn, target, **masks)
    assert torch.isfinite(loss) and torch.isfinite(per_sample).all()
    assert loss >= -1e-6  # fp32 rounding only, when Q happens to equal P
    assert (per_sample >= -1e-6).all()
    assert (per_sample[~valid] == 0).all()


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), b=st.integers(1, 3), n_layers=st.integers(1, 3),
       h=st.integers(1, 4), q=st.integers(1, 3), k=st.integers(1, 8),
       offset=st.floats(0.0, 20.0))
def test_loss_is_zero_when_every_head_equals_target(seed, b, n_layers, h, q, k, offset):
    _, target, key_mask, query_mask, _ = random_case(seed, b, n_layers, h, q, k)
    g = torch.Generator().manual_seed(seed + 1)
    # log P plus a constant per (layer, sample, head, query) row: renormalisation cancels it;
    # padded keys carry arbitrary values that key_mask must remove
    shift = (torch.rand(n_layers, b, h, q, 1, generator=g) * 2 - 1) * offset
    log_attn = target.log()[None, :, None, None, :] + shift
    log_attn = torch.where(key_mask[None, :, None, None, :], log_attn,
                           torch.randn(log_attn.shape, generator=g) * 10)
    loss = klal_loss(log_attn, target, key_mask=key_mask, query_mask=query_mask)
    assert abs(loss.item()) < 1e-6


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), h=st.integers(1, 4), k=st.integers(2, 8),
       scale=st.floats(0.1, 5.0))
def test_loss_is_positive_when_q_differs_from_p(seed, h, k, scale):
    g = torch.Generator().manual_seed(seed)
    log_attn = torch.randn(1, h, 1, k, generator=g) * scale
    target = torch.rand(1, k, generator=g) + 0.05
    target = target / target.sum()
    q_dist = torch.softmax(log_attn.double(), -1).mean(1)[0, 0]
    tv = 0.5 * (q_dist - target[0].double()).abs().sum().item()
    assume(tv > 0.01)
    loss = klal_loss([log_attn], target).item()
    assert loss > 0
    assert loss >= 2 * tv**2 - 1e-6  # Pinsker: KL(P || Q) >= 2 TV(P, Q)^2


# --------------------------------------------------------------------------- 4. input forms


def test_input_forms_agree():
    log_attn, target, key_mask, query_mask, sample_mask = random_case(10)
    masks = dict(key_mask=key_mask, query_mask=query_mask, sample_mask=sample_mask)
    stacked = klal_loss(log_attn, target, **masks)
    as_list = klal_loss(list(log_attn), target, **masks)
    as_tuple = klal_loss(tuple(log_attn), target, **masks)
    # layer ids need not be 0..L-1, nor given in order
    as_map = klal_loss({7: log_attn[2], 3: log_attn[0], 5: log_attn[1]}, target, **masks)
    assert stacked.item() == as_list.item() == as_tuple.item()
    torch.testing.assert_close(as_map, stacked)
    expected = reference_loss(as_dict(log_attn), target, **masks)
    torch.testing.assert_close(stacked.double(), expected, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- 5. heads


def test_heads_selection_equals_loss_on_those_heads():
    log_attn, target, key_mask, query_mask, sample_mask = random_case(20, n_layers=3, h=4,
                                                                      dead=False)
    masks = dict(key_mask=key_mask, query_mask=query_mask, sample_mask=sample_mask)
    layers = {2: log_attn[0], 5: log_attn[1], 9: log_attn[2]}
    heads = [(9, 3), (2, 1), (9, 0)]
    loss = klal_loss(layers, target, heads=heads, **masks)
    # the same as the per-layer losses of only those layers, cut to those heads (each layer
    # alone, since the layers given together must share H)
    kl2, ok2 = klal_per_sample([layers[2][:, [1]]], target, **masks)
    kl9, ok9 = klal_per_sample([layers[9][:, [0, 3]]], target, **masks)
    assert ok2.tolist() == ok9.tolist()
    torch.testing.assert_close(loss, ((kl2 + kl9) / 2)[ok2].mean())
    expected = reference_loss(layers, target, heads={2: [1], 9: [0, 3]}, **masks)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)
    # duplicates and order do not matter
    dup = klal_loss(layers, target, heads=[(9, 0), (2, 1), (9, 3), (9, 0), (2, 1)], **masks)
    assert dup.item() == loss.item()
    # naming every head of every layer is the default
    every = [(layer, h) for layer in layers for h in range(4)]
    torch.testing.assert_close(klal_loss(layers, target, heads=every, **masks),
                               klal_loss(layers, target, **masks))
    # and the selection changes the value (the test above could not pass by ignoring heads)
    assert abs(loss.item() - klal_loss(layers, target, **masks).item()) > 1e-4


@pytest.mark.parametrize("heads, match", [
    ([(3, 0)], "layer 3"),
    ([(0, 4)], "head 4"),
    ([(0, -1)], "head -1"),
    ([], "at least one"),
])
def test_heads_errors(heads, match):
    log_attn, target, *_ = random_case(0, n_layers=2, h=4, pad=False, dead=False)
    with pytest.raises(ValueError, match=match):
        klal_loss(log_attn, target, heads=heads)


# --------------------------------------------------------------------------- 6. numerics


def test_underflowing_keys_give_finite_loss_and_gradient():
    # keys at log-prob -200 (e^-200 underflows to 0 in fp32) in some or all heads
    # no key padding here: a padded key is -inf in every head, a separate case (see below)
    log_attn, target, _, _, _ = random_case(30, pad=False, dead=False)
    query_mask = torch.tensor([[True, False, True], [True, True, True], [False, True, False]])
    low = torch.zeros_like(log_attn, dtype=torch.bool)
    low[..., 1] = True  # key 1: -200 in every head
    low[:, :, ::2, :, 2] = True  # key 2: -200 in every other head
    log_attn = log_attn.masked_fill(low, -200.0)
    target = target.clone()
    target[:, 1] = 0.0  # no target mass on the key no head sees: the exact KL is finite
    target = target / target.sum(1, keepdim=True)
    leaf = log_attn.clone().requires_grad_(True)
    loss = klal_loss(leaf, target, query_mask=query_mask)
    loss.backward()
    expected = reference_loss(as_dict(log_attn), target, query_mask=query_mask)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)
    assert torch.isfinite(leaf.grad).all()

    # target mass on a key at -200 in every head: large but finite loss, finite gradient
    rows = torch.zeros(1, 2, 1, 3)
    rows[..., 2] = -200.0
    rows.requires_grad_(True)
    loss = klal_loss([rows], torch.tensor([[0.5, 0.0, 0.5]]))
    loss.backward()
    assert torch.isfinite(loss) and loss > 10
    assert torch.isfinite(rows.grad).all()


def test_underflowing_target_key_keeps_its_gradient():
    """The module docstring says a key whose probability underflows in fp32 "keeps a finite log
    and a gradient". With target mass on a key at log-prob -100 in every head, raising that key
    must lower the loss (d loss / d x = -p_k (1 - alpha_k) / H, about -0.25 here)."""
    rows = torch.zeros(1, 2, 1, 3)
    rows[..., 2] = -100.0
    target = torch.tensor([[0.5, 0.0, 0.5]])
    leaf = rows.clone().requires_grad_(True)
    klal_loss([leaf], target).backward()
    ref_leaf = rows.double().requires_grad_(True)
    reference_loss({0: ref_leaf}, target).backward()
    assert ref_leaf.grad[0, 0, 0, 2].item() == pytest.approx(-0.25, rel=1e-6)
    got = leaf.grad[0, :, 0, 2]
    assert torch.allclose(got.double(), ref_leaf.grad[0, :, 0, 2], rtol=1e-4), (
        "BUG (klal.py): log_q.clamp(min=_LOG_TINY) zeroes the gradient of every target key with "
        f"log Q < -87, so the loss cannot pull attention onto it: got {got.tolist()}, "
        f"expected {ref_leaf.grad[0, :, 0, 2].tolist()}"
    )


def test_dead_head_leaves_the_head_average():
    log_attn, target, *_ = random_case(40, b=2, n_layers=1, h=3, q=2, pad=False, dead=False)
    rows = log_attn[0].clone()
    rows[0, 1, 0] = NEG_INF  # sample 0, head 1, query 0 sees no visual key
    leaf = rows.clone().requires_grad_(True)
    per_sample, valid = klal_per_sample([leaf], target)
    assert valid.all() and torch.isfinite(per_sample).all()
    # query 0 of sample 0 is the average of heads 0 and 2 only
    alive = rows[:, [0, 2]]
    q0 = klal_per_sample([alive[:, :, :1]], target)[0][0]
    q1 = klal_per_sample([rows[:, :, 1:]], target)[0][0]
    torch.testing.assert_close(per_sample[0], (q0 + q1) / 2)
    per_sample.sum().backward()
    assert torch.isfinite(leaf.grad).all()
    assert (leaf.grad[0, 1, 0] == 0).all()
    assert (leaf.grad[0, 1, 1] != 0).any()


def test_dead_query_and_dead_layer_leave_the_mean():
    log_attn, target, *_ = random_case(41, b=2, n_layers=2, h=2, q=2, pad=False, dead=False)
    rows = log_attn.clone()
    rows[0, 0, :, 1] = NEG_INF  # layer 0, sample 0: query 1 has no head with a visual key
    rows[1, 1] = NEG_INF  # layer 1, sample 1: no query at all
    leaf = rows.clone().requires_grad_(True)
    per_sample, valid = klal_per_sample(leaf, target)
    assert valid.all() and torch.isfinite(per_sample).all()
    s0_l0 = klal_per_sample([rows[0, :, :, :1]], target)[0][0]  # query 0 only (not 0 for q1)
    s0_l1 = klal_per_sample([rows[1]], target)[0][0]
    s1_l0 = klal_per_sample([rows[0]], target)[0][1]  # layer 0 only (not 0 for layer 1)
    torch.testing.assert_close(per_sample[0], (s0_l0 + s0_l1) / 2)
    torch.testing.assert_close(per_sample[1], s1_l0)
    expected, _ = reference_per_sample(as_dict(rows), target)
    torch.testing.assert_close(per_sample.double(), expected, rtol=1e-5, atol=1e-6)
    per_sample.sum().backward()
    assert torch.isfinite(leaf.grad).all()


@pytest.mark.parametrize("how", ["sample_mask", "dead_rows"])
def test_no_valid_sample_returns_zero_with_graph(how):
    log_attn, target, *_ = random_case(50, b=2, pad=False, dead=False)
    sample_mask = None
    if how == "sample_mask":
        sample_mask = torch.zeros(2, dtype=torch.bool)
    else:
        log_attn = torch.full_like(log_attn, NEG_INF)
    leaf = log_attn.clone().requires_grad_(True)
    loss = klal_loss(leaf, target, sample_mask=sample_mask)
    assert loss.item() == 0.0 and loss.dim() == 0
    assert loss.grad_fn is not None
    loss.backward()
    assert torch.isfinite(leaf.grad).all() and (leaf.grad == 0).all()
    assert not klal_per_sample(leaf, target, sample_mask=sample_mask)[1].any()


@pytest.mark.parametrize("where", ["key_mask padding", "key hidden from every head"])
def test_key_seen_by_no_head_keeps_gradient_finite(where):
    """A key that every head sees as -inf (padding through key_mask, or a sliding window that
    hides it) must not turn the gradient into NaN: it has no target mass, so the loss is an
    ordinary finite KL over the other keys."""
    log_attn, target, *_ = random_case(60, b=2, n_layers=2, h=3, q=2, pad=False, dead=False)
    target = target.clone()
    target[:, 2] = 0.0
    target = target / target.sum(1, keepdim=True)
    key_mask = None
    if where == "key_mask padding":
        key_mask = torch.ones(target.shape, dtype=torch.bool)
        key_mask[:, 2] = False
    else:
        log_attn = log_attn.clone()
        log_attn[..., 2] = NEG_INF
    leaf = log_attn.clone().requires_grad_(True)
    loss = klal_loss(leaf, target, key_mask=key_mask)
    loss.backward()
    ref_leaf = log_attn.double().requires_grad_(True)
    expected = reference_loss(as_dict(ref_leaf), target, key_mask=key_mask)
    expected.backward()
    torch.testing.assert_close(loss.double(), expected.detach(), rtol=1e-5, atol=1e-6)
    assert torch.isfinite(leaf.grad).all(), (
        f"BUG (klal.py): NaN gradient with a {where}: logsumexp over heads of an all -inf column "
        "(log_q = -inf) backpropagates 0 * exp(-inf - -inf) = NaN through the clamp"
    )
    torch.testing.assert_close(leaf.grad.double(), ref_leaf.grad, rtol=1e-4, atol=1e-6)


def test_target_on_key_no_head_sees_is_large_finite_with_finite_gradient():
    """The documented floor: a target cell the query cannot see at all costs a large but finite
    amount, and backward stays finite."""
    rows = torch.zeros(1, 2, 1, 3)
    rows[..., 2] = NEG_INF  # a sliding window hides key 2 from both heads
    leaf = rows.clone().requires_grad_(True)
    loss = klal_loss([leaf], torch.tensor([[0.5, 0.0, 0.5]]))
    # 0.5 ln(0.5 / 0.5) + 0.5 (ln 0.5 - log Q floor); floor = ln(fp32 tiny), about -87.3
    floor = math.log(torch.finfo(torch.float32).tiny)
    assert loss.item() == pytest.approx(0.5 * (math.log(0.5) - floor), rel=1e-5)
    loss.backward()
    assert torch.isfinite(leaf.grad).all(), (
        "BUG (klal.py): NaN gradient when the target sits on a key that every head sees as -inf"
    )


# --------------------------------------------------------------------------- 7. bf16


def test_bf16_under_autocast():
    log_attn, target, key_mask, query_mask, sample_mask = random_case(70, pad=False, dead=False)
    masks = dict(query_mask=query_mask, sample_mask=sample_mask)
    loss32 = klal_loss(log_attn, target, **masks)
    leaf = log_attn.to(torch.bfloat16).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss16 = klal_loss(leaf, target.to(torch.bfloat16), **masks)
    assert torch.isfinite(loss16)
    # the bf16 inputs round log-probs of size ~5 by up to ~0.02 and targets by ~0.4%
    assert loss16.item() == pytest.approx(loss32.item(), rel=0.03, abs=0.01)
    # and it is exactly the fp32 loss of the rounded inputs (the loss computes in fp32)
    rounded = klal_loss(leaf.detach().float(), target.to(torch.bfloat16).float(), **masks)
    torch.testing.assert_close(loss16.float(), rounded, rtol=1e-6, atol=1e-7)
    loss16.backward()
    assert leaf.grad.dtype == torch.bfloat16
    assert torch.isfinite(leaf.grad).all() and (leaf.grad != 0).any()


# --------------------------------------------------------------------------- 8. gradient


def test_gradient_central_difference():
    # klal computes in fp32 (`.float()`), so float64 gradcheck does not apply: compare autograd
    # to a central difference in fp32 with a step large enough to beat fp32 rounding
    g = torch.Generator().manual_seed(80)
    rows = torch.randn(2, 2, 2, 4, generator=g)
    target = torch.rand(2, 4, generator=g)
    target[0, 1] = 0.0
    target = target / target.sum(1, keepdim=True)
    leaf = rows.clone().requires_grad_(True)
    klal_loss([leaf], target).backward()
    eps = 1e-2
    numeric = torch.zeros_like(rows)
    for i in range(rows.numel()):
        plus, minus = rows.clone(), rows.clone()
        plus.view(-1)[i] += eps
        minus.view(-1)[i] -= eps
        numeric.view(-1)[i] = (klal_loss([plus], target) - klal_loss([minus], target)) / (2 * eps)
    torch.testing.assert_close(leaf.grad, numeric, rtol=1e-2, atol=2e-4)
    assert numeric.abs().max() > 1e-2  # the check is not trivially about zeros


@pytest.mark.parametrize("pad", [False, True], ids=["no_padding", "key_query_sample_padding"])
def test_gradient_matches_float64_reference(pad):
    log_attn, target, key_mask, query_mask, sample_mask = random_case(90, pad=pad, dead=pad)
    masks = dict(key_mask=key_mask, query_mask=query_mask, sample_mask=sample_mask)
    leaf = log_attn.clone().requires_grad_(True)
    klal_loss(leaf, target, **masks).backward()
    ref_leaf = log_attn.double().requires_grad_(True)
    reference_loss(as_dict(ref_leaf), target, **masks).backward()
    assert torch.isfinite(leaf.grad).all(), (
        "BUG (klal.py): NaN gradient with key padding (a key_mask-invalid key is -inf in every "
        "head, and logsumexp's backward over that all -inf column is NaN)"
    )
    torch.testing.assert_close(leaf.grad.double(), ref_leaf.grad, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------- 9. bad input


def _good():
    log_attn, target, *_ = random_case(100, b=2, n_layers=2, h=2, q=2, k=4, pad=False,
                                       dead=False)
    return log_attn, target


@pytest.mark.parametrize("change, match", [
    (lambda a, t: (a, t[:, :3]), r"target must be \(B, K\)"),
    (lambda a, t: (a, t[:1]), r"target must be \(B, K\)"),
    (lambda a, t: (a, t.unsqueeze(0)), r"target must be \(B, K\)"),
    (lambda a, t: (a, t - t.max()), "target must be finite and >= 0"),
    (lambda a, t: (a, t.index_put((torch.tensor([0]), torch.tensor([1])),
                                  torch.tensor(float("nan")))), "target must be finite"),
    (lambda a, t: (a, t.index_put((torch.tensor([1]), torch.tensor([2])),
                                  torch.tensor(float("inf")))), "target must be finite"),
    (lambda a, t: (a[0], t), r"\(L, B, H, Q, K\)"),  # a bare (B, H, Q, K) tensor
    (lambda a, t: (list(a[:, :, 0]), t), r"log_attn\[0\] must be a \(B, H, Q, K\)"),
    (lambda a, t: ({0: a[0], 1: "rows"}, t), r"log_attn\[1\] must be a \(B, H, Q, K\)"),
    (lambda a, t: ({}, t), "no layer"),
    (lambda a, t: ([], t), "no layer"),
    (lambda a, t: ([a[0], a[1, :, :1]], t), r"log_attn\[1\] is \(2, 1, 2, 4\)"),
])
def test_bad_input_errors(change, match):
    log_attn, target = change(*_good())
    with pytest.raises(ValueError, match=match):
        klal_loss(log_attn, target)


@pytest.mark.parametrize("name, mask", [
    ("key_mask", torch.ones(2, 5, dtype=torch.bool)),
    ("key_mask", torch.ones(4, dtype=torch.bool)),
    ("query_mask", torch.ones(2, 3, dtype=torch.bool)),
    ("sample_mask", torch.ones(3, dtype=torch.bool)),
    ("sample_mask", torch.ones(2, 1, dtype=torch.bool)),
])
def test_mask_shape_errors(name, mask):
    log_attn, target = _good()
    with pytest.raises(ValueError, match=f"{name} must be"):
        klal_loss(log_attn, target, **{name: mask})


def test_target_mass_on_invalid_key_errors():
    log_attn, _ = _good()
    target = torch.tensor([[0.25, 0.25, 0.25, 0.25], [0.5, 0.0, 0.25, 0.25]])
    key_mask = torch.ones(2, 4, dtype=torch.bool)
    key_mask[1, 3] = False
    with pytest.raises(ValueError, match="key_mask marks invalid"):
        klal_loss(log_attn, target, key_mask=key_mask)
    # zero mass there is fine
    target = torch.tensor([[0.25, 0.25, 0.25, 0.25], [0.5, 0.0, 0.5, 0.0]])
    assert torch.isfinite(klal_loss(log_attn, target, key_mask=key_mask))


def test_empty_stacked_tensor_errors():
    _, target = _good()
    try:
        klal_loss(torch.empty(0, 2, 2, 2, 4), target)
    except Exception as err:  # noqa: BLE001 - the type is what this test checks
        assert isinstance(err, ValueError), (
            "BUG (klal.py): an empty (0, B, H, Q, K) log_attn raises "
            f"{type(err).__name__} instead of ValueError: _as_layers returns early for a tensor "
            "and skips the 'holds no layer' check"
        )
        assert "no layer" in str(err)
    else:
        raise AssertionError("an empty (0, B, H, Q, K) log_attn gave no error")


# --------------------------------------------------------------------------- 10. per sample


@pytest.mark.parametrize("seed", range(4))
def test_per_sample_matches_reference(seed):
    log_attn, target, key_mask, query_mask, sample_mask = random_case(110 + seed, b=4)
    sample_mask[1] = False
    query_mask[2] = False  # sample 2 has no valid query: invalid even with a target
    masks = dict(key_mask=key_mask, query_mask=query_mask, sample_mask=sample_mask)
    per_sample, valid = klal_per_sample(log_attn, target, **masks)
    expected, expected_valid = reference_per_sample(as_dict(log_attn), target, **masks)
    assert per_sample.shape == (4,) and per_sample.dtype == torch.float32
    assert valid.shape == (4,) and valid.dtype == torch.bool
    assert valid.tolist() == expected_valid.tolist()
    assert not valid[1] and not valid[2] and valid[0]
    torch.testing.assert_close(per_sample.double(), expected, rtol=1e-5, atol=1e-6)
    assert (per_sample[~valid] == 0).all()
    loss = klal_loss(log_attn, target, **masks)
    torch.testing.assert_close(loss, per_sample[valid].mean())


def test_monitored_is_the_same_term_at_weight_zero():
    """The NTP baseline's KLAL: every setting kept, weight 0, computed and logged."""
    klal = KLALConfig(weight=2.5, query="all_answer", layers=(1,), monitor=False)
    ntp = klal.monitored()
    assert ntp.weight == 0.0 and ntp.monitor and ntp.active
    assert (ntp.query, ntp.layers) == (klal.query, klal.layers)
    assert klal.weight == 2.5 and not klal.monitor


@pytest.mark.parametrize("change, match", [
    (lambda a, t: (a, torch.zeros_like(t)), r"sum to 1 .*row 0 sums to 0"),
    (lambda a, t: (a, t * 3), r"sum to 1 .*row 0 sums to 3"),
    (lambda a, t: (a, t.index_put((torch.tensor([1]), torch.tensor([0])), t[1, 0] + 0.25)),
     r"sum to 1 .*row 1 sums to 1\.25"),
    (lambda a, t: (a, t > 0), "target must be a floating-point distribution, got torch.bool"),
    (lambda a, t: (a.index_put((torch.tensor([1]), torch.tensor([0])), torch.tensor(float("nan"))),
                   t), r"log_attn\[1\] holds NaN or \+inf"),
    (lambda a, t: (a.index_put((torch.tensor([0]), torch.tensor([1])), torch.tensor(float("inf"))),
                   t), r"log_attn\[0\] holds NaN or \+inf"),
])
def test_meaningless_values_are_refused(change, match):
    """Issue 17: an all-zero, unnormalised or boolean target and NaN / +inf log-attention gave a
    number (or NaN) instead of an error."""
    log_attn, target = _good()
    assert torch.allclose(target.sum(-1), torch.ones(2))  # the good case is a distribution
    log_attn, target = change(log_attn, target)
    with pytest.raises(ValueError, match=match):
        klal_loss(log_attn, target)


def test_rows_without_target_may_be_anything_finite():
    """A sample marked as having no target (sample_mask False) may carry an all-zero row; -inf
    log-attention (zero probability) stays allowed."""
    log_attn, target = _good()
    target[1] = 0.0
    log_attn[:, :, :, :, 0] = float("-inf")
    loss = klal_loss(log_attn, target, sample_mask=torch.tensor([True, False]))
    expected = klal_loss(log_attn[:, :1], target[:1])
    torch.testing.assert_close(loss, expected)


# --------------------------------------------------------------------------- 11. unchecked


@pytest.mark.parametrize("heads", [None, {0: [1], 2: [0, 3]}])
@pytest.mark.parametrize("seed", range(3))
def test_unchecked_equals_checked_and_the_float64_loops(seed, heads):
    """check=False (the trainer's hot path: no values check, no host sync) gives the same loss
    and gradient as the checked call, and both equal the per-layer float64 loops, with padding,
    dead heads and queries, and a head selection (one stacked tensor, left-out heads at -inf)."""
    log_attn, target, key_mask, query_mask, sample_mask = random_case(300 + seed, h=4)
    masks = dict(key_mask=key_mask, query_mask=query_mask, sample_mask=sample_mask)
    pairs = None if heads is None else [(layer, h) for layer, hs in heads.items() for h in hs]
    losses, grads = [], []
    for check in (True, False):
        leaf = log_attn.clone().requires_grad_(True)
        loss = klal_loss(leaf, target, heads=pairs, check=check, **masks)
        loss.backward()
        losses.append(loss)
        grads.append(leaf.grad)
    assert losses[0].item() == losses[1].item()
    assert torch.equal(grads[0], grads[1])
    leaf = log_attn.double().requires_grad_(True)
    expected = reference_loss(as_dict(leaf), target, heads=heads, **masks)
    expected.backward()
    torch.testing.assert_close(losses[1].double(), expected.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads[1].double(), leaf.grad, rtol=1e-4, atol=1e-7)
    if heads is not None:  # the selection matters: left-out heads get no gradient
        left_out = torch.ones(3, 4, dtype=torch.bool)
        for layer, hs in heads.items():
            left_out[layer, hs] = False
        left_out = left_out[:, None, :, None, None].expand_as(grads[1])  # (L, B, H, Q, K)
        assert (grads[1][left_out] == 0).all()
        assert grads[1][~left_out].abs().sum() > 0


def test_unchecked_skips_the_values_check_only():
    log_attn, target = _good()
    bad = torch.zeros_like(target)
    with pytest.raises(ValueError, match="sum to 1"):
        klal_loss(log_attn, bad)
    assert klal_loss(log_attn, bad, check=False).item() == 0.0  # not checked: garbage in, out
    with pytest.raises(ValueError, match="target must be"):  # shapes are still checked
        klal_loss(log_attn, target[:, :-1], check=False)
