"""The Gemini advisor, driven through the real google-genai SDK against a local fake server."""

from __future__ import annotations

import itertools
import logging
import re

import pytest
from fake_gemini import (
    FakeGemini,
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

from scalpnet.labels import CONDITIONS, KEYS
from scalpnet.serve import advisor
from scalpnet.serve.advisor import AdvisorConfig, Reason, follow_up, stream_advice
from scalpnet.serve.prediction import Prediction

KEY = "AIzaTEST-secret-key-0123456789"  # must never show up anywhere
HANGUL = re.compile(r"[\uac00-\ud7a3]")


class Sleeps(list):
    """Records the waits instead of sleeping."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def make_prediction(positive=("alopecia_areata",), top_p=0.81, is_ood=False) -> Prediction:
    probs = [0.02] * len(KEYS)
    for rank, key in enumerate(positive):
        probs[KEYS.index(key)] = top_p - 0.1 * rank
    return Prediction(
        probabilities=tuple(probs),
        thresholds=(0.5,) * len(KEYS),
        raw_probabilities=tuple(probs),
        is_ood=is_ood,
    )


@pytest.fixture(scope="module")
def server():
    with FakeGemini() as fake:
        yield fake


@pytest.fixture
def fake(server):
    server.reset()
    yield server
    server.reset()


@pytest.fixture
def config(fake) -> AdvisorConfig:
    return AdvisorConfig(
        base_url=fake.base_url,
        api_version=fake.api_version,
        # A local fake answers in milliseconds, but a busy machine can hold a thread for
        # a second: 2 s before giving up, and stalls (below) 10x longer than that.
        timeout_s=2.0,
        max_retries=2,
        backoff_initial_s=0.001,
        backoff_max_s=1.0,
    )


@pytest.fixture(autouse=True)
def _no_env_keys(monkeypatch):
    for name in advisor.API_KEY_ENV_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def captured(caplog, capsys):
    """Everything logged (all loggers, DEBUG) or printed, to check the key never leaks."""
    caplog.set_level(logging.DEBUG)

    def text() -> str:
        out = capsys.readouterr()
        return caplog.text + out.out + out.err

    return text


def run(advice) -> list[str]:
    return list(advice)


def assert_no_key(advice, captured_text: str) -> None:
    for text in (advice.text, advice.notice or "", repr(advice), captured_text):
        assert KEY not in text
    assert KEY[5:15] not in captured_text  # not even a piece of it


def assert_fallback(advice, reason: Reason, language="en") -> None:
    assert advice.reason == reason
    assert advice.notice
    assert advice.notice in advice.text  # inline, so st.write_stream shows it
    sheet = advisor.fact_sheet("alopecia_areata", language)
    assert sheet["summary"] in advice.text
    assert advisor.disclaimer(language) in advice.text
    assert advice.done


# ---------------------------------------------------------------------------
# Success
# ---------------------------------------------------------------------------


def test_normal_stream_yields_chunks_in_order_and_sends_grounded_prompt(fake, config, captured):
    fake.enqueue(text_stream(["Alopecia ", "areata ", "may be ", "likely."]))
    prediction = make_prediction(("alopecia_areata", "psoriasis"))
    advice = stream_advice(prediction, "en", api_key=KEY, config=config)
    assert fake.requests == []  # lazy: nothing sent before iteration

    chunks = run(advice)

    assert chunks == ["Alopecia ", "areata ", "may be ", "likely."]
    assert advice.source == "gemini" and advice.reason is None and advice.notice is None
    assert advice.live_text == advice.text == "Alopecia areata may be likely."
    [request] = fake.requests
    assert request.path == f"/{fake.api_version}/models/{config.model}:streamGenerateContent"
    assert request.query["alt"] == ["sse"]
    assert request.api_key == KEY
    assert "Alopecia Areata: 81%" in request.prompt_text
    assert "Psoriasis: 71%" in request.prompt_text
    assert "Answer in English" in request.prompt_text
    assert "Answer in English" not in request.system_text
    assert "Always answer in English" in request.system_text
    assert "not a diagnosis" in request.system_text
    assert "dermatologist" in request.system_text
    # grounding: the fact sheets of both positives, not of other conditions
    assert advisor.fact_sheet("psoriasis", "en")["summary"] in request.prompt_text
    assert advisor.fact_sheet("head_lice", "en")["summary"] not in request.prompt_text
    assert request.generation_config == {"temperature": 0.3, "maxOutputTokens": 1024}
    assert {s["category"] for s in request.body["safetySettings"]} >= {
        "HARM_CATEGORY_DANGEROUS_CONTENT"
    }
    assert "inlineData" not in str(request.body)  # never the photo
    assert_no_key(advice, captured())


def test_korean_and_english_prompts_differ_in_names_and_language(fake, config):
    prediction = make_prediction(("tinea_capitis",))
    fake.enqueue(text_stream(["두부 백선일 ", "가능성이 있습니다."]), text_stream(["Maybe."]))
    korean = stream_advice(prediction, "ko", api_key=KEY, config=config)
    english = stream_advice(prediction, "en", api_key=KEY, config=config)

    assert "".join(korean) == "두부 백선일 가능성이 있습니다."
    assert "".join(english) == "Maybe."
    ko_request, en_request = fake.requests
    assert "두부 백선" in ko_request.prompt_text and "Korean" in ko_request.prompt_text
    assert "Always answer in Korean" in ko_request.system_text
    assert advisor.fact_sheet("tinea_capitis", "ko")["summary"] in ko_request.prompt_text
    assert "두부 백선" not in en_request.prompt_text
    assert "Tinea Capitis: 81%" in en_request.prompt_text
    assert "Always answer in English" in en_request.system_text


def test_ood_flag_and_no_positive_reach_the_prompt(fake, config):
    prediction = make_prediction(positive=("folliculitis",), top_p=0.3, is_ood=True)
    fake.enqueue(text_stream(["ok"]))
    run(stream_advice(prediction, "en", api_key=KEY, config=config))
    prompt = fake.requests[0].prompt_text
    assert "Out-of-distribution flag: YES" in prompt
    assert "No condition reached its threshold; the most likely is Folliculitis at 30%" in prompt


def test_iterating_twice_replays_without_a_new_request(fake, config):
    fake.enqueue(text_stream(["a", "b"]))
    advice = stream_advice(make_prediction(), "en", api_key=KEY, config=config)
    assert run(advice) == ["a", "b"]
    assert run(advice) == ["a", "b"]
    assert len(fake.requests) == 1


def test_abandoned_iteration_closes_cleanly(fake, config):
    fake.enqueue(text_stream(["one ", "two ", "three"], event_delay=0.05))
    advice = stream_advice(make_prediction(), "en", api_key=KEY, config=config)
    stream = iter(advice)
    assert next(stream) == "one "
    stream.close()  # what a consumer that stops early does
    assert advice.done and advice.text == "one "


def test_env_key_is_used_and_google_key_wins(fake, config, monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", "gemini-env-key")
    monkeypatch.setenv("GOOGLE_API_KEY", "google-env-key")
    fake.enqueue(text_stream(["x"]), text_stream(["y"]))
    run(stream_advice(make_prediction(), "en", config=config))
    run(stream_advice(make_prediction(), "en", api_key="explicit-key", config=config))
    assert [r.api_key for r in fake.requests] == ["google-env-key", "explicit-key"]


# ---------------------------------------------------------------------------
# Retries
# ---------------------------------------------------------------------------


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
        delay = advisor.retry_delay(attempt, None, config)
        assert base / 2 <= delay <= base
    assert 3.0 <= advisor.retry_delay(0, 3.0, config) <= 8.0
    assert advisor.retry_delay(0, 9.0, config) is None


# ---------------------------------------------------------------------------
# Failures that are not retried
# ---------------------------------------------------------------------------


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


def test_no_key_sends_nothing(fake, config, captured):
    advice = stream_advice(make_prediction(), "ko", config=config)
    run(advice)
    assert fake.requests == []
    assert advice.source == "offline" and advice.attempts == 0
    assert_fallback(advice, Reason.NO_KEY, "ko")
    assert "GEMINI_API_KEY" in advice.notice


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


def test_unexpected_bug_still_falls_back(fake, config, monkeypatch, captured):
    def broken(*args, **kwargs):
        raise RuntimeError(f"boom with {KEY}")

    monkeypatch.setattr(advisor, "_make_client", broken)
    advice = stream_advice(make_prediction(), "en", api_key=KEY, config=config)
    run(advice)
    assert_fallback(advice, Reason.SERVICE_ERROR)
    assert_no_key(advice, captured())


def test_inline_notice_can_be_turned_off(fake, config):
    from dataclasses import replace

    advice = stream_advice(make_prediction(), "en", config=replace(config, inline_notice=False))
    run(advice)
    assert advice.notice and advice.notice not in advice.text
    assert advisor.disclaimer("en") in advice.text


def test_works_with_streamlit_write_stream(fake, config):
    """st.write_stream accepts the Advice object itself (any iterable of str)."""
    from streamlit.testing.v1 import AppTest

    fake.enqueue(text_stream(["Streamed ", "in ", "Streamlit."]))

    def app(base_url, api_version, key):
        import streamlit as st

        from scalpnet.serve.advisor import AdvisorConfig, stream_advice
        from scalpnet.serve.prediction import Prediction

        p = Prediction((0.9,) + (0.01,) * 9, (0.5,) * 10, (0.9,) + (0.01,) * 9)
        cfg = AdvisorConfig(base_url=base_url, api_version=api_version, timeout_s=2)
        advice = stream_advice(p, "en", api_key=key, config=cfg)
        st.write_stream(advice)
        st.caption(f"source={advice.source}")

    at = AppTest.from_function(app, args=(fake.base_url, fake.api_version, KEY)).run(timeout=30)
    assert not at.exception
    assert "Streamed in Streamlit." in [m.value for m in at.markdown]
    assert at.caption[0].value == "source=gemini"


# ---------------------------------------------------------------------------
# Follow-up
# ---------------------------------------------------------------------------


def test_follow_up_sends_bounded_history_and_question(fake, config):
    fake.enqueue(text_stream(["Usually ", "within months."]))
    history = [{"role": "assistant", "content": "First explanation."}]
    for i in range(20):
        history += [
            {"role": "user", "content": f"question {i}"},
            {"role": "assistant", "content": f"answer {i}"},
        ]
    advice = follow_up(
        make_prediction(), history, "  Does hair regrow?  ", "en", api_key=KEY, config=config
    )
    assert "".join(advice) == "Usually within months."
    assert advice.source == "gemini"

    request = fake.requests[0]
    roles = [c["role"] for c in request.contents]
    assert roles[0] == "user" and roles[-1] == "user"
    assert all(a != b for a, b in itertools.pairwise(roles))  # alternating after merging
    texts = request.prompt_text
    assert "Alopecia Areata: 81%" in texts  # the prediction as context
    assert "Does hair regrow?" in request.contents[-1]["parts"][-1]["text"]
    assert "answer 19" in texts and "question 16" in texts
    assert "question 15" not in texts and "First explanation." not in texts  # bounded
    assert "Does hair regrow?" not in request.system_text  # user text never in the system


def test_follow_up_truncates_long_messages(fake, config):
    from dataclasses import replace

    fake.enqueue(text_stream(["ok"]))
    config = replace(config, max_message_chars=50)
    run(follow_up(make_prediction(), [], "x" * 500, "en", api_key=KEY, config=config))
    assert request_last_text(fake) == "x" * 50


def request_last_text(fake) -> str:
    return fake.requests[-1].contents[-1]["parts"][-1]["text"]


def test_follow_up_offline_points_to_fact_sheets(fake, config, captured):
    fake.enqueue(server_error(503), server_error(503), server_error(503))
    advice = follow_up(
        make_prediction(),
        [("user", "hi"), ("assistant", "hello")],
        "무엇을 해야 하나요?",
        "ko",
        api_key=KEY,
        config=config,
        sleep=Sleeps(),
    )
    run(advice)
    assert advice.source == "offline" and advice.reason == Reason.SERVICE_ERROR
    assert "원형 탈모증" in advice.text and "피부과" in advice.text
    assert advice.notice in advice.text
    assert_no_key(advice, captured())


def test_follow_up_without_key_or_question(fake, config):
    no_key = follow_up(make_prediction(), [], "What now?", "en", config=config)
    run(no_key)
    assert no_key.reason == Reason.NO_KEY and "Alopecia Areata" in no_key.text
    empty = follow_up(make_prediction(), [], "   ", "en", api_key=KEY, config=config)
    assert run(empty) == ["Please type a question."]
    assert empty.reason == Reason.EMPTY_QUESTION
    assert fake.requests == []


# ---------------------------------------------------------------------------
# Fact sheets and offline text
# ---------------------------------------------------------------------------


def test_facts_cover_every_condition_in_both_languages():
    facts = advisor.load_facts()
    assert set(facts["conditions"]) == set(KEYS)
    for key in KEYS:
        for language in ("en", "ko"):
            sheet = facts["conditions"][key][language]
            assert len(sheet["summary"]) > 80
            assert len(sheet["care"]) >= 3 and len(sheet["see_doctor"]) >= 3
            assert all(isinstance(s, str) and s.strip() for s in sheet["care"])
            text = " ".join([sheet["summary"], *sheet["care"], *sheet["see_doctor"]])
            assert bool(HANGUL.search(text)) == (language == "ko")
    for reason in Reason:
        assert facts["notices"][reason.value]["en"] and HANGUL.search(
            facts["notices"][reason.value]["ko"]
        )


def test_key_medical_facts_are_stated():
    tinea = advisor.fact_sheet("tinea_capitis", "en")
    assert "prescribed by a doctor" in tinea["care"][0]
    assert "alone cannot" in tinea["care"][0]  # topical treatment is not enough
    lice = " ".join(advisor.fact_sheet("head_lice", "en")["care"]).lower()
    assert "comb" in lice and "contacts" in lice
    telogen = advisor.fact_sheet("telogen_effluvium", "en")["summary"]
    assert "2 to 3 months" in telogen
    assert "autoimmune" in advisor.fact_sheet("alopecia_areata", "en")["summary"].lower()


@pytest.mark.parametrize("language", ["en", "ko"])
def test_offline_explanation(language):
    prediction = make_prediction(("head_lice", "folliculitis"), is_ood=True)
    text = advisor.offline_explanation(prediction, language)
    assert text.startswith(advisor.disclaimer(language))
    for key in ("head_lice", "folliculitis"):
        name = CONDITIONS[KEYS.index(key)].name(language)
        assert name in text
        assert advisor.fact_sheet(key, language)["see_doctor"][0] in text
    assert "81%" in text and "71%" in text
    assert advisor.fact_sheet("psoriasis", language)["summary"] not in text
    assert ("⚠️" in text) and bool(HANGUL.search(text)) == (language == "ko")


def test_offline_explanation_without_positives_shows_top():
    prediction = make_prediction(("psoriasis",), top_p=0.3)
    text = advisor.offline_explanation(prediction, "en")
    assert "Psoriasis (30%)" in text and "No condition reached" in text


def test_config_validation():
    with pytest.raises(ValueError, match="temperature"):
        AdvisorConfig(temperature=3)
    with pytest.raises(ValueError, match="backoff"):
        AdvisorConfig(backoff_initial_s=5, backoff_max_s=1)
    assert AdvisorConfig().model == "gemini-3.5-flash-lite"


def test_unknown_language_falls_back_to_english(fake, config):
    advice = stream_advice(make_prediction(), "fr", config=config)
    run(advice)
    assert advisor.disclaimer("en") in advice.text


def test_unreadable_facts_still_yield_a_disclaimer(fake, config, monkeypatch):
    def broken():
        raise OSError("facts.json missing")

    monkeypatch.setattr(advisor, "load_facts", broken)
    advice = stream_advice(make_prediction(), "ko", config=config)
    chunks = run(advice)
    assert chunks and "진단이 아닙니다" in advice.text
    assert advice.source == "offline" and advice.notice


# ---------------------------------------------------------------------------
# The fake itself (the app's tests rely on it too)
# ---------------------------------------------------------------------------


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


def test_config_from_env_mapping():
    config = AdvisorConfig.from_env(
        {
            "GEMINI_MODEL": "gemini-test",
            "GEMINI_BASE_URL": "http://127.0.0.1:9",
            "GEMINI_API_VERSION": "v1beta",
            "GEMINI_TIMEOUT_S": "not a number",
        },
        max_retries=0,
    )
    assert config.model == "gemini-test" and config.base_url == "http://127.0.0.1:9"
    assert config.api_version == "v1beta" and config.max_retries == 0
    assert config.timeout_s == AdvisorConfig().timeout_s  # the bad value was skipped
    assert AdvisorConfig.from_env({}) == AdvisorConfig()
