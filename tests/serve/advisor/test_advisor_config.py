"""The advisor's settings and the API key's resolution."""

from __future__ import annotations

import pytest
from advisor_helpers import make_prediction, run
from fake_gemini import text_stream

from scalpnet.serve.advisor.advice import stream_advice
from scalpnet.serve.advisor.config import AdvisorConfig, resolve_api_key


def test_config_validation():
    with pytest.raises(ValueError, match="temperature"):
        AdvisorConfig(temperature=3)
    with pytest.raises(ValueError, match="backoff"):
        AdvisorConfig(backoff_initial_s=5, backoff_max_s=1)
    assert AdvisorConfig().model == "gemini-3.5-flash-lite"


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


def test_env_key_is_used_and_google_key_wins(fake, config, monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", "gemini-env-key")
    monkeypatch.setenv("GOOGLE_API_KEY", "google-env-key")
    fake.enqueue(text_stream(["x"]), text_stream(["y"]))
    run(stream_advice(make_prediction(), "en", config=config))
    run(stream_advice(make_prediction(), "en", api_key="explicit-key", config=config))
    assert [r.api_key for r in fake.requests] == ["google-env-key", "explicit-key"]


def test_explicit_key_wins_and_blank_counts_as_none(monkeypatch):
    assert resolve_api_key() is None
    monkeypatch.setenv("GEMINI_API_KEY", "  ")
    assert resolve_api_key("   ") is None
    monkeypatch.setenv("GEMINI_API_KEY", " from-env ")
    assert resolve_api_key(" explicit ") == "explicit"
    assert resolve_api_key(None) == "from-env"
