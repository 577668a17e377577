"""Asking an outside VLM: an OpenAI-compatible chat-completions client for a dataset's samples.

`ask_all` sends one request per sample (``POST {url}/chat/completions``; the image as a
``data:image/png;base64,...`` URL content part, then the question as text), a few at a time, and
appends each answer to a JSONL file (`AnswersFile`) as it comes, so a rerun resumes where a
killed or failed run stopped and never asks again for a sample whose answer is saved. The file's
lines are ``{"id", "answer", "model", "input"}``, so it is also a predictions file for
``lookhere eval --predictions`` (`lookhere.eval.scoring.read_predictions` ignores the extra
keys); ``input`` is a hash of the image and question, so answers of another dataset with the
same ids are refused rather than reused.

Failures: HTTP 429, 408 and 5xx, connection errors, timeouts and malformed responses are
retried with capped exponential backoff and jitter (`backoff_delay`), honouring ``Retry-After``
(a 429 holds every worker until then: the rate limit is shared); other HTTP errors (401, 404, a
model that takes no images) stop the run at once. The API key is read from an environment
variable and sent as ``Authorization: Bearer``; it is written nowhere, and error text from the
server is scrubbed of it. Redirects are not followed (they would carry the key elsewhere).

Heavy or network imports (urllib.request, concurrent.futures, tqdm) are inside the functions:
the CLI imports this module to build ``lookhere eval --help``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import itertools
import json
import os
import random
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from PIL import Image

    from lookhere.data.sample import Sample

#: HTTP statuses worth retrying besides 5xx: rate limited, request timeout
RETRY_STATUSES = (408, 429)


class ApiError(RuntimeError):
    """The endpoint failed for good: a request it refused, or retries exhausted."""


@dataclass(frozen=True)
class ApiConfig:
    """Where to ask, and how hard to try."""

    url: str = field(metadata={"help": "base URL of an OpenAI-compatible API, e.g. "
                                       "https://api.openai.com/v1; requests go to "
                                       "URL/chat/completions"})
    model: str = field(metadata={"help": "the model name sent with every request"})
    key_env: str = field(default="OPENAI_API_KEY", metadata={
        "help": "environment variable holding the API key (sent as Authorization: Bearer)"})
    concurrency: int = field(default=4, metadata={"help": "requests in flight at once"})
    timeout: float = field(default=60.0, metadata={
        "help": "seconds to wait for the connection and for each read of a response"})
    max_retries: int = field(default=5, metadata={
        "help": "retries of one sample after a 429/408/5xx, a timeout, a connection error or "
                "a malformed response, before the run stops"})
    backoff: float = field(default=1.0, metadata={
        "help": "first retry delay in seconds; doubled per retry, with jitter, up to "
                "backoff_cap seconds"})
    backoff_cap: float = field(default=60.0, metadata={
        "help": "longest wait before a retry, Retry-After included"})
    max_tokens: int | None = field(default=None, metadata={
        "help": "max_tokens of each request (None: not sent; the server decides)"})
    temperature: float | None = field(default=0.0, metadata={
        "help": "temperature of each request (None: not sent)"})

    def __post_init__(self) -> None:
        check_url(self.url)
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError(f"model: expected a model name, got {self.model!r}")
        if not self.key_env or not self.key_env.replace("_", "").isalnum():
            raise ValueError(f"key_env: expected an environment variable name, got "
                             f"{self.key_env!r}")
        for name in ("concurrency", "max_retries", "max_tokens"):
            value, low = getattr(self, name), 0 if name == "max_retries" else 1
            if value is None and name == "max_tokens":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name}: expected an integer >= {low}, got {value!r}")
        for name in ("timeout", "backoff", "backoff_cap"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"{name}: expected a number of seconds > 0, got {value!r}")

    @property
    def endpoint(self) -> str:
        return self.url.rstrip("/") + "/chat/completions"


def check_url(url: str) -> str:
    """``url`` if it is an http(s) base URL with a host, no credentials, query or fragment."""
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"url: expected an http:// or https:// base URL with a host, e.g. "
                         f"https://api.openai.com/v1; got {url!r}")
    if parts.username or parts.password:
        raise ValueError("url: credentials in the URL would be written to the outputs; give the "
                         "key through the environment variable instead")
    if parts.query or parts.fragment:
        raise ValueError(f"url: expected a base URL without ?query or #fragment (the client "
                         f"appends /chat/completions); got {url!r}")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise ValueError(f"url: the port is not a number in {url!r}") from None
    return url


def read_key(env: str) -> str:
    """The API key in environment variable ``env``; the message never shows its value."""
    key = os.environ.get(env, "").strip()  # a trailing newline from $(cat file) is harmless
    if not key:
        raise ValueError(f"key_env: the environment variable {env} is not set or empty (the API "
                         f"key is read from it only)")
    if not (key.isprintable() and key.isascii()):  # a header cannot carry the rest
        raise ValueError(f"key_env: the environment variable {env} does not hold a valid key "
                         f"(non-printable or non-ASCII characters)")
    return key


# ---------------------------------------------------------------------------------------------
# One request


def image_data_url(image: Image.Image) -> str:
    """The image as a ``data:image/png;base64,...`` URL (PNG, lossless)."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def chat_request(config: ApiConfig, image_url: str, question: str) -> dict[str, Any]:
    """The chat-completions body of one sample: a user turn of the image, then the question."""
    body: dict[str, Any] = {
        "model": config.model,
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": image_url}},
            {"type": "text", "text": question}]}]}
    if config.max_tokens is not None:
        body["max_tokens"] = config.max_tokens
    if config.temperature is not None:
        body["temperature"] = config.temperature
    return body


