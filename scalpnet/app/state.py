"""The Streamlit app's logic that can be tested without Streamlit.

Reading settings (environment first, then Streamlit secrets), choosing which model to
load, checking an upload, the probability chart's Vega-Lite spec, and the JSON and
Markdown result reports. No TensorFlow and no Streamlit imports here.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from scalpnet.app.text import split_name, text
from scalpnet.errors import InvalidImageError, ModelNotFoundError
from scalpnet.labels import CONDITIONS
from scalpnet.serve.prediction import Prediction

MAX_UPLOAD_MB = 10  # also server.maxUploadSize in .streamlit/config.toml
UPLOAD_TYPES = ("jpg", "jpeg", "png", "webp", "heic", "heif")
CARD_FILE = "model_card.json"  # a complete run folder: its card, a model ...
MODEL_FILES = ("model.keras", "model.onnx")  # ... either one (a deployed run may lack .keras) ...
RESUME_DIR = ".resume"  # ... unless training is still going on (scalpnet.learn.training)

# Setting names, the same in the environment and in .streamlit/secrets.toml.
SETTING_NAMES = (
    "SCALPNET_RUN",  # a run folder or a .keras file
    "SCALPNET_RUNS_DIR",  # where to look for the newest run (default: runs/ beside the app)
    "SCALPNET_MODEL_URL",  # https URL of a model.keras ...
    "SCALPNET_MODEL_SHA256",  # ... and its required SHA-256
    "SCALPNET_RUNTIME",  # auto | onnx | int8 | keras (scalpnet.serve.runtimes.open_runtime)
    "GEMINI_API_KEY",
    "GOOGLE_API_KEY",  # the SDK's other name for the key; wins over GEMINI_API_KEY
    # Read by AdvisorConfig.from_env (serve/advisor/config.py); tests point the SDK at a fake.
    "GEMINI_MODEL",
    "GEMINI_BASE_URL",
    "GEMINI_API_VERSION",
    "GEMINI_TIMEOUT_S",
)
ADVISOR_SETTINGS = ("GEMINI_MODEL", "GEMINI_BASE_URL", "GEMINI_API_VERSION", "GEMINI_TIMEOUT_S")


# --------------------------------------------------------------------------- settings
def read_secrets(
    secrets: Mapping | None, search_dirs: tuple[Path, ...] = ()
) -> tuple[dict, str | None]:
    """Top-level settings from ``st.secrets`` without letting a missing file raise.

    Args:
        secrets: ``st.secrets`` or any mapping; ``st.secrets`` raises on first access
            when no secrets.toml exists, and also when the file is not valid TOML.
        search_dirs: folders whose ``.streamlit/secrets.toml`` Streamlit reads; when one
            exists but reading failed, the failure is reported instead of ignored.

    Returns:
        (the string-valued settings among :data:`SETTING_NAMES`, an error message or None).
    """
    if secrets is None:
        return {}, None
    try:
        found = {name: secrets[name] for name in SETTING_NAMES if name in secrets}
    except Exception as exc:  # Streamlit's StreamlitSecretNotFoundError (a FileNotFoundError)
        exists = any((d / ".streamlit" / "secrets.toml").is_file() for d in search_dirs)
        return {}, (str(exc) if exists else None)
    return {k: str(v) for k, v in found.items() if v is not None and str(v).strip()}, None


@dataclass(frozen=True)
class Settings:
    """Everything configurable about the app. Environment variables win over secrets."""

    run: str | None = None
    runs_dir: Path = Path("runs")
    model_url: str | None = None
    model_sha256: str | None = None
    runtime: str = "auto"  # auto | onnx | int8 | keras
    gemini_api_key: str | None = None
    advisor: Mapping[str, str] = field(default_factory=dict)  # ADVISOR_SETTINGS that are set

    @classmethod
    def from_sources(
        cls, env: Mapping[str, str], secrets: Mapping[str, str], default_runs_dir: Path
    ) -> Settings:
        """Merge the environment and the secrets (already read by :func:`read_secrets`)."""

        def get(name: str) -> str | None:
            value = env.get(name) or secrets.get(name)
            return value.strip() if value and value.strip() else None

        runs_dir = get("SCALPNET_RUNS_DIR")
        return cls(
            run=get("SCALPNET_RUN"),
            runs_dir=Path(runs_dir) if runs_dir else default_runs_dir,
            model_url=get("SCALPNET_MODEL_URL"),
            model_sha256=get("SCALPNET_MODEL_SHA256"),
            runtime=(get("SCALPNET_RUNTIME") or "auto").lower(),
            gemini_api_key=get("GOOGLE_API_KEY") or get("GEMINI_API_KEY"),
            advisor={name: get(name) for name in ADVISOR_SETTINGS if get(name)},
        )

    def __repr__(self) -> str:  # never show the key, e.g. in a traceback or a log line
        key = "set" if self.gemini_api_key else None
        return f"Settings(run={self.run!r}, model_url={self.model_url!r}, gemini_api_key={key})"


# --------------------------------------------------------------------------- model choice
@dataclass(frozen=True)
class ModelSource:
    """Where the model comes from: ``location`` is a run folder, a .keras file or a URL."""

    location: str
    sha256: str | None = None
    origin: str = "runs"  # "SCALPNET_RUN" | "SCALPNET_MODEL_URL" | "runs"


def _created(run: Path) -> float:
    """When a run was made: its card's ISO ``created`` time, else the card file's mtime."""
    card = run / "model_card.json"
    try:
        created = json.loads(card.read_text(encoding="utf-8")).get("created")
        return datetime.fromisoformat(created).timestamp()
    except (OSError, ValueError, TypeError, AttributeError):
        try:
            return card.stat().st_mtime
        except OSError:
            return 0.0


def newest_complete_run(runs_dir: Path) -> Path | None:
    """The newest finished run under ``runs_dir``: ``model_card.json`` and ``model.keras`` or
    ``model.onnx`` present, no ``.resume/`` (training leaves that only while a run is
    unfinished)."""
    if not runs_dir.is_dir():
        return None
    complete = [
        d
        for d in runs_dir.iterdir()
        if d.is_dir()
        and (d / CARD_FILE).is_file()
        and any((d / f).is_file() for f in MODEL_FILES)
        and not (d / RESUME_DIR).exists()
    ]
    return max(complete, key=lambda d: (_created(d), d.name), default=None)


def served_files_stamp(location: str) -> tuple:
    """(name, mtime in ns) of each ONNX model and check file in a local run folder: part
    of the app's model cache key, so a run whose export finishes while the app serves it
    through Keras is served through ONNX Runtime from the next rerun on."""
    from scalpnet.serve.runtimes import CHECK_FILE, FP32_FILE, INT8_FILE

    files = [Path(location) / name for name in (FP32_FILE, INT8_FILE, CHECK_FILE)]
    return tuple((f.name, f.stat().st_mtime_ns) for f in files if f.is_file())


def find_model_source(settings: Settings) -> ModelSource | None:
    """Which model to load: ``SCALPNET_RUN``, else a URL + SHA-256, else the newest run.

    Returns:
        The source, or None when there is no model anywhere (the app shows how to get one).

    Raises:
        ModelNotFoundError: a model URL is set without its SHA-256.
    """
    if settings.run:
        return ModelSource(settings.run, origin="SCALPNET_RUN")
    if settings.model_url:
        if not settings.model_sha256:
            raise ModelNotFoundError(
                f"SCALPNET_MODEL_URL is set ({settings.model_url}) but SCALPNET_MODEL_SHA256 is "
                "not; add the file's SHA-256 (sha256sum model.keras) next to the URL"
            )
        return ModelSource(settings.model_url, settings.model_sha256, origin="SCALPNET_MODEL_URL")
    newest = newest_complete_run(settings.runs_dir)
    return ModelSource(str(newest), origin="runs") if newest else None


# --------------------------------------------------------------------------- model facts
def read_metrics(location: str | os.PathLike) -> dict | None:
    """``metrics.json`` of a local run folder (or of the folder of a .keras file), else None."""
    if "://" in str(location):
        return None  # a downloaded model: its metrics are not known here
    path = Path(location)
    folder = path if path.is_dir() else path.parent if path.suffix == ".keras" else None
    if folder is None:
        return None
    try:
        metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return metrics if isinstance(metrics, dict) else None


def short_time(iso: str | None) -> str:
    """'2026-11-23T21:32:29+00:00' -> '2026-11-23 21:32 UTC'; anything unparsable as given."""
    if not iso:
        return "–"
    try:
        moment = datetime.fromisoformat(str(iso))
    except ValueError:
        return str(iso)
    if moment.tzinfo is not None:
        return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return moment.strftime("%Y-%m-%d %H:%M")


def _dig(data: Mapping, *keys: str):
    for key in keys:
        if not isinstance(data, Mapping) or key not in data:
            return None
        data = data[key]
    return data


# (ui_text key, path in metrics.json): the few numbers the sidebar and the report show.
METRIC_FIELDS = (
    ("metric_top1", ("at_tuned", "top1_accuracy")),
    ("metric_exact", ("at_tuned", "exact_match_accuracy")),
    ("metric_macro_f1", ("at_tuned", "macro", "f1")),
    ("metric_macro_auc", ("at_tuned", "macro", "roc_auc")),
    ("metric_ece", ("calibration", "after", "ece")),
    ("metric_ood_auroc", ("ood", "auroc_val_vs_probes")),
)


def metrics_summary(metrics: Mapping) -> dict:
    """The headline numbers of a run's ``metrics.json`` (None where missing), plus the split."""
    summary: dict = {"split": metrics.get("split"), "split_scheme": metrics.get("split_scheme")}
    n_images = metrics.get("n_images")
    if isinstance(n_images, Mapping) and metrics.get("split") in n_images:
        summary["n_images"] = n_images[metrics["split"]]
    for name, path in METRIC_FIELDS:
        value = _dig(metrics, *path)
        summary[name] = float(value) if isinstance(value, int | float) else None
    return summary


