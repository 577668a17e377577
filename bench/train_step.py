"""Cost of KLAL and LLL in training: one step with NTP, NTP + KLAL and NTP + LLL, side by side
in one run.

One training step = forward + loss + backward + AdamW step + zero_grad, on a fixed batch, with
the code path `GroundingTrainer` runs (lookhere.train.objective), not a re-implementation:

  ntp    loss = model(**inputs).loss
  klal   with klal_probe(model, inputs, aux, KLALConfig(weight=1.0), check) as probe:
             loss = model(**inputs).loss + weight * klal_term(probe, aux, cfg, check)
             loss.backward()  # inside the context, as the trainer does
  lll    with lll_capture(model, inputs, LLLConfig(weight=1.0)) as capture:
             loss = model(**inputs).loss + weight * lll_term(capture, aux, cfg)
             loss.backward()

`check` is True on a process's first KLAL step only, as in the trainer (its later steps skip the
input checks and their host syncs).

then, for both, `optimizer.step()` and `optimizer.zero_grad(set_to_none=True)`. The optimizer is
AdamW (lr 5e-5, no weight decay, `fused=True` where torch supports it: the Trainer's default
"adamw_torch_fused"), over every parameter, embeddings and LM head included; no gradient
clipping. The model output is dropped before backward (as the Trainer does), so neither variant
holds the logits through it. The probe's set-up (`klal_probe`: query and key positions) is
inside the timed step ("setup" phase): the trainer pays it every step. LLL reads the last layer's
output at the visual tokens (LLLConfig defaults: chunks of 256 tokens, each unembedded under
activation checkpointing).

Commands (from the repository root):

  HF_HUB_OFFLINE=1 .venv/bin/python bench/train_step.py --size tiny          # CPU: ~2 min
  HF_HUB_OFFLINE=1 .venv/bin/python bench/train_step.py --size 7b            # CPU: 10-20 min
  HF_HUB_OFFLINE=1 .venv/bin/python bench/train_step.py --size tiny --profile # + where it goes
  python bench/train_step.py --device cuda --size all                        # GPU, bf16

Sizes:
- tiny: the demo model, `build_tiny("llava", "demo", 0)` (--tiny-preset picks another of
  lookhere's TINY_SIZES, e.g. "small", the ~13M shapes of bench/probe.py's tiny; the output
  names the preset and its parameter count), 112 px -> 64 visual tokens, with a real
  `GroundingCollator` batch of 8 grid_patch samples (`make_task("grid_patch", seed=0,
  image_size=112, grid_rows=8, grid_cols=8)`); each sample's concept (LLL) is the colour of its
  target marker (`meta["concept"]`), its region the marker's cell (C = 1 concept per sample).
- 7b: LLaVA-1.5-7B language-model layer shapes (hidden 4096, 32 heads, MLP 11008, vocab 32064)
  truncated to 2 of 32 layers, random weights from LlavaConfig(CLIPVisionConfig + LlamaConfig)
  (`build_model` of bench/probe.py), with a small CLIP tower (hidden 64, 1 layer, 336 px, patch
  14 -> 576 = 24x24 visual tokens): the language model dominates the step. Batch 1 built
  directly: 4 text tokens, the image token expanded 576 times, 28 question tokens, 7 answer
  tokens and EOS (616 tokens); labels on the last 8 tokens; aux answer_mask on the 7 answer
  tokens; target = a box (cells 6..13 x 8..15 of the 24x24 grid) made into a map by
  `lookhere.targets.cell_weights` and normalised; LLL: two concepts (think of a colour and a
  shape word; two random token ids), both with the box as their region, every visual token
  valid. Parameters: 685M (embedding and LM head 131M
  each, projector 17M, all trained) -> fp32 weights 2.7 GB + AdamW state 5.5 GB + gradients
  2.7 GB: ~11 GB per process, which fits a 24 GB machine (the time and memory processes run one
  after another), so nothing is frozen and the optimizer is the real AdamW.

Method (as bench/probe.py). Every measurement runs in a fresh subprocess (this script re-invoked
with a hidden flag):
- time: one process builds the model and optimizer once and runs both variants on them: warm-up
  rounds, then timed rounds; a round runs the variants back to back, the order alternating
  (ntp klal lll, lll klal ntp, ...), so slow spells of a shared machine and order effects hit
  all alike.
  Reported: median and min wall time per step, median CPU seconds of the process, and the
  median time of each phase (setup, forward, term, backward, optimizer; on CUDA from CUDA events,
  without host syncs inside the step). On CPU the process runs with OMP_WAIT_POLICY=PASSIVE
  (waiting threads sleep, so CPU seconds count work done; --spin turns this off), and a step
  during which other processes took more than 10% of the machine's CPU (/proc/stat) is
  re-run, at most as many times as there are timed rounds (--reruns; 0 on a machine that is
  busy all along, where re-runs only cost time). At the tiny size on CPU the time process keeps
  glibc's heap steady (no mmap, no trim: `steady_heap`; --default-malloc turns it off), which
  takes random page-fault costs out of the steps.
  The headline time ratio is the median over rounds of (NTP+KLAL step / NTP step of the same
  round), and the same for NTP+LLL, in CPU seconds (the work done, which other processes on the
  machine hardly change) and in wall time: the steps ran back to back, so a load that comes and
  goes between rounds cancels out, which a ratio of two medians does not guarantee (those are
  printed too).
- memory: by default one process per variant (--one-memory-process: one for all), warm-up
  steps (they also allocate the AdamW state), then one measured step. CPU: RSS peak of the step
  minus the RSS just before it (gc, malloc_trim, then the peak reset via /proc/self/clear_refs,
  then VmHWM), with glibc's mmap threshold pinned at 1 MiB so that freed tensors leave the RSS.
  CUDA: max_memory_allocated minus memory_allocated before the step. Before a step the weights
  and the AdamW state exist and the gradients do not (zero_grad sets them to None), so "step
  peak" = gradients + activations + temporaries; "fwd+bwd peak" is the same read at the end of
  backward (before the optimizer step); "total peak" is the process's whole peak.
  CPU, tiny size also: "alloc peak", from one more step per variant: the peak of the bytes glibc
  has handed out (mallinfo2, sampled after every aten op through a TorchDispatchMode) above
  the value before the step. It counts live allocations only, so it separates tensor memory from
  RSS effects of heap fragmentation (blocks under 1 MiB stay in the heap), the noise of the
  RSS figure at the tiny size; it misses temporaries that live inside a single op. (At 7b the
  steps' blocks are >= 1 MiB, mmapped and unmapped, so the RSS is the figure; one more step
  would cost ~20 s per process.)
--profile [STEPS] adds STEPS torch.profiler steps of each variant (after the timing) and prints
the ops whose median self time differs most between NTP and each other variant: where the time
goes.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable

from probe import (  # bench/probe.py: the shared model builder and measuring helpers
    MAX_FOREIGN,
    MIB,
    SHAPE_7B,
    _cpu_seconds,
    _proc_status_mib,
    _reset_peak_rss,
    alloc_peak_mib,
    build_model,
    machine_line,
    run_child,
)

VARIANTS = ("ntp", "klal", "lll")
LABEL = {"ntp": "NTP", "klal": "NTP+KLAL", "lll": "NTP+LLL"}
PHASES = ("setup", "forward", "term", "backward", "optimizer")  # term: KLAL's or LLL's
TINY_SAMPLES = 8
# 7b text: "USER: " (4 tokens) <image> x 576, question (28), answer (7) + EOS; labels on the last 8
TEXT_BEFORE, QUESTION, ANSWER = 4, 28, 7
SHAPE_7B_TRAIN = dataclasses.replace(SHAPE_7B, n_text=TEXT_BEFORE + QUESTION + ANSWER + 1)
TARGET_CELLS = (6, 14, 8, 16)  # rows 6..13, cols 8..15 of the 24x24 grid: the 7b target box
LLL_CONCEPTS_7B = 2  # 7b: concepts per sample, each one random token id
DEFAULT_ROUNDS = {"tiny": (2, 20), "7b": (1, 2)}  # (warm-up, timed) rounds on CPU
MEM_WARMUP = {"tiny": 2, "7b": 1}  # warm-up steps before the measured one, per memory process


# -- model, batch, step
def build_tiny_case(device: str, dtype, preset: str = "demo") -> tuple:
    """(model, inputs, aux, description) of a tiny preset and a grid_patch collator batch, with
    the LLL entries (concept: the target marker's colour)."""
    from lookhere.collate import GroundingCollator, split_aux
    from lookhere.data.synthetic.base import make_task
    from lookhere.losses.config import LLLConfig
    from lookhere.models import build_tiny
    from lookhere.models.adapter import get_adapter

    model, processor = build_tiny("llava", preset, 0)
    task = make_task("grid_patch", seed=0, image_size=112, grid_rows=8, grid_cols=8)
    samples = [task.sample(i) for i in range(TINY_SAMPLES)]
    samples = [dataclasses.replace(s, meta={**s.meta, "concept": s.meta["target_color"]})
               for s in samples]
    batch = GroundingCollator(processor, get_adapter(model), lll=LLLConfig())(samples)
    inputs, aux = split_aux(batch)
    ids = inputs["input_ids"]  # (B, L)
    n_vis = int((ids[0] == model.config.image_token_index).sum())
    desc = (f"tiny LLaVA preset {preset!r}, "
            f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params; "
            f"GroundingCollator batch of {ids.shape[0]} grid_patch samples, {ids.shape[1]} "
            f"tokens ({n_vis} visual), {int((inputs['labels'] != -100).sum())} labelled tokens")
    inputs = {k: v.to(device, dtype if v.is_floating_point() else None) for k, v in inputs.items()}
    return model.to(device, dtype).train(), inputs, aux, desc


def build_7b_case(device: str, dtype) -> tuple:
    """(model, inputs, aux, description) at the 7B layer shapes (see the module doc)."""
    import torch

    from lookhere.data.sample import Geometry
    from lookhere.models.layout import GridGeometry
    from lookhere.targets import cell_weights

    shape = SHAPE_7B_TRAIN
    model = build_model(shape, device, dtype)
    g = torch.Generator().manual_seed(0)
    b, image_id, side = shape.batch, shape.vocab - 1, shape.image_size // shape.patch
    text = torch.randint(3, image_id, (b, shape.n_text), generator=g)
    text[:, -1] = 2  # EOS closes the answer
    image = torch.full((b, shape.n_visual), image_id)
    ids = torch.cat([text[:, :TEXT_BEFORE], image, text[:, TEXT_BEFORE:]], dim=1)  # (B, L)
    labels = torch.full_like(ids, -100)
    labels[:, -(ANSWER + 1):] = ids[:, -(ANSWER + 1):]  # answer + EOS
    answer = torch.zeros_like(ids, dtype=torch.bool)
    answer[:, -(ANSWER + 1):-1] = True  # content tokens only, as GroundingCollator marks them
    grid = GridGeometry(rows=side, cols=side, cell_size=(shape.patch, shape.patch),
                        scale=(1.0, 1.0), offset=(0.0, 0.0),
                        image_size=(shape.image_size, shape.image_size))
    r0, r1, c0, c1 = TARGET_CELLS
    box = (c0 * shape.patch, r0 * shape.patch, c1 * shape.patch, r1 * shape.patch)  # xyxy px
    w = torch.from_numpy(cell_weights(grid, Geometry(boxes=[box]))).reshape(-1)  # (K,)
    target = (w / w.sum()).float().expand(b, -1).contiguous()  # (B, K)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
              "pixel_values": torch.randn(b, 3, shape.image_size, shape.image_size, generator=g)}
    inputs = {k: v.to(device, dtype if v.is_floating_point() else None) for k, v in inputs.items()}
    aux = {"answer_mask": answer, "target": target, "has_target": torch.ones(b, dtype=torch.bool)}
    c = LLL_CONCEPTS_7B
    region = (w > 0).float().expand(b, c, -1).contiguous()  # (B, C, K): the box's cells
    aux.update(lll_region=region, lll_valid=torch.ones(b, shape.n_visual, dtype=torch.bool),
               lll_concepts=torch.randint(3, image_id, (b, c, 1), generator=g),
               lll_concepts_mask=torch.ones(b, c, 1, dtype=torch.bool),
               has_concept=torch.ones(b, dtype=torch.bool))
    n_params = sum(p.numel() for p in model.parameters())
    desc = (f"{shape.describe()} ({ids.shape[1]} tokens), {n_params / 1e6:.0f}M params; "
            f"labels on the last {ANSWER + 1} tokens, KLAL query = last of {ANSWER} answer tokens, "
            f"box target on {(r1 - r0) * (c1 - c0)} of {shape.n_visual} cells; LLL: {c} "
            f"concepts on the box")
    return model, inputs, aux, desc