def input_hash(image_url: str, question: str) -> str:
    """What identifies a sample's request besides its id: 16 hex digits of SHA-256."""
    digest = hashlib.sha256(image_url.encode("ascii") + b"\0" + question.encode("utf-8"))
    return digest.hexdigest()[:16]


def answer_text(payload: Any) -> str:
    """``choices[0].message.content`` of a response, stripped (a list of parts: their text
    joined; None, a refusal: ""). Raises ValueError on any other shape."""
    try:
        message = payload["choices"][0]["message"]
        content = message.get("content")
    except (KeyError, IndexError, TypeError, AttributeError):
        raise ValueError("no choices[0].message") from None
    if content is None:
        return ""
    if isinstance(content, list):
        texts = [p.get("text") for p in content if isinstance(p, dict)]
        content = "".join(t for t in texts if isinstance(t, str))
    if not isinstance(content, str):
        raise ValueError(f"choices[0].message.content is a {type(content).__name__}")
    return content.strip()


def backoff_delay(retry: int, base: float, cap: float, rng: random.Random) -> float:
    """Seconds before retry number ``retry`` (0 for the first): half of ``min(cap, base *
    2**retry)`` plus a uniform jitter of up to the other half, so that workers that failed
    together do not come back together."""
    step = min(cap, base * 2.0 ** min(retry, 60))
    return step / 2 + rng.uniform(0, step / 2)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header: a number (fractions accepted) or an HTTP date;
    None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class _Transient(Exception):
    """A failure worth retrying; ``rate_limited`` ones pause every worker."""

    def __init__(self, reason: str, retry_after: float | None = None,
                 rate_limited: bool = False) -> None:
        super().__init__(reason)
        self.retry_after = retry_after
        self.rate_limited = rate_limited


