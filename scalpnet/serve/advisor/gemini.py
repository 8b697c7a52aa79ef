"""The Gemini transport: the client, the generation settings, a streamed request with
bounded retries, and what each error means (a :class:`Reason`, never the key)."""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

from scalpnet.serve.advisor.config import AdvisorConfig, Reason

logger = logging.getLogger(__name__)

# Statuses worth another try; other 4xx mean the request itself is wrong.
_RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# Finish reasons that mean "withheld by a filter" rather than "done".
_BLOCKED_FINISH = frozenset(
    {"SAFETY", "PROHIBITED_CONTENT", "BLOCKLIST", "SPII", "RECITATION", "IMAGE_SAFETY"}
)


@dataclass(frozen=True)
class Failure:
    """What went wrong with one request, and whether another try may help."""

    reason: Reason
    retryable: bool = False
    server_delay: float | None = None  # seconds the server asked us to wait
    detail: str = ""  # for the log: type, status code; never the key


def classify_error(exc: BaseException) -> Failure:
    """Map an SDK / transport exception to a failure reason (no key ever in ``detail``)."""
    from google.genai import errors  # the SDK is imported only when Gemini is used

    if isinstance(exc, errors.APIError):
        code = int(exc.code or 0)
        detail = f"{type(exc).__name__} {code} {exc.status or ''}".strip()
        delay = _server_retry_delay(exc)
        if code == 429:
            return Failure(Reason.RATE_LIMITED, True, delay, detail)
        if code in (401, 403) or _is_key_error(exc):
            return Failure(Reason.INVALID_KEY, False, None, detail)
        if code in _RETRYABLE_STATUS:
            return Failure(Reason.SERVICE_ERROR, True, delay, detail)
        if 400 <= code < 500:
            return Failure(Reason.REJECTED, False, None, detail)
        return Failure(Reason.SERVICE_ERROR, False, None, detail)
    # httpx / httpx2 / requests / socket errors are not APIErrors: tell them apart by class
    # name, which works whichever HTTP backend the SDK picked.
    names = {cls.__name__ for cls in type(exc).__mro__}
    detail = type(exc).__name__
    if names & {"TimeoutException", "TimeoutError", "Timeout", "ReadTimeout"}:
        return Failure(Reason.TIMEOUT, False, None, detail)
    if names & {"ConnectError", "ConnectionError", "NetworkError", "ConnectTimeout"}:
        return Failure(Reason.NETWORK, False, None, detail)
    if names & {"TransportError", "ProtocolError", "OSError"}:
        return Failure(Reason.NETWORK, False, None, detail)
    return Failure(Reason.SERVICE_ERROR, False, None, detail)


def _is_key_error(exc: Any) -> bool:
    """True for the API's 'API key not valid' answer (400 with reason API_KEY_INVALID)."""
    for item in _error_details(exc):
        if str(item.get("reason", "")).startswith("API_KEY"):
            return True
    return "api key" in str(exc.message or "").lower()


def _error_details(exc: Any) -> list[dict]:
    body = exc.details if isinstance(exc.details, dict) else {}
    details = body.get("error", body).get("details", [])
    return [d for d in details if isinstance(d, dict)] if isinstance(details, list) else []


def _server_retry_delay(exc: Any) -> float | None:
    """Seconds asked for by RetryInfo.retryDelay and/or a Retry-After header (the longer)."""
    delays: list[float] = []
    for item in _error_details(exc):
        if str(item.get("@type", "")).endswith("google.rpc.RetryInfo"):
            parsed = _parse_duration(item.get("retryDelay"))
            if parsed is not None:
                delays.append(parsed)
    headers = getattr(getattr(exc, "response", None), "headers", None)
    if headers is not None:
        try:
            items = dict(headers).items()
        except (TypeError, ValueError):
            items = ()
        for name, value in items:
            if str(name).lower() == "retry-after":
                parsed = _parse_retry_after(str(value))
                if parsed is not None:
                    delays.append(parsed)
    return max(delays) if delays else None


def _parse_duration(value: Any) -> float | None:
    """google.protobuf.Duration as JSON ("1.5s") or as {"seconds", "nanos"}."""
    try:
        if isinstance(value, str) and value.endswith("s"):
            return max(0.0, float(value[:-1]))
        if isinstance(value, Mapping):
            return max(0.0, float(value.get("seconds", 0)) + float(value.get("nanos", 0)) / 1e9)
    except ValueError:
        return None
    return None


def _parse_retry_after(value: str) -> float | None:
    """Retry-After: delta-seconds or an HTTP date."""
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def retry_delay(attempt: int, server_delay: float | None, config: AdvisorConfig) -> float | None:
    """Seconds to wait before retry number ``attempt`` (0-based), or None to give up.

    Exponential backoff with "equal jitter" (half fixed, half random), capped at
    ``backoff_max_s``. A server-given delay is a floor (plus up to 10 % jitter); when the
    server asks for longer than ``backoff_max_s`` we do not wait at all.
    """
    base = min(config.backoff_max_s, config.backoff_initial_s * 2**attempt)
    backoff = base / 2 + random.uniform(0, base / 2)
    if server_delay is None:
        return backoff
    if server_delay > config.backoff_max_s:
        return None
    floor = server_delay * (1 + random.uniform(0, 0.1))
    return max(server_delay, min(config.backoff_max_s, max(floor, backoff)))


