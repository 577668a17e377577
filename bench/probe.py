"""Cost of the attention probe: plain SDPA vs SDPA + AttentionProbe vs eager + output_attentions.

One training step (forward + backward) of a LLaVA-architecture model
(`LlavaForConditionalGeneration`, random weights built from CLIPVisionConfig + LlamaConfig), three
ways, side by side:

  sdpa   plain SDPA; loss = next-token loss from `labels`
  probe  SDPA + AttentionProbe(model, layers=None, queries="last_text") on every layer;
         loss = NTP + sum of the probe rows (so the probe's backward is timed too)
  eager  eager attention + output_attentions=True; loss = NTP + sum of the same row (last text
         query, visual keys) sliced from each layer's full (B, H, L, L) map

Commands (from the repository root):

  HF_HUB_OFFLINE=1 .venv/bin/python bench/probe.py --size all --sweep     # CPU: ~7 min on 2 cores
  HF_HUB_OFFLINE=1 .venv/bin/python bench/probe.py --size tiny            # CPU: ~40 s
  python bench/probe.py --device cuda --dtype bf16 --size all --sweep     # GPU

Sizes: "tiny" = the ~13M tiny LLaVA (the shapes of lookhere's TINY_SIZES["small"], 112 px -> 64
visual tokens, 32 text tokens, batch 8); "7b" = LLaVA-1.5-7B language-model layers (hidden 4096,
32 heads, MLP 11008, vocab 32064) truncated to 2 layers, 576 visual + 64 text tokens, batch 1,
with a small CLIP tower (336 px, patch 14). --sweep grows the text so the sequence has
640/1024/2048/4096 tokens, at a CPU-sized shape (hidden 1024, 16 heads, 2 layers, vocab 8192), or
at the 7B shape on CUDA.

Method. Per section, two fresh subprocesses (this script re-invoked with a hidden flag), each
building the model once and switching the text attention between sdpa and eager, so the variants
share weights:
- time: warm-up, then rounds that run the three variants interleaved (order rotated each round),
  so background load hits all three alike; reported: median and min wall time, and median CPU
  seconds of the process (on CPU the workers run with OMP_WAIT_POLICY=PASSIVE, so waiting threads
  sleep and CPU seconds measure work done, whatever else runs on the machine; --spin turns this
  off). A step during which other processes took > MAX_FOREIGN of the machine's CPU (from
  /proc/stat) is re-run, within a budget. Also the probe's own per-layer work (`attention_rows`
  forward + backward) timed in isolation.
- memory: one measured step per variant after warm-up. CPU: peak RSS of the step minus the RSS
  just before it (malloc_trim, then the peak reset via /proc/self/clear_refs, then VmHWM; equal
  to getrusage ru_maxrss after the reset). The process runs with glibc's mmap threshold pinned at
  1 MiB (MALLOC_ENV) so that freed tensors leave the RSS and each step is measured from the same
  state. CUDA: max_memory_allocated minus memory_allocated before the step.
Parameters and gradients exist before every step (gradients zeroed in place), so "step peak" is
activations + temporaries. --isolate measures memory in one fresh process per variant instead.
On CUDA read wall time; CPU seconds there are the host's.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

VARIANTS = ("sdpa", "probe", "eager")
SWEEP_TOKENS = (640, 1024, 2048, 4096)
TEXT_BEFORE_IMAGE = 4  # text tokens before the image block ("USER: <image>...")
MIB = 2**20
MAX_FOREIGN = 0.10  # a timed step is re-run if other processes took more of the CPU meanwhile


@dataclass(frozen=True)
class Shape:
    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    mlp: int
    vocab: int
    n_text: int
    batch: int
    image_size: int = 336
    patch: int = 14
    vision_hidden: int = 64
    vision_layers: int = 1
    vision_heads: int = 2

    @property
    def n_visual(self) -> int:
        return (self.image_size // self.patch) ** 2

    def with_tokens(self, tokens: int) -> Shape:
        return dataclasses.replace(self, n_text=tokens - self.n_visual)

    def describe(self) -> str:
        return (f"LM hidden {self.hidden}, {self.layers} layers, {self.heads} heads "
                f"({self.kv_heads} kv), MLP {self.mlp}, vocab {self.vocab}; CLIP hidden "
                f"{self.vision_hidden}, {self.vision_layers} layers, {self.image_size} px; "
                f"{self.n_visual} visual + {self.n_text} text tokens; batch {self.batch}")


def tiny_shape() -> Shape:
    from lookhere.models.tiny import TINY_SIZES

    s = TINY_SIZES["small"]
    return Shape("tiny", s.hidden, s.layers, s.heads, s.kv_heads, s.intermediate, s.vocab_size,
                 n_text=32, batch=8, image_size=s.image_size, patch=s.patch_size,
                 vision_hidden=s.vision_hidden, vision_layers=s.vision_layers,
                 vision_heads=s.vision_heads)


SHAPE_7B = Shape("7b", 4096, 2, 32, 32, 11008, 32064, n_text=64, batch=1)
SHAPE_SWEEP_CPU = Shape("sweep-1024", 1024, 2, 16, 16, 2816, 8192, n_text=64, batch=1)


# -- model, batch, step
def build_model(shape: Shape, device: str, dtype, text_impl: str = "sdpa"):
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig
    from transformers import LlavaForConditionalGeneration as Llava

    vision = CLIPVisionConfig(
        hidden_size=shape.vision_hidden, intermediate_size=4 * shape.vision_hidden,
        num_hidden_layers=shape.vision_layers, num_attention_heads=shape.vision_heads,
        image_size=shape.image_size, patch_size=shape.patch,
    )
    text = LlamaConfig(
        hidden_size=shape.hidden, intermediate_size=shape.mlp, num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
        vocab_size=shape.vocab, max_position_embeddings=4096, pad_token_id=0, bos_token_id=1,
        eos_token_id=2,
    )
    config = LlavaConfig(vision_config=vision, text_config=text,
                         image_token_index=shape.vocab - 1, vision_feature_layer=-1,
                         vision_feature_select_strategy="default")
    torch.manual_seed(0)
    with torch.device(device):
        model = Llava._from_config(
            config, attn_implementation={"text_config": text_impl, "vision_config": "sdpa"})
    return model.to(dtype).train()


def make_batch(shape: Shape, device: str, dtype) -> dict:
    """A little text, one block of image tokens, the rest text; labels on text tokens only."""
    import torch

    g = torch.Generator().manual_seed(0)
    b, image_id = shape.batch, shape.vocab - 1
    text = torch.randint(3, image_id, (b, shape.n_text), generator=g)
    image = torch.full((b, shape.n_visual), image_id)
    ids = torch.cat([text[:, :TEXT_BEFORE_IMAGE], image, text[:, TEXT_BEFORE_IMAGE:]], dim=1)
    batch = {
        "input_ids": ids, "attention_mask": torch.ones_like(ids),
        "labels": ids.masked_fill(ids == image_id, -100),
        "pixel_values": torch.randn(b, 3, shape.image_size, shape.image_size, generator=g),
    }
    return {k: v.to(device, dtype if v.is_floating_point() else None) for k, v in batch.items()}


def use_variant(model, variant: str) -> None:
    model.set_attn_implementation({"text_config": "eager" if variant == "eager" else "sdpa"})


def step(model, batch: dict, variant: str) -> None:
    """Forward + backward; probe and eager add the sum of their attention rows to the loss.

    Every variant drops the model output (logits) before backward, so none holds it longer.
    """
    from lookhere.probe import AttentionProbe

    if variant == "probe":
        with AttentionProbe(model, layers=None, queries="last_text") as probe:
            loss = model(**batch).loss + sum(r.sum() for r in probe.rows.values())
            loss.backward()  # inside the context, as the probe requires
        return
    if variant == "eager":
        out = model(**batch, output_attentions=True)
        rows = eager_rows(out.attentions, batch["input_ids"], model.config.image_token_index)
        loss = out.loss + sum(r.sum() for r in rows)
        del out, rows
    else:
        loss = model(**batch).loss
    loss.backward()


def eager_rows(attentions, input_ids, image_id: int) -> list:
    """The probe's row from each full map: last query, visual keys -> (B, H, 1, K) per layer."""
    vis = (input_ids[0] == image_id).nonzero().flatten()  # same layout in every sample
    last = input_ids.shape[1] - 1  # no padding: the last text token is the last position
    return [a[:, :, last:last + 1, vis] for a in attentions]