class ChatClient:
    """Posts chat-completions requests with retries. Thread-safe: the workers share one client,
    its rate-limit pause and its retry count. The key lives only in this object's headers."""

    def __init__(self, config: ApiConfig, key: str, *, seed: int | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.config = config
        self.retries = 0
        self._key = key
        self._headers = {"Content-Type": "application/json", "Accept": "application/json",
                         "Authorization": f"Bearer {key}", "User-Agent": "lookhere-eval"}
        self._opener = _opener()
        self._rng = random.Random(seed)
        self._sleep = sleep
        self._lock = threading.Lock()
        self._paused_until = 0.0  # time.monotonic(); a 429 holds every worker until then

    def __repr__(self) -> str:  # never the key
        return f"ChatClient({self.config.endpoint!r}, model={self.config.model!r})"

    def ask(self, body: bytes, what: str) -> str:
        """The answer to one request body (JSON bytes), retried as the config says; ApiError
        names ``what`` (the sample) when it gives up."""
        cfg = self.config
        for attempt in itertools.count():
            self._wait_pause()
            try:
                return self._post(body)
            except _Transient as err:
                if attempt == cfg.max_retries:
                    raise ApiError(f"{what}: no answer after {attempt + 1} attempt(s) (last: "
                                   f"{err})") from None
                with self._lock:
                    self.retries += 1
                    delay = (backoff_delay(attempt, cfg.backoff, cfg.backoff_cap, self._rng)
                             if err.retry_after is None else min(err.retry_after, cfg.backoff_cap))
                    if err.rate_limited:
                        self._paused_until = max(self._paused_until, time.monotonic() + delay)
                if not err.rate_limited:
                    self._sleep(delay)
        raise AssertionError("unreachable")  # itertools.count() never ends

    def _wait_pause(self) -> None:
        while (left := self._paused_until - time.monotonic()) > 0:
            self._sleep(left)

    def _post(self, body: bytes) -> str:
        import http.client
        import urllib.error
        import urllib.request

        req = urllib.request.Request(self.config.endpoint, data=body, headers=self._headers,
                                     method="POST")
        try:
            with self._opener.open(req, timeout=self.config.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as err:
            raise self._http_error(err) from None
        except (OSError, http.client.HTTPException) as err:  # refused, reset, timed out, DNS
            raise _Transient(self._connection_reason(err)) from None
        try:
            return answer_text(json.loads(raw))
        except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
            detail = "not JSON" if isinstance(err, json.JSONDecodeError) else str(err)
            raise _Transient(f"malformed response ({detail})") from None

    def _http_error(self, err: Any) -> Exception:
        status = f"HTTP {err.code} {err.reason}"
        if err.code in RETRY_STATUSES or err.code >= 500:
            after = parse_retry_after(err.headers.get("Retry-After") if err.headers else None)
            err.close()
            return _Transient(status, after, rate_limited=err.code == 429)
        try:
            detail = _error_detail(err.read())
        except OSError:
            detail = ""
        finally:
            err.close()
        hint = "; redirects are not followed: give the final URL" if 300 <= err.code < 400 else ""
        return ApiError(self.redact(f"{self.config.endpoint}: {status}"
                                    + (f": {detail}" if detail else "") + hint))

    def _connection_reason(self, err: BaseException) -> str:
        reason = getattr(err, "reason", err)
        if isinstance(reason, TimeoutError) or "timed out" in str(reason):
            return f"timed out after {self.config.timeout:g} s"
        text = getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
        return self.redact(f"connection failed ({text})")

    def redact(self, text: str) -> str:
        """``text`` with the key replaced by ``***`` (server messages may echo it)."""
        return text.replace(self._key, "***") if self._key else text


def _opener() -> Any:
    """A urllib opener that follows no redirect: a 3xx comes back as its HTTPError, since
    following it would send the Authorization header wherever the server points."""
    import urllib.request

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    return urllib.request.build_opener(NoRedirect())


def _error_detail(raw: bytes) -> str:
    """The ``error.message`` of an error body, else its first 200 characters, on one line."""
    text = raw.decode("utf-8", "replace")
    try:
        message = json.loads(text)["error"]["message"]
        text = message if isinstance(message, str) else text
    except (ValueError, KeyError, TypeError):
        pass
    return " ".join(text.split())[:200]


# ---------------------------------------------------------------------------------------------
# The answers file


class AnswersFile:
    """An append-only JSONL of one model's answers, ``{"id", "answer", "model", "input"}`` a
    line, locked (``flock``) while open so that two runs cannot write it at once.

    On opening, every complete line must be such a record of ``model`` with a unique id. A last
    line without its newline (a write cut by a kill) is kept when it is a whole record, else cut
    off. Each `append` is flushed and fsync'd before it returns."""

    def __init__(self, path: str | Path, model: str) -> None:
        self.path = Path(path)
        self.model = model
        self.answers: dict[str, tuple[str, str]] = {}  # id -> (answer, input hash)
        self._file: Any = None
        self._new = False  # created by this run: removed on exit if still empty

    def __enter__(self) -> AnswersFile:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._new = not self.path.exists()
        self._file = open(self.path, "a+b")  # noqa: SIM115 - closed in __exit__
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise ValueError(f"{self.path} is being written by another run") from None
        try:
            self._recover()
        except BaseException:
            self._file.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._new and not self.answers:  # nothing answered: leave nothing behind
            self.path.unlink(missing_ok=True)
        self._file.close()

    def _recover(self) -> None:
        f = self._file
        f.seek(0)
        data = f.read()
        end = data.rfind(b"\n") + 1  # bytes up to the last complete line
        for lineno, line in enumerate(data[:end].splitlines(), 1):
            if line.strip():
                self._add(self._parse(line, f"{self.path}:{lineno}"), f"{self.path}:{lineno}")
        tail = data[end:]
        if not tail:
            return
        lineno = data.count(b"\n") + 1
        where = f"{self.path}:{lineno}"
        try:
            rec = self._parse(tail, where)
            self._add(rec, where)
        except ValueError:  # a torn write: cut it off, the sample is asked again
            f.truncate(end)
            return
        self._write(b"\n")  # a whole record whose newline was cut: complete it

    def _parse(self, line: bytes, where: str) -> tuple[str, str, str]:
        try:
            rec = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            raise ValueError(f"{where}: not valid JSON") from None
        keys = ("id", "answer", "model", "input")
        if not isinstance(rec, dict) or not all(isinstance(rec.get(k), str) for k in keys):
            raise ValueError(f"{where}: expected a JSON object with string fields "
                             f"{', '.join(keys)} (a file written by `lookhere eval --api`)")
        if rec["model"] != self.model:
            raise ValueError(f"{where}: an answer of model {rec['model']!r}, not "
                             f"{self.model!r}; give each model its own answers file")
        return rec["id"], rec["answer"], rec["input"]

    def _add(self, rec: tuple[str, str, str], where: str) -> None:
        if rec[0] in self.answers:
            raise ValueError(f"{where}: id {rec[0]!r} answered twice")
        self.answers[rec[0]] = (rec[1], rec[2])

    def append(self, sample_id: str, answer: str, input_sha: str) -> None:
        rec = {"id": sample_id, "answer": answer, "model": self.model, "input": input_sha}
        self._write((json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8"))
        self.answers[sample_id] = (answer, input_sha)

    def _write(self, data: bytes) -> None:
        self._file.write(data)
        self._file.flush()
        os.fsync(self._file.fileno())


# ---------------------------------------------------------------------------------------------
# Many samples


@dataclass(frozen=True)
class ApiRun:
    """What `ask_all` did: every sample's ``answers`` (id -> text, in sample order), how many
    were ``asked`` now and ``resumed`` from the file, and the ``retries`` it took."""

    answers: dict[str, str] = field(repr=False)
    asked: int
    resumed: int
    retries: int
    path: Path


def ask_all(samples: Sequence[Sample], config: ApiConfig, answers_path: str | Path, *,
            key: str | None = None, progress: bool = True, seed: int | None = None) -> ApiRun:
    """Ask ``config``'s endpoint for every sample without a saved answer in ``answers_path``,
    saving each answer as it comes (`AnswersFile`).

    ``key``: the API key (default: read from ``config.key_env``). Raises ApiError when a request
    is refused or runs out of retries (the answers received until then are saved; the message
    says how many) and ValueError on an answers file that does not fit these samples."""
    ids = [s.id for s in samples]
    if len(set(ids)) != len(ids):
        raise ValueError("sample ids must be unique: answers are saved by id")
    key = read_key(config.key_env) if key is None else key
    client = ChatClient(config, key, seed=seed)
    with AnswersFile(answers_path, config.model) as store:
        _check_resumed(store, samples)
        pending = [s for s in samples if s.id not in store.answers]
        resumed = len(samples) - len(pending)
        failure = _ask_pending(client, pending, store, len(samples), progress)
        answered = {s.id: store.answers[s.id][0] for s in samples if s.id in store.answers}
    if failure is not None:
        raise ApiError(client.redact(
            f"{failure}; {len(answered)} of {len(samples)} answers are saved in "
            f"{store.path}; rerun the same command to resume"))
    return ApiRun(answered, len(samples) - resumed, resumed, client.retries, store.path)


def request_body(config: ApiConfig, sample: Sample) -> tuple[bytes, str]:
    """A sample's request body (JSON bytes) and its input hash (`input_hash`)."""
    url = image_data_url(sample.image)
    body = json.dumps(chat_request(config, url, sample.question)).encode("utf-8")
    return body, input_hash(url, sample.question)


def _check_resumed(store: AnswersFile, samples: Sequence[Sample]) -> None:
    """Saved answers must be for these samples' images and questions (same ids are not enough:
    two datasets of one task and seed share them). Ids of other samples are left alone."""
    changed = [s.id for s in samples if s.id in store.answers
               and input_hash(image_data_url(s.image), s.question) != store.answers[s.id][1]]
    if changed:
        raise ValueError(f"{store.path}: {len(changed)} saved answer(s) were for another image "
                         f"or question under the same id, e.g. {changed[:3]} (another dataset's "
                         f"answers?); give a new answers file")


def _ask_pending(client: ChatClient, pending: list[Sample], store: AnswersFile, total: int,
                 progress: bool) -> str | None:
    """Ask for ``pending`` with ``config.concurrency`` threads (each encodes its own images),
    appending answers as they come. Returns the first failure's message (what has not started
    is then cancelled; answers already in flight are still saved), or None."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    from tqdm.auto import tqdm

    config = client.config

    def ask(sample: Sample) -> tuple[str, str]:
        body, sha = request_body(config, sample)
        return client.ask(body, f"sample {sample.id!r}"), sha

    def save(fut: Any) -> None:
        if futures[fut] not in store.answers:
            store.append(futures[fut], *fut.result())
            bar.update(1)
            bar.set_postfix(retries=client.retries, refresh=False)

    def stop() -> set[Any]:  # cancel what has not started; what is in flight still ends
        for f in running:
            f.cancel()
        return {f for f in running if not f.cancelled()}

    bar = tqdm(total=total, initial=total - len(pending), desc=f"ask {config.model}",
               unit="answer", file=sys.stderr, disable=not progress)
    pool = ThreadPoolExecutor(config.concurrency, thread_name_prefix="lookhere-api")
    futures = {pool.submit(ask, s): s.id for s in pending}
    running, failure = set(futures), None
    try:
        while running:  # not as_completed: it never yields a future cancelled before it ran
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                err = fut.exception()
                if err is None:
                    save(fut)
                elif not isinstance(err, ApiError):
                    raise err
                elif failure is None:
                    failure = str(err)
            if failure is not None:
                running = stop()
    except BaseException:  # Ctrl-C, or a bug: ask nothing new, keep what is in flight
        running = stop()
        wait(running)
        for fut in futures:
            if not fut.cancelled() and fut.done() and fut.exception() is None:
                save(fut)
        raise
    finally:
        pool.shutdown(wait=True)
        bar.close()
    return failure
