"""The API client (`lookhere.eval.api`) against a local stub endpoint (tests/api_stub.py): answers
scored as a predictions file is, injected 429/500/timeouts/malformed bodies survived, a refused
request stopping the run, resume without asking twice, and the key written nowhere."""

import json
import random
import socket
import time
from email.utils import formatdate

import pytest
from api_stub import StubApi

from lookhere.data.disk import read_samples, write_dataset
from lookhere.eval.api import (
    AnswersFile,
    ApiConfig,
    ApiError,
    answer_text,
    ask_all,
    backoff_delay,
    input_hash,
    parse_retry_after,
    read_key,
)
from lookhere.eval.scoring import read_predictions, score_predictions

N = 12
KEY = "sk-test-5ecret-k3y"


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    out = tmp_path_factory.mktemp("api") / "shapes"
    write_dataset("shapes", N, out, image_size=112, max_objects=3, progress=False)
    return list(read_samples(out))


def mixed(samples):
    """The stub's answers: right, wrong and unparseable in turn."""
    index = {s.id: i for i, s in enumerate(samples)}

    def answer(s):
        i = index[s.id] % 3
        return s.answer if i == 0 else "[0.00, 0.00, 0.01, 0.01]" if i == 1 else "no idea"

    return answer


def config(stub, **kw):
    return ApiConfig(stub.url, "stub-vlm", **{"backoff": 0.01, "timeout": 5.0, **kw})


def written(folder):
    return b"".join(p.read_bytes() for p in folder.rglob("*") if p.is_file())


def test_answers_score_as_the_stub_answered(samples, tmp_path):
    answer = mixed(samples)
    with StubApi(samples, answer, delay_s=0.03) as stub:
        run = ask_all(samples, config(stub, concurrency=3), tmp_path / "a.jsonl", key=KEY,
                      progress=False)
    truth = {s.id: answer(s) for s in samples}  # what the stub sent, by the pixels it decoded
    assert run.answers == truth and (run.asked, run.resumed, run.retries) == (N, 0, 0)
    assert list(run.answers) == [s.id for s in samples]
    assert score_predictions(samples, run.answers).to_json() == \
        score_predictions(samples, truth).to_json()
    assert read_predictions(tmp_path / "a.jsonl") == truth  # the file is a predictions file
    assert sorted(stub.ok_ids()) == sorted(truth) and len(stub.log) == N
    by_id = {s.id: s for s in samples}
    assert all(r.auth == f"Bearer {KEY}" and r.model == "stub-vlm"
               and r.question == by_id[r.id].question for r in stub.log)
    assert 1 < stub.max_in_flight <= 3  # concurrent, within the limit
    assert KEY.encode() not in written(tmp_path)


def test_injected_failures_are_survived(samples, tmp_path):
    faults = {samples[0].id: ["429"], samples[1].id: ["429:0.4"], samples[2].id: ["500"],
              samples[3].id: ["slow"], samples[4].id: ["malformed", "500"]}
    # the timeout leaves an ordinary answer seconds on a loaded machine (two test workers on
    # two cores), so only the "slow" fault times out: retries stay exactly one per fault
    with StubApi(samples, slow_s=2.5) as stub:
        stub.faults = {k: list(v) for k, v in faults.items()}
        run = ask_all(samples, config(stub, concurrency=3, timeout=1.5, max_retries=2),
                      tmp_path / "a.jsonl", key=KEY, progress=False)
        log = stub.requests()
    assert run.answers == {s.id: s.answer for s in samples} and run.retries == 6
    for sid, kinds in faults.items():
        assert [r.outcome for r in log if r.id == sid][:len(kinds)] == kinds, sid
    assert sorted(stub.ok_ids()) == sorted(s.id for s in samples)  # one answer each
    # Retry-After: 0.4 is honoured (the backoff alone is ~0.01 s), and it held every worker
    limited = next(r for r in log if r.outcome == "429:0.4")
    retry = next(r for r in log if r.id == samples[1].id and r.start > limited.start)
    assert retry.start - limited.end >= 0.4
    assert not [r for r in log if limited.end + 0.2 < r.start < limited.end + 0.38]