# -- measuring, inside the child processes
def _proc_status_mib(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(key)


def _reset_peak_rss() -> bool:
    """Return free heap pages to the OS (glibc malloc_trim), then reset the peak RSS."""
    import ctypes
    import ctypes.util

    gc.collect()
    try:
        ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)
    except (OSError, AttributeError, TypeError):
        pass  # not glibc: small freed blocks may stay resident and be reused
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM (and ru_maxrss) to the current RSS
        return True
    except OSError:
        return False


def measure_memory(model, batch: dict, variant: str, device: str) -> dict:
    """Peak memory of one step above the memory in use just before it, in MiB."""
    import torch

    model.zero_grad(set_to_none=False)
    if device == "cuda":
        gc.collect()
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step(model, batch, variant)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        return {"peak_mib": (peak - before) / MIB, "total_mib": peak / MIB}
    reset = _reset_peak_rss()
    before = _proc_status_mib("VmRSS")
    step(model, batch, variant)
    hwm = _proc_status_mib("VmHWM")
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"peak_mib": hwm - before, "total_mib": hwm, "maxrss_peak_mib": maxrss - before,
            "peak_was_reset": reset}


def _cpu_seconds() -> tuple[float, float, float]:
    """(wall, busy CPU seconds of the whole machine, CPU seconds of this process)."""
    busy = 0.0
    if os.path.exists("/proc/stat"):
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
        busy = (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # - idle, iowait
    own = os.times()
    return time.perf_counter(), busy, own.user + own.system


def timed_step(model, batch: dict, variant: str, device: str) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds of this process, share of the machine's CPU that other
    processes used meanwhile)."""
    import torch

    model.zero_grad(set_to_none=False)
    if device == "cuda":
        torch.cuda.synchronize()
    t0, busy0, own0 = _cpu_seconds()
    step(model, batch, variant)
    if device == "cuda":
        torch.cuda.synchronize()
    t1, busy1, own1 = _cpu_seconds()
    foreign = max(0.0, (busy1 - busy0) - (own1 - own0)) / ((t1 - t0) * (os.cpu_count() or 1))
    return t1 - t0, own1 - own0, foreign


def probe_math_ms(shape: Shape, device: str, dtype, repeats: int = 30) -> float:
    """Least ms of the probe's own work for one layer: attention_rows forward + backward on
    this shape's query/key, with the full-size gradients it produces for them."""
    import torch

    from lookhere.probe import attention_rows

    head_dim, n = shape.hidden // shape.heads, shape.n_visual + shape.n_text
    q = torch.randn(shape.batch, shape.heads, n, head_dim, device=device, dtype=dtype)
    k = torch.randn(shape.batch, shape.kv_heads, n, head_dim, device=device, dtype=dtype)
    q.requires_grad_(), k.requires_grad_()
    qpos = torch.full((shape.batch, 1), n - 1, device=device)
    kpos = torch.arange(TEXT_BEFORE_IMAGE, TEXT_BEFORE_IMAGE + shape.n_visual, device=device)
    kpos = kpos.expand(shape.batch, -1)
    times = []
    for _ in range(repeats):
        q.grad = k.grad = None
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        attention_rows(q, k, None, qpos, kpos).sum().backward()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return 1000 * min(times)  # the intrinsic cost: least disturbed by other processes