def make_optimizer(model):
    """AdamW as the Trainer's default "adamw_torch_fused" (fused where torch supports it)."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    try:
        return torch.optim.AdamW(params, lr=5e-5, weight_decay=0.0, fused=True)
    except RuntimeError:  # no fused kernel for this device / dtype
        return torch.optim.AdamW(params, lr=5e-5, weight_decay=0.0)


def train_step(model, optimizer, inputs: dict, aux: dict, variant: str, config,
               mark: Callable[[str], None], check: bool = False):
    """One step of `variant` (`config`: its KLALConfig or LLLConfig, None for NTP). `mark(phase)`
    is called at the end of each phase of PHASES; `check`: KLAL's first-step checks (the trainer
    runs them once). Returns the detached (ntp, term) losses (term None for NTP)."""
    from contextlib import nullcontext

    from lookhere.train.objective import klal_probe, klal_term, lll_capture, lll_term

    if variant == "klal":
        context = klal_probe(model, inputs, aux, config, check)
    elif variant == "lll":
        context = lll_capture(model, inputs, config)
    else:
        context = nullcontext()
    with context as recorder:
        mark("setup")
        ntp = model(**inputs).loss
        mark("forward")
        term = None
        if variant == "klal":
            term = klal_term(recorder, aux, config, check)
        elif variant == "lll":
            term = lll_term(recorder, aux, config)
        loss = ntp if term is None else ntp + config.weight * term
        mark("term")
        loss.backward()  # inside the context, as GroundingTrainer does
    mark("backward")
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    mark("optimizer")
    return ntp.detach(), None if term is None else term.detach()


class PhaseClock:
    """`mark` for train_step: per phase, wall seconds (CUDA events on CUDA: no host sync) and
    CPU seconds of this process (CPU only)."""

    def __init__(self, device: str) -> None:
        import torch

        self.cuda = device == "cuda"
        self.marks: list[tuple[str, object, float]] = []
        self._event = (lambda: torch.cuda.Event(enable_timing=True)) if self.cuda else None
        self("start")

    def __call__(self, phase: str) -> None:
        if self.cuda:
            ev = self._event()
            ev.record()
            self.marks.append((phase, ev, 0.0))
        else:
            self.marks.append((phase, time.perf_counter(), time.process_time()))

    def durations(self) -> tuple[dict[str, float], dict[str, float]]:
        """({phase: wall s}, {phase: CPU s}), after the step (on CUDA, after a synchronize)."""
        wall, cpu = {}, {}
        for (_, a, ca), (name, b, cb) in zip(self.marks, self.marks[1:], strict=False):
            wall[name] = a.elapsed_time(b) / 1000 if self.cuda else b - a
            cpu[name] = cb - ca
        return wall, cpu


# -- measuring, inside the child processes
def setup(spec: dict) -> tuple:
    import torch

    from lookhere.losses.config import KLALConfig, LLLConfig

    torch.set_num_threads(spec["threads"])
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[spec["dtype"]]
    torch.manual_seed(0)
    if spec["size"] == "tiny":
        model, inputs, aux, desc = build_tiny_case(spec["device"], dtype, spec["tiny_preset"])
    else:
        model, inputs, aux, desc = build_7b_case(spec["device"], dtype)
    configs = {"ntp": None, "klal": KLALConfig(weight=1.0), "lll": LLLConfig(weight=1.0)}
    return model, make_optimizer(model), inputs, aux, configs, desc


class FirstCheck:
    """`check` for train_step: True on a variant's first step in this process, as the trainer
    checks its first step only."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def __call__(self, variant: str) -> bool:
        first = variant not in self.seen
        self.seen.add(variant)
        return first