def test_gives_up_after_max_retries_and_resumes(samples, tmp_path):
    path = tmp_path / "a.jsonl"
    with StubApi(samples, delay_s=0.02) as stub:
        stub.faults = {samples[5].id: ["500"] * 10}
        with pytest.raises(ApiError) as err:
            ask_all(samples, config(stub, concurrency=2, max_retries=2), path, key=KEY,
                    progress=False)
        saved = len(path.read_text().splitlines())
        message = str(err.value)
        assert f"sample '{samples[5].id}': no answer after 3 attempt(s) (last: HTTP 500" in message
        assert f"; {saved} of {N} answers are saved in {path}; rerun" in message
        assert "\n" not in message and saved == len(stub.ok_ids()) < N
        assert [r.outcome for r in stub.log if r.id == samples[5].id] == ["500"] * 3
        stub.faults = {}
        run = ask_all(samples, config(stub), path, key=KEY, progress=False)
        assert (run.asked, run.resumed) == (N - saved, saved)
        assert sorted(stub.ok_ids()) == sorted(s.id for s in samples)  # nobody asked twice


@pytest.mark.parametrize("fault,message", [
    ("401", "HTTP 401 Unauthorized: Incorrect API key provided: ***"),
    ("redirect", "HTTP 302 Found; redirects are not followed"),
])
def test_refused_request_stops_at_once(samples, tmp_path, fault, message):
    with StubApi(samples) as stub:
        stub.faults = {samples[3].id: [fault]}
        with pytest.raises(ApiError) as err:
            ask_all(samples, config(stub, concurrency=2), tmp_path / "a.jsonl", key=KEY,
                    progress=False)
        assert [r.outcome for r in stub.log if r.id == samples[3].id] == [fault]  # no retry
    assert message in str(err.value) and KEY not in str(err.value)
    assert KEY.encode() not in written(tmp_path)