def _setup(spec: dict):
    import torch

    torch.set_num_threads(spec["threads"])
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[spec["dtype"]]
    base = Shape(**spec["shape"])
    model = build_model(base, spec["device"], dtype)
    for p in model.parameters():  # gradients exist before any measured step, as in training
        p.grad = torch.zeros_like(p)
    batches = {t: make_batch(base.with_tokens(t), spec["device"], dtype) for t in spec["tokens"]}
    return model, batches, base, dtype


def child_time(spec: dict) -> dict:
    """Per sequence length: warm-up and timed rounds of all variants, interleaved, in an order
    rotated every round; then the probe's own per-layer cost in isolation.

    A timed step during which other processes took more than MAX_FOREIGN of the machine's CPU
    is run again (at most `repeats` such re-runs per length); the rest are kept and reported.
    """
    model, batches, base, dtype = _setup(spec)
    variants, device = spec["variants"], spec["device"]
    step(model, batches[spec["tokens"][0]], "sdpa")  # one-time costs: pools, first allocations
    out = {}
    for t, batch in batches.items():
        times, cpu, foreign = {v: [] for v in variants}, {v: [] for v in variants}, []
        reruns = spare = spec["repeats"][str(t)]
        for r in range(spec["warmup"] + spec["repeats"][str(t)]):
            for v in variants[r % len(variants):] + variants[:r % len(variants)]:
                use_variant(model, v)
                dt, dcpu, share = timed_step(model, batch, v, device)
                while device == "cpu" and r >= spec["warmup"] and share > MAX_FOREIGN and spare:
                    spare -= 1
                    dt, dcpu, share = timed_step(model, batch, v, device)
                if r >= spec["warmup"]:
                    times[v].append(dt)
                    cpu[v].append(dcpu)
                    foreign.append(share)
        out[t] = {v: {"times": times[v], "median_s": statistics.median(times[v]),
                      "min_s": min(times[v]), "cpu_times": cpu[v],
                      "cpu_s": statistics.median(cpu[v])} for v in variants}
        out[t]["probe_math_ms"] = probe_math_ms(base.with_tokens(t), device, dtype)
        out[t]["foreign"] = {"mean": statistics.mean(foreign), "max": max(foreign),
                             "reruns": reruns - spare}
    return out


