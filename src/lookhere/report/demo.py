"""``make demo``: the papers' three claims on the shipped pretrained checkpoint, as one report.

Every part starts from ``lookhere:llava-mini`` (docs/results.md 6.7), as the papers start from
pretrained VLMs:

1. KLAL: NTP vs NTP+KLAL fine-tuning on Grid Patch, Line Intersection and Line Tracing
   (`lookhere.experiment.klal`);
2. localization heads: searched training-free in the frozen checkpoint, and again after NTP
   and NTP+KLAL fine-tuning on Shapes VQA, then used for REC against baselines
   (`lookhere.experiment.heads`);
3. the logit lens: NTP vs NTP+LLL fine-tuning on the same Shapes VQA, the lens maps of every
   shape and colour word segmented per layer (`lookhere.experiment.lens`); its NTP model is
   part 2's (the very same training, saved under ``heads/models/ntp``).

The parts run as independent jobs (one per KLAL task, one per heads condition; the heads'
NTP job goes on into the lens part) in ``workers`` processes of one torch thread each: tiny
models gain nothing from a second thread, and two threads lose their time slices whenever
another process takes a core. Writes ``results.json``, ``results.md``, the figures and
``report.html`` (the three claims first, then the sections, and the time per part).
"""

from __future__ import annotations

import dataclasses
import html
import multiprocessing
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lookhere.data.sample import Geometry, Sample
from lookhere.experiment import heads, klal, lens
from lookhere.io import atomic_dir
from lookhere.report.demo_config import (  # noqa: F401 (named here too)
    DEMO_HEADS,
    DEMO_KLAL,
    DEMO_LENS,
    DEMO_TRAIN,
    SHAPES_TRAIN,
)
from lookhere.report.page import (
    plot_attention_maps,
    plot_ratio_bars,
    plot_training_curves,
    write_report,
)
from lookhere.report.sections import heads_figures, heads_section, lens_figures, lens_section
from lookhere.tables import pct

#: The papers' figures the report's first table sets ours against (docs/methods.md).
PAPER = {
    "klal": "Grid Patch +16.3 points (Qwen2.5-VL-7B, 28.6 → 44.9%), Line Intersection +7.6 "
            "(62.6 → 70.2%), and a gain on Line Tracing, over NTP fine-tuning",
    "heads": "3 heads of frozen LLaVA-1.5-7B: REC Acc@0.5 86.5% on RefCOCO val, far above "
             "any baseline",
    "lens": "after LLL, the lens map of a word segments the objects it names (patch-level "
            "explanations); VQA kept",
}


@dataclass(frozen=True)
class Job:
    """One independent piece of the demo: a KLAL task, a heads condition (the NTP one going on
    into the lens part, which reuses its model), or the lens part alone."""

    part: str  # "klal", "heads" or "lens"
    key: str  # the task, the condition, or "ntp+lll"
    with_lens: bool = False  # a heads job that runs the lens part after it

    @property
    def name(self) -> str:
        return f"{self.part} {self.key}" + (" + lens" if self.with_lens else "")


@dataclass(frozen=True)
class JobResult:
    job: Job
    results: dict[str, Any]  # part -> its experiment's typed result ("klal", "heads", "lens")
    seconds: float


