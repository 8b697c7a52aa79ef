"""The app's strings in both languages, and the reasons and names said in the user's language."""

from __future__ import annotations

import io
import re
import string

import pytest
from PIL import Image

from scalpnet.app import text as ui_text
from scalpnet.app.text import image_problem, split_name
from scalpnet.data.preprocess import load_image
from scalpnet.errors import IMAGE_PROBLEMS, InvalidImageError

# Latin words a Korean sentence may keep: units and file-format names.
ALLOWED_LATIN = {"MB", "JPEG", "PNG", "WebP", "HEIC"}


def latin_words(text: str) -> set[str]:
    return set(re.findall(r"[A-Za-z]+", text)) - ALLOWED_LATIN


def test_both_languages_have_the_same_strings_and_placeholders():
    en, ko = ui_text.text("en"), ui_text.text("ko")
    assert set(en) == set(ko)
    fields = string.Formatter()
    for key in en:
        names_en = {f[1] for f in fields.parse(en[key]) if f[1]}
        names_ko = {f[1] for f in fields.parse(ko[key]) if f[1]}
        assert names_en == names_ko, key
        assert en[key].strip() and ko[key].strip(), key


def test_unknown_language_is_refused():
    with pytest.raises(ValueError, match="language"):
        ui_text.text("fr")


def test_every_image_problem_has_a_korean_reason_without_english():
    ko = ui_text.text("ko")
    for code in IMAGE_PROBLEMS:
        assert f"problem_{code}" in ko, code
        assert not latin_words(re.sub(r"\{[^}]*\}", "", ko[f"problem_{code}"])), code


def bad_files() -> dict[str, bytes]:
    jpeg = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 120, 90)).save(jpeg, "JPEG")
    return {
        "empty": b"",
        "not_an_image": b"this is not a photo",
        "corrupt": jpeg.getvalue()[: len(jpeg.getvalue()) // 2],
    }


@pytest.mark.parametrize("code", sorted(bad_files()))
def test_a_real_decoding_failure_is_said_in_korean(code):
    with pytest.raises(InvalidImageError) as info:
        load_image(bad_files()[code])
    assert info.value.reason == code
    korean = image_problem(info.value, "ko")
    assert korean == ui_text.text("ko")[f"problem_{code}"]
    assert re.search(r"[\uac00-\ud7a3]", korean) and not latin_words(korean)
    assert image_problem(info.value, "en") == ui_text.text("en")[f"problem_{code}"]


def test_details_fill_the_korean_reason():
    error = InvalidImageError(
        "x.png is 9000×9000 = 81 megapixels; the limit is 50 megapixels",
        "too_many_pixels",
        width=9000,
        height=9000,
        megapixels=81.0,
        limit=50.0,
    )
    expected = "이미지가 9000×9000 = 81메가픽셀로 제한(50메가픽셀)을 넘습니다"
    assert image_problem(error, "ko") == expected


def test_a_reason_without_its_details_falls_back_to_the_general_one():
    error = InvalidImageError("too many pixels", "too_many_pixels")  # no details
    assert image_problem(error, "ko") == ui_text.text("ko")["problem_unreadable"]
    assert image_problem(ValueError("not ours"), "ko") == ui_text.text("ko")["problem_unreadable"]


def test_split_and_scheme_names():
    assert split_name("scheme", "grouped", "ko") == "유사 사진 묶음"
    assert split_name("split", "test", "ko") == "테스트"
    assert split_name("scheme", "random", "en") == "random"
    assert split_name("scheme", "mystery", "ko") == "mystery"  # shown as recorded
    assert split_name("scheme", None, "ko") == "?"
