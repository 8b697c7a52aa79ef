"""What Gemini is sent: the system instruction, the grounded prompt, the bounded conversation."""

from __future__ import annotations

import itertools

from advisor_helpers import KEY, make_prediction, run
from fake_gemini import text_stream

from scalpnet.serve.advisor.advice import follow_up, stream_advice
from scalpnet.serve.advisor.facts import fact_sheet


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
    assert fact_sheet("tinea_capitis", "ko")["summary"] in ko_request.prompt_text
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
