"""Logit Lens Loss: a hand case, a float64 loop reference with an explicit softmax over the whole
vocabulary, masks, gradients (and none through masked tokens), chunking and recomputation,
bf16 numerics near p = 0 and p = 1, errors."""

import math

import pytest
import torch
from torch import nn

from lookhere.losses import concept_log_probs, lll_loss, lll_per_sample

# --------------------------------------------------------------------------- reference


def reference_per_sample(hidden, region, concept_ids, unembed, concept_mask=None, valid=None,
                         sample_mask=None, beta=1.0):
    """Brute-force float64 LLL: loops over samples and tokens, p(C|h) = sum of softmax entries.

    Returns (per_sample (B,) float64 with 0 where invalid, valid (B,) bool), keeping the graph.
    """
    b_n, k_n, _ = hidden.shape
    concept_mask = torch.ones_like(concept_ids, dtype=torch.bool) if concept_mask is None \
        else concept_mask
    valid = torch.ones(b_n, k_n, dtype=torch.bool) if valid is None else valid
    sample_mask = torch.ones(b_n, dtype=torch.bool) if sample_mask is None else sample_mask
    values, ok = [], []
    for b in range(b_n):
        ids = concept_ids[b][concept_mask[b]].tolist()
        w = region[b].double()
        if not (sample_mask[b] and ids and w.sum() > 0):
            values.append(torch.zeros((), dtype=torch.float64))
            ok.append(False)
            continue
        inside, outside, w_in, w_out = 0.0, 0.0, 0.0, 0.0
        for s in range(k_n):
            if not valid[b, s]:
                continue
            probs = torch.softmax(unembed(hidden[b, s].double()), -1)  # (V,) explicit
            p = sum(probs[c] for c in ids)
            inside = inside + w[s] * -torch.log(p)
            outside = outside + (1 - w[s]) * -torch.log(1 - p)
            w_in, w_out = w_in + w[s], w_out + (1 - w[s])
        out_term = outside / w_out if w_out > 0 else 0.0
        values.append(inside / w_in + beta * out_term)
        ok.append(True)
    return torch.stack([torch.as_tensor(v, dtype=torch.float64) for v in values]), \
        torch.tensor(ok)


class Lens(nn.Module):
    """Final norm then LM head, like a language model's unembedding."""

    def __init__(self, d=6, v=13, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, v, bias=False)
        with torch.no_grad():
            self.norm.weight.copy_(1 + 0.3 * torch.randn(d, generator=g))
            self.norm.bias.copy_(0.1 * torch.randn(d, generator=g))
            self.head.weight.copy_(2 * torch.randn(v, d, generator=g))

    def forward(self, h):
        return self.head(self.norm(h))


def random_case(seed, b=4, k=7, d=6, v=13, m=3, soft=True):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(b, k, d, generator=g)
    valid = torch.rand(b, k, generator=g) > 0.25
    valid[:, :2] = True
    if soft:
        region = torch.rand(b, k, generator=g) * (torch.rand(b, k, generator=g) > 0.4)
    else:
        region = (torch.rand(b, k, generator=g) > 0.6).float()
    region[:, 0] = 1.0  # every sample has some region, token 1 is outside
    region[:, 1] = 0.0
    region = region * valid
    ids = torch.stack([torch.randperm(v, generator=g)[:m] for _ in range(b)])  # distinct per row
    concept_mask = torch.rand(b, m, generator=g) > 0.3
    concept_mask[:, 0] = True
    concept_mask[-1] = False  # the last sample has no concept
    sample_mask = torch.ones(b, dtype=torch.bool)
    sample_mask[-2] = False  # and the one before is masked out
    return hidden, region, ids, concept_mask, valid, sample_mask


# --------------------------------------------------------------------------- 1. hand case