def child_memory(spec: dict) -> dict:
    """Per sequence length and variant, one measured step, after one warm-up step per variant
    at the shortest length (all one-time allocations happen there)."""
    model, batches, _, _ = _setup(spec)
    first = batches[spec["tokens"][0]]
    for v in spec["variants"] if spec["mem_warmup_all"] else ["sdpa"]:
        use_variant(model, v)
        step(model, first, v)
    out = {}
    for t, batch in batches.items():
        out[t] = {}
        for v in spec["variants"]:
            use_variant(model, v)
            out[t][v] = measure_memory(model, batch, v, spec["device"])
    return out


# -- correctness (once, tiny size, in the parent)
def check_rows(device: str) -> tuple[float, float]:
    """At the tiny size, fp32, same weights: max |probe row - eager row| over all layers, and
    max |logits with probe - logits without| (the probe must not change the forward)."""
    import torch

    from lookhere.probe import AttentionProbe

    shape = tiny_shape()
    model = build_model(shape, device, torch.float32).eval()
    batch = make_batch(shape, device, torch.float32)
    with torch.no_grad():
        plain = model(**batch).logits
        with AttentionProbe(model, layers=None, queries="last_text") as probe:
            probed = model(**batch).logits
        use_variant(model, "eager")
        out = model(**batch, output_attentions=True)
    ref = eager_rows(out.attentions, batch["input_ids"], shape.vocab - 1)
    assert len(ref) == len(probe.rows) == shape.layers
    rows = max((probe.rows[i] - r).abs().max().item() for i, r in enumerate(ref))
    return rows, (probed - plain).abs().max().item()


