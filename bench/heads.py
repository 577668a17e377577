"""Cost of the localization-heads search per sample: probe scoring vs eager + output_attentions.

The head search (`lookhere.heads.search`) reads, for every sample, the last text token's attention
over the visual tokens in every head of every layer, from one forward of the prefill prompt
(image, then the expression; no assistant turn). Three ways to run that forward, side by side on
the same model (the text attention switched with `model.set_attn_implementation`, so the three
share weights), on the same processed Shapes REC sample(s):

  sdpa   plain SDPA forward of the prefill prompt, nothing recorded: the baseline
  probe  what the search does (`lookhere.heads.search.prefill_attention`): the forward inside
         `AttentionProbe(model, layers=None, queries="last_text")`, rows to float64 on the CPU,
         then the reduction: S_img (row sums) and each head's map on the primary grid
  eager  what the authors' code does: eager attention with `output_attentions=True`, the last
         text token's row over the visual keys sliced from each layer's full (B, H, L, L) map,
         then the same reduction

Outside the three, timed separately because every path pays them alike: the processing
(`prefill_prompt`, the processor, the layout, the move to the device: the rest of
`prefill_attention`) and the spatial-entropy step (`lookhere.heads.scoring.spatial_entropy` on
every head's map, python-side, as `score_samples` does it).

Sequence lengths come from the image size (one model per size: CLIP's position table is sized
for it), the prompt is "<image tokens>Where is the <expression>?".

Commands (from the repository root):

  OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python bench/heads.py            # CPU, ~2 min
  python bench/heads.py --device cuda --dtype bf16 --size 7b                     # GPU

Sizes:
- small: lookhere's TINY_SIZES["small"] (the ~13M LLaVA of bench/probe.py's "tiny": LM hidden
  384, 6 layers, 6 heads; CLIP hidden 256, 4 layers) at 112/224/336/448 px -> 64/256/576/1024
  visual tokens.
- 7b: LLaVA-1.5-7B language-model shapes (hidden 4096, 32 heads, MLP 11008, vocab resized to
  32064) with a small CLIP tower (hidden 64, 1 layer, patch 14); all 32 layers on CUDA, 2 on CPU
  (--layers); 336/504/672 px -> 576/1296/2304 visual tokens. Random weights, built on the device
  in the chosen dtype.

Method (as bench/probe.py, whose helpers it imports). Two fresh subprocesses (this script with a
hidden flag), each building the models in turn:
- time: per length, a correctness check (the probe's rows equal `prefill_attention`'s and the
  eager rows), warm-up rounds, then timed rounds running the three variants back to back in an
  order rotated each round. Reported: median and min wall time, median CPU seconds of the process
  (CPU workers run with OMP_WAIT_POLICY=PASSIVE, so CPU seconds count work done whatever else
  runs); a step during which other processes took more than MAX_FOREIGN of the machine's CPU
  (/proc/stat) is re-run, within a budget of one re-run per timed round.
- memory: per length, one warm-up forward per variant, then 3 rounds (1 for 7b on CPU) of one
  measured forward each, the order rotated every round; the least peak is kept (heap state
  only ever adds to the RSS; all are in --json). CPU: the RSS peak of the forward above the RSS
  just before it (malloc_trim, peak reset through
  /proc/self/clear_refs, VmHWM), glibc's mmap threshold pinned at 1 MiB (MALLOC_ENV) so freed
  tensors leave the RSS; and "alloc": the peak of glibc's allocated bytes (mallinfo2, sampled
  after every aten op) above the value before, which counts live tensors only (the RSS of a
  small model moves by a MiB or two with the heap's state; alloc is the headline on CPU).
  CUDA: max_memory_allocated minus memory_allocated before. The weights exist before the
  forward: the figures are activations, logits, the recorded rows (or maps) and temporaries.
Everything runs under torch.no_grad(), as the search does. Per sample = per forward / --batch.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, replace
from typing import Any

from probe import (  # bench/probe.py: the shared measuring helpers
    MAX_FOREIGN,
    MIB,
    _cpu_seconds,
    _proc_status_mib,
    _reset_peak_rss,
    alloc_peak_mib,
    machine_line,
    run_child,
)

VARIANTS = ("sdpa", "probe", "eager")
IMAGE_SIZES = {"small": (112, 224, 336, 448), "7b": (336, 504, 672)}
VOCAB_7B = 32064
ENTROPY_REPEATS = 5


# -- cases: model, processed batch, layout
@dataclass
class Case:
    model: Any
    processor: Any
    adapter: Any
    samples: list  # Shapes REC samples
    inputs: dict  # processed batch on the device
    layout: Any  # VisualLayout of the batch
    desc: str


def tiny_size(size: str, image_size: int, layers: int | None):
    """The lookhere TinySize of a benchmark size at one image size."""
    from lookhere.models.tiny import TINY_SIZES, TinySize

    if size == "small":
        base = TINY_SIZES["small"]
    else:
        base = TinySize(hidden=4096, layers=2, heads=32, kv_heads=32, intermediate=11008,
                        vision_hidden=64, vision_layers=1, vision_heads=2, patch_size=14)
    return replace(base, image_size=image_size, layers=layers or base.layers)


@contextlib.contextmanager
def default_dtype(dtype):
    """Build straight into `dtype` (a 7B model in fp32 first would need twice the memory)."""
    import torch

    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def build_case(spec: dict, image_size: int, dtype) -> Case:
    import torch

    from lookhere.data.synthetic import make_task
    from lookhere.models import build_tiny, get_adapter

    device = spec["device"]
    with torch.device(device), default_dtype(dtype):
        model, processor = build_tiny("llava", tiny_size(spec["size"], image_size, spec["layers"]))
        if spec["size"] == "7b":  # the real vocabulary: the logits are part of the forward's peak
            model.resize_token_embeddings(VOCAB_7B, mean_resizing=False)
    model = model.to(device, dtype).eval()
    adapter = get_adapter(model)
    task = make_task("shapes", seed=0, image_size=image_size)
    samples = [task.sample(i) for i in range(spec["batch"])]
    inputs, layout = process(model, processor, adapter, samples)
    ids = inputs["input_ids"]  # (B, L)
    n_vis = len(adapter.visual_positions(ids[:1])[0])
    n_params = sum(p.numel() for p in model.parameters())
    t = model.config.text_config
    desc = (f"{image_size} px: {ids.shape[1]} tokens ({n_vis} visual), batch {ids.shape[0]}; "
            f"LM hidden {t.hidden_size}, {t.num_hidden_layers} layers, "
            f"{t.num_attention_heads} heads, vocab {t.vocab_size}; {n_params / 1e6:.0f}M params")
    return Case(model, processor, adapter, samples, inputs, layout, desc)


def process(model, processor, adapter, samples: list) -> tuple[dict, Any]:
    """What `prefill_attention` does besides the forward: prompt, processor, layout, device."""
    from lookhere.collate import to_device
    from lookhere.models.prompt import prefill_prompt

    images = [[s.image] for s in samples]
    prompts = [prefill_prompt(adapter, processor, s.question) for s in samples]
    batch = adapter.process(processor, prompts, images, padding=True)
    layout = adapter.layout(batch, images, processor)
    return to_device(batch, next(model.parameters()).device), layout


def use_variant(model, variant: str) -> None:
    model.set_attn_implementation({"text_config": "eager" if variant == "eager" else "sdpa"})


# -- the three forwards
def run_variant(case: Case, variant: str):
    """One forward of the variant; probe and eager return (S_img (B, L, H), per-sample maps
    (L, H, rows, cols)) as the search reduces them, sdpa returns None."""
    import torch

    with torch.no_grad():
        if variant == "sdpa":
            case.model(**case.inputs)
            return None
        if variant == "probe":
            rows = probe_rows(case)
        else:
            out = case.model(**case.inputs, output_attentions=True)
            rows = eager_rows(case, out.attentions)
            del out
    return reduce(rows, case.layout)


def probe_rows(case: Case) -> dict:
    """`prefill_attention`'s forward and rows: {layer: (B, H, K) float64 on the CPU}."""
    from lookhere.probe import AttentionProbe

    with AttentionProbe(case.model, layers=None, queries="last_text") as probe:
        case.model(**case.inputs)
    return {layer: r[:, :, 0].double().cpu() for layer, r in probe.rows.items()}


