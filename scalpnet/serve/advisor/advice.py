"""Explanations of a `Prediction`: streamed from Gemini, grounded in our fact sheets, never failing.

    advice = stream_advice(prediction, language="ko", api_key=key)
    st.write_stream(advice)          # or: for chunk in advice: print(chunk, end="")
    advice.source                    # "gemini" | "offline" | "partial"
    advice.notice                    # why live text is missing or cut, or None

Every failure (no key, invalid key, rate limit, 5xx, no network, timeout, safety block,
an error mid-stream) ends in the offline fact sheets of the predicted conditions plus a
one-line localized notice; nothing is raised to the caller. The API key is never logged,
stored on the result, or put into any message.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from scalpnet.serve.advisor.config import AdvisorConfig, Reason, resolve_api_key
from scalpnet.serve.advisor.facts import (
    LAST_RESORT,
    check_language,
    follow_up_offline,
    last_resort,
    message,
    offline_explanation,
)
from scalpnet.serve.advisor.gemini import stream_text
from scalpnet.serve.advisor.prompts import (
    build_conversation,
    build_prompt,
    build_system_instruction,
)
from scalpnet.serve.prediction import Prediction

logger = logging.getLogger(__name__)


class Advice:
    """An iterable of text chunks (markdown) that never raises; read its fields afterwards.

    Attributes (final once iteration ends):
        source: "gemini" (all live), "partial" (live text cut, then offline), or
            "offline" (no live text); None before iteration.
        reason: a :class:`Reason` when live text is missing or cut, else None.
        notice: one localized user-facing line for ``reason``, else None.
        retry_delays: the seconds waited before each retry.
        attempts: requests sent to Gemini.
        live_chunks: the chunks written by Gemini.
        live_text: the part written by Gemini (mark it as AI-generated).
        text: everything yielded.
        done: True once iteration has finished.

    Iterating a second time replays the chunks already produced (no new request).
    """

    def __init__(self, produce: Callable[[Advice], Iterator[str]], language: str):
        self.language = language
        self.source: str | None = None
        self.reason: Reason | None = None
        self.notice: str | None = None
        self.retry_delays: list[float] = []
        self.attempts = 0
        self.done = False
        self._produce = produce
        self._chunks: list[str] = []
        self.live_chunks: list[str] = []
        self._started = False

    def __iter__(self) -> Iterator[str]:
        # A generator, so a mere iter() probe (st.write_stream does one) starts nothing.
        return self._drive()

    def _drive(self) -> Iterator[str]:
        if self._started:
            yield from list(self._chunks)
            return
        self._started = True
        try:
            for chunk in self._produce(self):
                if chunk:
                    self._chunks.append(chunk)
                    yield chunk
        except Exception as exc:  # the promise: never raise to the caller
            logger.warning("advice failed unexpectedly (%s)", type(exc).__name__)
            notice, text = LAST_RESORT.get(self.language, LAST_RESORT["en"])
            self.source = "partial" if self.live_chunks else "offline"
            self.reason = self.reason or Reason.SERVICE_ERROR
            self.notice = self.notice or notice
            self._chunks.append(text)
            yield text
        finally:
            self.done = True

    @property
    def text(self) -> str:
        return "".join(self._chunks)

    @property
    def live_text(self) -> str:
        return "".join(self.live_chunks)

    def __repr__(self) -> str:
        return (
            f"Advice(source={self.source!r}, reason={self.reason!r}, "
            f"attempts={self.attempts}, chars={len(self.text)})"
        )


def stream_advice(
    prediction: Prediction,
    language: str = "en",
    *,
    api_key: str | None = None,
    config: AdvisorConfig | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Advice:
    """The explanation of ``prediction`` in ``language`` ("en" | "ko"), streamed lazily.

    Nothing is sent until the result is iterated. ``sleep`` is what waits between retries
    (tests pass a recorder).
    """
    config = config or AdvisorConfig()
    language = check_language(language)
    limit = config.max_grounded_conditions
    turns = functools.partial(_first_turn, prediction, language, limit)
    fallback = functools.partial(offline_explanation, prediction, language, limit)
    return _advice(turns, fallback, language, api_key, config, sleep)


def follow_up(
    prediction: Prediction,
    history: Iterable[Any],
    question: str,
    language: str = "en",
    *,
    api_key: str | None = None,
    config: AdvisorConfig | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Advice:
    """Answer a follow-up ``question`` with the bounded ``history`` and the prediction as
    context, streamed like :func:`stream_advice`. Offline: a short pointer to the fact sheets.
    """
    config = config or AdvisorConfig()
    language = check_language(language)
    if not isinstance(question, str) or not question.strip():
        return Advice(functools.partial(_empty_question, language=language), language)
    turns = functools.partial(
        build_conversation, prediction, history or (), question, language, config
    )
    limit = config.max_grounded_conditions
    fallback = functools.partial(follow_up_offline, prediction, language, limit)
    return _advice(turns, fallback, language, api_key, config, sleep)


def _first_turn(prediction: Prediction, language: str, limit: int) -> list[tuple[str, str]]:
    return [("user", build_prompt(prediction, language, limit))]


def _empty_question(advice: Advice, language: str) -> Iterator[str]:
    """What a blank follow-up question gets: a notice asking for one, and no request."""
    advice.source, advice.reason = "offline", Reason.EMPTY_QUESTION
    advice.notice = message("notices", Reason.EMPTY_QUESTION, language)
    yield advice.notice


# ---------------------------------------------------------------------------
# The engine
# ---------------------------------------------------------------------------


def _advice(
    turns: Callable[[], list[tuple[str, str]]],
    fallback: Callable[[], str],
    language: str,
    api_key: str | None,
    config: AdvisorConfig,
    sleep: Callable[[float], None],
) -> Advice:
    """An `Advice` that asks Gemini with ``turns`` and falls back to ``fallback()``."""
    produce = functools.partial(
        _run,
        turns=turns,
        language=language,
        fallback=fallback,
        api_key=api_key,
        config=config,
        sleep=sleep,
    )
    return Advice(produce, language)


def _run(
    advice: Advice,
    *,
    turns: Callable[[], list[tuple[str, str]]],
    language: str,
    fallback: Callable[[], str],
    api_key: str | None,
    config: AdvisorConfig,
    sleep: Callable[[float], None],
) -> Iterator[str]:
    """Live text if possible, else (or after a cut) the notice and the fallback."""
    key = resolve_api_key(api_key)
    reason: Reason | None = None
    if key is None:
        reason = Reason.NO_KEY
    else:
        try:
            instruction = build_system_instruction(language)
            reason = yield from stream_text(advice, turns(), instruction, key, config, sleep)
        except Exception as exc:  # a bug of ours must not break the app either
            logger.warning("advisor failed unexpectedly (%s)", type(exc).__name__)
            reason = Reason.SERVICE_ERROR
    if reason is None:
        advice.source = "gemini"
        return
    advice.reason = reason
    advice.notice = message("notices", reason, language)
    advice.source = "partial" if advice.live_chunks else "offline"
    lead = "\n\n" if advice.live_chunks else ""
    if config.inline_notice:
        yield f"{lead}> ⚠️ {advice.notice}\n\n"
    elif lead:
        yield lead
    try:
        text = fallback()
    except Exception as exc:  # e.g. a damaged facts.json: still say something
        logger.warning("offline text failed (%s)", type(exc).__name__)
        text = last_resort(language)
    yield text
