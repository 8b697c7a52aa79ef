"""ScalpNet in the browser: ``streamlit run streamlit_app.py``.

Widgets wired to ``scalpnet`` calls and nothing else: the model and its CAM come
from ``scalpnet.serve.predictor`` / ``scalpnet.serve.explain`` (ONNX Runtime when the run
folder has an ONNX model, then no TensorFlow is imported), the explanation from
``scalpnet.serve.advisor``, and the logic worth testing without a browser (settings, which
model to load, the chart, the reports) from ``scalpnet.app.state``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import streamlit as st

from scalpnet.app import demo_build
from scalpnet.app import state as app_state
from scalpnet.app.pictures import display_jpeg
from scalpnet.app.text import LANGUAGE_NAMES, image_problem, text
from scalpnet.cpu_kernels import use_onednn
from scalpnet.errors import InvalidImageError, ScalpNetError
from scalpnet.labels import CONDITIONS, LANGUAGES
from scalpnet.progress import format_seconds
from scalpnet.quiet import quiet_tensorflow
from scalpnet.serve.heap import map_large_blocks

APP_DIR = Path(__file__).resolve().parent
DISPLAY_SIDE = 720  # JPEGs are decoded at reduced scale down to this side for display
MAX_REMEMBERED_IMAGES = 16  # per session: predictions of the latest images


# --------------------------------------------------------------------------- resources
def keep_tensorflow_warm_between_reruns() -> None:
    """Stop Streamlit from calling ``keras.backend.clear_session()`` after every rerun.

    Streamlit's script runner resets Keras after each script run (its private
    ``_clean_problem_modules``), which empties TensorFlow's kernel cache: the next
    forward pass then rebuilds every kernel, about a second on a CPU instead of tens of
    milliseconds, on every upload. This app builds no model per rerun (the Predictor
    lives in ``st.cache_resource``), so that reset has nothing to clean up here. The
    other thing the function does, closing matplotlib figures, is kept. Idempotent;
    does nothing if a future Streamlit renames the function.
    """
    from streamlit.runtime.scriptrunner import script_runner

    current = getattr(script_runner, "_clean_problem_modules", None)
    if not callable(current) or getattr(current, "keeps_keras", False):
        return

    def clean_problem_modules_but_keras() -> None:
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is not None:
            pyplot.close("all")

    clean_problem_modules_but_keras.keeps_keras = True
    script_runner._clean_problem_modules = clean_problem_modules_but_keras


@st.cache_resource(show_spinner=False, max_entries=2)
def load_predictor(location: str, sha256: str | None, runtime: str = "auto", files=()):
    """One Predictor per process, shared by all sessions (on ONNX Runtime when the run has
    an ONNX model: no TensorFlow; else Keras), and the test metrics of its run folder.

    ``files``: ``app_state.served_files_stamp`` of the run, so that an export finishing
    later (the demo build's last step) is picked up.
    """
    from scalpnet.serve.fetch import fetch_model
    from scalpnet.serve.predictor import Predictor

    predictor = Predictor.load(location, sha256=sha256, runtime=runtime)
    # A downloaded run (a zipped run folder) is unpacked in the cache; find its metrics there.
    folder = fetch_model(location, sha256) if "://" in location else location
    return predictor, app_state.read_metrics(folder)


def read_settings() -> tuple[app_state.Settings, str | None]:
    """Environment first, then ``.streamlit/secrets.toml`` (missing or broken: ignored)."""
    found, error = app_state.read_secrets(st.secrets, (Path.cwd(), APP_DIR, Path.home()))
    settings = app_state.Settings.from_sources(os.environ, found, APP_DIR / "runs")
    return settings, error


def remembered(name: str) -> dict:
    """A per-session dict in ``st.session_state`` (predictions, explanations, chats...)."""
    return st.session_state.setdefault(f"remembered_{name}", {})


def remember(name: str, key, value) -> None:
    """Store in a per-session dict, forgetting the oldest entries beyond the limit."""
    store = remembered(name)
    store[key] = value
    while len(store) > MAX_REMEMBERED_IMAGES * len(LANGUAGES):
        store.pop(next(iter(store)))


# --------------------------------------------------------------------------- sidebar
def choose_language() -> str:
    """한국어 / English; the browser's language decides the first choice."""
    locale = (st.context.locale or "").lower()
    default = "ko" if locale.startswith("ko") else "en"
    return st.sidebar.radio(
        text(default)["language"],
        options=("ko", "en"),
        index=("ko", "en").index(default),
        format_func=LANGUAGE_NAMES.get,
        horizontal=True,
        key="language",
    )


def show_model(predictor, metrics: dict | None, origin: str, language: str) -> None:
    """Name, date, demo or real data, and the run's test metrics."""
    t = text(language)
    card = predictor.card or {}
    st.sidebar.subheader(t["sidebar_model"])
    demo = card.get("demo")
    lines = [
        f"**{t['model_name']}:** {predictor.name}",
        f"**{t['model_created']}:** {app_state.short_time(card.get('created'))}",
        f"**{t['model_data']}:** "
        + (t["model_demo"] if demo else t["model_real"] if demo is not None else "–"),
        f"**{t['model_image_size']}:** {predictor.image_size}×{predictor.image_size}",
        f"**{t['model_source']}:** `{origin}`",
        f"**{t['model_runtime']}:** `{predictor.runtime.name}`",
    ]
    st.sidebar.markdown("\n".join(f"- {line}" for line in lines))
    if predictor.runtime_note:
        st.sidebar.caption(predictor.runtime_note)
    st.sidebar.markdown(f"**{t['model_metrics']}**")
    metric_lines = app_state.metric_lines(metrics, language)
    if metric_lines:
        st.sidebar.markdown("\n".join(f"- {line}" for line in metric_lines))
    else:
        st.sidebar.caption(t["model_no_metrics"])


def show_disclaimer(t) -> None:
    st.sidebar.subheader(t["disclaimer_header"])
    st.sidebar.caption(t["disclaimer"])


# --------------------------------------------------------------------------- pages
def no_model_page(settings: app_state.Settings, t) -> None:
    st.title(t["no_model_title"])
    if demo_build.may_build(os.environ, APP_DIR):
        build = demo_build.DemoBuild(APP_DIR, settings.runs_dir)
        st.markdown(t["build_demo_intro"])
        if st.button(t["build_demo_button"], type="primary") and start_build(build):
            st.rerun()
    else:
        st.info(t["build_demo_cloud"])
    st.markdown(t["no_model_body"].format(runs_dir=settings.runs_dir))


def start_build(build: demo_build.DemoBuild) -> bool:
    """Start the demo build; False (with the one-line reason shown) when it could not."""
    try:
        build.start()
    except ScalpNetError as error:  # a full disk
        st.error(str(error))
        return False
    return True


@st.fragment(run_every=1.0)
def demo_build_progress(build: demo_build.DemoBuild, t) -> None:
    """The running build's progress bar; the whole page reruns (and loads it) when done."""
    state = build.state()
    if state.phase != "running":
        st.rerun(scope="app")
    st.progress(
        state.fraction,
        text=t["build_demo_running"].format(
            index=state.step_index or "?", steps=len(demo_build.STEPS), step=state.step or "…"
        ),
    )
    st.caption(
        t["build_demo_left"].format(
            percent=round(100 * state.fraction),
            left=format_seconds(state.left_s),
            elapsed=format_seconds(state.elapsed_s),
        )
    )


def demo_build_page(build: demo_build.DemoBuild, settings: app_state.Settings, t) -> bool:
    """Show a build that is running or has failed; False when there is none to show."""
    if not build.info_file.is_file():
        return False
    state = build.state()
    if state.phase in ("done", "exporting") or (
        state.phase == "failed" and app_state.newest_complete_run(settings.runs_dir) is not None
    ):
        return False  # a failed build shows only while there is no model at all
    st.title(t["no_model_title"])
    if state.phase == "running":
        demo_build_progress(build, t)
    else:
        st.error(t["build_demo_failed"])
        st.code(state.log_tail or "-")
        if st.button(t["build_demo_retry"], type="primary") and start_build(build):
            st.rerun()
        st.markdown(t["no_model_body"].format(runs_dir=settings.runs_dir))
    return True


def model_error_page(error: ScalpNetError, settings: app_state.Settings, t) -> None:
    st.title(t["model_error_title"])
    st.error(t["model_error_body"].format(reason=error))
    st.markdown(t["no_model_body"].format(runs_dir=settings.runs_dir))


def photo_input(t):
    """The uploaded file or the camera photo (an UploadedFile), or None."""
    upload = st.file_uploader(
        t["upload_label"].format(limit=app_state.MAX_UPLOAD_MB),
        type=list(app_state.UPLOAD_TYPES),
        max_upload_size=app_state.MAX_UPLOAD_MB,
        key="upload",
    )
    if st.toggle(t["camera_toggle"], key="use_camera"):
        shot = st.camera_input(t["camera_label"], key="camera")
        if shot is not None:
            return shot
    return upload


def predict(predictor, data: bytes, sha: str):
    """The Prediction of these bytes, computed once per image and session."""
    predictions = remembered("predictions")
    if sha not in predictions:
        remember("predictions", sha, predictor.predict(data))
    return predictions[sha]


def display_photo(data: bytes, sha: str):
    """(H, W, 3) uint8 upright RGB of the current image (kept for its Grad-CAM overlay)."""
    from scalpnet.data.preprocess import load_image

    current = st.session_state.get("remembered_photo")
    if current is None or current[0] != sha:
        current = (sha, load_image(data, min_size=DISPLAY_SIDE))
        st.session_state["remembered_photo"] = current
    return current[1]


def show_gradcam(predictor, prediction, photo, language: str, t) -> None:
    """The optional Grad-CAM overlay for the top condition or another chosen one."""
    if not st.toggle(t["gradcam_toggle"], key="gradcam"):
        return
    from scalpnet.serve.explain import overlay

    ranked = [CONDITIONS.index(c) for c, _ in prediction.ranked()]
    index = st.selectbox(
        t["chart_condition"],
        options=ranked,
        format_func=lambda i: CONDITIONS[i].name(language),
        key="gradcam_condition",
    )
    heats = remembered("gradcam")
    key = (prediction.image_sha256, index)
    if key not in heats:
        remember("gradcam", key, predictor.explain_prediction(prediction, [index])[index])
    st.image(
        display_jpeg(overlay(photo, heats[key])),
        caption=t["gradcam_caption"].format(name=CONDITIONS[index].name(language)),
        width="stretch",
    )


def show_result(predictor, prediction, language: str, t) -> None:
    """Bars, the top result in words, and the out-of-distribution warning."""
    st.subheader(t["chart_header"])
    if prediction.is_ood:
        threshold = getattr(predictor.ood, "threshold", None)
        if prediction.ood_score is not None and threshold is not None:
            st.warning(t["ood_warning"].format(score=prediction.ood_score, limit=threshold))
        else:
            st.warning(t["ood_warning_no_limit"])
    top = prediction.top_condition
    st.markdown(
        t["top_result"].format(
            name=top.name(language), prob=prediction.probabilities[prediction.top]
        )
    )
    if prediction.positives:
        names = ", ".join(CONDITIONS[i].name(language) for i in prediction.positives)
        st.markdown(t["positives"].format(names=names))
    else:
        st.markdown(t["no_positive"])
    st.vega_lite_chart(spec=app_state.probability_chart(prediction, language), width="stretch")
    st.caption(t["chart_help"])


def show_explanation(prediction, settings, language: str, t) -> app_state.Explanation:
    """The advisor's explanation, streamed once per (image, language) and then remembered."""
    from scalpnet.serve.advisor.advice import stream_advice

    st.subheader(t["explanation_header"])
    key = (prediction.image_sha256, language)
    notice_slot = st.empty()
    explanations = remembered("explanations")
    if key in explanations:
        st.markdown(explanations[key].text)
    else:
        advice = stream_advice(
            prediction,
            language,
            api_key=settings.gemini_api_key,
            config=app_state.advisor_config(settings),
        )
        st.write_stream(advice)
        remember(
            "explanations", key, app_state.Explanation(advice.text, advice.source, advice.notice)
        )
    explanation = explanations[key]
    if explanation.notice:
        notice_slot.info(explanation.notice)
    st.caption(t[f"source_{explanation.source}"])
    return explanation


def show_downloads(report: dict, t) -> None:
    st.subheader(t["downloads_header"])
    stem = f"scalpnet-{(report['image']['sha256'] or 'result')[:12]}"
    row = st.container(horizontal=True)
    row.download_button(
        t["download_json"],
        app_state.report_json(report),
        file_name=f"{stem}.json",
        mime="application/json",
        on_click="ignore",
        key="download_json",
    )
    row.download_button(
        t["download_md"],
        app_state.report_markdown(report),
        file_name=f"{stem}.md",
        mime="text/markdown",
        on_click="ignore",
        key="download_md",
    )


def show_chat(prediction, explanation, settings, language: str, t) -> None:
    """Follow-up questions about this result, answered by the advisor (streamed)."""
    from scalpnet.serve.advisor.advice import follow_up

    st.subheader(t["chat_header"])
    if not settings.gemini_api_key:
        st.caption(t["chat_offline"])
    history = remembered("chats").setdefault((prediction.image_sha256, language), [])
    for message in history:
        with st.chat_message(message["role"]):
            st.markdown(message["content"])
    question = st.chat_input(t["chat_placeholder"], key="question")
    if not question:
        return
    with st.chat_message("user"):
        st.markdown(question)
    with st.chat_message("assistant"):
        answer = follow_up(
            prediction,
            [{"role": "assistant", "content": explanation.text}, *history],
            question,
            language,
            api_key=settings.gemini_api_key,
            config=app_state.advisor_config(settings),
        )
        st.write_stream(answer)
        if answer.notice:
            st.caption(answer.notice)
    history += [
        {"role": "user", "content": question},
        {"role": "assistant", "content": answer.text},
    ]


# --------------------------------------------------------------------------- the page
def main() -> None:
    quiet_tensorflow()  # no TensorFlow start-up notices unless TF_CPP_MIN_LOG_LEVEL is set
    use_onednn()  # before TensorFlow is imported: twice the training speed on AVX2 CPUs
    map_large_blocks()  # freed photo-sized arrays go back to the system, not to a heap
    st.set_page_config(page_title="ScalpNet", page_icon="🔬", layout="wide")
    keep_tensorflow_warm_between_reruns()
    language = choose_language()
    t = text(language)
    settings, secrets_error = read_settings()
    if secrets_error:
        st.sidebar.warning(t["secrets_warning"].format(reason=secrets_error))
    build = demo_build.DemoBuild(APP_DIR, settings.runs_dir)
    # A build in progress finishes (evaluation, OOD fit) before its model is loaded.
    may_build = demo_build.may_build(os.environ, APP_DIR)
    if (
        may_build
        and not (settings.run or settings.model_url)
        and demo_build_page(build, settings, t)
    ):
        show_disclaimer(t)
        return
    try:
        source = app_state.find_model_source(settings)
        if source is None:
            show_disclaimer(t)
            no_model_page(settings, t)
            return
        files = () if "://" in source.location else app_state.served_files_stamp(source.location)
        with st.spinner(t["loading_model"]):
            predictor, metrics = load_predictor(
                source.location, source.sha256, settings.runtime, files
            )
    except ScalpNetError as error:
        show_disclaimer(t)
        model_error_page(error, settings, t)
        return
    if may_build and source.origin == "runs" and build.state().phase == "exporting":
        st.sidebar.info(t["build_demo_exporting"])
    show_model(predictor, metrics, source.origin, language)
    show_disclaimer(t)

    st.title(t["title"])
    st.caption(t["intro"])
    if (predictor.card or {}).get("demo"):
        st.warning(t["demo_banner"])
    photo_file = photo_input(t)
    if photo_file is None:
        st.info(t["waiting"])
        return
    data = photo_file.getvalue()
    try:
        app_state.check_upload(data, language)
        sha = app_state.image_sha256(data)
        prediction = predict(predictor, data, sha)
        photo = display_photo(data, sha)
    except InvalidImageError as error:
        reason = image_problem(error, language)
        st.error(t["bad_image"].format(reason=reason, limit=app_state.MAX_UPLOAD_MB))
        return

    left, right = st.columns([2, 3], gap="large")
    with left:
        st.image(display_jpeg(photo), caption=t["photo_caption"], width="stretch")
        show_gradcam(predictor, prediction, photo, language, t)
    with right:
        show_result(predictor, prediction, language, t)
    explanation = show_explanation(prediction, settings, language, t)
    report = app_state.build_report(
        prediction,
        card=predictor.card or {"name": predictor.name},
        language=language,
        image_name=photo_file.name,
        explanation=explanation,
        metrics=metrics,
        runtime=predictor.runtime.name,
    )
    show_downloads(report, t)
    show_chat(prediction, explanation, settings, language, t)


main()
