"""The fact sheets and the offline explanation built from them."""

from __future__ import annotations

import pytest
from advisor_helpers import HANGUL, make_prediction

from scalpnet.labels import CONDITIONS, KEYS
from scalpnet.serve.advisor import facts
from scalpnet.serve.advisor.config import Reason
from scalpnet.serve.advisor.facts import disclaimer, fact_sheet, offline_explanation


def test_facts_cover_every_condition_in_both_languages():
    sheets = facts.load_facts()
    assert set(sheets["conditions"]) == set(KEYS)
    for key in KEYS:
        for language in ("en", "ko"):
            sheet = sheets["conditions"][key][language]
            assert len(sheet["summary"]) > 80
            assert len(sheet["care"]) >= 3 and len(sheet["see_doctor"]) >= 3
            assert all(isinstance(s, str) and s.strip() for s in sheet["care"])
            text = " ".join([sheet["summary"], *sheet["care"], *sheet["see_doctor"]])
            assert bool(HANGUL.search(text)) == (language == "ko")
    for reason in Reason:
        assert sheets["notices"][reason.value]["en"] and HANGUL.search(
            sheets["notices"][reason.value]["ko"]
        )


def test_key_medical_facts_are_stated():
    tinea = fact_sheet("tinea_capitis", "en")
    assert "prescribed by a doctor" in tinea["care"][0]
    assert "alone cannot" in tinea["care"][0]  # topical treatment is not enough
    lice = " ".join(fact_sheet("head_lice", "en")["care"]).lower()
    assert "comb" in lice and "contacts" in lice
    telogen = fact_sheet("telogen_effluvium", "en")["summary"]
    assert "2 to 3 months" in telogen
    assert "autoimmune" in fact_sheet("alopecia_areata", "en")["summary"].lower()


@pytest.mark.parametrize("language", ["en", "ko"])
def test_offline_explanation(language):
    prediction = make_prediction(("head_lice", "folliculitis"), is_ood=True)
    text = offline_explanation(prediction, language)
    assert text.startswith(disclaimer(language))
    for key in ("head_lice", "folliculitis"):
        name = CONDITIONS[KEYS.index(key)].name(language)
        assert name in text
        assert fact_sheet(key, language)["see_doctor"][0] in text
    assert "81%" in text and "71%" in text
    assert fact_sheet("psoriasis", language)["summary"] not in text
    assert ("⚠️" in text) and bool(HANGUL.search(text)) == (language == "ko")


def test_offline_explanation_without_positives_shows_top():
    prediction = make_prediction(("psoriasis",), top_p=0.3)
    text = offline_explanation(prediction, "en")
    assert "Psoriasis (30%)" in text and "No condition reached" in text