def metric_lines(metrics: Mapping | None, language: str) -> list[str]:
    """Markdown bullet lines for the sidebar: 'top-1 accuracy: 91.2%' etc."""
    if not metrics:
        return []
    t = text(language)
    summary = metrics_summary(metrics)
    lines = []
    if summary.get("split"):
        count = summary.get("n_images")
        lines.append(
            t["metric_split"].format(
                split=split_name("split", summary["split"], language),
                scheme=split_name("scheme", summary.get("split_scheme"), language),
                n="?" if count is None else count,
            )
        )
    for name, _ in METRIC_FIELDS:
        value = summary[name]
        if value is not None:
            shown = f"{value:.3f}" if name in ("metric_ece",) else f"{value:.1%}"
            lines.append(f"{t[name]}: {shown}")
    return lines


# --------------------------------------------------------------------------- uploads
def image_sha256(data: bytes) -> str:
    """Hex SHA-256 of the uploaded bytes: the key of every per-image cache."""
    return hashlib.sha256(data).hexdigest()


def check_upload(data: bytes, language: str, limit_mb: int = MAX_UPLOAD_MB) -> None:
    """Refuse uploads over the size limit before decoding them.

    Raises:
        InvalidImageError: reason "file_too_large", with a message in ``language``.
    """
    if len(data) > limit_mb * 1024 * 1024:
        size = len(data) / 2**20
        message = text(language)["problem_file_too_large"].format(size=size, limit=limit_mb)
        raise InvalidImageError(message, "file_too_large", size=size, limit=limit_mb)