def timed_step(model, opt, inputs, aux, variant, cfg, device: str, check: bool) -> dict:
    """Wall and CPU seconds of one step, the share of the machine's CPU other processes took
    meanwhile, phase durations and losses."""
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
    t0, busy0, own0 = _cpu_seconds()
    cpu0 = time.process_time()  # ns resolution (os.times: clock ticks) for the reported figure
    clock = PhaseClock(device)
    ntp, term = train_step(model, opt, inputs, aux, variant, cfg, clock, check)
    if device == "cuda":
        torch.cuda.synchronize()
    cpu1 = time.process_time()
    t1, busy1, own1 = _cpu_seconds()
    foreign = max(0.0, (busy1 - busy0) - (own1 - own0)) / ((t1 - t0) * (os.cpu_count() or 1))
    phases, phases_cpu = clock.durations()
    return {"wall": t1 - t0, "cpu": cpu1 - cpu0, "foreign": foreign, "phases": phases,
            "phases_cpu": phases_cpu, "ntp": float(ntp),
            "term": None if term is None else float(term)}


def steady_heap() -> bool:
    """glibc: serve every block from the heap and keep freed memory there (no mmap, no trim).

    With the default dynamic mmap threshold, a step's larger tensors are sometimes mmapped and
    unmapped, sometimes served from the heap, and each fresh mapping costs page faults: at the
    tiny size the same step's CPU time then jumps between two levels ~10 ms apart, at random,
    in every variant alike (seen as 38 vs 50 ms forwards). A steady heap takes that noise out of
    the comparison. Returns whether glibc accepted the settings."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name)
    m_trim_threshold, m_mmap_max = -1, -4  # glibc's mallopt parameters
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))


def child_time(spec: dict) -> dict:
    """Warm-up and timed rounds of the variants, alternating order; optionally a profile."""
    heap = spec["steady_heap"] and steady_heap()
    model, opt, inputs, aux, configs, desc = setup(spec)
    device, warmup, rounds, variants = spec["device"], spec["warmup"], spec["rounds"], \
        spec["variants"]
    steps: dict[str, list[dict]] = {v: [] for v in variants}
    spare = budget = rounds if spec["reruns"] is None else spec["reruns"]
    first = FirstCheck()
    for r in range(warmup + rounds):
        for v in variants if r % 2 == 0 else variants[::-1]:
            rec = timed_step(model, opt, inputs, aux, v, configs[v], device, first(v))
            while device == "cpu" and r >= warmup and rec["foreign"] > MAX_FOREIGN and spare:
                spare -= 1
                rec = timed_step(model, opt, inputs, aux, v, configs[v], device, first(v))
            if r >= warmup:
                steps[v].append(rec)
    out = {"desc": desc, "reruns": budget - spare, "steps": steps, "steady_heap": heap}
    if spec["profile"]:
        out["profile"] = profile_ops(model, opt, inputs, aux, configs, variants, device,
                                     spec["profile"], first)
    return out


def profile_ops(model, opt, inputs, aux, configs, variants, device: str, steps: int,
                first: FirstCheck) -> dict:
    """Per variant and op name: the median over `steps` profiled steps (variants alternating)
    of its self time in ms (CPU, and device on CUDA) and its calls per step."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for r in range(steps):
        for v in variants if r % 2 == 0 else variants[::-1]:
            with profile(activities=activities) as prof:
                train_step(model, opt, inputs, aux, v, configs[v], lambda phase: None, first(v))
                if device == "cuda":
                    torch.cuda.synchronize()
            runs[v].append({e.key: (e.self_cpu_time_total / 1000,
                                    getattr(e, "self_device_time_total", 0) / 1000, e.count)
                            for e in prof.key_averages()})
    out: dict[str, dict] = {}
    for v, per_step in runs.items():
        names = set().union(*per_step)
        out[v] = {n: {k: statistics.median(s.get(n, (0.0, 0.0, 0))[i] for s in per_step)
                      for i, k in enumerate(("cpu_ms", "device_ms", "calls"))} for n in names}
    return out


