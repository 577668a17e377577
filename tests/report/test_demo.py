"""The demo's own records: its timing, settings and lead table are typed, with the JSON
schema of results.json (read by report.page and by docs/benchmarks.md's timings)."""

import json

from test_report import _results

from lookhere.report.demo import DemoSettings, DemoTiming, Job, JobResult, LeadTable
from lookhere.report.page import write_report


def test_timing_by_hand():
    done = [JobResult(Job("heads", "ntp", with_lens=True), {}, 20.04),
            JobResult(Job("klal", "grid_patch"), {}, 10.0),
            JobResult(Job("klal", "line_tracing"), {}, 5.0)]
    # the jobs' 35.0 s over 20 s wall time x 2 workers: 0.875
    assert DemoTiming.of(done, 20.0, 2).to_json() == {
        "jobs": {"heads ntp + lens": 20.0, "klal grid_patch": 10.0, "klal line_tracing": 5.0},
        "parts": {"heads": 20.0, "klal": 15.0}, "workers": 2, "wall_s": 20.0,
        "parallel_efficiency": 0.875}
    assert DemoTiming.of(done, 0.0, 2).parallel_efficiency is None
    assert "<th>heads ntp + lens</th><td>20</td>" in DemoTiming.of(done, 20.0, 2).html()


def test_settings_keys():
    from lookhere.experiment.klal import KLALExperimentConfig

    settings = DemoSettings.of(KLALExperimentConfig(), workers=3).to_json()
    assert list(settings) == ["klal", "heads", "lens", "torch", "transformers", "python",
                              "machine", "workers", "threads_per_worker", "cuda"]
    assert settings["heads"] is settings["lens"] is None and settings["workers"] == 3
    assert settings["klal"] == KLALExperimentConfig().to_json()


def test_typed_lead_and_settings_render_as_their_json(tmp_path):
    lead = LeadTable("The claims", ["claim", "paper", "ours"], [["KLAL <helps>", "+16", "x"]],
                     "n")
    typed, plain = _results(), _results()
    typed.update(lead=lead, timing=DemoTiming({"a": 1.0}, {"klal": 1.0}, 1, 2.0, 0.5))
    plain.update(lead=lead.to_json(), timing={"jobs": {"a": 1.0}, "parts": {"klal": 1.0},
                                              "workers": 1, "wall_s": 2.0,
                                              "parallel_efficiency": 0.5})
    write_report(tmp_path / "typed", typed, {})
    write_report(tmp_path / "plain", plain, {})
    for name in ("results.json", "results.md", "report.html"):
        assert (tmp_path / "typed" / name).read_text() == (tmp_path / "plain" / name).read_text()
    assert json.loads((tmp_path / "typed" / "results.json").read_text())["lead"]["rows"] == \
        [["KLAL <helps>", "+16", "x"]]
