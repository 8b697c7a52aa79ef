"""Train ScalpNet: prepare the data if needed, train, and leave a run folder.

    python train.py --data "PATH/Hair Diseases - Final"     # the Kaggle set
    python train.py --demo                                   # synthetic images, a few minutes
    python train.py --data ... --strategy mirrored           # every local GPU
    TF_CONFIG=... python train.py --data ... --out runs/x --strategy multiworker  # each machine

Resume: a killed run continues when the SAME command is run again. With --out the run
folder is the one given; without --out, train.py looks in runs/ for an unfinished run
of the same settings and data and continues the newest one (--fresh starts anew).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from scalpnet.cpu_kernels import use_onednn
from scalpnet.errors import ScalpNetError
from scalpnet.files import os_error_line
from scalpnet.quiet import quiet_tensorflow

RUNS = Path("runs")
DATA = Path("data")
DEFAULT_SIZE = 256
# The --demo recipe (README, "Demo model"; the model card records it). Measured on the
# 2-core VM: 5 epochs in float32 reached test top-1 0.77-0.80 on three seeds in 6 min of
# training; 4 epochs in mixed bfloat16 (--precision auto) at batch 32 0.73-0.76 in 4 min
# (2026-12-02); at batch 64 0.72-0.81 (2026-12-03), a quarter less time per image
# (interleaved in one process: 94 -> 120, 47 -> 94, 87 -> 113 images/s); at a learning
# rate of 2e-3 only 0.50; at 48 px 0.59. The images are drawn at a few times the model's
# input: a tenth of the drawing time of Kaggle-sized ones.
DEMO_PER_CLASS = 600
DEMO_SIDES = (160, 240)  # synthetic_dataset.write_dataset(sides=...): the drawn photos' longer side
DEMO_SIZE = 64
DEMO_EPOCHS = (0, 4)
DEMO_BATCH = 64
DEMO_LR = 1e-3


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show a flag's default only when it has a real one (not None or False)."""

    def _get_help_string(self, action):
        if action.default in (None, False) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python train.py",
        description=__doc__.split("\n\n")[0],
        epilog=(
            "Resume: run the same command again. With --out, the run in that folder continues; "
            "without it, the newest unfinished run under runs/ with the same settings and data "
            "continues (use --fresh to start a new one). A finished run folder is left as it is."
        ),
        formatter_class=_HelpFormatter,
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--data",
        type=Path,
        help="the Kaggle 'Hair Diseases - Final' folder, a folder of class folders, or a CSV "
        "of image paths with one 0/1 column per condition; prepared into data/processed "
        "(data/processed-S for --image-size S other than 256)",
    )
    what.add_argument(
        "--demo",
        action="store_true",
        help=f"make a synthetic dataset in data/synthetic ({DEMO_PER_CLASS} images per "
        f"condition), prepare it at {DEMO_SIZE} px and train a small demo model from scratch; "
        "everything it writes is marked as a demo trained on synthetic images",
    )
    p.add_argument(
        "--demo-images",
        type=int,
        default=DEMO_PER_CLASS,
        help="--demo: synthetic images per condition (split 8:1:1)",
    )
    p.add_argument(
        "--demo-sides",
        type=int,
        nargs=2,
        metavar=("LOW", "HIGH"),
        default=DEMO_SIDES,
        help="--demo: the synthetic photos' longer side is drawn between LOW and HIGH pixels",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="run folder (default: runs/<timestamp>, or runs/demo-<timestamp>; or the "
        "unfinished run of the same command, see below)",
    )
    p.add_argument("--fresh", action="store_true", help="never resume; always start a new run")
    p.add_argument(
        "--processed",
        type=Path,
        default=None,
        help="where prepared images and labels.csv go (default: data/processed[-S], "
        "data/processed-synthetic-S for --demo)",
    )
    p.add_argument(
        "--weights",
        default=None,
        help="'imagenet' (Keras downloads it once into $KERAS_HOME/models, default "
        "~/.keras/models), 'none' (random start: one phase trains the whole network), or "
        "the path of a ResNet50 no-top .h5/.weights.h5 file. Default: imagenet; none with --demo",
    )
    p.add_argument(
        "--image-size",
        type=int,
        default=None,
        help=f"side of the square model input in pixels (default {DEFAULT_SIZE}; "
        f"{DEMO_SIZE} with --demo)",
    )
    p.add_argument(
        "--epochs",
        type=int,
        nargs=2,
        metavar=("HEAD", "FINETUNE"),
        default=None,
        help="epochs of the head-only phase and of the fine-tuning phase (upper bounds: "
        "early stopping). With --weights none they add up to one whole-network phase. "
        f"Default: 5 30; {DEMO_EPOCHS[0]} {DEMO_EPOCHS[1]} with --demo",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help=f"images per step on EACH replica (device) (default 32; {DEMO_BATCH} with --demo); "
        "with --strategy a step "
        "takes batch-size x replicas images (the global batch)",
    )
    p.add_argument(
        "--head-lr",
        type=float,
        default=None,
        help="learning rate of the head phase (and of the whole network with --weights none) "
        f"(default 1e-3; {DEMO_LR:g} with --demo)",
    )
    p.add_argument(
        "--finetune-lr", type=float, default=1e-5, help="learning rate of the fine-tuning phase"
    )
    p.add_argument("--dropout", type=float, default=0.3, help="dropout before the head")
    p.add_argument(
        "--patience",
        type=int,
        default=10,
        help="early stopping: epochs without a better --monitor value",
    )
    p.add_argument(
        "--monitor",
        default="val_auc",
        help="validation metric that picks the best epoch (val_auc, val_loss, "
        "val_top1_accuracy, ...)",
    )
    p.add_argument(
        "--precision",
        choices=["auto", "none", "mixed_float16", "mixed_bfloat16"],
        default="auto",
        help="mixed precision (float16 with loss scaling, or bfloat16); the sigmoid head "
        "always computes in float32 and the saved model in float32. auto: mixed_bfloat16 "
        "for --demo on a CPU with bfloat16 instructions and no GPU, else none",
    )
    p.add_argument("--jit", action="store_true", help="compile the training step with XLA")
    p.add_argument(
        "--train-bn",
        action="store_true",
        help="also train BatchNorm layers when fine-tuning pretrained weights "
        "(default: kept frozen, better with small batches)",
    )
    p.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="random flips, rotation, zoom, contrast and brightness on training images "
        "(default: on; off with --demo, whose few epochs gain nothing from it)",
    )
    p.add_argument(
        "--cache",
        action="store_true",
        help="keep decoded training and validation images in memory "
        "(needs about N x S x S x 3 bytes)",
    )
    p.add_argument(
        "--deterministic",
        action="store_true",
        help="TensorFlow op determinism: bit-identical reruns, slower",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=42,
        help="seed for weights, shuffling, augmentation and the split",
    )
    p.add_argument(
        "--split",
        choices=["auto", "random", "grouped"],
        default="auto",
        help="passed to prepare: auto keeps the dataset's own train/val/test folders; random "
        "re-splits 8:1:1; grouped keeps near-duplicate photos in one split",
    )
    p.add_argument("--workers", type=int, default=None, help="prepare's parallel workers")
    p.add_argument(
        "--strategy",
        choices=["none", "mirrored", "multiworker"],
        default="none",
        help="none: one device; mirrored: tf.distribute.MirroredStrategy over every local GPU "
        "(or --devices); multiworker: tf.distribute.MultiWorkerMirroredStrategy across the "
        "machines named in the TF_CONFIG environment variable (run the same command on each; "
        "only the chief writes the run folder)",
    )
    p.add_argument(
        "--devices",
        default=None,
        help="devices for --strategy mirrored: 'gpu:N' (first N GPUs), GPU indices like "
        "'0,1', or 'cpu:N' (split the CPU into N logical devices; for tests). Default: all "
        "local GPUs",
    )
    p.add_argument(
        "--lr-scaling",
        choices=["linear", "sqrt", "none"],
        default="linear",
        help="with R replicas the learning rates are multiplied by R (linear), sqrt(R), or "
        "kept (none); they are set for one replica's batch",
    )
    p.add_argument(
        "--no-export",
        action="store_true",
        help="skip the ONNX export after evaluation (model.onnx, model.int8.onnx, "
        "onnx_check.json: what the app serves without TensorFlow)",
    )
    p.add_argument(
        "--verbose",
        type=int,
        choices=[0, 1, 2],
        default=1,
        help="Keras output: 0 silent, 1 progress bars, 2 one line per epoch (and "
        "TensorFlow's start-up messages)",
    )
    return p