def run_demo(out_dir: str | Path, config: klal.KLALExperimentConfig | None = None,
             progress: bool = True, command: str = "make demo",
             heads_config: heads.HeadsExperimentConfig | None = DEMO_HEADS,
             lens_config: lens.LensExperimentConfig | None = DEMO_LENS,
             workers: int = 2) -> Path:
    """Run every part of the demo into ``out_dir`` (must be new or empty); the report's path.
    ``heads_config=None`` / ``lens_config=None`` leave out the localization-heads / lens part.
    The lens part reuses the heads part's NTP model when that part saves its models
    (``save_models``) and trains under the same settings (`lens.ntp_mismatches`); otherwise it
    trains its own. ``workers``: processes (1: everything in this one, in order).

    Everything is written into a hidden temporary sibling (`lookhere.io.atomic_dir`) renamed
    onto ``out_dir`` at the end: an interrupted demo leaves no partial report in ``out_dir``,
    a rerun may use the same folder, and a temporary folder left by a killed run is removed."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty; remove it or choose another folder")
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an int >= 1, got {workers!r}")
    with atomic_dir(out_dir) as tmp:
        report = _run_demo(tmp, config or DEMO_KLAL, progress, command, heads_config,
                           lens_config, workers)
    return out_dir / report.relative_to(tmp)


def _run_demo(out_dir: Path, config: klal.KLALExperimentConfig, progress: bool, command: str,
              heads_config: heads.HeadsExperimentConfig | None,
              lens_config: lens.LensExperimentConfig | None, workers: int) -> Path:
    jobs = plan(config, heads_config, lens_config)
    start = time.perf_counter()
    done = run_jobs(jobs, config, heads_config, lens_config, out_dir, workers, progress)
    results = merge(config, heads_config, done)
    sections = [{"title": "How to read this", "html": _reading(config)}]
    figures = _figures(out_dir, config, results)
    if heads_config is not None:
        sections.append({"title": "Localization heads (training-free grounding)",
                         "html": heads_section(heads_config, results["heads"])})
        figures.update(heads_figures(out_dir, heads_config, results["heads"]))
    if lens_config is not None:
        sections.append({"title": "The logit lens (NTP vs NTP+LLL)",
                         "html": lens_section(lens_config, results["lens"])})
        figures.update(lens_figures(out_dir, lens_config, results["lens"]))
    elapsed = time.perf_counter() - start
    timing = DemoTiming.of(done, elapsed, workers)
    sections.append({"title": "Time per part", "html": timing.html()})
    results.update(title="lookhere demo: KLAL, localization heads and the logit lens on the "
                         f"pretrained {config.train.model_name}",
                   command=command,
                   settings=DemoSettings.of(config, heads_config, lens_config, workers),
                   elapsed_s=elapsed, sections=sections, timing=timing,
                   lead=claims(results, config, heads_config, lens_config))
    return write_report(out_dir, results, figures)


def plan(config: klal.KLALExperimentConfig, heads_config: heads.HeadsExperimentConfig | None,
         lens_config: lens.LensExperimentConfig | None) -> list[Job]:
    """The jobs, the longest first (so two workers finish close together): the heads' NTP job
    (it trains, searches and then runs the lens part), the KLAL tasks, the other conditions;
    without a heads NTP job, the lens part alone, last."""
    conditions = () if heads_config is None else heads_config.conditions
    lens_after_ntp = lens_config is not None and "ntp" in conditions
    first = [Job("heads", "ntp", with_lens=lens_after_ntp)] if "ntp" in conditions else []
    rest = [Job("heads", c) for c in conditions if c != "ntp"]
    alone = [Job("lens", "ntp+lll")] if lens_config is not None and not lens_after_ntp else []
    return first + [Job("klal", t) for t in config.tasks] + rest + alone


def run_jobs(jobs: list[Job], config: klal.KLALExperimentConfig,
             heads_config: heads.HeadsExperimentConfig | None,
             lens_config: lens.LensExperimentConfig | None, out_dir: Path, workers: int,
             progress: bool) -> list[JobResult]:
    """Every job, in ``workers`` processes of one torch thread (spawned: no forked torch state),
    or here in order when ``workers == 1``."""
    args = (config, heads_config, lens_config, out_dir)
    if workers == 1:
        return [_report(run_job(j, *args, progress=progress), progress, i + 1, len(jobs))
                for i, j in enumerate(jobs)]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context,
                             initializer=_one_thread) as pool:
        futures = [pool.submit(run_job, j, *args, progress=False) for j in jobs]
        if progress:
            print(f"[demo] {len(jobs)} jobs in {min(workers, len(jobs))} processes: "
                  + ", ".join(j.name for j in jobs), flush=True)
        return [_report(f.result(), progress, i + 1, len(jobs)) for i, f in enumerate(futures)]


def _one_thread() -> None:
    torch.set_num_threads(1)


def _report(done: JobResult, progress: bool, i: int, n: int) -> JobResult:
    if progress:
        print(f"[demo] {done.job.name}: done in {done.seconds:.0f} s ({i} of {n})", flush=True)
    return done


def run_job(job: Job, config: klal.KLALExperimentConfig,
            heads_config: heads.HeadsExperimentConfig | None,
            lens_config: lens.LensExperimentConfig | None, out_dir: Path,
            progress: bool = True) -> JobResult:
    """One job's results: each part it ran, as its experiment's ``run`` returns it."""
    start = time.perf_counter()
    if job.part == "klal":
        res = {"klal": klal.run(dataclasses.replace(config, tasks=(job.key,)), out_dir,
                                progress)}
    elif job.part == "lens":
        res = {"lens": lens.run(lens_config, out_dir / "lens", progress=progress)}
    else:
        hc = dataclasses.replace(heads_config, conditions=(job.key,))
        res = {"heads": heads.run(hc, out_dir / "heads", progress=progress)}
        if job.with_lens:
            trained = reused_ntp(lens_config, hc, res["heads"], out_dir / "heads")
            res["lens"] = lens.run(lens_config, out_dir / "lens", progress=progress,
                                   trained=trained)
    return JobResult(job, res, time.perf_counter() - start)


def merge(config: klal.KLALExperimentConfig, heads_config: heads.HeadsExperimentConfig | None,
          done: list[JobResult]) -> dict[str, Any]:
    """The jobs' results as one run of each experiment would have returned them (conditions
    and tasks in the configs' order): the KLAL part as the report's JSON (``tasks``,
    ``examples``), the others typed under ``heads`` and ``lens``."""
    by_task = {d.job.key: d.results["klal"] for d in done if d.job.part == "klal"}
    results: dict[str, Any] = klal.KLALResult(
        {t: by_task[t].tasks[t] for t in config.tasks},
        {t: by_task[t].examples[t] for t in config.tasks}).to_json()
    parts = {d.job.key: d.results["heads"] for d in done if d.job.part == "heads"}
    if heads_config is not None and parts:
        first = next(iter(parts.values()))
        order = heads_config.conditions
        results["heads"] = heads.HeadsResult(
            heads_config, {c: parts[c].conditions[c] for c in order}, first.example_ids,
            {c: parts[c].examples[c] for c in order})
    for d in done:
        if "lens" in d.results:
            results["lens"] = d.results["lens"]
    return results


@dataclass(frozen=True)
class DemoTiming:
    """Where the demo's time went (``results["timing"]``): each job's seconds, their sum per
    part, the wall time and how well the workers overlapped (the jobs' seconds over wall time x
    workers; None for a zero wall time)."""

    jobs: dict[str, float]  # job name -> seconds
    parts: dict[str, float]  # "klal", "heads", "lens" -> seconds
    workers: int
    wall_s: float
    parallel_efficiency: float | None

    @classmethod
    def of(cls, done: list[JobResult], elapsed: float, workers: int) -> DemoTiming:
        jobs = {d.job.name: round(d.seconds, 1) for d in done}
        parts: dict[str, float] = {}
        for d in done:
            parts[d.job.part] = parts.get(d.job.part, 0.0) + d.seconds
        busy = sum(jobs.values())
        return cls(jobs, {k: round(v, 1) for k, v in parts.items()}, workers, round(elapsed, 1),
                   round(busy / (elapsed * workers), 3) if elapsed else None)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def html(self) -> str:
        rows = "".join(f"<tr><th>{html.escape(name)}</th><td>{s:.0f}</td></tr>"
                       for name, s in self.jobs.items())
        return (f"<p>{self.workers} worker process(es) of one torch thread; wall time "
                f"{self.wall_s:.0f} s (report included below it); the jobs' own seconds "
                f"add up to {sum(self.jobs.values()):.0f} (parallel efficiency "
                f"{self.parallel_efficiency}).</p><table><thead><tr><th>job</th>"
                f"<th>seconds</th></tr></thead><tbody>{rows}</tbody></table>")


@dataclass(frozen=True)
class LeadTable:
    """The report's first table (`report.page`'s ``lead``): a row of cells per claim."""

    title: str
    columns: list[str]
    rows: list[list[str]]
    note: str

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def claims(results: dict[str, Any], config: klal.KLALExperimentConfig,
           heads_config: heads.HeadsExperimentConfig | None,
           lens_config: lens.LensExperimentConfig | None) -> LeadTable:
    """The report's lead table: each claim, the paper's figure and this run's."""
    rows = [["KLAL fine-tuning beats NTP fine-tuning", PAPER["klal"], _klal_claim(results)]]
    if "heads" in results and heads_config is not None:
        rows.append(["A few attention heads of the frozen model ground referring expressions",
                     PAPER["heads"], _heads_claim(results["heads"])])
    if "lens" in results and lens_config is not None:
        rows.append(["LLL makes the logit lens segment objects", PAPER["lens"],
                     _lens_claim(results["lens"], lens_config)])
    return LeadTable("The three claims: the papers and this run",
                     ["claim", "paper", f"this run ({config.train.model_name})"], rows,
                     "Accuracies and mIoU in % on held-out data (intervals: 95% bootstrap); each "
                     "claim's section below has the details. A short CPU demo: docs/results.md "
                     "has the longer and multi-seed runs.")


