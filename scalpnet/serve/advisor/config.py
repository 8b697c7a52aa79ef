"""The advisor's settings: the model and its limits (`AdvisorConfig`), the API key, and
`Reason`, why live text is missing or cut."""

from __future__ import annotations

import enum
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "gemini-3.5-flash-lite"
# The SDK's own order: GOOGLE_API_KEY wins when both are set.
API_KEY_ENV_VARS = ("GOOGLE_API_KEY", "GEMINI_API_KEY")


@dataclass(frozen=True)
class AdvisorConfig:
    """Settings of the Gemini advisor.

    Attributes:
        model: Gemini model name (a current low-cost one; gemini-2.5-flash shuts down
            2026-12-01).
        temperature, max_output_tokens: generation settings.
        timeout_s: per-request timeout (connect and each read of the stream).
        max_retries: extra attempts after a 429 / 5xx / 408 that came before any text.
        backoff_initial_s, backoff_max_s: exponential backoff with jitter between retries;
            a server-given retry delay is honoured, but one longer than ``backoff_max_s``
            is not waited for (the offline text is shown instead).
        base_url, api_version: endpoint overrides (tests, proxies, self-hosting).
        max_history_messages, max_message_chars: bounds on the follow-up conversation.
        max_grounded_conditions: how many conditions' fact sheets go into prompt/fallback.
        inline_notice: also yield the notice as a quoted line inside the text stream, so a
            consumer that only shows the stream (``st.write_stream``, a terminal) shows it.
    """

    model: str = DEFAULT_MODEL
    temperature: float = 0.3
    max_output_tokens: int = 1024
    timeout_s: float = 30.0
    max_retries: int = 2
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 8.0
    base_url: str | None = None
    api_version: str | None = None
    max_history_messages: int = 8
    max_message_chars: int = 2000
    max_grounded_conditions: int = 3
    inline_notice: bool = True

    def __post_init__(self):
        if not self.model:
            raise ValueError("model must be a non-empty model name")
        if not 0.0 <= self.temperature <= 2.0:
            raise ValueError(f"temperature must be in [0, 2], got {self.temperature}")
        for name in ("max_output_tokens", "max_history_messages", "max_message_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_grounded_conditions < 1:
            raise ValueError("max_grounded_conditions must be >= 1")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if not 0 < self.backoff_initial_s <= self.backoff_max_s:
            raise ValueError("need 0 < backoff_initial_s <= backoff_max_s")

    @classmethod
    def from_env(cls, env: Mapping[str, Any] | None = None, **overrides: Any) -> AdvisorConfig:
        """A config from ``GEMINI_MODEL``, ``GEMINI_BASE_URL``, ``GEMINI_API_VERSION`` and
        ``GEMINI_TIMEOUT_S`` in ``env`` (default ``os.environ``; the app may pass a dict
        merged from st.secrets). Unusable values are skipped with a warning, never raised.
        """
        env = os.environ if env is None else env
        fields = {
            "GEMINI_MODEL": ("model", str),
            "GEMINI_BASE_URL": ("base_url", str),
            "GEMINI_API_VERSION": ("api_version", str),
            "GEMINI_TIMEOUT_S": ("timeout_s", float),
        }
        values: dict[str, Any] = {}
        for name, (field, kind) in fields.items():
            raw = env.get(name)
            if raw is None or not str(raw).strip():
                continue
            try:
                values[field] = kind(str(raw).strip())
                cls(**{field: values[field]})  # validate this one value
            except ValueError:
                logger.warning("ignoring %s=%r: not a valid %s", name, raw, field)
                values.pop(field, None)
        return cls(**{**values, **overrides})


class Reason(enum.StrEnum):
    """Why live text is missing or cut (``Advice.reason``); compares equal to its string."""

    NO_KEY = "no_key"
    INVALID_KEY = "invalid_key"
    RATE_LIMITED = "rate_limited"
    SERVICE_ERROR = "service_error"
    REJECTED = "rejected"
    NETWORK = "network"
    TIMEOUT = "timeout"
    SAFETY = "safety"
    INTERRUPTED = "interrupted"
    EMPTY = "empty"
    EMPTY_QUESTION = "empty_question"


def resolve_api_key(api_key: str | None = None) -> str | None:
    """Explicit key > GOOGLE_API_KEY > GEMINI_API_KEY (the SDK's order); blank counts as none."""
    if api_key and api_key.strip():
        return api_key.strip()
    for name in API_KEY_ENV_VARS:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None