def make_client(key: str, config: AdvisorConfig):
    from google import genai
    from google.genai import types

    http = types.HttpOptions(timeout=max(1, round(config.timeout_s * 1000)))  # milliseconds
    if config.base_url:
        http.base_url = config.base_url
    if config.api_version:
        http.api_version = config.api_version
    return genai.Client(api_key=key, vertexai=False, http_options=http)


def _generation_config(system_instruction: str, config: AdvisorConfig):
    from google.genai import types

    def rule(category: str, threshold: str) -> types.SafetySetting:
        return types.SafetySetting(category=category, threshold=threshold)

    return types.GenerateContentConfig(
        system_instruction=system_instruction,
        temperature=config.temperature,
        max_output_tokens=config.max_output_tokens,
        # Medical wording (drugs, infestations) must not trip the dangerous-content filter;
        # the other categories keep the usual medium threshold.
        safety_settings=[
            rule("HARM_CATEGORY_HARASSMENT", "BLOCK_MEDIUM_AND_ABOVE"),
            rule("HARM_CATEGORY_HATE_SPEECH", "BLOCK_MEDIUM_AND_ABOVE"),
            rule("HARM_CATEGORY_SEXUALLY_EXPLICIT", "BLOCK_MEDIUM_AND_ABOVE"),
            rule("HARM_CATEGORY_DANGEROUS_CONTENT", "BLOCK_ONLY_HIGH"),
        ],
        # We retry ourselves; the SDK must not silently re-send a cut stream.
        automatic_continuation=False,
    )


def _contents(turns: list[tuple[str, str]]):
    """(role, text) turns -> SDK Contents, merging consecutive turns of the same role."""
    from google.genai import types

    contents: list[types.Content] = []
    for role, text in turns:
        part = types.Part.from_text(text=text)
        if contents and contents[-1].role == role:
            contents[-1].parts.append(part)
        else:
            contents.append(types.Content(role=role, parts=[part]))
    return contents


class StreamLog(Protocol):
    """Where :func:`stream_text` records its work (an ``Advice`` is one)."""

    attempts: int  # requests sent
    retry_delays: list[float]  # seconds waited before each retry
    live_chunks: list[str]  # the text Gemini wrote, chunk by chunk


def stream_text(
    log: StreamLog,
    turns: list[tuple[str, str]],
    system_instruction: str,
    key: str,
    config: AdvisorConfig,
    sleep: Callable[[float], None],
) -> Generator[str, None, Reason | None]:
    """Yield Gemini's text chunks, retrying a 429 / 5xx / 408 that came before any text.

    Returns (as the generator's value) None on success, else the :class:`Reason` the live
    text is missing or cut.
    """
    client = make_client(key, config)
    try:
        contents = _contents(turns)
        gen_config = _generation_config(system_instruction, config)
        retry = 0
        while True:
            log.attempts += 1
            blocked = False
            try:
                stream = client.models.generate_content_stream(
                    model=config.model, contents=contents, config=gen_config
                )
                try:
                    for chunk in stream:
                        blocked = blocked or _is_blocked(chunk)
                        text = chunk.text  # None for a blocked or empty chunk
                        if text:
                            log.live_chunks.append(text)
                            yield text
                finally:
                    stream.close()
            except Exception as exc:
                failure = classify_error(exc)
                _log_failure(failure, key)
                if log.live_chunks:  # never retry after text was shown: it would repeat
                    return Reason.INTERRUPTED
                if not failure.retryable or retry >= config.max_retries:
                    return failure.reason
                delay = retry_delay(retry, failure.server_delay, config)
                if delay is None:  # the server wants longer than we are willing to wait
                    return failure.reason
                log.retry_delays.append(delay)
                retry += 1
                sleep(delay)
                continue
            if blocked:
                return Reason.SAFETY
            if not log.live_chunks:
                return Reason.EMPTY
            return None
    finally:
        with contextlib.suppress(Exception):  # closing must never mask the result
            client.close()


def _is_blocked(chunk: Any) -> bool:
    """True when the prompt or the answer was withheld by a filter."""
    feedback = getattr(chunk, "prompt_feedback", None)
    if feedback is not None and getattr(feedback, "block_reason", None):
        return True
    for candidate in getattr(chunk, "candidates", None) or ():
        reason = getattr(candidate, "finish_reason", None)
        if reason is not None and str(getattr(reason, "value", reason)) in _BLOCKED_FINISH:
            return True
    return False


def _log_failure(failure: Failure, key: str) -> None:
    """One warning line without the message body of the error (which we do not control)."""
    logger.warning(
        "Gemini request failed: %s (%s)", failure.reason.value, redact(failure.detail, key)
    )


def redact(text: str, secret: str | None) -> str:
    """``text`` with every occurrence of ``secret`` replaced."""
    return text.replace(secret, "[redacted]") if secret else text