def _klal_claim(results: dict[str, Any]) -> str:
    out = []
    for task, conds in results["tasks"].items():
        if {"ntp", "klal"} <= set(conds):
            n, k = conds["ntp"], conds["klal"]
            apart = k["ci95"][0] > n["ci95"][1]
            out.append(f"{task.replace('_', ' ')}: {100 * n['accuracy']:.1f} → "
                       f"{100 * k['accuracy']:.1f}% ({100 * (k['accuracy'] - n['accuracy']):+.1f}"
                       f"{', intervals apart' if apart else ', intervals overlap'})")
    return "; ".join(out) or "not run"


def _heads_claim(hres: heads.HeadsResult) -> str:
    c = "untrained" if "untrained" in hres.conditions else next(iter(hres.conditions))
    methods = hres.conditions[c].rec.methods
    accs = ", ".join(f"{m.replace('_', ' ')} {100 * v.acc_at_iou:.1f}"
                     for m, v in methods.items())
    which = "frozen checkpoint" if c == "untrained" else f"after {c}"
    ceiling = ("; the ceiling is the heads' rule on the object's own map, the most any "
               f"attention reaches at sigma {hres.config.ground_sigma:g}"
               if "ceiling" in methods else "")
    return f"{which}: Acc@0.5 {accs}{ceiling}"