def peak_mib(device: str) -> float:
    """The process's peak so far: VmHWM (CPU) or max_memory_allocated (CUDA), MiB."""
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / MIB
    return _proc_status_mib("VmHWM")


def measure_memory(model, opt, inputs: dict, aux: dict, variant: str, cfg, device: str) -> dict:
    """One step's peaks (at the end of backward, and of the whole step) above the memory in
    use just before it, in MiB."""
    import torch

    if device == "cuda":
        gc.collect()
        torch.cuda.synchronize()
        before, reset = torch.cuda.memory_allocated() / MIB, True
        torch.cuda.reset_peak_memory_stats()
    else:
        reset = _reset_peak_rss()
        before = _proc_status_mib("VmRSS")
    peaks: dict[str, float] = {}

    def mark(phase: str) -> None:
        if phase in ("backward", "optimizer"):
            peaks[phase] = peak_mib(device)

    train_step(model, opt, inputs, aux, variant, cfg, mark)
    return {"fwd_bwd_peak_mib": peaks["backward"] - before, "peak_mib": peaks["optimizer"] - before,
            "total_mib": peaks["optimizer"], "before_mib": before, "peak_was_reset": reset}


def child_memory(spec: dict) -> dict:
    """Per variant: warm-up steps (they allocate the AdamW state), then one measured step."""
    model, opt, inputs, aux, configs, _ = setup(spec)
    out = {}
    first = FirstCheck()
    for v in spec["variants"]:
        for _ in range(spec["mem_warmup"]):
            train_step(model, opt, inputs, aux, v, configs[v], lambda phase: None, first(v))
        out[v] = measure_memory(model, opt, inputs, aux, v, configs[v], spec["device"])
        if spec["device"] == "cpu" and spec["size"] == "tiny":  # a second measured step
            out[v]["alloc_peak_mib"] = alloc_peak_mib(
                lambda v=v: train_step(model, opt, inputs, aux, v, configs[v], lambda p: None))
    return out


