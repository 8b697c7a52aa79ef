"""The app's Streamlit-free logic: settings, model choice, uploads, chart, reports."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from scalpnet.app import state as app_state
from scalpnet.app import text as ui_text
from scalpnet.errors import InvalidImageError, ModelNotFoundError
from scalpnet.labels import CONDITIONS, KEYS
from scalpnet.serve.prediction import Prediction

PROBS = (0.05, 0.10, 0.80, 0.02, 0.40, 0.01, 0.30, 0.03, 0.20, 0.04)
THRESHOLDS = (0.5, 0.5, 0.6, 0.5, 0.35, 0.5, 0.5, 0.5, 0.5, 0.5)


def make_prediction(**overrides) -> Prediction:
    values = {
        "probabilities": PROBS,
        "thresholds": THRESHOLDS,
        "raw_probabilities": PROBS,
        "image_sha256": "ab" * 32,
        "timings_ms": {"forward": 1.0},
    }
    values.update(overrides)
    return Prediction(**values)


def make_run(folder: Path, created: str | None) -> Path:
    folder.mkdir(parents=True)
    (folder / "model.keras").write_bytes(b"not really a model")
    card = {"name": folder.name}
    if created is not None:
        card["created"] = created
    (folder / "model_card.json").write_text(json.dumps(card))
    return folder


# --------------------------------------------------------------------------- settings
class RaisingSecrets:
    """Behaves like st.secrets without a secrets.toml: every access raises."""

    def __contains__(self, name):
        raise FileNotFoundError("No secrets found.")

    def __getitem__(self, name):
        raise FileNotFoundError("No secrets found.")


def test_missing_secrets_file_is_not_an_error(tmp_path):
    assert app_state.read_secrets(RaisingSecrets(), (tmp_path,)) == ({}, None)
    assert app_state.read_secrets(None) == ({}, None)


def test_unreadable_secrets_file_is_reported(tmp_path):
    (tmp_path / ".streamlit").mkdir()
    (tmp_path / ".streamlit" / "secrets.toml").write_text('GEMINI_API_KEY = "unterminated\n')
    found, error = app_state.read_secrets(RaisingSecrets(), (tmp_path,))
    assert found == {}
    assert "No secrets found" in error


def test_secrets_keep_only_known_nonblank_settings():
    found, error = app_state.read_secrets(
        {"GEMINI_API_KEY": "k", "SCALPNET_RUN": "  ", "OTHER": "x", "GEMINI_MODEL": "m"}
    )
    assert error is None
    assert found == {"GEMINI_API_KEY": "k", "GEMINI_MODEL": "m"}


def test_environment_wins_over_secrets_and_google_key_wins(tmp_path):
    env = {"SCALPNET_RUN": "runs/a", "GEMINI_API_KEY": "env-key"}
    secrets = {"SCALPNET_RUN": "runs/b", "GEMINI_MODEL": "gemini-x", "GOOGLE_API_KEY": "g-key"}
    settings = app_state.Settings.from_sources(env, secrets, tmp_path)
    assert settings.run == "runs/a"
    assert settings.advisor == {"GEMINI_MODEL": "gemini-x"}
    assert settings.gemini_api_key == "g-key"  # the SDK's order: GOOGLE_API_KEY first
    assert settings.runs_dir == tmp_path
    assert "g-key" not in repr(settings) and "env-key" not in repr(settings)


def test_advisor_config_takes_the_overrides(tmp_path):
    secrets = {
        "GEMINI_MODEL": "gemini-x",
        "GEMINI_BASE_URL": "http://127.0.0.1:9",
        "GEMINI_API_VERSION": "v9",
    }
    settings = app_state.Settings.from_sources({}, secrets, tmp_path)
    config = app_state.advisor_config(settings)
    assert (config.model, config.base_url, config.api_version) == (
        "gemini-x",
        "http://127.0.0.1:9",
        "v9",
    )
    assert config.inline_notice is False  # the app shows the notice itself
    assert app_state.advisor_config(app_state.Settings()).base_url is None


# --------------------------------------------------------------------------- model choice
def test_newest_complete_run_wins(tmp_path):
    make_run(tmp_path / "old", "2026-01-01T00:00:00+00:00")
    make_run(tmp_path / "new", "2026-06-01T00:00:00+00:00")
    unfinished = tmp_path / "newest_but_incomplete"
    unfinished.mkdir()
    (unfinished / "model_card.json").write_text(json.dumps({"created": "2027-01-01T00:00:00"}))
    (tmp_path / "stray.txt").write_text("x")
    assert app_state.newest_complete_run(tmp_path) == tmp_path / "new"
    training = make_run(tmp_path / "still_training", "2027-01-01T00:00:00+00:00")
    (training / ".resume").mkdir()
    assert app_state.newest_complete_run(tmp_path) == tmp_path / "new"


def test_a_run_with_only_an_onnx_model_is_complete(tmp_path):
    make_run(tmp_path / "keras", "2026-01-01T00:00:00+00:00")
    onnx = make_run(tmp_path / "onnx", "2026-06-01T00:00:00+00:00")
    (onnx / "model.keras").rename(onnx / "model.onnx")
    assert app_state.newest_complete_run(tmp_path) == onnx


def test_runtime_setting_from_environment_or_secrets(tmp_path):
    assert app_state.Settings.from_sources({}, {}, tmp_path).runtime == "auto"
    secrets = {"SCALPNET_RUNTIME": "INT8"}
    assert app_state.Settings.from_sources({}, secrets, tmp_path).runtime == "int8"
    env = {"SCALPNET_RUNTIME": "keras"}
    assert app_state.Settings.from_sources(env, secrets, tmp_path).runtime == "keras"
    assert app_state.read_secrets(secrets)[0] == {"SCALPNET_RUNTIME": "INT8"}


def test_card_without_date_falls_back_to_file_time(tmp_path):
    make_run(tmp_path / "dated", "2020-01-01T00:00:00+00:00")
    undated = make_run(tmp_path / "undated", None)
    now = time.time()
    os.utime(undated / "model_card.json", (now, now))
    assert app_state.newest_complete_run(tmp_path) == undated


def test_no_runs_means_no_model(tmp_path):
    settings = app_state.Settings(runs_dir=tmp_path / "missing")
    assert app_state.find_model_source(settings) is None
    assert app_state.newest_complete_run(tmp_path) is None


def test_model_source_order(tmp_path):
    make_run(tmp_path / "r", "2026-01-01T00:00:00+00:00")
    url = "https://example.com/model.keras"
    by_run = app_state.Settings(run="x", model_url=url, model_sha256="0" * 64, runs_dir=tmp_path)
    assert app_state.find_model_source(by_run) == app_state.ModelSource("x", None, "SCALPNET_RUN")
    by_url = app_state.Settings(model_url=url, model_sha256="0" * 64, runs_dir=tmp_path)
    assert app_state.find_model_source(by_url) == app_state.ModelSource(
        url, "0" * 64, "SCALPNET_MODEL_URL"
    )
    by_folder = app_state.Settings(runs_dir=tmp_path)
    assert app_state.find_model_source(by_folder).location == str(tmp_path / "r")


def test_url_without_checksum_is_refused(tmp_path):
    settings = app_state.Settings(model_url="https://example.com/m.keras", runs_dir=tmp_path)
    with pytest.raises(ModelNotFoundError, match="SCALPNET_MODEL_SHA256"):
        app_state.find_model_source(settings)


# --------------------------------------------------------------------------- uploads
def test_upload_over_the_limit_is_refused_in_the_users_language():
    big = b"\0" * (app_state.MAX_UPLOAD_MB * 1024 * 1024 + 1)
    with pytest.raises(InvalidImageError, match="limit is 10 MB"):
        app_state.check_upload(big, "en")
    with pytest.raises(InvalidImageError, match="제한") as info:
        app_state.check_upload(big, "ko")
    assert info.value.reason == "file_too_large" and info.value.details["limit"] == 10
    app_state.check_upload(big[:-1], "en")  # exactly at the limit is fine


def test_upload_types_include_heic():
    assert {"jpg", "jpeg", "png", "webp", "heic", "heif"} <= set(app_state.UPLOAD_TYPES)


# --------------------------------------------------------------------------- chart
def test_chart_rows_are_in_label_order_with_thresholds():
    rows = app_state.chart_rows(make_prediction(), "en")
    assert [r["key"] for r in rows] == list(KEYS)
    assert [r["probability"] for r in rows] == list(PROBS)
    assert [r["threshold"] for r in rows] == list(THRESHOLDS)
    assert [r["key"] for r in rows if r["above"]] == ["folliculitis", "lichen_planus"]
    assert rows[0]["condition"] == "Alopecia Areata"
    assert app_state.chart_rows(make_prediction(), "ko")[0]["condition"] == "원형 탈모증"


def test_chart_sorts_bars_by_probability_and_marks_thresholds():
    spec = app_state.probability_chart(make_prediction(), "en")
    bar, tick, _ = spec["layer"]
    order = bar["encoding"]["y"]["sort"]
    assert order[:3] == ["Folliculitis", "Lichen Planus", "Psoriasis"]
    assert len(order) == 10
    assert tick["mark"]["type"] == "tick"
    assert tick["encoding"]["x"]["field"] == "threshold"
    assert bar["encoding"]["color"]["field"] == "above"
    json.dumps(spec)  # the spec is plain JSON


# --------------------------------------------------------------------------- reports
METRICS = {
    "split": "test",
    "split_scheme": "grouped",
    "n_images": {"test": 120, "val": 100},
    "at_tuned": {"top1_accuracy": 0.8125, "exact_match_accuracy": 0.75, "macro": {"f1": 0.7}},
    "calibration": {"after": {"ece": 0.031}},
}


def test_metrics_summary_and_lines():
    summary = app_state.metrics_summary(METRICS)
    assert summary["metric_top1"] == 0.8125
    assert summary["metric_macro_auc"] is None
    assert summary["n_images"] == 120
    lines = app_state.metric_lines(METRICS, "en")
    assert lines[0] == "on the test split (120 images, grouped split)"
    assert "top-1 accuracy: 81.2%" in lines
    assert "calibration error (ECE): 0.031" in lines
    assert not any("ROC AUC" in line for line in lines)
    assert app_state.metric_lines(None, "en") == []
    korean = app_state.metric_lines(METRICS, "ko")
    assert korean[0] == "테스트 분할 기준 (120장, 유사 사진 묶음 분할)"


def test_read_metrics_of_a_run_folder_or_its_model_file(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps(METRICS))
    assert app_state.read_metrics(tmp_path) == METRICS
    assert app_state.read_metrics(tmp_path / "model.keras") == METRICS
    assert app_state.read_metrics(tmp_path / "nowhere") is None
    assert app_state.read_metrics("https://example.com/model.keras") is None


def test_report_json_has_hash_card_probabilities_and_ai_label():
    card = {"name": "run-1", "created": "2026-11-01T10:00:00+00:00", "demo": False}
    explanation = app_state.Explanation("Gemini says **hi**.", "gemini", None)
    report = app_state.build_report(
        make_prediction(),
        card=card,
        language="en",
        image_name="scalp.jpg",
        explanation=explanation,
        metrics=METRICS,
        now=datetime(2026, 11, 23, 12, 0, tzinfo=UTC),
    )
    data = json.loads(app_state.report_json(report))
    assert data["image"] == {"name": "scalp.jpg", "sha256": "ab" * 32}
    assert data["model"]["name"] == "run-1" and data["model"]["card"] == card
    assert data["model"]["metrics"]["metric_top1"] == 0.8125
    assert data["result"]["probabilities"] == dict(zip(KEYS, PROBS, strict=True))
    assert data["result"]["thresholds"] == dict(zip(KEYS, THRESHOLDS, strict=True))
    assert data["result"]["positives"] == ["folliculitis", "lichen_planus"]
    assert "timings_ms" not in data["result"]
    assert data["explanation"]["ai_generated"] is True
    assert data["explanation"]["text"] == "Gemini says **hi**."
    assert data["generated"] == "2026-11-23T12:00:00+00:00"
    assert data["model"]["runtime"] is None  # not given


def test_reports_name_the_runtime_that_answered():
    report = app_state.build_report(
        make_prediction(), card={"name": "r"}, language="ko", runtime="onnx-int8"
    )
    assert json.loads(app_state.report_json(report))["model"]["runtime"] == "onnx-int8"
    assert "onnx-int8" in app_state.report_markdown(report)


def test_report_markdown_in_korean_marks_the_offline_fact_sheet():
    explanation = app_state.Explanation("오프라인 안내문", "offline", "키가 없습니다.")
    report = app_state.build_report(
        make_prediction(is_ood=True, ood_score=9.0),
        card={"name": "run-1", "demo": True},
        language="ko",
        explanation=explanation,
    )
    assert report["explanation"]["ai_generated"] is False
    page = app_state.report_markdown(report)
    assert page.startswith("# ScalpNet 결과")
    assert ui_text.text("ko")["source_offline"] in page
    assert "키가 없습니다." in page and "오프라인 안내문" in page
    assert f"`{'ab' * 32}`" in page
    assert "분포 이탈: 예" in page
    table = [line for line in page.splitlines() if line.startswith("| ")][1:]
    assert len(table) == 10
    assert table[0].startswith(f"| {CONDITIONS[2].korean} | 80.0% | 60.0% | ✔")


def test_short_time():
    assert app_state.short_time("2026-11-23T21:32:29+09:00") == "2026-11-23 12:32 UTC"
    assert app_state.short_time("2026-11-23T21:32:29") == "2026-11-23 21:32"
    assert app_state.short_time("yesterday") == "yesterday"
    assert app_state.short_time(None) == "–"