def _lens_claim(lres: lens.LensResult, config: lens.LensExperimentConfig) -> str:
    conds = lres.conditions
    layer = config.trained_layer
    out = []
    for c in ("ntp", "lll"):
        if c in conds:
            miou = getattr(conds[c].lens.get(layer, {}).get("all"), "mIoU", None)
            vqa = conds[c].vqa.accuracy
            out.append(f"{lens.LABELS.get(c, c)}: mIoU {pct(miou, missing='n/a')} at layer "
                       f"{layer}, VQA {100 * vqa:.1f}")
    return "; ".join(out)


def _reading(config: klal.KLALExperimentConfig) -> str:
    train = config.train
    opts = {t: klal.task_config(config, t) for t in config.tasks}
    chance = []
    if "grid_patch" in opts:
        g = opts["grid_patch"]
        chance.append(f"Grid Patch {100 / (g['grid_rows'] * g['grid_cols']):.1f}% "
                      f"({g['grid_rows']}x{g['grid_cols']} cells)")
    if "line_intersection" in opts:
        chance.append("Line Intersection 50% (balanced yes/no)")
    if "line_tracing" in opts:
        chance.append("Line Tracing about 30% (3-4 curves)")
    return (
        f"<p>Each run is {train.describe('one')}, batches of {train.batch_size} samples "
        f"(seed {train.seed}); NTP and "
        f"NTP+KLAL (lambda {config.klal.weight}, query {config.klal.query}) see the same batches "
        f"from the "
        f"same initial weights. The test split ({config.test_samples} samples per task) comes "
        f"from a different data seed and was never used for any choice. Chance accuracy: "
        f"{'; '.join(chance)}.</p><p>The attention ratio is measured at the same query on a "
        f"teacher-forced forward: 1 means the target tokens get exactly their share of the "
        f"answer token's visual attention. docs/results.md has the 3-seed table, the ablations "
        f"and the discussion.</p>"
    )