def test_hand_computed():
    # unembed = identity: the hidden states are the logits. Concept = token 0.
    # token 0 (inside): logits [ln 3, 0, 0] -> p = 3/5; token 1 (outside): [0, ln 3, 0] -> p = 1/5
    hidden = torch.tensor([[[math.log(3), 0.0, 0.0], [0.0, math.log(3), 0.0]]])
    region = torch.tensor([[True, False]])
    loss = lll_loss(hidden, region, torch.tensor([[0]]), lambda h: h, beta=0.5)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(-math.log(3 / 5) - 0.5 * math.log(4 / 5), rel=1e-6)
    # a concept of two ids sums their probabilities: p = 4/5 inside, 4/5 outside
    loss2 = lll_loss(hidden, region, torch.tensor([[0, 1]]), lambda h: h, beta=0.5)
    assert loss2.item() == pytest.approx(-math.log(4 / 5) - 0.5 * math.log(1 / 5), rel=1e-6)


def test_soft_region_hand():
    # one token, half inside: 0.5 * -log p / 0.5 + beta * 0.5 * -log(1-p) / 0.5
    hidden = torch.tensor([[[math.log(3), 0.0, 0.0]]])
    loss = lll_loss(hidden, torch.tensor([[0.5]]), torch.tensor([[0]]), lambda h: h, beta=2.0)
    assert loss.item() == pytest.approx(-math.log(3 / 5) - 2.0 * math.log(2 / 5), rel=1e-6)


# --------------------------------------------------------------------------- 2. reference


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("soft", [True, False])
def test_matches_reference(seed, soft):
    lens = Lens(seed=seed)
    hidden, region, ids, cmask, valid, smask = random_case(seed, soft=soft)
    per, ok = lll_per_sample(hidden, region, ids, lens, cmask, valid, smask, beta=0.7,
                             chunk_size=5)
    ref, ref_ok = reference_per_sample(hidden.double(), region, ids, lens.double(), cmask, valid,
                                       smask, beta=0.7)
    lens.float()
    assert ok.tolist() == ref_ok.tolist() == [True, True, False, False]
    torch.testing.assert_close(per.double(), ref, rtol=1e-5, atol=1e-6)
    loss = lll_loss(hidden, region, ids, lens, cmask, valid, smask, beta=0.7)
    assert loss.item() == pytest.approx(ref[ref_ok].mean().item(), rel=1e-5)