# -- orchestration, in the parent
def spawn(mode: str, size: str, variants: list[str], args) -> dict:
    warmup, rounds = rounds_for(size, args)
    spec = {"mode": mode, "size": size, "variants": variants, "device": args.device,
            "dtype": args.dtype, "threads": args.threads, "warmup": warmup, "rounds": rounds,
            "mem_warmup": MEM_WARMUP[size], "profile": args.profile,
            "tiny_preset": args.tiny_preset, "reruns": args.reruns,
            "steady_heap": size == "tiny" and args.device == "cpu" and not args.default_malloc}
    return run_child(__file__, spec, args, f"{mode} {size} {variants}")


def rounds_for(size: str, args) -> tuple[int, int]:
    """(warm-up, timed) rounds: --warmup/--repeats, else per size (more on CUDA)."""
    warmup, rounds = DEFAULT_ROUNDS[size] if args.device == "cpu" else (3, 20)
    return (warmup if args.warmup is None else args.warmup), (args.repeats or rounds)


def summarise(time_res: dict, memory: dict, variants: list[str]) -> dict:
    """Per variant: medians and mins of the timed steps, the memory figures and "paired": the
    median over rounds of the within-round ratio to the NTP step (wall and CPU)."""
    res = {}
    for v in variants:
        steps = time_res["steps"][v]
        # Within a round the steps ran back to back, under about the same background load.
        per_round = [(x["wall"] / n["wall"], x["cpu"] / n["cpu"])
                     for n, x in zip(time_res["steps"]["ntp"], steps, strict=True)]
        res[v] = {
            "median_s": statistics.median(s["wall"] for s in steps),
            "min_s": min(s["wall"] for s in steps),
            "cpu_s": statistics.median(s["cpu"] for s in steps),
            "phases": {p: statistics.median(s["phases"][p] for s in steps) for p in PHASES},
            "phases_cpu": {p: statistics.median(s["phases_cpu"][p] for s in steps)
                           for p in PHASES},
            "paired": {"wall": statistics.median(w for w, _ in per_round),
                       "cpu": statistics.median(c for _, c in per_round)},
            **memory[v],
        }
    return res