def processed_folder(args: argparse.Namespace, image_size: int) -> Path:
    """Where prepare writes; one folder per image size (the pipeline never resizes)."""
    if args.processed is not None:
        return args.processed
    if args.demo:
        return DATA / f"processed-synthetic-{image_size}"
    return DATA / ("processed" if image_size == DEFAULT_SIZE else f"processed-{image_size}")


def make_demo_data(folder: Path, per_class: int, sides: tuple[int, int]) -> Path:
    """The synthetic raw dataset for --demo: written once, rewritten for another recipe."""
    import json

    from scalpnet.data import synthetic_dataset
    from scalpnet.files import write_json_atomic

    recipe = {"per_class": per_class, "sides": list(sides), "seed": 0}
    stamp = folder / "recipe.json"
    found = json.loads(stamp.read_text()) if stamp.is_file() else None
    if found != recipe:
        what = "writing" if found is None else f"rewriting ({found} there, not {recipe})"
        print(f"{what} the synthetic demo dataset in {folder} ...", flush=True)
        result = synthetic_dataset.write_dataset(
            folder, per_class=per_class, seed=0, sides=tuple(sides), progress=True
        )
        print(synthetic_dataset.summary(result), flush=True)
        write_json_atomic(stamp, recipe)
    return folder


def record_demo_recipe(run_dir: Path, args: argparse.Namespace) -> None:
    """Write the synthetic data's recipe into the card (training's own settings are there)."""
    import json

    from scalpnet.files import write_json_atomic

    card_path = run_dir / "model_card.json"
    card = json.loads(card_path.read_text(encoding="utf-8"))
    card["demo_recipe"] = {
        "synthetic_images_per_condition": args.demo_images,
        "drawn_longer_side_px": list(args.demo_sides),
        "synthetic_seed": 0,
        "split": "8:1:1 per condition",
        "note": "image size, epochs, batch size and learning rate: see 'training'",
    }
    write_json_atomic(card_path, card)


