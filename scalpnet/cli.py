"""`python -m scalpnet <verb>`: argument parsing only; the work lives in the modules.

Every verb's handler imports its module lazily, so `--help` and the data verbs
never pay for importing TensorFlow.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from scalpnet import __version__
from scalpnet.cpu_kernels import use_onednn
from scalpnet.errors import ConfigError, ModelNotFoundError, ScalpNetError
from scalpnet.files import os_error_line
from scalpnet.quiet import quiet_tensorflow

Handler = Callable[[argparse.Namespace], int | None]


# --------------------------------------------------------------------------- prepare
def _add_prepare(verbs) -> Handler:
    p = verbs.add_parser(
        "prepare",
        help="raw photos -> processed 256x256 PNGs + labels.csv",
        description="Resize, median-blur and split a dataset; write labels.csv.",
    )
    p.add_argument(
        "--data",
        type=Path,
        required=True,
        help="the Kaggle 'Hair Diseases - Final' folder, a folder of class folders, "
        "or a CSV of image paths with one 0/1 column per condition "
        "(or a 'label' column of condition names)",
    )
    p.add_argument("--out", type=Path, default=Path("data/processed"), help="output folder")
    p.add_argument("--image-size", type=int, default=256, help="output side in pixels")
    p.add_argument(
        "--split",
        choices=["auto", "random", "grouped"],
        default="auto",
        help="auto: keep the dataset's own train/val/test folders when it has them, "
        "else a stratified random 8:1:1; random: always re-split 8:1:1; "
        "grouped: 8:1:1 with near-duplicate photos kept in one split",
    )
    p.add_argument("--seed", type=int, default=42)
    p.add_argument(
        "--workers", type=int, default=None, help="parallel workers (default: all cores)"
    )
    p.add_argument(
        "--dedupe-threshold",
        type=float,
        default=None,
        help="with --split grouped: how similar two photos must be to count as one "
        "(default: the audit's calibrated one, scalpnet.data.grouping.DEFAULT_THRESHOLD)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    def run(args: argparse.Namespace) -> int:
        from scalpnet.data import prepare

        config = prepare.PrepareConfig(
            data=args.data,
            out=args.out,
            image_size=args.image_size,
            split=args.split,
            seed=args.seed,
            workers=args.workers,
            dedupe_threshold=args.dedupe_threshold,
        )
        print(prepare.summary(prepare.prepare_dataset(config, progress=not args.quiet)))
        return 0

    return run


# --------------------------------------------------------------------------- synth
def _add_synth(verbs) -> Handler:
    p = verbs.add_parser(
        "synth",
        help="make a learnable fake dataset in the Kaggle layout",
        description="Write synthetic scalp-like images, N per condition, in the Kaggle layout.",
    )
    p.add_argument("--out", type=Path, default=Path("data/synthetic"), help="output folder")
    p.add_argument("--per-class", type=int, default=100, help="images per condition")
    p.add_argument("--seed", type=int, default=0)

    def run(args: argparse.Namespace) -> int:
        from scalpnet.data import synthetic_dataset

        if args.per_class < 1:
            raise ConfigError(f"--per-class must be at least 1, got {args.per_class}")
        result = synthetic_dataset.write_dataset(args.out, args.per_class, args.seed)
        print(synthetic_dataset.summary(result))
        return 0

    return run


# --------------------------------------------------------------------------- evaluate
def _add_evaluate(verbs) -> Handler:
    p = verbs.add_parser(
        "evaluate",
        help="score a trained run: metrics, thresholds, calibration, plots, report.md",
        description="Fit per-condition thresholds and temperatures on val, score a split, and "
        "write metrics.json, report.md, thresholds.json, calibration.json and plots into "
        "the run folder.",
    )
    p.add_argument("--run", type=Path, required=True, help="the run folder (runs/NAME)")
    p.add_argument(
        "--split",
        choices=["test", "val", "train"],
        default="test",
        help="split to score (default test; val is always the one fitted on)",
    )
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--keras-only",
        action="store_true",
        help="do not also score the run's ONNX models (model.onnx, model.int8.onnx)",
    )

    def run(args: argparse.Namespace) -> int:
        from scalpnet.judge import evaluation

        if args.batch_size < 1:
            p.error(f"--batch-size must be >= 1, got {args.batch_size}")
        config = evaluation.EvaluationConfig(
            split=args.split, batch_size=args.batch_size, progress=not args.no_progress
        )
        others = {}
        if not args.keras_only:
            from scalpnet.serve import runtimes

            others = runtimes.onnx_probability_fns(args.run)
        result = evaluation.evaluate(args.run, config, runtimes=others)
        print(result.summary_table())
        return 0

    return run


def _require_model_source(run: str) -> None:
    """Refuse a missing local model before TensorFlow is imported (its start-up chatter
    would otherwise precede the one error line)."""
    if "://" not in str(run) and not Path(run).exists():
        raise ModelNotFoundError(
            f"no run folder or .keras file at '{run}' (train one with 'python train.py --demo')"
        )


# --------------------------------------------------------------------------- predict
def _add_predict(verbs) -> Handler:
    p = verbs.add_parser(
        "predict",
        help="probabilities of each condition for one or more photos",
        description="Predict photos with a trained run: each condition's probability, the "
        "conditions above their thresholds, the top condition, and a warning when a photo "
        "does not look like the scalp close-ups the model was trained on. Unreadable files "
        "get one error line each (exit code 2); the others are still predicted.",
    )
    p.add_argument(
        "images",
        type=Path,
        nargs="+",
        help="photos (JPEG, PNG, WebP, HEIC, ...) or folders of them (every image inside)",
    )
    p.add_argument(
        "--run",
        required=True,
        help="a run folder (runs/NAME), a .keras file, or an https:// URL of one",
    )
    p.add_argument("--sha256", help="checksum of the file at --run (required for a URL)")
    p.add_argument("--json", action="store_true", help="print JSON (condition keys) instead")
    p.add_argument(
        "--gradcam",
        type=Path,
        metavar="OUT.png",
        help="write a Grad-CAM overlay of the top condition (and one per other "
        "condition above its threshold, OUT_<key>.png)",
    )
    p.add_argument(
        "--tta",
        action="store_true",
        help="average flipped views and report their spread as uncertainty",
    )
    p.add_argument(
        "--runtime",
        choices=["auto", "onnx", "int8", "keras"],
        help="auto (default, or $SCALPNET_RUNTIME): int8 ONNX when its recorded check passed, "
        "else fp32 ONNX, else Keras",
    )

    def run(args: argparse.Namespace) -> int:
        _require_model_source(args.run)
        from scalpnet.serve import predict_verb

        config = predict_verb.PredictConfig(
            images=tuple(args.images),
            run=args.run,
            sha256=args.sha256,
            tta=args.tta,
            gradcam=args.gradcam,
            runtime=args.runtime,
        )
        report = predict_verb.run_predict(config)
        if report.results or args.json:
            print(report.to_json() if args.json else report.text())
        for _image, message in report.errors:
            print(f"error: {message}", file=sys.stderr)
        return 2 if report.errors else 0

    return run


# --------------------------------------------------------------------------- export
def _add_export(verbs) -> Handler:
    p = verbs.add_parser(
        "export",
        help="write the model as a SavedModel, ONNX or LiteRT file, checked against Keras",
        description="Export a trained model for other runtimes; the export is run on the same "
        "images as the Keras model and refused if any probability differs by more than the "
        "tolerance.",
    )
    p.add_argument("--run", type=Path, required=True, help="the run folder (or a .keras file)")
    p.add_argument(
        "--format",
        choices=["savedmodel", "onnx", "litert", "int8"],
        default="savedmodel",
        help="int8: write the served ONNX models into the run folder (model.onnx, "
        "model.int8.onnx calibrated on val images, onnx_check.json: both checked on the test "
        "split); the others: a probabilities-only model under RUN/export/",
    )
    p.add_argument(
        "--out",
        type=Path,
        help="output path (default RUN/export/savedmodel, model.onnx or model.tflite)",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=1e-4,
        help="largest allowed |difference| of any probability (default 1e-4)",
    )

    def run(args: argparse.Namespace) -> int:
        _require_model_source(args.run)
        if args.format == "int8":
            from scalpnet.serve import onnx_export

            onnx_export.require_keras_run(args.run)
            print(onnx_export.summary(onnx_export.export_run(args.run, progress=True)))
            return 0
        from scalpnet.serve import export

        config = export.ExportConfig(
            run=args.run, format=args.format, out=args.out, tolerance=args.tolerance
        )
        print(export.run(config).summary())
        return 0

    return run


# --------------------------------------------------------------------------- audit
def _add_audit(verbs) -> Handler:
    p = verbs.add_parser(
        "audit",
        help="find the same photo across train, val and test (leakage audit)",
        description="Group near-duplicate images (turned, flipped, rotated, cropped, zoomed, "
        "sheared, greyscale, recoloured or re-encoded copies of one photo), each pair checked "
        "geometrically (SIFT matches, one RANSAC affine transform, the aligned fine texture "
        "must correlate), and report how many groups cross the splits. Writes audit.json, "
        "groups.csv and contact_sheet.png into --out.",
    )
    p.add_argument(
        "--data",
        type=Path,
        required=True,
        help="the Kaggle 'Hair Diseases - Final' folder (train/ val/ test/), a "
        "folder of class folders, or a prepared labels.csv",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("reports/audit"),
        help="folder for the report files (default: reports/audit under the current folder)",
    )
    # Defaults live in scalpnet.data.grouping (not imported here, to keep --help fast);
    # tests/data/test_audit.py checks that these help texts quote them.
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="pair score (0-1: correlation of the aligned fine texture) at which two "
        "images count as the same photo (default 0.67, calibrated on planted copies of "
        "214 real photos: see README; lower finds more copies and risks joining "
        "different photos of one patient)",
    )
    p.add_argument(
        "--neighbours",
        type=int,
        default=None,
        help="candidate partners verified per image from the coarse views (default 8; "
        "more is slower and misses fewer copies)",
    )
    p.add_argument(
        "--word-neighbours",
        type=int,
        default=None,
        help="candidate partners verified per image from the visual words, which find "
        "turned, cropped and zoomed copies (default 20; more is slower and misses fewer)",
    )
    p.add_argument(
        "--workers", type=int, default=None, help="parallel threads (default: all cores)"
    )
    p.add_argument(
        "--sheet-groups", type=int, default=6, help="groups shown in contact_sheet.png (default 6)"
    )

    def run(args: argparse.Namespace) -> int:
        from scalpnet.data import audit, grouping

        config = audit.AuditConfig(
            data=args.data,
            out=args.out,
            threshold=grouping.DEFAULT_THRESHOLD if args.threshold is None else args.threshold,
            neighbours=grouping.DEFAULT_NEIGHBOURS if args.neighbours is None else args.neighbours,
            word_neighbours=grouping.DEFAULT_WORD_NEIGHBOURS
            if args.word_neighbours is None
            else args.word_neighbours,
            workers=args.workers,
            sheet_groups=args.sheet_groups,
        )
        result = audit.audit(config)
        # The summary first: were the disk full, what the audit found is still shown.
        print(audit.summary(result, Path(config.out) / "audit.json"), flush=True)
        written = audit.write_audit(result, config.out, config.sheet_groups)
        print(f"Wrote {', '.join(str(path) for path in written.values())}")
        return 0

    return run


VERBS: tuple[Callable[[argparse._SubParsersAction], Handler], ...] = (
    _add_prepare,
    _add_synth,
    _add_evaluate,
    _add_predict,
    _add_export,
    _add_audit,
)


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Handler]]:
    parser = argparse.ArgumentParser(
        prog="python -m scalpnet",
        description="ScalpNet: classify scalp conditions from photos.",
    )
    parser.add_argument("--version", action="version", version=f"scalpnet {__version__}")
    parser.add_argument(
        "--verbose", action="store_true", help="also show TensorFlow's start-up messages"
    )
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    handlers = {}
    for add in VERBS:
        handler = add(verbs)
        handlers[next(reversed(verbs.choices))] = handler
    return parser, handlers


def main(argv: Sequence[str] | None = None) -> int:
    """Run one verb; a user mistake prints one line on stderr and returns 2."""
    parser, handlers = build_parser()
    args = parser.parse_args(argv)
    quiet_tensorflow(verbose=args.verbose)
    use_onednn()
    try:
        return handlers[args.verb](args) or 0
    except ScalpNetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk or an unwritable path no verb said more about
        print(f"error: {os_error_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
