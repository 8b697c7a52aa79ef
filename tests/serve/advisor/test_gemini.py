"""The Gemini transport: retries, error classes, safety blocks, stalls (against a fake server)."""

from __future__ import annotations

import pytest
from advisor_helpers import (
    HANGUL,
    KEY,
    Sleeps,
    assert_fallback,
    assert_no_key,
    make_prediction,
    run,
)
from fake_gemini import (
    error,
    free_port,
    invalid_key,
    mid_stream_drop,
    mid_stream_error,
    rate_limited,
    safety_block,
    server_error,
    stall,
    text_stream,
)

from scalpnet.serve.advisor.advice import stream_advice
from scalpnet.serve.advisor.config import AdvisorConfig, Reason
from scalpnet.serve.advisor.gemini import retry_delay


def test_429_then_success_retries_honouring_retry_info(fake, config, captured):
    fake.enqueue(rate_limited(retry_delay=0.25), text_stream(["after ", "retry"]))
    sleeps = Sleeps()
    advice = stream_advice(make_prediction(), "en", api_key=KEY, config=config, sleep=sleeps)

    assert "".join(advice) == "after retry"
    assert advice.source == "gemini"
    assert len(fake.requests) == 2 and advice.attempts == 2
    [waited] = sleeps
    assert advice.retry_delays == sleeps
    assert 0.25 <= waited <= config.backoff_max_s  # the server's delay, within our bound
    assert_no_key(advice, captured())


def test_retry_after_header_is_honoured(fake, config):
    fake.enqueue(rate_limited(retry_after="1"), text_stream(["ok"]))
    sleeps = Sleeps()
    run(stream_advice(make_prediction(), "en", api_key=KEY, config=config, sleep=sleeps))
    assert len(sleeps) == 1 and 1.0 <= sleeps[0] <= config.backoff_max_s


def test_server_delay_beyond_bound_is_not_waited_for(fake, config, captured):
    fake.enqueue(rate_limited(retry_delay=30))
    sleeps = Sleeps()
    advice = stream_advice(make_prediction(), "en", api_key=KEY, config=config, sleep=sleeps)
    run(advice)
    assert sleeps == [] and len(fake.requests) == 1
    assert advice.source == "offline"
    assert_fallback(advice, Reason.RATE_LIMITED)
    assert_no_key(advice, captured())


def test_persistent_429_gives_up_after_bounded_backoff(fake, config, captured):
    fake.enqueue(*[rate_limited() for _ in range(5)])
    sleeps = Sleeps()
    advice = stream_advice(make_prediction(), "ko", api_key=KEY, config=config, sleep=sleeps)
    run(advice)

    assert len(fake.requests) == config.max_retries + 1
    assert len(sleeps) == config.max_retries
    assert all(0 < s <= config.backoff_max_s for s in sleeps)
    assert advice.source == "offline"
    assert_fallback(advice, Reason.RATE_LIMITED, "ko")
    assert HANGUL.search(advice.notice)
    assert_no_key(advice, captured())


def test_500_is_retried_then_falls_back(fake, config, captured):
    fake.enqueue(server_error(500), server_error(503), server_error(500))
    sleeps = Sleeps()
    advice = stream_advice(make_prediction(), "en", api_key=KEY, config=config, sleep=sleeps)
    run(advice)
    assert len(fake.requests) == 3 and len(sleeps) == 2
    assert_fallback(advice, Reason.SERVICE_ERROR)
    assert advice.source == "offline"
    assert_no_key(advice, captured())


def test_retry_delays_grow_exponentially_within_bounds():
    config = AdvisorConfig(backoff_initial_s=1.0, backoff_max_s=8.0)
    for attempt, base in enumerate([1, 2, 4, 8, 8]):
        delay = retry_delay(attempt, None, config)
        assert base / 2 <= delay <= base
    assert 3.0 <= retry_delay(0, 3.0, config) <= 8.0
    assert retry_delay(0, 9.0, config) is None


@pytest.mark.parametrize("status", [400, 403])
def test_invalid_key(fake, config, captured, status):
    fake.enqueue(invalid_key(status))
    sleeps = Sleeps()
    advice = stream_advice(make_prediction(), "en", api_key=KEY, config=config, sleep=sleeps)
    run(advice)
    assert len(fake.requests) == 1 and sleeps == []
    assert advice.source == "offline"
    assert_fallback(advice, Reason.INVALID_KEY)
    assert "key" in advice.notice
    log = captured()
    assert "Gemini request failed: invalid_key" in log  # the capture is live
    assert_no_key(advice, log)


