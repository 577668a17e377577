"""A local OpenAI-compatible chat-completions endpoint for the API client's tests.

`StubApi` serves ``POST /v1/chat/completions`` on 127.0.0.1 (a free port) from a thread. It knows
each sample by its pixels: it decodes the request's base64 PNG itself (not with the client's
encoder) and looks the pixels up, then answers with ``answer(sample)``. Faults are queued per
sample id (`faults`) and consumed one per request; every request is logged (`log`) with the
sample id, what was done and the Authorization header.

Faults: ``"429"`` (no Retry-After), ``"429:S"`` (Retry-After: S seconds), ``"500"``, ``"slow"``
(sleep ``slow_s`` before answering), ``"malformed"`` (200 with a body that is not JSON), ``"401"``
(an error message that echoes the Authorization header, as some servers do) and
``"redirect"`` (302 to another path).

``hold_after=N``: after N successful answers, later requests wait without an answer until
`release` (then they are dropped): a client killed at that point has every answer it was sent.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image

from lookhere.data.sample import Sample


@dataclass(frozen=True)
class Request:
    """One request as the stub saw it: ``outcome`` is "ok", a fault's name, "dropped" or
    "unknown" (no sample has its pixels)."""

    id: str | None
    outcome: str
    auth: str
    model: str
    question: str
    start: float  # time.monotonic() when it arrived
    end: float  # ... and when it was answered


def pixels_key(image: Image.Image) -> str:
    image = image.convert("RGB")
    return hashlib.sha256(repr(image.size).encode() + image.tobytes()).hexdigest()


class StubApi:
    def __init__(self, samples: Sequence[Sample], answer: Callable[[Sample], str] | None = None,
                 slow_s: float = 1.0, hold_after: int | None = None, delay_s: float = 0.0):
        self.by_pixels = {pixels_key(s.image): s for s in samples}
        assert len(self.by_pixels) == len(samples), "samples must have distinct images"
        self.answer = answer or (lambda s: s.answer)
        self.faults: dict[str, list[str]] = {}
        self.log: list[Request] = []
        self.slow_s, self.delay_s, self.hold_after = slow_s, delay_s, hold_after
        self.in_flight = self.max_in_flight = self.granted = 0
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,),
                                        daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> StubApi:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()

    def release(self) -> None:
        """Let held requests go (they are dropped, not answered)."""
        self._released.set()

    def requests(self, timeout: float = 10.0) -> list[Request]:
        """The log in order of arrival, once no request is in flight (a slow one ends late)."""
        deadline = time.monotonic() + timeout
        while self.in_flight and time.monotonic() < deadline:
            time.sleep(0.01)
        return sorted(self.log, key=lambda r: r.start)

    def ok_ids(self) -> list[str]:
        return [r.id for r in self.log if r.outcome == "ok"]

    def handle(self, body: bytes) -> tuple[int, dict[str, str], bytes, Request]:
        """(status, headers, body) of one request (status 0: no answer) and its log entry."""
        req = json.loads(body)
        parts = req["messages"][0]["content"]
        url = next(p["image_url"]["url"] for p in parts if p["type"] == "image_url")
        question = next(p["text"] for p in parts if p["type"] == "text")
        prefix = "data:image/png;base64,"
        assert url.startswith(prefix)
        image = Image.open(io.BytesIO(base64.b64decode(url[len(prefix):])))
        assert image.format == "PNG"
        sample = self.by_pixels.get(pixels_key(image))
        entry = Request(sample and sample.id, "unknown", "", req.get("model", ""), question,
                        0.0, 0.0)
        if sample is None:
            return 400, {}, _error("no sample has these pixels"), entry
        with self._lock:
            queue = self.faults.get(sample.id, [])
            fault = queue.pop(0) if queue else None
            held = fault is None and self.hold_after is not None and self.granted >= self.hold_after
            self.granted += fault is None and not held
        if held:
            self._released.wait()
            return 0, {}, b"", replace(entry, outcome="dropped")
        return self._respond(fault, sample, replace(entry, outcome=fault or "ok"))

    def _respond(self, fault: str | None, sample: Sample, entry: Request):
        if fault is None or fault == "slow":
            if fault == "slow":
                time.sleep(self.slow_s)
            time.sleep(self.delay_s)
            return 200, {}, _completion(self.answer(sample)), entry
        if fault.startswith("429"):
            after = fault.partition(":")[2]
            return 429, ({"Retry-After": after} if after else {}), _error("rate limited"), entry
        if fault == "500":
            return 500, {}, _error("server error"), entry
        if fault == "malformed":
            return 200, {}, b'{"choices": [{"message": ', entry
        if fault == "401":
            return 401, {}, b"", entry  # the handler echoes the Authorization header
        if fault == "redirect":
            return 302, {"Location": "/elsewhere"}, b"", entry
        raise AssertionError(f"unknown fault {fault!r}")


def _completion(text: str) -> bytes:
    return json.dumps({"id": "chatcmpl-stub", "object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": text},
         "finish_reason": "stop"}]}).encode()


def _error(message: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": "stub"}}).encode()


def _handler(stub: StubApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # quiet
            pass

        def do_POST(self) -> None:
            start = time.monotonic()
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            auth = self.headers.get("Authorization", "")
            with stub._lock:
                stub.in_flight += 1
                stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
            entry = None
            try:
                if self.path != "/v1/chat/completions":
                    status, headers, out = 404, {}, _error("no such path")
                else:
                    status, headers, out, entry = stub.handle(body)
                if entry is not None and entry.outcome == "401":
                    out = _error(f"Incorrect API key provided: {auth.removeprefix('Bearer ')}")
                if status:
                    self._send(status, headers, out)
            finally:
                with stub._lock:  # logged before it stops counting as in flight
                    if entry is not None:
                        stub.log.append(replace(entry, auth=auth, start=start,
                                                end=time.monotonic()))
                    stub.in_flight -= 1

        def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
            try:
                self.send_response(status)
                for k, v in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except OSError:  # the client gave up (a timeout): nothing to answer
                pass

    return Handler