def eager_rows(case: Case, attentions) -> dict:
    """The authors' way: from each layer's full (B, H, L, L) map, the last real token's row over
    the visual keys -> {layer: (B, H, K) float64 on the CPU}."""
    import torch

    ids, mask = case.inputs["input_ids"], case.inputs["attention_mask"]
    vis = case.adapter.visual_positions(ids)  # per sample (K,)
    last = [int(m.nonzero().max()) for m in mask]  # last real token, whichever side pads
    return {layer: torch.stack([a[i, :, last[i], v] for i, v in enumerate(vis)]).double().cpu()
            for layer, a in enumerate(attentions)}


def reduce(rows: dict, layout) -> tuple:
    """S_img per head and each head's map on the sample's primary grid, as `score_samples`."""
    import torch

    stacked = torch.stack([rows[layer] for layer in sorted(rows)], 1)  # (B, L, H, K)
    maps = [layout.samples[i].images[0].primary.to_grid(stacked[i]).numpy()  # (L, H, r, c)
            for i in range(stacked.shape[0])]
    return stacked.sum(-1).numpy(), maps


def entropy_step(maps: list) -> list:
    """The search's python-side step: the spatial entropy of every head's map."""
    from lookhere.heads.scoring import spatial_entropy

    return [spatial_entropy(m[layer, head]) for m in maps for layer in range(m.shape[0])
            for head in range(m.shape[1])]