def test_unreachable_host_leaves_nothing(samples, tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = ApiConfig(f"http://127.0.0.1:{port}/v1", "m", backoff=0.01, max_retries=1)
    with pytest.raises(ApiError, match=r"2 attempt\(s\) \(last: connection failed .*; 0 of 12"):
        ask_all(samples, cfg, tmp_path / "a.jsonl", key=KEY, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_resume_refuses_another_datasets_answers(samples, tmp_path):
    path = tmp_path / "a.jsonl"
    rec = {"id": samples[0].id, "answer": "x", "model": "stub-vlm", "input": "0" * 16}
    path.write_text(json.dumps(rec) + "\n")
    with StubApi(samples) as stub, pytest.raises(ValueError, match="another image or question"):
        ask_all(samples, config(stub), path, key=KEY, progress=False)
    assert stub.log == []


def _record(sid, answer="a", model="m", sha="0123456789abcdef"):
    return json.dumps({"id": sid, "answer": answer, "model": model, "input": sha}) + "\n"


def test_answers_file_recovers_a_torn_line(tmp_path):
    path = tmp_path / "a.jsonl"
    whole = _record("a") + _record("b")
    path.write_text(whole + _record("c")[:25])  # killed in the middle of a write
    with AnswersFile(path, "m") as f:
        assert sorted(f.answers) == ["a", "b"]
        f.append("c", "again", "0123456789abcdef")
    assert read_predictions(path) == {"a": "a", "b": "a", "c": "again"}
    path.write_text(whole + _record("c").rstrip("\n"))  # only the newline was lost
    with AnswersFile(path, "m") as f:
        assert sorted(f.answers) == ["a", "b", "c"]
    assert path.read_text() == whole + _record("c")


@pytest.mark.parametrize("content,message", [
    (_record("a", model="other"), "an answer of model 'other', not 'm'"),
    ('{"id": "a", "answer": "x"}\n', "a.jsonl:1: expected a JSON object with string fields"),
    (_record("a") + "{oops\n", "a.jsonl:2: not valid JSON"),
    (_record("a") + _record("a"), "a.jsonl:2: id 'a' answered twice"),
])
def test_answers_file_refuses_other_files(tmp_path, content, message):
    path = tmp_path / "a.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=message), AnswersFile(path, "m"):
        pass
    assert path.read_text() == content  # left as it was


def test_answers_file_is_locked_while_open(tmp_path):
    with AnswersFile(tmp_path / "a.jsonl", "m") as f:
        f.append("a", "x", "0123456789abcdef")
        with pytest.raises(ValueError, match="being written by another run"), \
                AnswersFile(tmp_path / "a.jsonl", "m"):
            pass


def test_backoff_is_capped_exponential_with_jitter():
    rng = random.Random(0)
    for retry in range(12):
        step = min(8.0, 0.5 * 2 ** retry)
        delays = [backoff_delay(retry, 0.5, 8.0, rng) for _ in range(50)]
        assert all(step / 2 <= d <= step for d in delays)
        assert len(set(delays)) > 1  # jittered
    assert backoff_delay(10_000, 1.0, 60.0, rng) <= 60.0


def test_retry_after():
    assert parse_retry_after("3") == 3.0 and parse_retry_after("0.25") == 0.25
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("-5") == 0.0
    assert 8 < parse_retry_after(formatdate(time.time() + 10, usegmt=True)) <= 10


def test_answer_text_shapes():
    def reply(content):
        return {"choices": [{"message": {"role": "assistant", "content": content}}]}

    assert answer_text(reply("  yes \n")) == "yes"
    assert answer_text(reply([{"type": "text", "text": "row 1"}, {"type": "text", "text": ","},
                              {"type": "other"}])) == "row 1,"
    assert answer_text(reply(None)) == ""  # a refusal: scored as a parse failure
    for bad in ({}, {"choices": []}, [], reply(3)):
        with pytest.raises(ValueError):
            answer_text(bad)


@pytest.mark.parametrize("kw,message", [
    ({"url": "api.openai.com/v1"}, "url: expected an http:// or https:// base URL"),
    ({"url": "ftp://host/v1"}, "url: expected an http:// or https:// base URL"),
    ({"url": "https://user:pw@host/v1"}, "url: credentials in the URL"),
    ({"url": "https://host/v1?key=1"}, "url: expected a base URL without"),
    ({"url": "http://host:port/v1"}, "url: the port is not a number"),
    ({"model": " "}, "model: expected a model name"),
    ({"key_env": "NOT-A-NAME"}, "key_env: expected an environment variable name"),
    ({"concurrency": 0}, "concurrency: expected an integer >= 1"),
    ({"max_retries": -1}, "max_retries: expected an integer >= 0"),
    ({"timeout": 0}, "timeout: expected a number of seconds > 0"),
    ({"backoff": float("nan")}, "backoff: expected a number of seconds > 0"),
])
def test_config_checks(kw, message):
    with pytest.raises(ValueError, match=message.replace("?", r"\?")):
        ApiConfig(**{"url": "https://host/v1", "model": "m", **kw})
    assert ApiConfig("https://host/v1/", "m").endpoint == "https://host/v1/chat/completions"


def test_read_key(monkeypatch):
    monkeypatch.setenv("LOOKHERE_TEST_KEY", KEY)
    assert read_key("LOOKHERE_TEST_KEY") == KEY
    monkeypatch.delenv("LOOKHERE_TEST_KEY")
    with pytest.raises(ValueError, match="LOOKHERE_TEST_KEY is not set or empty"):
        read_key("LOOKHERE_TEST_KEY")
    monkeypatch.setenv("LOOKHERE_TEST_KEY", "sk-a\nX-Other: b")
    with pytest.raises(ValueError, match="does not hold a valid key") as err:
        read_key("LOOKHERE_TEST_KEY")
    assert "sk-a" not in str(err.value)


def test_input_hash_tells_images_and_questions_apart():
    assert input_hash("data:a", "q") != input_hash("data:b", "q") != input_hash("data:a", "r")
    assert len(input_hash("data:a", "q")) == 16
