"""The fact sheets (``scalpnet/serve/facts.json``) and the offline text built from them:
what the advisor shows when Gemini cannot answer, and the grounding of every prompt."""

from __future__ import annotations

import functools
import json
import logging
from importlib import resources

from scalpnet.labels import CONDITIONS, KEYS, LANGUAGES
from scalpnet.serve.prediction import Prediction

logger = logging.getLogger(__name__)


@functools.cache
def load_facts() -> dict:
    """The packaged fact sheets (``scalpnet/serve/facts.json``), read once."""
    text = resources.files("scalpnet.serve").joinpath("facts.json").read_text(encoding="utf-8")
    return json.loads(text)


def message(group: str, name: str, language: str) -> str:
    """A localized UI string from facts.json: group "notices" (by Reason) or "text"."""
    return load_facts()[group][str(name)][language]


def fact_sheet(key: str, language: str = "en") -> dict:
    """``{"summary": str, "care": [str], "see_doctor": [str]}`` for a condition key."""
    return load_facts()["conditions"][key][check_language(language)]


def disclaimer(language: str = "en") -> str:
    """The localized "this is not a diagnosis" paragraph (markdown)."""
    return load_facts()["disclaimer"][check_language(language)]


def format_fact_sheet(key: str, language: str = "en", probability: float | None = None) -> str:
    """One condition's fact sheet as markdown, headed by its name (and probability)."""
    language = check_language(language)
    sheet = fact_sheet(key, language)
    title = CONDITIONS[KEYS.index(key)].name(language)
    if probability is not None:
        title += f" ({percent(probability)})"
    lines = [f"#### {title}", "", sheet["summary"], "", f"**{message('text', 'care', language)}**"]
    lines += [f"- {item}" for item in sheet["care"]]
    lines += ["", f"**{message('text', 'see_doctor', language)}**"]
    lines += [f"- {item}" for item in sheet["see_doctor"]]
    return "\n".join(lines)


def grounded_conditions(prediction: Prediction, limit: int = 3) -> tuple[int, ...]:
    """Indices to explain: the positives (most probable first), else the top one."""
    return (prediction.positives or (prediction.top,))[:limit]


def offline_explanation(prediction: Prediction, language: str = "en", limit: int = 3) -> str:
    """The full offline explanation (markdown): disclaimer, OOD warning, fact sheets."""
    language = check_language(language)
    parts = [disclaimer(language)]
    if prediction.is_ood:
        parts.append(message("text", "ood", language))
    if not prediction.positives:
        parts.append(message("text", "no_positive", language))
    for i in grounded_conditions(prediction, limit):
        parts.append(format_fact_sheet(KEYS[i], language, prediction.probabilities[i]))
    return "\n\n".join(parts) + "\n"


def follow_up_offline(prediction: Prediction, language: str = "en", limit: int = 3) -> str:
    """The offline answer to a follow-up question: a pointer to the fact sheets shown."""
    names = ", ".join(CONDITIONS[i].name(language) for i in grounded_conditions(prediction, limit))
    return message("text", "follow_up_offline", language).format(names=names) + "\n"


# Hard-coded, so that they work even when facts.json cannot be read.
LAST_RESORT = {
    "en": (
        "The explanation could not be prepared.",
        "**This is not a diagnosis.** If symptoms persist or get worse, see a dermatologist.\n",
    ),
    "ko": (
        "설명을 준비하지 못했습니다.",
        "**이 결과는 진단이 아닙니다.** 증상이 계속되거나 심해지면 피부과 전문의와 상담하세요.\n",
    ),
}


def last_resort(language: str) -> str:
    """Last-resort text when even the fact sheets cannot be read."""
    return LAST_RESORT.get(language, LAST_RESORT["en"])[1]


def check_language(language: str) -> str:
    """'ko' or 'en' (anything else falls back to English rather than failing)."""
    if language in LANGUAGES:
        return language
    logger.warning("unknown language %r; using English", language)
    return "en"


def percent(p: float) -> str:
    """0.8123 -> '81%'; tiny values -> '<1%'."""
    value = 100 * float(p)
    if 0 < value < 1:
        return "<1%"
    return f"{value:.0f}%"