# -- orchestration, in the parent
# glibc: blocks >= 1 MiB are mmap'd and unmapped on free (no dynamic threshold, no cached top), so
# the RSS follows the live tensors and every step's peak is measured the same way.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(MIB), "MALLOC_TRIM_THRESHOLD_": str(MIB),
              "MALLOC_TOP_PAD_": "0"}


def spawn(mode: str, shape: Shape, variants: list[str], tokens: list[int], plan: dict,
          args) -> dict:
    spec = {"mode": mode, "shape": dataclasses.asdict(shape), "variants": variants,
            "tokens": tokens, "device": args.device, "dtype": args.dtype, "threads": args.threads,
            "warmup": plan["warmup"], "mem_warmup_all": plan["mem_warmup_all"],
            "repeats": {str(t): plan["repeats"](t) for t in tokens}}
    out = run_child(__file__, spec, args, f"{mode} {shape.name} {variants}")
    return {int(t): r for t, r in out.items()}


def run_child(script: str, spec: dict, args, what: str):
    """Run ``script --_child <spec JSON>`` in a fresh process (memory runs with MALLOC_ENV; CPU
    time runs with sleeping idle threads unless ``args.spin``); its last stdout line, parsed."""
    mode = spec["mode"]
    cmd = [sys.executable, os.path.abspath(script), "--_child", json.dumps(spec)]
    env = {**os.environ, **(MALLOC_ENV if mode == "memory" else {})}
    if mode == "time" and args.device == "cpu" and not args.spin:
        env["OMP_WAIT_POLICY"] = "PASSIVE"  # idle threads sleep: CPU time = work done
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(f"{what} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(shape: Shape, tokens: list[int], plan: dict, args) -> dict:
    """{tokens: {variant: time and memory}, plus "probe_math_ms"}.

    Time: one process, variants interleaved. Memory: one more process (malloc pinned, see
    MALLOC_ENV), or one per variant with --isolate.
    """
    t0 = time.perf_counter()
    results = spawn("time", shape, list(VARIANTS), tokens, plan, args)
    if args.isolate:
        parts = [spawn("memory", shape, [v], tokens, plan, args) for v in VARIANTS]
        memory = {t: {k: r for p in parts for k, r in p[t].items()} for t in tokens}
    else:
        memory = spawn("memory", shape, list(VARIANTS), tokens, plan, args)
    for t in tokens:
        for v in VARIANTS:
            results[t][v].update(memory[t][v])
    print(f"({time.perf_counter() - t0:.0f} s)\n", flush=True)
    return results


def plan_for(shape: Shape, args, sweep: bool = False) -> dict:
    """Warm-up and timed rounds per length (cheap shapes get more; --repeats overrides), and
    whether the memory process warms up every variant before measuring (else sdpa only)."""
    if args.device == "cuda" or shape.name == "tiny":
        return {"warmup": 2, "repeats": lambda t: args.repeats or 10, "mem_warmup_all": True}
    if sweep:
        return {"warmup": 0, "repeats": lambda t: args.repeats or (3 if t <= 1024 else 2),
                "mem_warmup_all": True}
    return {"warmup": 0, "repeats": lambda t: args.repeats or 2, "mem_warmup_all": False}


def ratio(res: dict, v: str, key: str) -> float:
    return res[v][key] / max(res["sdpa"][key], 1e-9)


def section_table(res: dict) -> str:
    lines = ["| variant | wall s median | × sdpa | wall s min | × sdpa | CPU s median | × sdpa "
             "| step peak MiB | × sdpa | total peak MiB |", "|---" * 10 + "|"]
    for v in VARIANTS:
        r = res[v]
        lines.append(f"| {v} | {r['median_s']:.3f} | {ratio(res, v, 'median_s'):.2f} | "
                     f"{r['min_s']:.3f} | {ratio(res, v, 'min_s'):.2f} | {r['cpu_s']:.2f} | "
                     f"{ratio(res, v, 'cpu_s'):.2f} | {r['peak_mib']:.0f} | "
                     f"{ratio(res, v, 'peak_mib'):.2f} | {r['total_mib']:.0f} |")
    return "\n".join(lines)


def ratio_line(res: dict) -> str:
    def pair(v: str) -> str:
        return (f"time ×{ratio(res, v, 'median_s'):.2f} (wall median; min ×"
                f"{ratio(res, v, 'min_s'):.2f}, CPU ×{ratio(res, v, 'cpu_s'):.2f}), "
                f"peak memory ×{ratio(res, v, 'peak_mib'):.2f}")
    return f"probe vs plain sdpa: {pair('probe')}; eager+output_attentions: {pair('eager')}"


def math_share(res: dict, layers: int) -> float:
    """The probe's isolated per-layer work times the layer count, as a share of the sdpa step."""
    return res["probe_math_ms"] * layers / 1000 / res["sdpa"]["min_s"]


def load_line(results: dict) -> str:
    f = [r["foreign"] for r in results.values()]
    mean = statistics.mean(x["mean"] for x in f)
    return (f"CPU taken by other processes during the kept timed steps: mean {100 * mean:.0f}%, "
            f"max {100 * max(x['max'] for x in f):.0f}% of the machine; "
            f"{sum(x['reruns'] for x in f)} step(s) re-run for exceeding "
            f"{100 * MAX_FOREIGN:.0f}%")


def math_line(res: dict, layers: int) -> str:
    return (f"probe's own work in isolation (attention_rows forward + backward, one layer, "
            f"min of 30): {res['probe_math_ms']:.2f} ms; × {layers} layers = "
            f"{100 * math_share(res, layers):.2f}% of the sdpa step")


def sweep_table(results: dict, layers: int) -> str:
    lines = ["| tokens | sdpa wall s | probe wall s (×) | eager wall s (×) | probe CPU × "
             "| eager CPU × | sdpa MiB | probe MiB (×) | eager MiB (×) | probe math % |",
             "|---" * 10 + "|"]
    for tokens, res in results.items():
        cells = [str(tokens), f"{res['sdpa']['median_s']:.2f}"]
        cells += [f"{res[v]['median_s']:.2f} ({ratio(res, v, 'median_s'):.2f})"
                  for v in ("probe", "eager")]
        cells += [f"{ratio(res, v, 'cpu_s'):.2f}" for v in ("probe", "eager")]
        cells.append(f"{res['sdpa']['peak_mib']:.0f}")
        cells += [f"{res[v]['peak_mib']:.0f} ({ratio(res, v, 'peak_mib'):.2f})"
                  for v in ("probe", "eager")]
        cells.append(f"{100 * math_share(res, layers):.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report_section(title: str, shape: Shape, args) -> dict:
    plan = plan_for(shape, args)
    tokens = shape.n_visual + shape.n_text
    print(f"## {title}\n\n{shape.describe()} ({tokens} tokens); {plan['warmup']} warm-up + "
          f"{plan['repeats'](tokens)} timed rounds", flush=True)
    results = measure(shape, [tokens], plan, args)
    res = results[tokens]
    print(section_table(res) + "\n\n" + ratio_line(res) + "\n\n" + math_line(res, shape.layers)
          + "\n\n" + load_line(results) + "\n", flush=True)
    return res


def report_sweep(shape: Shape, args) -> dict:
    plan = plan_for(shape, args, sweep=True)
    reps = ", ".join(f"{plan['repeats'](t)}" for t in SWEEP_TOKENS)
    print(f"## Sequence-length sweep\n\n{shape.describe().split(';')[0]}; "
          f"{shape.n_visual} visual tokens + text; timed rounds per length: {reps}", flush=True)
    results = measure(shape, list(SWEEP_TOKENS), plan, args)
    print(sweep_table(results, shape.layers) + "\n\nprobe math %: the probe's own work "
          "(attention_rows forward + backward), timed in isolation, × layers / sdpa step\n\n"
          + load_line(results) + "\n", flush=True)
    return results


def machine_line(args) -> str:
    """Device, cores, threads, dtype, versions and load average: the header of every benchmark."""
    import platform

    import torch
    import transformers

    cpu = "unknown CPU"
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                       cpu)
    dev = torch.cuda.get_device_name() if args.device == "cuda" else cpu
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{dev}, {os.cpu_count()} cores, {args.threads} torch threads, dtype {args.dtype}; "
            f"torch {torch.__version__}, transformers {transformers.__version__}, "
            f"python {platform.python_version()}; load average {load}")


