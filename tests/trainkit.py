"""Shared by the training and collator tests: fixed samples, a trainer factory, and the
independent references (NTP and KLAL from eager attention, LLL from the model's own logits in
float64).

Equivalence tests train with plain SGD and no clipping: a parameter's change is then
``-lr * grad``, so two runs agree only if their gradients agree in scale as well as direction
(Adam's first step, ``lr * sign(grad)``, would hide a wrongly scaled term).
"""

import dataclasses

import pytest
import torch
from transformers import TrainingArguments

from lookhere.collate import (
    GroundingCollator,
    split_aux,
)
from lookhere.data.dataset import TaskDataset
from lookhere.data.sample import Geometry
from lookhere.data.synthetic import make_task
from lookhere.eval.metrics import attention_ratio
from lookhere.losses.klal import klal_loss
from lookhere.models import get_adapter
from lookhere.probe import AttentionProbe
from lookhere.train import GroundingTrainer, KLALConfig

TASK = make_task("grid_patch", seed=0, image_size=56, grid_rows=4, grid_cols=4)


SGD = {"optim": "sgd", "max_grad_norm": 0.0}  # update = -lr * grad (see the module doc)


pytestmark = pytest.mark.usefixtures("one_thread")


def samples(n, start=0):
    return [TASK.sample(start + i) for i in range(n)]


def ragged_samples():
    """Four samples of different prompt and answer lengths; the last has no geometry."""
    s = samples(4)
    return [
        s[0],
        dataclasses.replace(s[1], question="Where is the yellow marker?",
                            answer="row 3, column 2, which is left of the middle of the grid"),
        dataclasses.replace(s[2], answer="1 3"),
        dataclasses.replace(s[3], geometry=Geometry()),
    ]


def trainer_for(model, processor, out, klal=None, data=None, adapter=None, lll=None,
                **overrides):
    args = {"max_steps": 6, "per_device_train_batch_size": 4, "learning_rate": 1e-3,
            "use_cpu": True, "report_to": [], "save_strategy": "no", "disable_tqdm": True,
            "remove_unused_columns": False, "logging_steps": 1, "seed": 0, **overrides}
    adapter = adapter or get_adapter(model)
    return GroundingTrainer(
        model=model, args=TrainingArguments(output_dir=str(out), **args),
        train_dataset=data if data is not None else TaskDataset(TASK, 64),
        data_collator=GroundingCollator(processor, adapter, lll=lll),
        klal=klal if klal is not None else KLALConfig(weight=1.0), lll=lll,
    )


def step_logs(trainer):
    """The per-step log entries (not the end-of-training summary)."""
    return [e for e in trainer.state.log_history if "loss" in e]


def trainable(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def frozen(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}


def unchanged(before, model):
    after = dict(model.named_parameters())
    return [n for n, p in before.items() if torch.equal(p, after[n].detach())]


def assert_params_close(a, b, before, rtol=1e-4, atol=1e-7):
    """Parameters of two runs agree, compared as updates from the shared start ``before``."""
    assert a.keys() == b.keys() == before.keys()
    moved = 0
    for n in before:
        da, db = a[n] - before[n], b[n] - before[n]
        torch.testing.assert_close(da, db, rtol=rtol, atol=atol, msg=lambda m, n=n: f"{n}: {m}")
        moved += int(da.abs().max() > 0)
    assert moved > len(before) // 2, "most parameters should have been updated"


def last_answer_queries(answer_mask):
    """Per sample, the position of the answer's last content token (KLAL's default query)."""
    return [[int(m.nonzero().max())] for m in answer_mask]


def reference_losses(model, batch):
    """(NTP, KLAL) of one batch by a plain forward: the values step 1 must log."""
    inputs, aux = split_aux(batch)
    with torch.no_grad(), AttentionProbe(model, queries=last_answer_queries(aux["answer_mask"]),
                                         keys="visual", log_probs=True) as probe:
        ntp = model(**inputs).loss
    klal = klal_loss(probe.rows, aux["target"], key_mask=probe.key_mask,
                     query_mask=probe.query_mask, sample_mask=aux["has_target"])
    return float(ntp), float(klal)


def attention_on_target(model, batch):
    """Mean attention ratio (target cells / all visual tokens) of the last answer token, with
    rows averaged over layers and heads."""
    inputs, aux = split_aux(batch)
    with torch.no_grad(), AttentionProbe(model, queries=last_answer_queries(aux["answer_mask"]),
                                         keys="visual") as probe:
        model(**inputs)
    # rows: per layer (B, H, 1, K) -> (layers, B, H, K) -> mean over layers and heads: (B, K)
    att = torch.stack([r[:, :, 0] for r in probe.rows.values()]).mean((0, 2))
    ratio = attention_ratio(att, aux["target_cells"], probe.key_mask)
    assert torch.isfinite(ratio).all()
    return float(ratio.mean())


SHAPES = make_task("shapes", seed=0, image_size=112, mode="vqa")


SHAPES_REC = make_task("shapes", seed=0, image_size=112, mode="rec")


LLL_ONLY = KLALConfig(weight=0)  # NTP + LLL


def shapes_samples(n, start=0):
    """VQA and REC samples, alternating."""
    return [(SHAPES if i % 2 else SHAPES_REC).sample(start + i) for i in range(n)]


def reference_lll(model, batch, beta=1.0):
    """LLL at the last layer from the model's own logits at the visual tokens (its final norm and
    LM head), an explicit float64 softmax and the formula with soft weights."""
    inputs, aux = split_aux(batch)
    adapter = get_adapter(model)
    with torch.no_grad():
        logits = model(**inputs).logits.double()  # (B, L, V)
    values = []
    for b, pos in enumerate(adapter.visual_positions(inputs["input_ids"])):
        pairs = []  # one value per (concept, region) pair of the sample
        for j in range(aux["lll_region"].shape[1]):
            ids = aux["lll_concepts"][b, j][aux["lll_concepts_mask"][b, j]]
            w = aux["lll_region"][b, j, :len(pos)].double()
            if len(ids) == 0 or w.sum() == 0:
                continue
            p = torch.softmax(logits[b, pos], -1)[:, ids].sum(-1)  # (K,)
            keep = aux["lll_valid"][b, :len(pos)]
            w, p = w[keep], p[keep]
            inside = (w * -p.log()).sum() / w.sum()
            outside = ((1 - w) * -(1 - p).log()).sum() / (1 - w).sum()
            pairs.append(inside + beta * outside)
        assert bool(aux["has_concept"][b]) == bool(pairs)
        if pairs:
            values.append(torch.stack(pairs).mean())
    return float(torch.stack(values).mean())