def ratio(res: dict, variant: str, key: str) -> float:
    return res[variant][key] / max(res["ntp"][key], 1e-9)


def section_table(res: dict) -> str:
    cols = [("wall s median", "median_s", ".3f"), ("wall s min", "min_s", ".3f"),
            ("CPU s median", "cpu_s", ".3f"), ("fwd+bwd peak MiB", "fwd_bwd_peak_mib", ".0f"),
            ("step peak MiB", "peak_mib", ".0f"), ("total peak MiB", "total_mib", ".0f")]
    if res["ntp"].get("alloc_peak_mib") is not None:
        cols.append(("alloc peak MiB", "alloc_peak_mib", ".1f"))
    head = "| variant | " + " | ".join(f"{name} | × NTP" for name, _, _ in cols) + " |"
    lines = [head, "|---" * (1 + 2 * len(cols)) + "|"]
    for v in res:
        cells = [LABEL[v]]
        for _, key, fmt in cols:
            cells += [format(res[v][key], fmt), f"{ratio(res, v, key):.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def phase_table(res: dict, device: str) -> str:
    """Median ms per phase (wall; on CPU also CPU): NTP, then each other variant with its
    difference to NTP as a share of the NTP step."""
    others = [v for v in res if v != "ntp"]
    kinds = [("wall", "phases", "median_s")] + ([("CPU", "phases_cpu", "cpu_s")]
                                                 if device == "cpu" else [])
    head = ["phase"]
    for kind, _, _ in kinds:
        head += [f"NTP {kind} ms"] + [f"{LABEL[v]} {kind} ms (× NTP step)" for v in others]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for p in PHASES:
        cells = [p]
        for _, key, total in kinds:
            a = 1000 * res["ntp"][key][p]
            cells.append(f"{a:.1f}")
            for v in others:
                b = 1000 * res[v][key][p]
                cells.append(f"{b:.1f} ({100 * (b - a) / 1000 / res['ntp'][total]:+.1f}%)")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ratio_line(size: str, res: dict, variant: str) -> str:
    """The headline: paired CPU and wall ratios and the step-peak ratio, then the others."""
    r = res[variant]
    return (f"{LABEL[variant]} vs NTP ({size}): time ×{r['paired']['cpu']:.3f} CPU, "
            f"×{r['paired']['wall']:.3f} wall; peak memory ×{ratio(res, variant, 'peak_mib'):.3f}"
            f"\n  time: medians of per-round ratios; ratio of CPU medians "
            f"×{ratio(res, variant, 'cpu_s'):.3f}, of wall medians "
            f"×{ratio(res, variant, 'median_s'):.3f}, of wall mins "
            f"×{ratio(res, variant, 'min_s'):.3f}\n  memory: step peak; fwd+bwd peak "
            f"×{ratio(res, variant, 'fwd_bwd_peak_mib'):.3f}, total peak "
            f"×{ratio(res, variant, 'total_mib'):.3f}"
            + (f", allocated peak ×{ratio(res, variant, 'alloc_peak_mib'):.3f}"
               if res["ntp"].get("alloc_peak_mib") is not None else ""))


def load_line(time_res: dict) -> str:
    f = [s["foreign"] for steps in time_res["steps"].values() for s in steps]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"CPU taken by other processes during the kept timed steps: mean "
            f"{100 * statistics.mean(f):.0f}%, max {100 * max(f):.0f}% of the machine; "
            f"{time_res['reruns']} step(s) re-run for exceeding {100 * MAX_FOREIGN:.0f}%; "
            f"load average now {load}")


