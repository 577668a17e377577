"""The KLAL training step (`lookhere.train.objective`, as `GroundingTrainer` runs it after its
first, checked step) makes no host sync and no host-to-device copy, and the probe makes none
inside the layers.

On a GPU the host queues kernels ahead of the device. Reading a value on the host (``.item()``,
``int()``, ``bool()``, ``.tolist()``, or an op whose output size depends on values: ``nonzero``,
a boolean index) makes it wait for every queued kernel; so does a tensor built on the host and
copied over (torch waits for the copy). This machine has no GPU, so `HostTraffic` watches the
calls that cause them: a `TorchFunctionMode` sees every torch call made from Python with its
arguments as written, which is what tells a factory without ``device=`` (born on the host) from
one on the model's device. A profile or a `TorchDispatchMode` would not do: on CPU ``.tolist()``
reaches no aten op, and factories arrive at the dispatcher with the device already filled in.
Each flagged call is charged to the innermost Python frame outside torch; only lookhere's own
count, since transformers' forward makes syncs of its own (LLaVA counts its image tokens).
Backward is covered too (the probe's custom Function, checkpoint recomputation): the mode runs
autograd's engine itself, with the mode on.
"""

import copy
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny
from torch.autograd.graph import _engine_run_backward
from torch.overrides import TorchFunctionMode
from trainkit import ragged_samples, step_logs, trainer_for

import lookhere
import lookhere.train.trainer as trainer_module
from lookhere.collate import GroundingCollator, split_aux
from lookhere.losses.config import KLALConfig
from lookhere.models import get_adapter
from lookhere.probe import AttentionProbe
from lookhere.train.objective import klal_probe, klal_term

pytestmark = pytest.mark.usefixtures("one_thread")

LOOKHERE = str(Path(lookhere.__file__).parent)
TORCH = str(Path(torch.__file__).parent)
# Tensor methods and torch functions that read values on the host
SYNC = {"item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__", "__array__",
        "cpu", "nonzero", "argwhere", "masked_select", "unique", "unique_consecutive", "equal",
        "allclose"}
# Factories: on the host unless given a device; tensor/as_tensor copy host data even then
FACTORIES = {"zeros", "ones", "empty", "full", "arange", "eye", "linspace", "rand", "randn",
             "randint", "randperm"}
FROM_HOST = {"tensor", "as_tensor", "from_numpy"}
INDEXING = {"__getitem__", "__setitem__", "index_put", "index_put_"}


class HostTraffic(TorchFunctionMode):
    """Records ``(file:line function, call)`` for each call from lookhere's code that would make
    a host sync or a host-to-device copy on a GPU."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, str]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") == "backward":
            # A mode is off while it handles a call, and `backward` would run the whole
            # backward pass (custom Functions' Python, checkpoint recomputation) inside this
            # call: run autograd's engine here with the mode back on instead.
            (loss,) = args
            with self:
                _engine_run_backward((loss,), (torch.ones_like(loss),),
                                     bool(kwargs.get("retain_graph")), False, (),
                                     allow_unreachable=True, accumulate_grad=True)
            return None
        why = _why(getattr(func, "__name__", ""), args, kwargs)
        if why:
            where = _caller()
            if where:
                self.events.append((where, why))
        return func(*args, **kwargs)


def _why(name: str, args: tuple, kwargs: dict) -> str | None:
    if name in SYNC:
        return name
    if name == "where" and len(args) + len(kwargs) == 1:
        return "where(condition)"
    if name in FACTORIES and kwargs.get("device") is None:
        return f"{name} without device"
    if name in FROM_HOST and not isinstance(args[0] if args else None, torch.Tensor):
        return f"{name} from host data"
    if name in INDEXING:
        index = args[1] if len(args) > 1 else None
        parts = index if isinstance(index, (tuple, list)) else (index,)
        if any(isinstance(t, torch.Tensor) and t.dtype in (torch.bool, torch.uint8)
               for t in parts):
            return f"{name} with a boolean mask"
    return None


def _caller() -> str | None:
    """'path:line function' of the innermost frame outside torch and this file, if lookhere's."""
    frame = sys._getframe(2)
    while frame and (frame.f_code.co_filename.startswith(TORCH)
                     or frame.f_code.co_filename == __file__):
        frame = frame.f_back
    if frame is None or not frame.f_code.co_filename.startswith(LOOKHERE):
        return None
    path = Path(frame.f_code.co_filename).relative_to(LOOKHERE)
    return f"{path}:{frame.f_lineno} {frame.f_code.co_name}"