# --------------------------------------------------------------------------- chart
def chart_rows(prediction: Prediction, language: str) -> list[dict]:
    """One row per condition, in label order: the data behind the probability bars."""
    return [
        {
            "key": c.key,
            "condition": c.name(language),
            "probability": round(float(p), 6),
            "threshold": round(float(t), 6),
            "above": bool(p >= t),
        }
        for c, p, t in zip(CONDITIONS, prediction.probabilities, prediction.thresholds, strict=True)
    ]


def probability_chart(prediction: Prediction, language: str) -> dict:
    """Vega-Lite spec: horizontal bars sorted by probability, the threshold as a tick.

    The data stay in label order (``chart_rows``); the y axis sorts them for display.
    Bars at or above their threshold are drawn in the highlight colour.
    """
    t = text(language)
    order = [
        r["condition"]
        for r in sorted(chart_rows(prediction, language), key=lambda r: -r["probability"])
    ]
    y = {
        "field": "condition",
        "type": "nominal",
        "sort": order,
        "title": None,
        "axis": {"labelLimit": 220},
    }
    tooltip = [
        {"field": "condition", "type": "nominal", "title": t["chart_condition"]},
        {
            "field": "probability",
            "type": "quantitative",
            "format": ".1%",
            "title": t["chart_probability"],
        },
        {
            "field": "threshold",
            "type": "quantitative",
            "format": ".1%",
            "title": t["chart_threshold"],
        },
    ]
    x_scale = {"domain": [0, 1]}
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "description": t["chart_header"],
        "data": {"values": chart_rows(prediction, language)},
        "height": {"step": 26},
        "layer": [
            {
                "mark": {"type": "bar", "cornerRadiusEnd": 3},
                "encoding": {
                    "y": y,
                    "x": {
                        "field": "probability",
                        "type": "quantitative",
                        "scale": x_scale,
                        "axis": {"format": "%"},
                        "title": t["chart_probability"],
                    },
                    "color": {
                        "field": "above",
                        "type": "nominal",
                        "title": t["chart_above"],
                        "scale": {"domain": [False, True], "range": ["#b8c4d6", "#d6336c"]},
                        "legend": None,
                    },
                    "tooltip": tooltip,
                },
            },
            {
                "mark": {"type": "tick", "color": "#222222", "thickness": 2, "size": 20},
                "encoding": {
                    "y": y,
                    "x": {"field": "threshold", "type": "quantitative", "scale": x_scale},
                    "tooltip": tooltip,
                },
            },
            {
                "mark": {"type": "text", "align": "left", "dx": 4, "fontSize": 11},
                "encoding": {
                    "y": y,
                    "x": {"field": "probability", "type": "quantitative", "scale": x_scale},
                    "text": {"field": "probability", "type": "quantitative", "format": ".0%"},
                },
            },
        ],
    }


