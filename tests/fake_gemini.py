"""A local fake of the Gemini REST API, for driving the real `google-genai` SDK in tests.

It speaks the protocol the SDK uses: ``POST /{version}/models/{model}:streamGenerateContent
?alt=sse`` answered with SSE ``data:`` lines of GenerateContentResponse JSON (chunked
transfer encoding), ``:generateContent`` answered with one JSON body, and errors as
Google's JSON error body (``{"error": {"code", "message", "status", "details"}}``).

Usage::

    from fake_gemini import FakeGemini, rate_limited, text_stream   # tests/ is on sys.path

    with FakeGemini() as fake:            # 127.0.0.1, a free port
        fake.enqueue(rate_limited(retry_delay=0.05), text_stream(["Hel", "lo"]))
        client = genai.Client(api_key="k", http_options=types.HttpOptions(
            base_url=fake.base_url, api_version=fake.api_version))
        ...
        fake.requests[-1].prompt_text     # what the SDK sent

Each request takes the next scripted :class:`Reply` (``enqueue``); when the queue is
empty, ``fake.default`` answers (a short normal stream unless you set another).
"""

from __future__ import annotations

import json
import socket
import sys
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

DEFAULT_API_VERSION = "v1beta"

# HTTP status -> google.rpc status name, as the real API reports them.
_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


# ---------------------------------------------------------------------------
# Scripted replies
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """One scripted answer. Build it with the helper functions below rather than directly.

    Attributes:
        status: HTTP status. Anything but 200 sends ``body`` as JSON and nothing else.
        body: the JSON body of an error (or of a non-streaming success).
        headers: extra response headers (e.g. ``{"Retry-After": "2"}``).
        events: for 200 streams, the SSE ``data:`` payloads, in order.
        event_delay: seconds to wait after each event.
        stall_before_headers: seconds to wait before sending anything at all.
        stall_after_events: seconds to wait after the events, before ending the stream.
        end: ``"normal"`` (terminating chunk), or ``"drop"`` (close the socket mid-body).
    """

    status: int = 200
    body: dict | None = None
    headers: dict[str, str] = field(default_factory=dict)
    events: tuple[dict, ...] = ()
    event_delay: float = 0.0
    stall_before_headers: float = 0.0
    stall_after_events: float = 0.0
    end: str = "normal"


def text_chunk(text: str, finish_reason: str | None = None) -> dict:
    """One GenerateContentResponse carrying ``text`` (REST camelCase JSON)."""
    candidate: dict[str, Any] = {
        "content": {"role": "model", "parts": [{"text": text}]},
        "index": 0,
    }
    if finish_reason:
        candidate["finishReason"] = finish_reason
    return {"candidates": [candidate], "modelVersion": "fake-gemini", "responseId": "fake"}


def text_stream(
    chunks: list[str] | tuple[str, ...],
    *,
    finish_reason: str = "STOP",
    event_delay: float = 0.0,
) -> Reply:
    """A normal stream: one event per chunk, the last one carrying ``finish_reason``."""
    events = [text_chunk(c) for c in chunks]
    if events:
        events[-1] = text_chunk(chunks[-1], finish_reason)
    else:
        events = [{"candidates": [{"finishReason": finish_reason, "index": 0}]}]
    events[-1]["usageMetadata"] = {
        "promptTokenCount": 10,
        "candidatesTokenCount": len(chunks),
        "totalTokenCount": 10 + len(chunks),
    }
    return Reply(events=tuple(events), event_delay=event_delay)


def error_body(
    status: int,
    message: str,
    *,
    status_name: str | None = None,
    reason: str | None = None,
    retry_delay: float | None = None,
) -> dict:
    """Google's JSON error format, with optional ErrorInfo ``reason`` and RetryInfo delay."""
    details: list[dict] = []
    if reason:
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": reason,
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            }
        )
    if retry_delay is not None:
        details.append(
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{retry_delay}s"}
        )
    error: dict[str, Any] = {
        "code": status,
        "message": message,
        "status": status_name or _STATUS_NAMES.get(status, "UNKNOWN"),
    }
    if details:
        error["details"] = details
    return {"error": error}


def error(
    status: int,
    message: str = "Something went wrong.",
    *,
    status_name: str | None = None,
    reason: str | None = None,
    retry_delay: float | None = None,
    retry_after: str | None = None,
) -> Reply:
    """An HTTP error with Google's error body; ``retry_after`` sets the Retry-After header."""
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    body = error_body(
        status, message, status_name=status_name, reason=reason, retry_delay=retry_delay
    )
    return Reply(status=status, body=body, headers=headers)