def klal_step(model, inputs, aux, config, check):
    """The KLAL part of one training step, as `GroundingTrainer` runs it."""
    with klal_probe(model, inputs, aux, config, check) as probe:
        loss = model(**inputs).loss + klal_term(probe, aux, config, check)
        loss.backward()
    return loss


def batch_for(family):
    model, processor = tiny(family)
    batch = GroundingCollator(processor, get_adapter(model))(ragged_samples())
    return model, *split_aux(batch)


@pytest.mark.parametrize("query", ["last_answer", "answer_start"])
def test_klal_step_makes_no_host_sync(family, query):
    model, inputs, aux = batch_for(family)
    model.zero_grad()
    with HostTraffic() as traffic:
        loss = klal_step(model, inputs, aux, KLALConfig(query=query), check=False)
    assert traffic.events == []
    # the unchecked step is the checked one: same loss, same gradients
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    checked = klal_step(model, inputs, aux, KLALConfig(query=query), check=True)
    assert checked.item() == loss.item()
    assert all(torch.equal(a, p.grad) for a, p in
               zip(grads, [p for p in model.parameters() if p.grad is not None], strict=True))
    model.zero_grad()


def test_klal_step_with_heads_makes_no_host_sync():
    model, inputs, aux = batch_for("llava")
    config = KLALConfig(heads=((0, 1), (-1, 0), (-1, 2)))
    with HostTraffic() as traffic:
        klal_step(model, inputs, aux, config, check=False)
    model.zero_grad()
    assert traffic.events == []


def test_the_checks_are_seen():
    """The detector is not blind: the checked step's syncs (the keys' width, the values check
    of klal_loss) and all_answer's width are reported where they happen."""
    model, inputs, aux = batch_for("llava")
    with HostTraffic() as traffic:
        klal_step(model, inputs, aux, KLALConfig(), check=True)
    places = {where.split()[1] for where, _ in traffic.events}
    assert places == {"true_positions", "_check_values"}, traffic.events
    with HostTraffic() as traffic:
        klal_step(model, inputs, aux, KLALConfig(query="all_answer"), check=False)
    model.zero_grad()
    assert [(w.split()[1], why) for w, why in traffic.events] == [("true_positions", "__int__")]


def test_probe_layers_make_no_host_sync(family):
    """The public probe with roles: one sync per forward (the visual keys' width), none per
    layer, whatever the number of layers."""
    model, inputs, aux = batch_for(family)
    with HostTraffic() as traffic, AttentionProbe(model, queries="last_answer") as probe:
        model(**inputs)
        sum(r.sum() for r in probe.rows.values()).backward()
    model.zero_grad()
    assert len(probe.rows) == get_adapter(model).num_layers >= 2
    assert [(w.split()[1], why) for w, why in traffic.events] == [("true_positions", "__int__")]


def test_trainer_checks_the_first_step_only(tmp_path, monkeypatch):
    """GroundingTrainer runs the checked step once, then the sync-free one, and both log the
    KLAL of a plain checked computation."""
    calls = []

    def spy(probe, aux, config, check=True):
        calls.append((check, klal_term(probe, aux, config, check=True).item()))
        return klal_term(probe, aux, config, check)

    monkeypatch.setattr(trainer_module, "klal_term", spy)
    model, processor = tiny("llava")
    trainer = trainer_for(copy.deepcopy(model), processor, tmp_path, max_steps=3)
    trainer.train()
    assert [c for c, _ in calls] == [True, False, False]
    logged = [e["klal_loss"] for e in step_logs(trainer)]
    assert logged == pytest.approx([v for _, v in calls], rel=1e-6)