def check(case: Case) -> dict:
    """max |probe rows - prefill_attention rows| (must be 0: the same computation) and
    max |probe rows - eager rows| (attention itself, up to kernel rounding)."""
    import torch

    from lookhere.heads.search import prefill_attention

    with torch.no_grad():
        ours = probe_rows(case)
        search, _ = prefill_attention(case.model, case.processor, case.adapter, case.samples)
        use_variant(case.model, "eager")
        eager = eager_rows(case, case.model(**case.inputs, output_attentions=True).attentions)
    use_variant(case.model, "sdpa")

    def diff(a: dict, b: dict) -> float:
        return max(float((a[k] - b[k]).abs().max()) for k in a) if a.keys() == b.keys() else 1e9

    return {"vs_search": diff(ours, search), "vs_eager": diff(ours, eager)}


# -- measuring, inside the child processes
def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def timed(fn, device: str) -> tuple[float, float, float]:
    """(wall s, CPU s of this process, share of the machine's CPU other processes took)."""
    sync(device)
    t0, busy0, own0 = _cpu_seconds()
    cpu0 = time.process_time()  # ns resolution (os.times: clock ticks) for the reported figure
    fn()
    sync(device)
    cpu1 = time.process_time()
    t1, busy1, own1 = _cpu_seconds()
    foreign = max(0.0, (busy1 - busy0) - (own1 - own0)) / ((t1 - t0) * (os.cpu_count() or 1))
    return t1 - t0, cpu1 - cpu0, foreign


def time_length(case: Case, spec: dict) -> dict:
    """Warm-up and timed rounds of the three variants, interleaved in a rotated order; the
    processing once per round; then the entropy step on the probe's maps."""
    device, variants = spec["device"], list(VARIANTS)
    walls = {v: [] for v in variants + ["processing"]}
    cpus = {v: [] for v in variants}
    foreign, spare = [], spec["repeats"]
    for r in range(spec["warmup"] + spec["repeats"]):
        kept = r >= spec["warmup"]
        for v in variants[r % 3:] + variants[:r % 3]:
            use_variant(case.model, v)
            dt, dcpu, share = timed(lambda v=v: run_variant(case, v), device)
            while device == "cpu" and kept and share > MAX_FOREIGN and spare:
                spare -= 1
                dt, dcpu, share = timed(lambda v=v: run_variant(case, v), device)
            if kept:
                walls[v].append(dt)
                cpus[v].append(dcpu)
                foreign.append(share)
        dt, _, _ = timed(lambda: process(case.model, case.processor, case.adapter,
                                         case.samples), device)
        if kept:
            walls["processing"].append(dt)
    use_variant(case.model, "sdpa")
    _, maps = run_variant(case, "probe")
    entropy = []
    for _ in range(ENTROPY_REPEATS):
        t0 = time.perf_counter()
        entropy_step(maps)
        entropy.append(time.perf_counter() - t0)
    out = {v: {"times": walls[v], "median_s": statistics.median(walls[v]), "min_s": min(walls[v]),
               "cpu_times": cpus[v], "cpu_s": statistics.median(cpus[v])} for v in variants}
    out["processing_s"] = statistics.median(walls["processing"])
    out["entropy_s"] = statistics.median(entropy)
    out["foreign"] = {"mean": statistics.mean(foreign), "max": max(foreign),
                      "reruns": spec["repeats"] - spare}
    return out


