"""The streamed `Advice`, driven through the real google-genai SDK against a local fake server."""

from __future__ import annotations

from advisor_helpers import KEY, Sleeps, assert_fallback, assert_no_key, make_prediction, run
from fake_gemini import server_error, text_stream

from scalpnet.serve.advisor import facts, gemini
from scalpnet.serve.advisor.advice import follow_up, stream_advice
from scalpnet.serve.advisor.config import Reason
from scalpnet.serve.advisor.facts import disclaimer, fact_sheet


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
    assert fact_sheet("psoriasis", "en")["summary"] in request.prompt_text
    assert fact_sheet("head_lice", "en")["summary"] not in request.prompt_text
    assert request.generation_config == {"temperature": 0.3, "maxOutputTokens": 1024}
    assert {s["category"] for s in request.body["safetySettings"]} >= {
        "HARM_CATEGORY_DANGEROUS_CONTENT"
    }
    assert "inlineData" not in str(request.body)  # never the photo
    assert_no_key(advice, captured())


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


def test_no_key_sends_nothing(fake, config, captured):
    advice = stream_advice(make_prediction(), "ko", config=config)
    run(advice)
    assert fake.requests == []
    assert advice.source == "offline" and advice.attempts == 0
    assert_fallback(advice, Reason.NO_KEY, "ko")
    assert "GEMINI_API_KEY" in advice.notice


def test_unexpected_bug_still_falls_back(fake, config, monkeypatch, captured):
    def broken(*args, **kwargs):
        raise RuntimeError(f"boom with {KEY}")

    monkeypatch.setattr(gemini, "make_client", broken)
    advice = stream_advice(make_prediction(), "en", api_key=KEY, config=config)
    run(advice)
    assert_fallback(advice, Reason.SERVICE_ERROR)
    assert_no_key(advice, captured())


def test_inline_notice_can_be_turned_off(fake, config):
    from dataclasses import replace

    advice = stream_advice(make_prediction(), "en", config=replace(config, inline_notice=False))
    run(advice)
    assert advice.notice and advice.notice not in advice.text
    assert disclaimer("en") in advice.text


def test_works_with_streamlit_write_stream(fake, config):
    """st.write_stream accepts the Advice object itself (any iterable of str)."""
    from streamlit.testing.v1 import AppTest

    fake.enqueue(text_stream(["Streamed ", "in ", "Streamlit."]))

    def app(base_url, api_version, key):
        import streamlit as st

        # AppTest runs the function's source alone: it imports what it uses.
        from scalpnet.serve.advisor.advice import stream_advice
        from scalpnet.serve.advisor.config import AdvisorConfig
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


def test_unknown_language_falls_back_to_english(fake, config):
    advice = stream_advice(make_prediction(), "fr", config=config)
    run(advice)
    assert disclaimer("en") in advice.text


def test_unreadable_facts_still_yield_a_disclaimer(fake, config, monkeypatch):
    def broken():
        raise OSError("facts.json missing")

    monkeypatch.setattr(facts, "load_facts", broken)
    advice = stream_advice(make_prediction(), "ko", config=config)
    chunks = run(advice)
    assert chunks and "진단이 아닙니다" in advice.text
    assert advice.source == "offline" and advice.notice