def _figures(out_dir: Path, config: klal.KLALExperimentConfig, results: dict[str, Any]
             ) -> dict[str, Path]:
    figures = {
        "The answer token's attention on held-out test images (the KLAL paper's figure 3): "
        "image with the target outlined | NTP model | NTP+KLAL model. Each map is the head "
        "average of the attention renormalised over visual tokens, averaged over layers.":
            plot_attention_maps(_examples(config, results), out_dir / "attention_maps.png"),
        "Attention ratio on the test split (figure 4): mean attention on target tokens / mean "
        "on all visual tokens, from the last answer token. Bars: mean with 95% bootstrap CI; "
        "dots: samples. Above 1 means the target gets more than its share.":
            plot_ratio_bars(results, out_dir / "attention_ratio.png"),
        "Training curves: NTP loss, and the KLAL term (dashed where it is only measured).":
            plot_training_curves(results, out_dir / "training_curves.png"),
    }
    return figures


def _examples(config: klal.KLALExperimentConfig, results: dict[str, Any]) -> list[dict]:
    examples = []
    for task, ex in results["examples"].items():
        test = {s.id: s for s in klal.held_out_split(
            dataclasses.replace(config, test_samples=len(ex["ids"])), task)}
        for sid in ex["ids"]:
            maps = {klal_label(c): ex["maps"][c][sid]["map"] for c in ex["maps"]
                    if sid in ex["maps"][c]}
            extent = next(iter(ex["maps"].values()))[sid]["extent"]
            s = test[sid]
            examples.append({"image": s.image, "title": f"{task}, answer {s.answer}",
                             "maps": maps, "boxes": _boxes(s), "extent": extent})
    return examples


def klal_label(condition: str) -> str:
    return {"ntp": "NTP", "klal": "NTP+KLAL"}.get(condition, condition)


def _boxes(s: Sample) -> list[tuple[float, float, float, float]]:
    g: Geometry = s.geometry
    r = max(2.0, s.image.size[0] / 40)
    return list(g.boxes) + [(x - r, y - r, x + r, y + r) for x, y in g.points]


@dataclass(frozen=True)
class DemoSettings:
    """What the demo ran with (``results["settings"]``): each part's config as JSON (None for a
    part left out), the library versions and the machine."""

    klal: dict[str, Any]
    heads: dict[str, Any] | None
    lens: dict[str, Any] | None
    torch: str
    transformers: str
    python: str
    machine: str
    workers: int
    threads_per_worker: int
    cuda: bool

    @classmethod
    def of(cls, config: klal.KLALExperimentConfig,
           heads_config: heads.HeadsExperimentConfig | None = None,
           lens_config: lens.LensExperimentConfig | None = None,
           workers: int = 1) -> DemoSettings:
        import transformers

        return cls(config.to_json(), None if heads_config is None else heads_config.to_json(),
                   None if lens_config is None else lens_config.to_json(), torch.__version__,
                   transformers.__version__, platform.python_version(), platform.machine(),
                   workers, 1, torch.cuda.is_available())

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def reused_ntp(config: lens.LensExperimentConfig, heads_config: heads.HeadsExperimentConfig | None,
               hres: heads.HeadsResult | None, heads_dir: Path) -> dict[str, lens.Trained]:
    """``{"ntp": the heads part's saved NTP model}`` for `lens.run`, when it is the lens part's
    NTP training (both run 'ntp', same training settings, models saved); else ``{}``."""
    if (heads_config is None or hres is None or not heads_config.save_models
            or "ntp" not in heads_config.conditions or "ntp" not in config.conditions
            or lens.ntp_mismatches(config, heads_config)):
        return {}
    from lookhere.models.loading import load_model

    model, processor, _ = load_model(str(heads_dir / "models" / "ntp"), dtype=torch.float32)
    model.to("cuda" if torch.cuda.is_available() else "cpu")  # where the Trainer trains
    return {"ntp": lens.Trained(model, processor, hres.conditions["ntp"].train,
                                heads_config, source="the heads part")}
