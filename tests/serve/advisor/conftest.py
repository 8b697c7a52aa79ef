"""Fixtures of the advisor's tests: a local fake Gemini server and a config pointing at it."""

from __future__ import annotations

import logging

import pytest
from fake_gemini import FakeGemini

from scalpnet.serve.advisor.config import API_KEY_ENV_VARS, AdvisorConfig


@pytest.fixture(scope="module")
def server():
    with FakeGemini() as fake:
        yield fake


@pytest.fixture
def fake(server):
    server.reset()
    yield server
    server.reset()


@pytest.fixture
def config(fake) -> AdvisorConfig:
    return AdvisorConfig(
        base_url=fake.base_url,
        api_version=fake.api_version,
        # A local fake answers in milliseconds, but a busy machine can hold a thread for
        # a second: 2 s before giving up, and stalls (in test_gemini) 10x longer than that.
        timeout_s=2.0,
        max_retries=2,
        backoff_initial_s=0.001,
        backoff_max_s=1.0,
    )


@pytest.fixture(autouse=True)
def _no_env_keys(monkeypatch):
    for name in API_KEY_ENV_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def captured(caplog, capsys):
    """Everything logged (all loggers, DEBUG) or printed, to check the key never leaks."""
    caplog.set_level(logging.DEBUG)

    def text() -> str:
        out = capsys.readouterr()
        return caplog.text + out.out + out.err

    return text