def loss_line(time_res: dict) -> str:
    """First and last timed value of each loss: a sanity check (finite, moving)."""
    series = {"NTP": [s["ntp"] for s in time_res["steps"]["ntp"]]}
    for v, name in (("klal", "KLAL term"), ("lll", "LLL term")):
        if v in time_res["steps"]:
            series[name] = [s["term"] for s in time_res["steps"][v]]
    if not all(math.isfinite(x) for xs in series.values() for x in xs):
        sys.exit(f"non-finite loss in the timed steps: {series}")
    return "Losses, first and last timed step of its variant: " + "; ".join(
        f"{name} {xs[0]:.3f} -> {xs[-1]:.3f}" for name, xs in series.items())


def profile_table(prof: dict, variant: str, top: int) -> str:
    """The ops whose self time grows most from NTP to `variant` (profiled steps)."""
    cuda = any(r["device_ms"] for r in prof[variant].values())
    key = "device_ms" if cuda else "cpu_ms"
    names = set(prof["ntp"]) | set(prof[variant])
    zero = {"cpu_ms": 0.0, "device_ms": 0.0, "calls": 0}
    rows = [(n, prof["ntp"].get(n, zero), prof[variant].get(n, zero)) for n in names]
    rows.sort(key=lambda r: r[2][key] - r[1][key], reverse=True)
    unit = "device" if cuda else "CPU"
    lines = [f"| op | NTP self {unit} ms (calls) | {LABEL[variant]} self {unit} ms (calls) | "
             "difference |", "|---|---|---|---|"]
    for n, a, b in rows[:top]:
        lines.append(f"| {n} | {a[key]:.1f} ({a['calls']:.0f}) | {b[key]:.1f} ({b['calls']:.0f}) | "
                     f"{b[key] - a[key]:+.1f} |")
    tot = [sum(r[key] for r in prof[v].values()) for v in ("ntp", variant)]
    lines.append(f"| (all ops) | {tot[0]:.1f} | {tot[1]:.1f} | {tot[1] - tot[0]:+.1f} |")
    return "\n".join(lines)