def test_error_body_echoing_the_key_is_not_logged(fake, config, captured):
    fake.enqueue(error(400, f"Bad request from key {KEY}"))
    advice = stream_advice(make_prediction(), "en", api_key=KEY, config=config)
    run(advice)
    assert advice.reason == Reason.REJECTED
    assert_no_key(advice, captured())


def test_other_4xx_is_rejected_without_retry(fake, config, captured):
    fake.enqueue(error(404, "models/nope is not found"))
    advice = stream_advice(make_prediction(), "en", api_key=KEY, config=config)
    run(advice)
    assert len(fake.requests) == 1
    assert_fallback(advice, Reason.REJECTED)


@pytest.mark.parametrize("where", ["response", "prompt"])
def test_safety_block_gives_fact_sheet(fake, config, captured, where):
    fake.enqueue(safety_block(where))
    advice = stream_advice(make_prediction(), "en", api_key=KEY, config=config)
    run(advice)
    assert advice.source == "offline"
    assert_fallback(advice, Reason.SAFETY)
    assert "safety" in advice.notice
    assert_no_key(advice, captured())


def test_safety_block_after_some_text_is_partial(fake, config):
    fake.enqueue(safety_block("response", chunks_before=("Some text. ",)))
    advice = stream_advice(make_prediction(), "en", api_key=KEY, config=config)
    run(advice)
    assert advice.source == "partial" and advice.reason == Reason.SAFETY
    assert advice.text.startswith("Some text. ")


def test_empty_answer_falls_back(fake, config):
    fake.enqueue(text_stream([]))
    advice = stream_advice(make_prediction(), "en", api_key=KEY, config=config)
    run(advice)
    assert_fallback(advice, Reason.EMPTY)


@pytest.mark.parametrize("reply", [mid_stream_error, mid_stream_drop], ids=["error", "drop"])
def test_error_mid_stream_keeps_text_and_appends_notice(fake, config, captured, reply):
    fake.enqueue(reply(["Alopecia areata ", "is an autoimmune "]))
    sleeps = Sleeps()
    advice = stream_advice(make_prediction(), "en", api_key=KEY, config=config, sleep=sleeps)
    chunks = run(advice)

    assert chunks[:2] == ["Alopecia areata ", "is an autoimmune "]
    assert advice.live_text == "Alopecia areata is an autoimmune "
    assert advice.source == "partial"
    assert_fallback(advice, Reason.INTERRUPTED)
    assert advice.text.index(advice.notice) > advice.text.index("is an autoimmune")
    assert len(fake.requests) == 1 and sleeps == []  # no retry: it would repeat the text
    assert_no_key(advice, captured())


def test_stalled_server_times_out(fake, config, captured):
    fake.enqueue(stall(20))
    advice = stream_advice(make_prediction(), "en", api_key=KEY, config=config)
    run(advice)
    assert advice.source == "offline"
    assert_fallback(advice, Reason.TIMEOUT)
    assert_no_key(advice, captured())


def test_stall_mid_stream_is_partial(fake, config):
    fake.enqueue(stall(20, chunks_before=["Started "]))
    advice = stream_advice(make_prediction(), "en", api_key=KEY, config=config)
    run(advice)
    assert advice.source == "partial" and advice.reason == Reason.INTERRUPTED
    assert advice.text.startswith("Started ")


def test_server_not_listening(captured):
    config = AdvisorConfig(base_url=f"http://127.0.0.1:{free_port()}", api_version="v1beta")
    sleeps = Sleeps()
    advice = stream_advice(make_prediction(), "en", api_key=KEY, config=config, sleep=sleeps)
    run(advice)
    assert advice.source == "offline" and sleeps == []
    assert_fallback(advice, Reason.NETWORK)
    assert_no_key(advice, captured())


def test_fake_checks_key_and_pinned_version(fake):
    from google import genai
    from google.genai import errors, types

    def call(version: str, key: str) -> str:
        http = types.HttpOptions(base_url=fake.base_url, api_version=version, timeout=2000)
        client = genai.Client(api_key=key, http_options=http)
        return client.models.generate_content(model="m", contents="hi").text

    fake.api_key = "right"
    try:
        fake.enqueue(text_stream(["one ", "answer"]))
        assert call(fake.api_version, "right") == "one answer"  # :generateContent, merged
        with pytest.raises(errors.ClientError) as wrong_key:
            call(fake.api_version, "wrong")
        assert wrong_key.value.code == 400 and "API key not valid" in wrong_key.value.message
        with pytest.raises(errors.ClientError) as wrong_version:
            call("v0", "right")
        assert wrong_version.value.code == 404
    finally:
        fake.api_key = None
    assert [r.method_name for r in fake.requests] == ["generateContent"] * 3
    assert fake.pending == 0