def prepare(data: Path, out: Path, image_size: int, split: str, seed: int, workers) -> Path:
    """Run (or re-check) prepare; unchanged images are not processed again."""
    from scalpnet.data import prepare as prepare_module

    print(f"preparing {data} -> {out} at {image_size} px ...", flush=True)
    config = prepare_module.PrepareConfig(
        data=data, out=out, image_size=image_size, split=split, seed=seed, workers=workers
    )
    result = prepare_module.prepare_dataset(config, progress=True)
    print(prepare_module.summary(result), flush=True)
    return result.csv_path


def resolve_precision(flag: str, demo: bool) -> str | None:
    """--precision -> TrainConfig.precision. 'auto' trains the demo in mixed bfloat16 where
    the CPU computes it natively and no GPU is used (its epochs took 52-57 s instead of
    62-68 s on the 2-core VM); anything else trains in float32."""
    if flag != "auto":
        return None if flag == "none" else flag
    if not demo:
        return None
    from scalpnet.learn.config import cpu_has_bfloat16

    if not cpu_has_bfloat16():
        return None
    import tensorflow as tf

    return None if tf.config.list_physical_devices("GPU") else "mixed_bfloat16"


def given(value, default):
    """A flag's value, or ``default`` when it was not given (0 is a value, and checked)."""
    return default if value is None else value


def train_config(args: argparse.Namespace, image_size: int, out: Path):
    """Flags -> TrainConfig (out is filled in later when resuming)."""
    from scalpnet.learn.config import TrainConfig

    weights = args.weights or ("none" if args.demo else "imagenet")
    epochs = args.epochs or (DEMO_EPOCHS if args.demo else (5, 30))
    return TrainConfig(
        out_dir=out,
        image_size=image_size,
        batch_size=given(args.batch_size, DEMO_BATCH if args.demo else 32),
        head_epochs=epochs[0],
        finetune_epochs=epochs[1],
        head_lr=given(args.head_lr, DEMO_LR if args.demo else 1e-3),
        finetune_lr=args.finetune_lr,
        dropout=args.dropout,
        weights=weights,
        precision=resolve_precision(args.precision, args.demo),
        jit=args.jit,
        seed=args.seed,
        patience=args.patience,
        monitor=args.monitor,
        train_bn=args.train_bn,
        augment=(not args.demo) if args.augment is None else args.augment,
        cache=args.cache or args.demo,  # the demo set is small (about 60 MB at 64 px)
        deterministic=args.deterministic,
        demo=args.demo,
        verbose=args.verbose,
        strategy=args.strategy,
        devices=args.devices,
        lr_scaling=args.lr_scaling,
    )