def report_section(size: str, args) -> dict:
    t0 = time.perf_counter()
    warmup, rounds = rounds_for(size, args)
    variants = args.variants
    time_res = spawn("time", size, variants, args)
    if args.one_memory_process:
        memory = spawn("memory", size, variants, args)
    else:
        memory = {v: spawn("memory", size, [v], args)[v] for v in variants}
    res = summarise(time_res, memory, variants)
    memory_how = "one process" if args.one_memory_process else "one process per variant"
    parts = [f"## {size}", time_res["desc"],
             f"{warmup} warm-up + {rounds} timed rounds (one step of each variant per round, "
             f"order alternating; "
             f"{'steady heap' if time_res['steady_heap'] else 'default malloc'}); memory: "
             f"{MEM_WARMUP[size]} warm-up step(s), then one measured step, {memory_how}",
             section_table(res), phase_table(res, args.device),
             *(ratio_line(size, res, v) for v in variants if v != "ntp"),
             loss_line(time_res), load_line(time_res)]
    print("\n\n".join(parts), flush=True)
    if "profile" in time_res:
        for v in variants[1:]:
            print(f"\nProfile (torch.profiler), median of {args.profile} steps per variant, ops "
                  "by added self time (a row's calls: per step):\n\n"
                  + profile_table(time_res["profile"], v, args.profile_top), flush=True)
    print(f"\n({time.perf_counter() - t0:.0f} s)\n", flush=True)
    return {"summary": res, "time": time_res, "memory": memory}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=("tiny", "7b", "all"), default="all",
                   help="tiny: a tiny preset (--tiny-preset) + 8 grid_patch samples; 7b: "
                        "LLaVA-1.5-7B LM layer "
                        "shapes, 2 layers, 576 visual + 40 text tokens, batch 1; all: both "
                        "(default)")
    p.add_argument("--tiny-preset", default="demo",
                   help="lookhere TINY_SIZES preset of the tiny size (default: demo; 'small' "
                        "is bench/probe.py's tiny)")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help="comma-separated variants to run, NTP always included (default: "
                        f"{','.join(VARIANTS)})")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where the model runs (default: cpu)")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default=None,
                   help="weights and activations (default: fp32 on CPU, bf16 on CUDA)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed rounds, one step of each variant per round (default: tiny 20, "
                        "7b 2 on CPU; 20 on CUDA)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed rounds first (default: tiny 2, 7b 1 on CPU; 3 on CUDA)")
    p.add_argument("--reruns", type=int, default=None,
                   help="CPU: at most this many timed steps re-run because other processes took "
                        f"more than {100 * MAX_FOREIGN:.0f}%% of the CPU meanwhile (default: the "
                        "number of timed rounds)")
    p.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 2),
                   help="torch.set_num_threads in the CPU workers (default: up to 2)")
    p.add_argument("--one-memory-process", action="store_true",
                   help="measure both variants' memory in one process, one after the other "
                        "(default: a fresh process per variant)")
    p.add_argument("--spin", action="store_true",
                   help="CPU: leave OpenMP threads spinning (faster wall time on an idle "
                        "machine; CPU seconds then count the spinning too)")
    p.add_argument("--default-malloc", action="store_true",
                   help="CPU, tiny size: time with glibc's default malloc instead of a steady "
                        "heap (no mmap, no trim; see steady_heap), page-fault noise included")
    p.add_argument("--profile", type=int, nargs="?", const=3, default=0, metavar="STEPS",
                   help="after the timing, also profile STEPS steps of each variant (default 3; "
                        "variants alternating) with torch.profiler and print the ops whose "
                        "median self time grows most with KLAL")
    p.add_argument("--profile-top", type=int, default=15,
                   help="rows of the --profile table (default 15)")
    p.add_argument("--json", help="also write all raw results (every step) to this file")
    p.add_argument("--_child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        p.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.profile < 0 or any(x is not None and x < 0 for x in (args.warmup, args.reruns)):
        p.error("--warmup, --reruns and --profile must be >= 0")
    if args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    chosen = [v.strip() for v in args.variants.split(",") if v.strip()]
    if any(v not in VARIANTS for v in chosen):
        p.error(f"--variants must name some of {', '.join(VARIANTS)}, got {args.variants!r}")
    args.variants = [v for v in VARIANTS if v == "ntp" or v in chosen]
    if len(args.variants) < 2:
        p.error("--variants must name klal or lll (each is compared with ntp)")
    if not args._child:
        from lookhere.models.tiny import TINY_SIZES

        if args.tiny_preset not in TINY_SIZES:
            p.error(f"--tiny-preset must be one of {sorted(TINY_SIZES)}, got {args.tiny_preset!r}")
    if args.dtype is None:
        args.dtype = "bf16" if args.device == "cuda" else "fp32"
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args._child:
        spec = json.loads(args._child)
        child = child_time if spec["mode"] == "time" else child_memory
        print(json.dumps(child(spec)))
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.device == "cuda":
        args.threads = os.cpu_count() or 1
    t0 = time.perf_counter()
    raw: dict = {"args": {k: v for k, v in vars(args).items() if k != "_child"}}
    print(f"# lookhere training-step benchmark: "
          f"{' vs '.join(LABEL[v] for v in args.variants)}\n\n{machine_line(args)}\n",
          flush=True)
    for size in ("tiny", "7b"):
        if args.size in (size, "all"):
            raw[size] = report_section(size, args)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"Total wall time {time.perf_counter() - t0:.0f} s; load average at the end {load}")
    if args.json:
        from lookhere.io import write_json

        write_json(raw, args.json)


if __name__ == "__main__":
    main()