def test_gradients_match_reference_and_skip_masked_tokens():
    lens = Lens(seed=1)
    hidden, region, ids, cmask, valid, smask = random_case(1)
    h = hidden.clone().requires_grad_()
    lll_loss(h, region, ids, lens, cmask, valid, smask, beta=0.7, chunk_size=3).backward()
    head_grad = lens.head.weight.grad.clone()
    h64 = hidden.double().requires_grad_()
    lens64 = Lens(seed=1).double()
    ref, ok = reference_per_sample(h64, region, ids, lens64, cmask, valid, smask, beta=0.7)
    ref[ok].mean().backward()
    torch.testing.assert_close(h.grad.double(), h64.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(head_grad.double(), lens64.head.weight.grad, rtol=1e-4, atol=1e-6)
    # the gradient reaches every valid token of the qualifying samples, and nothing else
    used = valid & ok[:, None]
    norms = h.grad.norm(dim=-1)
    assert (norms[used] > 0).all()
    assert (norms[~used] == 0).all()


def test_beta_zero_ignores_outside_tokens():
    lens = Lens()
    hidden, region, ids, cmask, valid, smask = random_case(2, soft=False)
    h = hidden.clone().requires_grad_()
    lll_loss(h, region, ids, lens, cmask, valid, smask, beta=0.0).backward()
    outside = (region == 0) & valid
    assert (h.grad.norm(dim=-1)[outside] == 0).all()


def test_region_covering_every_token_has_no_outside_term():
    lens = Lens()
    hidden = torch.randn(1, 3, 6)
    ids = torch.tensor([[4]])
    full = lll_loss(hidden, torch.ones(1, 3), ids, lens, beta=5.0)
    log_p, _ = concept_log_probs(hidden[0], ids.expand(3, 1), torch.ones(3, 1, dtype=torch.bool),
                                 lens)
    assert full.item() == pytest.approx(-log_p.mean().item(), rel=1e-6)


def test_no_qualifying_sample_gives_a_zero_with_graph():
    lens = Lens()
    h = torch.randn(2, 3, 6, requires_grad=True)
    loss = lll_loss(h, torch.zeros(2, 3), torch.tensor([[1], [2]]), lens)
    assert loss.item() == 0.0
    loss.backward()
    assert (h.grad == 0).all()
    per, ok = lll_per_sample(h, torch.ones(2, 3), torch.tensor([[1], [2]]), lens,
                             sample_mask=torch.tensor([False, False]))
    assert not ok.any() and (per == 0).all()


# --------------------------------------------------------------------------- 3. chunking


@pytest.mark.parametrize("chunk_size, ckpt", [(1, True), (2, False), (7, True), (1000, True),
                                              (1000, False)])
def test_chunks_and_checkpointing_agree(chunk_size, ckpt):
    lens = Lens(seed=3)
    hidden, region, ids, cmask, valid, smask = random_case(3)
    results = []
    for cs, c in [(4, False), (chunk_size, ckpt)]:
        lens.zero_grad()
        h = hidden.clone().requires_grad_()
        loss = lll_loss(h, region, ids, lens, cmask, valid, smask, chunk_size=cs, checkpoint=c)
        loss.backward()
        results.append((loss.detach(), h.grad, lens.head.weight.grad.clone(),
                        lens.norm.weight.grad.clone()))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_checkpointing_recomputes_the_logits():
    """With checkpointing the unembedding runs again in backward (the logits were not kept)."""
    calls = []

    def unembed(h):
        calls.append(h.shape[0])
        return Lens()(h)

    hidden, region, ids, cmask, valid, smask = random_case(4)
    for ckpt, expected_factor in [(False, 1), (True, 2)]:
        calls.clear()
        h = hidden.clone().requires_grad_()
        lll_loss(h, region, ids, unembed, cmask, valid, smask, chunk_size=4,
                 checkpoint=ckpt).backward()
        n = int((valid & torch.tensor([True, True, False, False])[:, None]).sum())
        assert sum(calls) == expected_factor * n
        assert max(calls) <= 4
    with torch.no_grad():  # no recomputation without autograd
        calls.clear()
        lll_loss(hidden, region, ids, unembed, cmask, valid, smask, chunk_size=4)
        assert sum(calls) == n


# --------------------------------------------------------------------------- 4. numerics


def extreme_case(dtype):
    """Concept id 0; logits gaps of +-60: p ~ 1 or p ~ 1e-26 on chosen tokens."""
    v, d = 32, 32
    head = nn.Linear(d, v, bias=False).to(dtype)
    with torch.no_grad():
        head.weight.copy_(torch.eye(v, d))
    hidden = torch.zeros(1, 4, d)
    hidden[0, 0, 0] = 60.0  # inside, p ~ 1: tiny inside loss
    hidden[0, 1, 0] = -60.0  # inside, p ~ 0: large, finite inside loss
    hidden[0, 2, 0] = 60.0  # outside, p ~ 1: -log(1 - p) ~ 60 (log1p(-p) gives inf here)
    hidden[0, 3, 0] = -60.0  # outside, p ~ 0
    region = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    return hidden.to(dtype), region, torch.tensor([[0]]), head


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_stable_near_zero_and_one(dtype):
    hidden, region, ids, head = extreme_case(dtype)
    h = hidden.clone().requires_grad_()
    loss = lll_loss(h, region, ids, head, beta=1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(h.grad.float()).all()
    assert torch.isfinite(head.weight.grad.float()).all()
    # exact values: log(31 + e^60) - 60 ~ 31 e^-60; -log p at -60: log(31 + e^-60) + 60
    inside = (0.0 + (math.log(31) + 60)) / 2
    outside = ((60 - math.log(31)) + 0.0) / 2
    assert loss.item() == pytest.approx(inside + outside, rel=1e-3)
    log_p, log_q = concept_log_probs(hidden[0], ids.expand(4, 1),
                                     torch.ones(4, 1, dtype=torch.bool), head)
    assert log_p.dtype == log_q.dtype == torch.float32
    assert log_q[2].item() == pytest.approx(math.log(31) - 60, rel=1e-3)  # p rounds to 1 in fp32
    assert torch.exp(log_p[2]).item() == 1.0


def test_bf16_model_matches_fp32():
    lens = Lens(seed=5)
    hidden, region, ids, cmask, valid, smask = random_case(5)
    ref = lll_loss(hidden, region, ids, lens, cmask, valid, smask)
    h = hidden.bfloat16().requires_grad_()
    loss = lll_loss(h, region, ids, lens.bfloat16(), cmask, valid, smask)
    loss.backward()
    assert loss.dtype == torch.float32
    assert torch.isfinite(h.grad).all()
    assert loss.item() == pytest.approx(ref.item(), rel=0.05)


# --------------------------------------------------------------------------- 4b. several concepts


def multi_case(seed, c=3):
    """C (concept, region) pairs per sample: random_case drawn C times, pairs of sample 0
    partly emptied (no region for pair 1, no concept id for pair 2)."""
    cases = [random_case(seed * 10 + j) for j in range(c)]
    hidden, _, _, _, valid, smask = cases[0]
    region = torch.stack([x[1] * valid for x in cases], 1)  # (B, C, K)
    ids = torch.stack([x[2] for x in cases], 1)  # (B, C, M)
    cmask = torch.stack([x[3] for x in cases], 1)
    region[0, 1] = 0.0
    cmask[0, 2] = False
    return hidden, region, ids, cmask, valid, smask


def reference_multi(hidden, region, ids, unembed, cmask, valid, smask, beta):
    """Per sample: the mean over its counting pairs of the single-concept reference."""
    per_pair = [reference_per_sample(hidden, region[:, j], ids[:, j], unembed, cmask[:, j],
                                     valid, smask, beta) for j in range(region.shape[1])]
    values = torch.stack([v for v, _ in per_pair], 1)  # (B, C)
    ok = torch.stack([o for _, o in per_pair], 1)  # (B, C)
    mean = (values * ok).sum(1) / ok.sum(1).clamp(min=1)
    return mean, ok.any(1)


@pytest.mark.parametrize("seed", range(3))
def test_several_concepts_are_the_mean_of_their_pairs(seed):
    lens = Lens(seed=seed)
    hidden, region, ids, cmask, valid, smask = multi_case(seed)
    h = hidden.clone().requires_grad_()
    per, ok = lll_per_sample(h, region, ids, lens, cmask, valid, smask, beta=0.7, chunk_size=4)
    per[ok].mean().backward()
    h64 = hidden.double().requires_grad_()
    ref, ref_ok = reference_multi(h64, region, ids, lens.double(), cmask, valid, smask, 0.7)
    ref[ref_ok].mean().backward()
    assert ok.tolist() == ref_ok.tolist() == [True, True, False, False]
    torch.testing.assert_close(per.detach().double(), ref.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h.grad.double(), h64.grad, rtol=1e-4, atol=1e-6)


def test_several_concepts_hand():
    # identity unembed; one inside token [ln 3, ln 2, 0] (p0 = 1/2, p1 = 1/3), one outside
    # token [0, 0, 0] (p = 1/3 each); concept 0 = id 0, concept 1 = id 1, both inside on token 0
    hidden = torch.tensor([[[math.log(3), math.log(2), 0.0], [0.0, 0.0, 0.0]]])
    region = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    loss = lll_loss(hidden, region, torch.tensor([[[0], [1]]]), lambda h: h, beta=1.0)
    pair0 = -math.log(1 / 2) - math.log(2 / 3)
    pair1 = -math.log(1 / 3) - math.log(2 / 3)
    assert loss.item() == pytest.approx((pair0 + pair1) / 2, rel=1e-6)


def test_one_concept_axis_equals_the_plain_form():
    lens = Lens(seed=2)
    hidden, region, ids, cmask, valid, smask = random_case(2)
    plain = lll_per_sample(hidden, region, ids, lens, cmask, valid, smask)
    axis = lll_per_sample(hidden, region[:, None], ids[:, None], lens, cmask[:, None], valid,
                          smask)
    assert torch.equal(plain[0], axis[0]) and torch.equal(plain[1], axis[1])


@pytest.mark.parametrize("change, match", [
    ({"concept_ids": torch.tensor([[1, 2], [3, 0]])}, "concept_ids"),  # (B, M) with C = 2
    ({"concept_ids": torch.zeros(2, 3, 1, dtype=torch.long)}, "concept_ids"),  # C = 3
    ({"concept_mask": torch.ones(2, 1, dtype=torch.bool)}, "concept_mask"),
    ({"region": torch.ones(2, 2, 4)}, "region"),
    ({"region": torch.ones(3, 2, 3)}, "region"),
])
def test_bad_inputs_with_a_concept_axis(change, match):
    kwargs = {"hidden": torch.randn(2, 3, 6), "region": torch.ones(2, 2, 3),
              "concept_ids": torch.tensor([[[1], [2]], [[3], [4]]]), "unembed": Lens()} | change
    with pytest.raises(ValueError, match=match):
        lll_loss(**kwargs)


# --------------------------------------------------------------------------- 5. errors


def good():
    g = torch.Generator().manual_seed(0)
    return {"hidden": torch.randn(2, 3, 6, generator=g), "region": torch.ones(2, 3),
            "concept_ids": torch.tensor([[1, 2], [3, 0]]), "unembed": Lens(),
            "concept_mask": torch.tensor([[True, True], [True, False]])}


@pytest.mark.parametrize("change, match", [
    ({"hidden": torch.randn(2, 3)}, "hidden"),
    ({"hidden": torch.ones(2, 3, 6, dtype=torch.long)}, "hidden"),
    ({"region": torch.ones(2, 4)}, "region"),
    ({"region": torch.full((2, 3), 1.5)}, "region"),
    ({"region": torch.full((2, 3), -0.1)}, "region"),
    ({"region": torch.full((2, 3), float("nan"))}, "region"),
    ({"concept_ids": torch.tensor([[1.0, 2.0], [3.0, 0.0]])}, "concept_ids"),
    ({"concept_ids": torch.tensor([1, 2])}, "concept_ids"),
    ({"concept_ids": torch.tensor([[1, -2], [3, 0]])}, "concept_ids"),
    ({"concept_ids": torch.tensor([[1, 13], [3, 0]])}, "concept_ids"),
    ({"concept_ids": torch.tensor([[1, 1], [3, 0]])}, "concept_ids"),
    ({"concept_ids": torch.zeros(2, 0, dtype=torch.long)}, "concept_ids"),
    ({"concept_mask": torch.ones(2, 3, dtype=torch.bool)}, "concept_mask"),
    ({"valid": torch.ones(3, 2, dtype=torch.bool)}, "valid"),
    ({"valid": torch.tensor([[True, True, False], [True, True, True]])}, "valid"),
    ({"sample_mask": torch.ones(3, dtype=torch.bool)}, "sample_mask"),
    ({"beta": -1.0}, "beta"),
    ({"beta": float("nan")}, "beta"),
    ({"chunk_size": 0}, "chunk_size"),
])
def test_bad_inputs(change, match):
    kwargs = good() | change
    with pytest.raises(ValueError, match=match):
        lll_loss(**kwargs)


def test_padded_concept_ids_may_repeat_and_be_out_of_range():
    kwargs = good()
    kwargs["concept_ids"] = torch.tensor([[1, 2], [3, 999]])  # 999 is padding
    ref = lll_loss(**good())
    assert lll_loss(**kwargs).item() == pytest.approx(ref.item(), rel=1e-6)


def test_concept_log_probs_needs_a_real_id_per_row():
    with pytest.raises(ValueError, match="concept_mask"):
        concept_log_probs(torch.randn(2, 6), torch.tensor([[1], [2]]),
                          torch.tensor([[True], [False]]), Lens())
