"""``lookhere eval --api`` against a local stub endpoint (tests/api_stub.py): the same scores as
``--predictions`` on the same answers, a kill -9 mid-run and a resume that asks no sample twice,
and bad input as one exit-2 line."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from api_stub import StubApi
from conftest import ROOT

from lookhere.cli import main
from lookhere.data.disk import read_samples
from lookhere.eval.scoring import read_predictions, write_predictions

N = 12
KEY = "sk-cli-5ecret-k3y"
ENV = "LOOKHERE_TEST_API_KEY"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("api") / "shapes"
    assert main(["data", "make", "shapes", "--n", str(N), "--out", str(out),
                 "--set", "image_size=112", "--set", "max_objects=3"]) == 0
    return out, list(read_samples(out))


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv(ENV, KEY)
    return ENV


def _answer(samples):
    index = {s.id: i for i, s in enumerate(samples)}
    return lambda s: s.answer if index[s.id] % 2 == 0 else "row 9, column 9"


def _api(stub, *extra):
    return ["--api", stub.url, "--api-model", "stub-vlm", "--api-key-env", ENV,
            "--api-backoff", "0.01", *map(str, extra)]


def run(argv):
    return main([str(a) for a in argv])


def _scores(path):
    return {k: v for k, v in json.loads(path.read_text()).items()
            if k not in ("data", "api", "api_model", "answers", "predictions")}


def test_eval_api_scores_as_predictions(data, tmp_path, key, capsys):
    folder, samples = data
    answer = _answer(samples)
    out = tmp_path / "metrics.json"
    with StubApi(samples, answer) as stub:
        stub.faults = {samples[1].id: ["500"]}
        assert run(["eval", "--data", folder, "--out", out, *_api(stub)]) == 0
    printed = capsys.readouterr()
    answers = tmp_path / "metrics.answers.jsonl"  # the default: beside --out
    assert "12 asked, 0 resumed" in printed.out and "1 retries" in printed.out
    assert "ask stub-vlm" in printed.err  # the progress bar, on stderr
    truth = write_predictions(tmp_path / "truth.jsonl", {s.id: answer(s) for s in samples})
    for preds in (answers, truth):  # the answers file is a predictions file too
        again = tmp_path / f"again-{preds.stem}.json"
        assert run(["eval", "--data", folder, "--predictions", preds, "--out", again]) == 0
        assert _scores(again) == _scores(out)
    assert _scores(out)["tasks"]["shapes"]["accuracy"] == 0.5
    assert json.loads(out.read_text())["answers"] == str(answers)
    printed = capsys.readouterr()
    for text in (printed.out, printed.err, *(p.read_bytes().decode() for p in
                                             tmp_path.rglob("*") if p.is_file())):
        assert KEY not in text


def _lines(path):
    return len(path.read_bytes().splitlines()) if path.exists() else 0


def test_eval_api_killed_then_resumed_asks_no_sample_twice(data, tmp_path, key):
    """The stub answers 5 requests, then holds the rest unanswered: when the JSONL has 5 lines
    the process is killed -9, with no answer received but unsaved. The rerun must ask for the
    other 7 only: each sample id is answered exactly once across both runs."""
    folder, samples = data
    answers, out = tmp_path / "answers.jsonl", tmp_path / "m.json"
    with StubApi(samples, hold_after=5) as stub:
        argv = ["eval", "--data", folder, "--api-answers", answers, "--out", out,
                *_api(stub, "--api-concurrency", 3)]
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), ENV: KEY}
        proc = subprocess.Popen([sys.executable, "-m", "lookhere.cli", *map(str, argv)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        try:
            while _lines(answers) < 5:
                assert proc.poll() is None, proc.stderr.read()[-2000:]
                assert time.monotonic() < deadline, "no answers in time"
                time.sleep(0.01)
            time.sleep(0.1)  # a sixth answer, were one sent, would land now
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc.stderr.close()
        assert _lines(answers) == 5 and not out.exists()
        stub.hold_after = None
        stub.release()  # the held requests of the dead process are dropped
        assert run(argv) == 0
        requests = stub.requests()
    ok = sorted(r.id for r in requests if r.outcome == "ok")
    assert ok == sorted(s.id for s in samples)  # each sample answered exactly once
    assert sum(r.outcome == "dropped" for r in requests) >= 1  # some were in flight at the kill
    assert sorted(read_predictions(answers)) == sorted(s.id for s in samples)
    assert _scores(out)["tasks"]["shapes"]["accuracy"] == 1.0


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_eval_api_bad_input(data, tmp_path, key, cli_error, monkeypatch):
    folder, samples = data
    base = ["eval", "--data", folder, "--out", tmp_path / "m.json"]
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    api = ["--api", url, "--api-model", "m", "--api-key-env", ENV]
    cases = [
        (["--api", "api.example.com", "--api-model", "m"], "--api: expected an http:// or https"),
        (["--api", url], "--api needs --api-model NAME"),
        (["--predictions", tmp_path / "p.jsonl", "--api-model", "m"],
         "--api-model only apply with --api"),
        ([*api, "--missing", "wrong"], "--missing only applies with --predictions"),
        ([*api, "--batch-size", "2"], "--batch-size only apply with --model"),
        ([*api, "--api-concurrency", "0"], "argument --api-concurrency: expected an integer >= 1"),
        ([*api, "--api-timeout", "-1"], "argument --api-timeout: expected a number of seconds"),
        ([*api, "--api-max-retries", "x"], "argument --api-max-retries: expected an integer >= 0"),
        ([*api[:-1], "NO_SUCH_KEY_VAR"],
         "--api-key-env: the environment variable NO_SUCH_KEY_VAR is not set or empty"),
        ([*api, "--api-answers", tmp_path / "m.json"], "is also --out; give two files"),
        ([*api, "--api-answers", tmp_path], "is a folder; give a file name"),
        ([*api, "--api-max-retries", "1", "--api-backoff", "0.01"],  # the host is unreachable
         "no answer after 2 attempt(s) (last: connection failed (Connection refused)); 0 of 12 "
         "answers are saved in"),
        (["--predictions", tmp_path / "p.jsonl", "--model", "x", "--api", url],
         "not allowed with argument"),
    ]
    for extra, message in cases:
        line = cli_error([*base, *extra])
        assert message in line, (extra, line)
        assert KEY not in line
    assert list(tmp_path.iterdir()) == []  # nothing written, not even an empty answers file
    foreign = tmp_path / "other.jsonl"
    foreign.write_text(json.dumps({"id": samples[0].id, "answer": "x", "model": "other",
                                   "input": "0" * 16}) + "\n")
    line = cli_error([*base, *api, "--api-answers", foreign])
    assert f"--api-answers {foreign}:1: an answer of model 'other', not 'm'" in line


def test_eval_help_lists_the_api_options(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    out = capsys.readouterr().out
    for flag in ("--api URL", "--api-model NAME", "--api-answers FILE", "--api-key-env NAME",
                 "--api-concurrency N", "--api-timeout S", "--api-max-retries N"):
        assert flag in out, flag
    assert "(default OPENAI_API_KEY)" in out