# --------------------------------------------------------------------------- reports
@dataclass(frozen=True)
class Explanation:
    """The explanation text the app showed, and where it came from."""

    text: str
    source: str  # "gemini" | "offline" | "partial"
    notice: str | None = None


def build_report(
    prediction: Prediction,
    *,
    card: Mapping,
    language: str,
    image_name: str | None = None,
    explanation: Explanation | None = None,
    metrics: Mapping | None = None,
    now: datetime | None = None,
    runtime: str | None = None,
) -> dict:
    """The JSON result a user downloads: image hash, model card, probabilities, thresholds,
    and the explanation marked as AI-generated or as the offline fact sheet."""
    result = prediction.to_dict()
    result.pop("timings_ms", None)
    report = {
        "generated": (now or datetime.now(UTC)).isoformat(timespec="seconds"),
        "language": language,
        "image": {"name": image_name, "sha256": prediction.image_sha256},
        "model": {"name": card.get("name"), "runtime": runtime, "card": dict(card)},
        "result": result,
        "explanation": None,
    }
    if metrics:
        report["model"]["metrics"] = metrics_summary(metrics)
    if explanation is not None:
        report["explanation"] = {
            "text": explanation.text,
            "source": explanation.source,
            "ai_generated": explanation.source in ("gemini", "partial"),
            "notice": explanation.notice,
            "label": text(language)[f"source_{explanation.source}"],
        }
    return report


def report_json(report: Mapping) -> str:
    """The report as pretty-printed UTF-8 JSON (Korean kept readable)."""
    return json.dumps(report, ensure_ascii=False, indent=2, default=str)


def _pct(value: float | None) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.1%}"


def report_markdown(report: Mapping) -> str:
    """The same report as a Markdown page (names and labels in the report's language)."""
    language = report["language"]
    t = text(language)
    result, model = report["result"], report["model"]
    card = model.get("card", {})
    data_kind = t["model_demo"] if card.get("demo") else t["model_real"]
    lines = [
        f"# {t['report_title']}",
        "",
        f"- {t['report_generated']}: {report['generated']}",
        f"- {t['report_image']}: {report['image'].get('name') or '–'} "
        f"(SHA-256 `{report['image'].get('sha256') or '–'}`)",
        f"- {t['report_model']}: {model.get('name') or '–'}, {t['model_created']} "
        f"{card.get('created', '–')}, {t['model_data']}: {data_kind}",
        f"- {t['report_runtime']}: {model.get('runtime') or '–'}",
        f"- {t['report_ood']}: {t['report_yes'] if result.get('is_ood') else t['report_no']}",
        "",
        f"## {t['report_probabilities']}",
        "",
        f"| {t['chart_condition']} | {t['chart_probability']} | {t['chart_threshold']} "
        f"| {t['chart_above']} |",
        "|---|---:|---:|:---:|",
    ]
    probs, thresholds = result["probabilities"], result["thresholds"]
    by_name = {c.key: c.name(language) for c in CONDITIONS}
    for key in sorted(probs, key=lambda k: -probs[k]):
        above = "✔" if probs[key] >= thresholds[key] else ""
        lines.append(
            f"| {by_name.get(key, key)} | {_pct(probs[key])} | {_pct(thresholds[key])} | {above} |"
        )
    explanation = report.get("explanation")
    if explanation:
        lines += ["", f"## {t['report_explanation']}", "", f"> {explanation['label']}", ""]
        if explanation.get("notice"):
            lines += [f"*{explanation['notice']}*", ""]
        lines.append(explanation["text"].strip())
    lines += ["", "---", "", t["disclaimer"], ""]
    return "\n".join(lines)


def env_settings() -> dict[str, str]:
    """The settings present in this process's environment (for Settings.from_sources)."""
    return {k: os.environ[k] for k in SETTING_NAMES if os.environ.get(k)}


def advisor_config(settings: Settings):
    """The advisor's config from GEMINI_MODEL / _BASE_URL / _API_VERSION / _TIMEOUT_S.

    The app shows the advisor's notice itself (``st.info``), so it is not repeated
    inside the streamed text.
    """
    from scalpnet.serve.advisor.config import AdvisorConfig

    return AdvisorConfig.from_env(settings.advisor, inline_notice=False)