def environment(args) -> str:
    mode = "memory: one process per variant" if args.isolate else "memory: one process"
    return f"{machine_line(args)}; {mode}"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--size", choices=("tiny", "7b", "all"), default="all")
    p.add_argument("--sweep", action="store_true", help="sequence-length sweep, 640..4096 tokens")
    p.add_argument("--repeats", type=int, default=0, help="timed rounds (default: per shape)")
    p.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 2),
                   help="torch.set_num_threads in the CPU workers (default: up to 2)")
    p.add_argument("--isolate", action="store_true",
                   help="measure memory in one fresh process per variant (default: one process "
                        "measures the variants in turn)")
    p.add_argument("--spin", action="store_true",
                   help="CPU: leave OpenMP threads spinning (faster wall time on an idle "
                        "machine; CPU seconds then count the spinning too)")
    p.add_argument("--json", help="also write all raw results (every timing) to this file")
    p.add_argument("--_child", help=argparse.SUPPRESS)
    return p.parse_args(argv)


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
    t0, ok = time.perf_counter(), True
    raw: dict = {"args": {k: v for k, v in vars(args).items() if k != "_child"}}
    print(f"# lookhere probe benchmark\n\n{environment(args)}\n")
    if args.size in ("tiny", "all"):
        diff, logits = check_rows(args.device)
        raw["check"] = {"rows_max_abs_diff": diff, "logits_max_abs_diff": logits}
        ok = diff < 1e-4 and logits == 0
        print(f"Correctness (tiny, fp32, all layers): max |probe row - eager row| = {diff:.1e}"
              f" ({'ok' if diff < 1e-4 else 'FAIL'}, must be < 1e-4); max |logits with probe - "
              f"without| = {logits:.1e}\n")
        raw["tiny"] = report_section("tiny (demo LLaVA)", tiny_shape(), args)
    if args.size in ("7b", "all"):
        raw["7b"] = report_section("LLaVA-1.5-7B layer shapes, 2 of 32 layers", SHAPE_7B, args)
    if args.sweep:
        raw["sweep"] = report_sweep(SHAPE_7B if args.device == "cuda" else SHAPE_SWEEP_CPU, args)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"Total wall time {time.perf_counter() - t0:.0f} s; load average at the end {load}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(raw, f, indent=1)
    if not ok:
        sys.exit("correctness check failed: probe rows differ from eager, or logits changed")


def alloc_peak_mib(fn) -> float | None:
    """CPU: the peak of the bytes glibc has handed out (mallinfo2: in-use heap + mmapped
    chunks) while `fn` runs, sampled after every aten op, above the value before, in MiB.
    Live allocations only (not heap pages kept by fragmentation); it misses temporaries freed
    inside a single op. None where glibc has no mallinfo2 (< 2.33)."""
    import ctypes
    import ctypes.util

    from torch.utils._python_dispatch import TorchDispatchMode

    class Info(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
            "fordblks", "keepcost")]

    try:
        mallinfo2 = ctypes.CDLL(ctypes.util.find_library("c")).mallinfo2
    except (OSError, AttributeError, TypeError):
        return None
    mallinfo2.restype = Info

    def in_use() -> int:
        info = mallinfo2()
        return info.uordblks + info.hblkhd

    class Sampler(TorchDispatchMode):
        peak = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            self.peak = max(self.peak, in_use())
            return out

    gc.collect()
    before = in_use()
    sampler = Sampler()
    with sampler:
        fn()
    return max(0, sampler.peak - before) / MIB

if __name__ == "__main__":
    main()