def rate_limited(retry_delay: float | None = None, retry_after: str | None = None) -> Reply:
    """429 RESOURCE_EXHAUSTED, optionally with a RetryInfo delay and/or a Retry-After header."""
    return error(
        429,
        "You exceeded your current quota, please check your plan and billing details.",
        retry_delay=retry_delay,
        retry_after=retry_after,
    )


def invalid_key(status: int = 400) -> Reply:
    """What the API answers to a wrong key: 400 INVALID_ARGUMENT with reason API_KEY_INVALID."""
    return error(
        status,
        "API key not valid. Please pass a valid API key.",
        reason="API_KEY_INVALID",
    )


def server_error(status: int = 500) -> Reply:
    """A 5xx (500 INTERNAL, 503 UNAVAILABLE...)."""
    message = (
        "The model is overloaded. Please try again later."
        if status == 503
        else ("An internal error has occurred.")
    )
    return error(status, message)


def safety_block(where: str = "response", chunks_before: tuple[str, ...] = ()) -> Reply:
    """A blocked answer.

    ``where="response"``: the candidate ends with finishReason SAFETY and no content (after
    ``chunks_before``, if any). ``where="prompt"``: promptFeedback.blockReason SAFETY, no
    candidates.
    """
    ratings = [
        {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": True}
    ]
    if where == "prompt":
        final = {"promptFeedback": {"blockReason": "SAFETY", "safetyRatings": ratings}}
    elif where == "response":
        final = {"candidates": [{"finishReason": "SAFETY", "index": 0, "safetyRatings": ratings}]}
    else:
        raise ValueError(f"where must be 'response' or 'prompt', got {where!r}")
    return Reply(events=(*(text_chunk(c) for c in chunks_before), final))


def mid_stream_error(chunks: tuple[str, ...] | list[str], status: int = 500) -> Reply:
    """Some text chunks, then an error event (``data: {"error": ...}``) inside the stream."""
    err = error_body(status, "An internal error has occurred.")
    return Reply(events=(*(text_chunk(c) for c in chunks), err))


def mid_stream_drop(chunks: tuple[str, ...] | list[str]) -> Reply:
    """Some text chunks, then the connection closes before the body is complete."""
    return Reply(events=tuple(text_chunk(c) for c in chunks), end="drop")


def stall(seconds: float, chunks_before: tuple[str, ...] | list[str] = ()) -> Reply:
    """Say nothing for ``seconds``: before the headers when ``chunks_before`` is empty,
    otherwise after streaming them. Ends early when the server stops."""
    if chunks_before:
        events = tuple(text_chunk(c) for c in chunks_before)
        return Reply(events=events, stall_after_events=seconds, end="drop")
    return Reply(stall_before_headers=seconds, end="drop")


# ---------------------------------------------------------------------------
# Received requests
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ReceivedRequest:
    """One request as the fake saw it."""

    method: str
    path: str  # without the query string
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: Any  # parsed JSON, or the raw text when it was not JSON

    @property
    def api_key(self) -> str | None:
        return self.headers.get("x-goog-api-key")

    @property
    def api_version(self) -> str:
        return self.path.strip("/").split("/", 1)[0]

    @property
    def model(self) -> str | None:
        """'gemini-x' from '/v1beta/models/gemini-x:streamGenerateContent'."""
        tail = self.path.split("/models/", 1)
        return tail[1].split(":", 1)[0] if len(tail) == 2 else None

    @property
    def method_name(self) -> str | None:
        """'streamGenerateContent' or 'generateContent'."""
        return self.path.rsplit(":", 1)[1] if ":" in self.path else None

    @property
    def contents(self) -> list[dict]:
        return self.body.get("contents", []) if isinstance(self.body, dict) else []

    @property
    def prompt_text(self) -> str:
        """All the text of ``contents``, joined with newlines."""
        return "\n".join(
            part.get("text", "") for content in self.contents for part in content.get("parts", [])
        )

    @property
    def system_text(self) -> str:
        """All the text of ``systemInstruction``."""
        system = self.body.get("systemInstruction") if isinstance(self.body, dict) else None
        return "\n".join(part.get("text", "") for part in (system or {}).get("parts", []))

    @property
    def generation_config(self) -> dict:
        return self.body.get("generationConfig", {}) if isinstance(self.body, dict) else {}


# ---------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------


class FakeGemini:
    """A threaded fake Gemini server on 127.0.0.1 (a free port unless ``port`` is given).

    Args:
        api_version: the only version path it answers (others get 404), so a test
            proves the client pinned it.
        api_key: when set, requests whose ``x-goog-api-key`` differs get the API's
            invalid-key error instead of the scripted reply.
        default: the reply when the queue is empty (a short normal stream by default).
        port: 0 for a free port.
    """

    def __init__(
        self,
        *,
        api_version: str = DEFAULT_API_VERSION,
        api_key: str | None = None,
        default: Reply | None = None,
        port: int = 0,
    ):
        self.api_version = api_version
        self.api_key = api_key
        self.default = default or text_stream(["Hello ", "from ", "the fake."])
        self._port = port
        self._queue: deque[Reply] = deque()
        self._requests: list[ReceivedRequest] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> FakeGemini:
        """Bind and serve in a daemon thread. Returns self."""
        if self._server is not None:
            return self
        handler = type("_Handler", (_Handler,), {"fake": self})
        self._stop.clear()
        self._server = _Server(("127.0.0.1", self._port), handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; stalled replies end at once."""
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeGemini:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FakeGemini is not running; call start() first")
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``: give it to ``types.HttpOptions(base_url=...)``."""
        return f"http://127.0.0.1:{self.port}"

    # -- scripting -----------------------------------------------------------

    def enqueue(self, *replies: Reply) -> None:
        """Answer the next requests with these replies, in order."""
        with self._lock:
            self._queue.extend(replies)

    def reset(self) -> None:
        """Forget queued replies and received requests."""
        with self._lock:
            self._queue.clear()
            self._requests.clear()

    @property
    def pending(self) -> int:
        """How many scripted replies are still queued."""
        with self._lock:
            return len(self._queue)

    @property
    def requests(self) -> list[ReceivedRequest]:
        """A copy of the requests received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def _take(self, request: ReceivedRequest) -> Reply:
        with self._lock:
            self._requests.append(request)
            return self._queue.popleft() if self._queue else self.default

    def _wait(self, seconds: float) -> None:
        if seconds > 0:
            self._stop.wait(seconds)


def _merge_events(events: tuple[dict, ...]) -> dict:
    """One non-streaming GenerateContentResponse from a stream's events."""
    merged = dict(events[-1]) if events else {}
    text = "".join(
        part.get("text", "")
        for event in events
        for cand in event.get("candidates", [])[:1]
        for part in cand.get("content", {}).get("parts", [])
    )
    if merged.get("candidates"):
        cand = dict(merged["candidates"][0])
        if text:
            cand["content"] = {"role": "model", "parts": [{"text": text}]}
        merged["candidates"] = [cand]
    return merged


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        """A client that drops a kept-alive connection (the SDK closing its pool) is normal:
        no traceback on stderr for it."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeGemini  # set on the subclass made by FakeGemini.start

    def log_message(self, format, *args):  # keep test output quiet
        pass

    def do_GET(self):
        self._send_json(404, error_body(404, "Method not found."))

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode("utf-8", errors="replace") if length else ""
        try:
            body: Any = json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            body = raw
        split = urlsplit(self.path)
        request = ReceivedRequest(
            method="POST",
            path=split.path,
            query=parse_qs(split.query),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
        )
        reply = self.fake._take(request)

        if request.api_version != self.fake.api_version or request.method_name not in (
            "streamGenerateContent",
            "generateContent",
        ):
            msg = f"Path {split.path} not found (the fake serves /{self.fake.api_version}/)."
            self._send_json(404, error_body(404, msg))
            return
        if self.fake.api_key is not None and request.api_key != self.fake.api_key:
            reply = invalid_key()

        self.fake._wait(reply.stall_before_headers)
        if self.fake._stop.is_set():
            self._drop()
            return
        if reply.status != 200:
            self._send_json(reply.status, reply.body or {}, reply.headers)
        elif request.method_name == "generateContent":
            self._send_json(200, reply.body or _merge_events(reply.events), reply.headers)
        else:
            self._send_stream(reply)

    # -- writing -------------------------------------------------------------

    def _send_json(self, status: int, payload: dict, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _send_stream(self, reply: Reply) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        try:
            for event in reply.events:
                self._write_chunk(f"data: {json.dumps(event)}\r\n\r\n".encode())
                self.fake._wait(reply.event_delay)
            self.fake._wait(reply.stall_after_events)
            if reply.end == "drop" or self.fake._stop.is_set():
                self._drop()
                return
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):X}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _drop(self) -> None:
        """Close the socket without finishing the response."""
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (for 'server not listening' tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