def choose_run_folder(args: argparse.Namespace, config, csv_path: Path) -> Path:
    """--out, else the unfinished run of the same command, else a new timestamped folder."""
    from scalpnet.learn.run_folder import find_unfinished_run

    if args.out is not None:
        return args.out
    if not args.fresh:
        found = find_unfinished_run(RUNS, config, csv_path)
        if found is not None:
            return found
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return RUNS / (f"demo-{stamp}" if args.demo else stamp)


def after_training(run_dir: Path, args: argparse.Namespace) -> None:
    """Score the finished run on its test split, fit its out-of-distribution model, export.

    Evaluation fits the thresholds and calibration inference uses (on val) and writes
    metrics.json and report.md; the OOD fit adds ood.npz and metrics.json["ood"]; the
    export (unless --no-export) adds the ONNX models the app serves and their check.
    """
    import shlex

    from scalpnet.judge import evaluation, ood

    command = "python " + shlex.join(sys.argv)
    result = evaluation.evaluate_run(
        run_dir, split="test", progress=args.verbose > 0, command=command
    )
    print(result.summary_table(), flush=True)
    summary = ood.fit_run(run_dir, progress=args.verbose > 0)
    print(
        f"out-of-distribution check: {summary['val_pass_rate']:.0%} of validation images pass; "
        f"{summary['probe_flagged_rate']:.0%} of {summary['probes']} non-scalp probes flagged "
        f"(AUROC {summary['auroc_val_vs_probes']:.3f})",
        flush=True,
    )
    if not args.no_export:
        export_onnx(run_dir, progress=args.verbose > 0)


def export_onnx(run_dir: Path, progress: bool) -> None:
    """fp32 + int8 ONNX into the run folder, checked on the test split; a failure is a
    warning (the run stays servable through Keras), never the end of the run."""
    from scalpnet.errors import ScalpNetError
    from scalpnet.serve import onnx_export

    try:
        record = onnx_export.export_run(run_dir, progress=progress)
        print(onnx_export.summary(record), flush=True)
    except ScalpNetError as exc:
        print(f"warning: ONNX export stopped ({exc}); the app serves what the run holds",
              file=sys.stderr, flush=True)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_tensorflow(verbose=args.verbose >= 2)
    use_onednn()
    try:
        from dataclasses import replace

        image_size = given(args.image_size, DEMO_SIZE if args.demo else DEFAULT_SIZE)
        if not args.demo and not args.data.exists():
            raise_missing(args.data)
        from scalpnet.learn.config import check_config  # TensorFlow: after the cheap checks

        config = train_config(args, image_size, RUNS / "pending")
        check_config(config)  # a mistake in the flags stops here, before any data is made
        if args.demo:
            data = make_demo_data(DATA / "synthetic", args.demo_images, args.demo_sides)
        else:
            data = args.data
        csv_path = prepare(
            data,
            processed_folder(args, image_size),
            image_size,
            args.split,
            args.seed,
            args.workers,
        )
        from scalpnet.learn import run_folder, training

        config = replace(config, out_dir=choose_run_folder(args, config, csv_path))
        print(f"training into {config.out_dir}", flush=True)
        result = training.train(config, csv_path)
        print(run_folder.summary(result), flush=True)
        if result.chief:  # a multi-worker run's other workers leave the run folder alone
            if args.demo:
                record_demo_recipe(result.run_dir, args)
            after_training(result.run_dir, args)
    except ScalpNetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk or an unwritable path no stage said more about
        print(f"error: {os_error_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130
    return 0


def raise_missing(data: Path) -> None:
    from scalpnet.errors import DatasetError

    raise DatasetError(
        f"no dataset at '{data}'; expected the Kaggle 'Hair Diseases - Final' folder, a folder "
        "of class folders, or a CSV (or use --demo for synthetic images)"
    )


if __name__ == "__main__":
    sys.exit(main())