def measure_memory(case: Case, variant: str, device: str) -> dict:
    """Peak memory of one forward (and its reduction) above the memory in use before, MiB."""
    import torch

    use_variant(case.model, variant)
    if device == "cuda":
        gc.collect()
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run_variant(case, variant)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        return {"peak_mib": (peak - before) / MIB, "total_mib": peak / MIB}
    reset = _reset_peak_rss()
    before = _proc_status_mib("VmRSS")
    run_variant(case, variant)
    hwm = _proc_status_mib("VmHWM")
    return {"peak_mib": hwm - before, "total_mib": hwm, "peak_was_reset": reset}


def memory_length(case: Case, spec: dict) -> dict:
    """Per variant: the least peak of `mem_rounds` measured forwards (variants in an order
    rotated each round; extra RSS from heap state only ever adds), all of them, and on CPU the
    allocated-bytes peak of one more forward (deterministic)."""
    device, variants = spec["device"], list(VARIANTS)
    for v in variants:  # warm-up: pools, first allocations, kernel selection
        use_variant(case.model, v)
        run_variant(case, v)
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for r in range(spec["mem_rounds"]):
        for v in variants[r % 3:] + variants[:r % 3]:
            runs[v].append(measure_memory(case, v, device))
    out = {}
    for v in variants:
        best = min(runs[v], key=lambda m: m["peak_mib"])
        out[v] = {**best, "peaks": [m["peak_mib"] for m in runs[v]]}
        if device == "cpu":
            use_variant(case.model, v)
            out[v]["alloc_mib"] = alloc_peak_mib(lambda v=v: run_variant(case, v))
    use_variant(case.model, "sdpa")
    return out


def child(spec: dict) -> dict:
    """Per image size: build the case, then time it (with the checks) or measure its memory."""
    import torch

    torch.set_num_threads(spec["threads"])
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[spec["dtype"]]
    out = {}
    for px in spec["image_sizes"]:
        case = build_case(spec, px, dtype)
        if spec["mode"] == "time":
            res = {"desc": case.desc, "tokens": case.inputs["input_ids"].shape[1],
                   "check": check(case)}
            res.update(time_length(case, spec))
        else:
            res = memory_length(case, spec)
        out[str(px)] = res
        del case
        gc.collect()
        if spec["device"] == "cuda":
            torch.cuda.empty_cache()
    return out


# -- orchestration and report, in the parent
def spawn(mode: str, args) -> dict:
    warmup, repeats = rounds(args)
    spec = {"mode": mode, "size": args.size, "image_sizes": args.image_sizes,
            "layers": args.layers, "batch": args.batch, "device": args.device,
            "dtype": args.dtype, "threads": args.threads, "warmup": warmup, "repeats": repeats,
            "mem_rounds": 1 if args.device == "cpu" and args.size == "7b" else 3}
    return run_child(__file__, spec, args, mode)


def rounds(args) -> tuple[int, int]:
    """(warm-up, timed) rounds: --warmup/--repeats, else per size and device."""
    default = (3, 20) if args.device == "cuda" else {"small": (2, 10), "7b": (1, 3)}[args.size]
    return (default[0] if args.warmup is None else args.warmup), (args.repeats or default[1])


def ratio(res: dict, v: str, key: str, base: str = "sdpa") -> float:
    return res[v][key] / max(res[base][key], 1e-12)


