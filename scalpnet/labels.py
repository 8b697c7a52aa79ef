"""The ten scalp conditions, in the one fixed order of CSV columns and model outputs."""

from __future__ import annotations

import re
from dataclasses import dataclass

from scalpnet.errors import DatasetError


@dataclass(frozen=True)
class Condition:
    """One condition: its column key, display names, and extra folder-name aliases."""

    key: str  # snake_case; the labels.csv column and the JSON key
    english: str
    korean: str
    aliases: tuple[str, ...] = ()

    def name(self, language: str = "en") -> str:
        """Display name in ``"en"`` or ``"ko"``."""
        return self.korean if language == "ko" else self.english


CONDITIONS: tuple[Condition, ...] = (
    Condition("alopecia_areata", "Alopecia Areata", "원형 탈모증", ("alopecia",)),
    Condition("contact_dermatitis", "Contact Dermatitis", "접촉 피부염"),
    Condition("folliculitis", "Folliculitis", "모낭염"),
    Condition("head_lice", "Head Lice", "머릿니", ("lice", "pediculosis", "pediculosis capitis")),
    Condition("lichen_planus", "Lichen Planus", "편평태선", ("lichen planopilaris",)),
    Condition(
        "male_pattern_baldness",
        "Male Pattern Baldness",
        "남성형 탈모",
        ("androgenetic alopecia", "androgenic alopecia"),
    ),
    Condition("psoriasis", "Psoriasis", "건선", ("scalp psoriasis",)),
    Condition(
        "seborrheic_dermatitis",
        "Seborrheic Dermatitis",
        "지루성 피부염",
        ("seborrhoeic dermatitis", "seborrheic-dermatitis"),
    ),
    Condition("telogen_effluvium", "Telogen Effluvium", "휴지기 탈모"),
    Condition("tinea_capitis", "Tinea Capitis", "두부 백선", ("tinea", "scalp ringworm")),
)

NUM_CLASSES = len(CONDITIONS)
KEYS: tuple[str, ...] = tuple(c.key for c in CONDITIONS)
ENGLISH_NAMES: tuple[str, ...] = tuple(c.english for c in CONDITIONS)
KOREAN_NAMES: tuple[str, ...] = tuple(c.korean for c in CONDITIONS)
LANGUAGES = ("en", "ko")


def _normalise(name: str) -> str:
    """'Male_Pattern-Baldness ' -> 'male pattern baldness'."""
    return re.sub(r"[\s_\-]+", " ", name).strip().casefold()


_LOOKUP: dict[str, int] = {}
for _index, _condition in enumerate(CONDITIONS):
    for _alias in (_condition.key, _condition.english, *_condition.aliases):
        _LOOKUP[_normalise(_alias)] = _index


def display_names(language: str = "en") -> tuple[str, ...]:
    """The ten display names in label order, in ``"en"`` or ``"ko"``."""
    if language not in LANGUAGES:
        raise ValueError(f"language must be one of {LANGUAGES}, got {language!r}")
    return KOREAN_NAMES if language == "ko" else ENGLISH_NAMES


def find_condition(name: str) -> int | None:
    """Index of the condition a folder or column name refers to, or None.

    Case, spaces, underscores and hyphens are ignored: 'Head Lice', 'head_lice'
    and 'HEAD-LICE' all give 3.
    """
    return _LOOKUP.get(_normalise(name))


def condition_index(name: str) -> int:
    """Like :func:`find_condition` but raises :class:`DatasetError` naming the valid names."""
    index = find_condition(name)
    if index is None:
        raise DatasetError(
            f"unknown condition {name!r}; expected one of: {', '.join(ENGLISH_NAMES)} "
            "(case, spaces and underscores do not matter)"
        )
    return index
