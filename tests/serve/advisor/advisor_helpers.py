"""Helpers shared by the advisor's tests (the fake server's fixtures are in conftest.py)."""

from __future__ import annotations

import re

from scalpnet.labels import KEYS
from scalpnet.serve.advisor.config import Reason
from scalpnet.serve.advisor.facts import disclaimer, fact_sheet
from scalpnet.serve.prediction import Prediction

KEY = "AIzaTEST-secret-key-0123456789"  # must never show up anywhere
HANGUL = re.compile(r"[\uac00-\ud7a3]")


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


class Sleeps(list):
    """Records the waits instead of sleeping."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


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
    sheet = fact_sheet("alopecia_areata", language)
    assert sheet["summary"] in advice.text
    assert disclaimer(language) in advice.text
    assert advice.done