def length_block(px: str, t: dict, m: dict, batch: int, device: str) -> str:
    """One length: the table of the three variants, per sample, and the headline line."""
    res = {v: {**t[v], **m[v]} for v in VARIANTS}
    cpu = device == "cpu"
    head = ("| variant | wall ms/sample median | × sdpa | wall ms min | CPU ms median | × sdpa "
            "| peak MiB/sample | × sdpa | total peak MiB |")
    head += " alloc MiB | × sdpa |" if cpu else ""
    lines = [head, "|---" * (11 if cpu else 9) + "|"]
    for v in VARIANTS:
        r = res[v]
        cells = [v, f"{1000 * r['median_s'] / batch:.1f}", f"{ratio(res, v, 'median_s'):.2f}",
                 f"{1000 * r['min_s'] / batch:.1f}", f"{1000 * r['cpu_s'] / batch:.1f}",
                 f"{ratio(res, v, 'cpu_s'):.2f}", f"{r['peak_mib'] / batch:.1f}",
                 f"{ratio(res, v, 'peak_mib'):.2f}", f"{r['total_mib']:.0f}"]
        if cpu and r.get("alloc_mib") is not None:
            cells += [f"{r['alloc_mib'] / batch:.1f}", f"{ratio(res, v, 'alloc_mib'):.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    c, f = t["check"], t["foreign"]
    mem = memory_key(res["sdpa"], device)
    return "\n".join([
        f"### {t['desc']}", "", *lines, "", headline(t, res, mem),
        f"outside the three (same for every path), per sample: processing "
        f"{1000 * t['processing_s'] / batch:.1f} ms, entropy step "
        f"{1000 * t['entropy_s'] / batch:.1f} ms",
        f"check: max |probe rows - prefill_attention rows| = {c['vs_search']:.1e}, "
        f"max |probe rows - eager rows| = {c['vs_eager']:.1e}",
        f"CPU taken by other processes during the kept timed forwards: mean "
        f"{100 * f['mean']:.0f}%, max {100 * f['max']:.0f}%; {f['reruns']} re-run(s) for "
        f"exceeding {100 * MAX_FOREIGN:.0f}%", ""])


def paired(t: dict, v: str, key: str = "times", base: str = "sdpa") -> float:
    """Median over rounds of v / base within the round: the two ran back to back, so a load
    that comes and goes between rounds cancels out."""
    return statistics.median(a / b for a, b in zip(t[v][key], t[base][key], strict=True))


def memory_key(res: dict, device: str) -> str:
    """The headline memory figure: on CPU the allocated-bytes peak (the RSS of a small model
    moves by MiBs with heap fragmentation), on CUDA max_memory_allocated."""
    return "alloc_mib" if device == "cpu" and res.get("alloc_mib") is not None else "peak_mib"


def headline(t: dict, res: dict, mem: str) -> str:
    def part(v: str, base: str = "sdpa") -> str:
        return (f"time ×{paired(t, v, base=base):.2f} (CPU ×{paired(t, v, 'cpu_times', base):.2f})"
                f", peak memory ×{ratio(res, v, mem, base):.2f}")

    what = "allocated-bytes peak" if mem == "alloc_mib" else "peak"
    return (f"probe search vs plain sdpa: {part('probe')}; eager+output_attentions: "
            f"{part('eager')}; probe vs eager: {part('probe', 'eager')}\n(time: median of "
            f"per-round wall ratios, CPU likewise; memory: the {what})")


def summary_table(times: dict, memory: dict, batch: int, device: str) -> str:
    """All lengths: per sample, probe and eager against sdpa, and the whole scoring per sample
    (processing + forward + entropy) on each path."""
    mem = memory_key(memory[next(iter(memory))]["sdpa"], device)
    lines = ["| tokens (visual) | sdpa ms | probe ms (×) | eager ms (×) | probe CPU × "
             "| eager CPU × | sdpa MiB | probe MiB (×) | eager MiB (×) "
             "| scoring ms/sample, probe path | eager path |", "|---" * 11 + "|"]
    for px, t in times.items():
        res = {v: {**t[v], **memory[px][v]} for v in VARIANTS}
        vis = t["desc"].split("(")[1].split(" ")[0]
        extra = 1000 * (t["processing_s"] + t["entropy_s"]) / batch
        cells = [f"{t['tokens']} ({vis})", f"{1000 * res['sdpa']['median_s'] / batch:.1f}"]
        cells += [f"{1000 * res[v]['median_s'] / batch:.1f} ({paired(t, v):.2f})"
                  for v in ("probe", "eager")]
        cells += [f"{paired(t, v, 'cpu_times'):.2f}" for v in ("probe", "eager")]
        cells.append(f"{res['sdpa'][mem] / batch:.1f}")
        cells += [f"{res[v][mem] / batch:.1f} ({ratio(res, v, mem):.2f})"
                  for v in ("probe", "eager")]
        cells += [f"{extra + 1000 * res[v]['median_s'] / batch:.1f}" for v in ("probe", "eager")]
        lines.append("| " + " | ".join(cells) + " |")
    what = "allocated-bytes peak" if mem == "alloc_mib" else "peak"
    return "\n".join(lines) + (f"\n\nMiB: the forward's {what} per sample above the memory "
                               "before it; ms: wall median per sample; (×), CPU ×: median of "
                               "per-round ratios to sdpa, of wall and CPU seconds")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=("small", "7b"), default="small",
                   help="small: TINY_SIZES['small']; 7b: LLaVA-1.5-7B LM shapes (default small)")
    p.add_argument("--image-sizes", type=int, nargs="+", default=None,
                   help="image sides in px, multiples of 14 (default: small 112 224 336 448, "
                        "7b 336 504 672)")
    p.add_argument("--layers", type=int, default=None,
                   help="LM layers (default: small 6; 7b 32 on CUDA, 2 on CPU)")
    p.add_argument("--batch", type=int, default=1, help="samples per forward (default 1)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default=None,
                   help="default: fp32 on CPU, bf16 on CUDA")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed rounds (default: small 10, 7b 3 on CPU; 20 on CUDA)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed rounds first (default: small 2, 7b 1 on CPU; 3 on CUDA)")
    p.add_argument("--threads", type=int,
                   default=int(os.environ.get("OMP_NUM_THREADS") or min(os.cpu_count() or 1, 2)),
                   help="torch.set_num_threads in the CPU workers (default: $OMP_NUM_THREADS, "
                        "else up to 2)")
    p.add_argument("--spin", action="store_true",
                   help="CPU: leave OpenMP threads spinning (CPU seconds then count spinning)")
    p.add_argument("--json", help="also write all raw results (every timing) to this file")
    p.add_argument("--_child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._child:
        return args
    args.image_sizes = args.image_sizes or list(IMAGE_SIZES[args.size])
    if any(s < 14 or s % 14 for s in args.image_sizes):
        p.error(f"--image-sizes must be positive multiples of 14, got {args.image_sizes}")
    if args.batch < 1 or args.threads < 1 or (args.layers is not None and args.layers < 1):
        p.error("--batch, --threads and --layers must be >= 1")
    if (args.repeats is not None and args.repeats < 1) or (args.warmup or 0) < 0:
        p.error("--repeats must be >= 1 and --warmup >= 0")
    if args.size == "7b" and args.layers is None:
        args.layers = 32 if args.device == "cuda" else 2
    args.dtype = args.dtype or ("bf16" if args.device == "cuda" else "fp32")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args._child:
        print(json.dumps(child(json.loads(args._child))))
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.device == "cuda":
        args.threads = os.cpu_count() or 1
    t0 = time.perf_counter()
    warmup, repeats = rounds(args)
    print(f"# lookhere head-search benchmark: probe vs eager + output_attentions, per sample\n\n"
          f"{machine_line(args)}\n\nsize {args.size}; {warmup} warm-up + {repeats} timed rounds "
          f"per length; memory: one warm-up forward per variant, then the least of "
          f"{1 if args.device == 'cpu' and args.size == '7b' else 3} measured each\n",
          flush=True)
    times = spawn("time", args)
    memory = spawn("memory", args)
    for px in times:
        print(length_block(px, times[px], memory[px], args.batch, args.device), flush=True)
    print("## Summary\n\n" + summary_table(times, memory, args.batch, args.device) + "\n")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"Total wall time {time.perf_counter() - t0:.0f} s; load average at the end {load}")
    if args.json:
        from lookhere.io import write_json

        write_json({"args": {k: v for k, v in vars(args).items() if k != "_child"},
                    "time": times, "memory": memory}, args.json)
    bad = [px for px, t in times.items() if t["check"]["vs_search"] > 1e-6
           or t["check"]["vs_eager"] > (1e-4 if args.dtype == "fp32" else 2e-2)]
    if bad:
        sys.exit(f"check failed at {bad}: probe rows differ from prefill_attention or eager")


if __name__ == "__main__":
    main()
