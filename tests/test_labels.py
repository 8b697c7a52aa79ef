"""The ten conditions: fixed order, names, and folder-name matching."""

from __future__ import annotations

import re

import pytest

from scalpnet import labels
from scalpnet.errors import DatasetError, ScalpNetError

# The Kaggle "Hair Diseases - Final" class folders (FACTS.md), in the original project's order.
KAGGLE_FOLDERS = [
    "Alopecia Areata",
    "Contact Dermatitis",
    "Folliculitis",
    "Head Lice",
    "Lichen Planus",
    "Male Pattern Baldness",
    "Psoriasis",
    "Seborrheic Dermatitis",
    "Telogen Effluvium",
    "Tinea Capitis",
]


def test_ten_conditions_in_the_kaggle_folder_order():
    assert labels.NUM_CLASSES == 10 == len(labels.CONDITIONS)
    assert list(labels.ENGLISH_NAMES) == KAGGLE_FOLDERS


def test_keys_are_unique_snake_case_and_match_the_kaggle_file_names():
    assert len(set(labels.KEYS)) == 10
    for key, english in zip(labels.KEYS, labels.ENGLISH_NAMES, strict=True):
        assert re.fullmatch(r"[a-z]+(_[a-z]+)*", key)
        # Kaggle files are named <class_snake>_NNNN.jpg
        assert key == english.lower().replace(" ", "_")


def test_korean_names_are_present_and_distinct():
    assert len(set(labels.KOREAN_NAMES)) == 10
    assert all(re.search(r"[\uac00-\ud7a3]", name) for name in labels.KOREAN_NAMES)
    assert labels.display_names("ko") == labels.KOREAN_NAMES
    assert labels.display_names("en") == labels.ENGLISH_NAMES
    assert labels.CONDITIONS[3].name("ko") == labels.KOREAN_NAMES[3]
    assert labels.CONDITIONS[3].name() == "Head Lice"


def test_display_names_rejects_an_unknown_language():
    with pytest.raises(ValueError, match="language"):
        labels.display_names("fr")


@pytest.mark.parametrize(
    ("name", "index"),
    [
        ("Head Lice", 3),
        ("head_lice", 3),
        ("HEAD-LICE", 3),
        ("  head   lice ", 3),
        ("Male_Pattern_Baldness", 5),
        ("androgenetic alopecia", 5),
        ("seborrhoeic dermatitis", 7),
        ("tinea", 9),
        ("alopecia_areata", 0),
    ],
)
def test_find_condition_ignores_case_spaces_underscores_and_knows_aliases(name, index):
    assert labels.find_condition(name) == index


@pytest.mark.parametrize("name", ["", "healthy", "Alopecia Areata 2", "lice eggs", "train"])
def test_find_condition_returns_none_for_unknown_names(name):
    assert labels.find_condition(name) is None


def test_every_folder_spelling_of_every_condition_is_found():
    for index, condition in enumerate(labels.CONDITIONS):
        for spelling in (
            condition.key,
            condition.english,
            condition.english.upper(),
            condition.english.replace(" ", "_"),
            *condition.aliases,
        ):
            assert labels.find_condition(spelling) == index


def test_condition_index_error_names_the_input_and_every_expected_name():
    with pytest.raises(DatasetError) as info:
        labels.condition_index("Dandruff")
    message = str(info.value)
    assert "Dandruff" in message
    assert all(name in message for name in labels.ENGLISH_NAMES)
    assert isinstance(info.value, ScalpNetError)
    assert labels.condition_index("psoriasis") == 6
