"""The human side of an evaluation: PNG plots and report.md, from the metrics and arrays.

Figures are made with matplotlib's object-oriented API (``matplotlib.figure.Figure``
rendered by the Agg canvas), so no pyplot global state and no display are involved.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scalpnet.files import atomic_path, write_text_atomic
from scalpnet.judge.metrics import expected_calibration_error, reliability_bins
from scalpnet.labels import ENGLISH_NAMES, KEYS, NUM_CLASSES

PLOT_FILES = {
    "confusion_matrix": "confusion_matrix.png",
    "roc_curves": "roc_curves.png",
    "pr_curves": "pr_curves.png",
    "reliability": "reliability.png",
}
DPI = 110
FLATTERY = (
    "When each image has one condition, 9 of every 10 label cells are 0, so never predicting "
    "any condition already earns 90% on this metric; exact-match accuracy, top-1 accuracy and "
    "the per-condition F1 give no such credit."
)

# What each split scheme means, said in every report (model_card.json["split_scheme"]).
SPLIT_SCHEMES = {
    "shipped": "the dataset's own train/val/test folders. On the Kaggle Hair Diseases set "
    "these hold copies of the same photo in train and test, so the numbers are inflated",
    "random": "a stratified random 8:1:1 re-split. Near-duplicate photos can still sit in "
    "train and test, so these numbers may be inflated",
    "grouped": "a leak-free 8:1:1 split: near-duplicate photos are kept within one split",
}


# --------------------------------------------------------------------------- plots
def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    """Write a PNG atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    return path


def plot_confusion_matrix(cm: np.ndarray, path: Path, title: str) -> Path:
    """Rows true, columns predicted; colour = share of the row, text = image count."""
    cm = np.asarray(cm)
    rows = cm.sum(axis=1, keepdims=True)
    rate = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    fig = _figure(9.5, 8.5)
    ax = fig.add_subplot()
    image = ax.imshow(rate, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            if cm[i, j]:
                colour = "white" if rate[i, j] > 0.5 else "black"
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", color=colour, fontsize=9)
    ticks = np.arange(NUM_CLASSES)
    ax.set_xticks(ticks, ENGLISH_NAMES, rotation=40, ha="right")
    ax.set_yticks(ticks, ENGLISH_NAMES)
    ax.set_xlabel("Predicted condition (most probable)")
    ax.set_ylabel("True condition")
    ax.set_title(title)
    fig.colorbar(
        image, ax=ax, fraction=0.046, pad=0.04, label="share of the true condition's images"
    )
    return _save(fig, path)


def _grid(title: str, xlabel: str, ylabel: str):
    fig = _figure(17, 7.5)
    axes = fig.subplots(2, 5, sharex=True, sharey=True)
    fig.suptitle(title, fontsize=14)
    for ax in axes[1]:
        ax.set_xlabel(xlabel)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)
    return fig, axes.ravel()


def _undefined(ax, why: str) -> None:
    ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes, fontsize=9, wrap=True)


def plot_roc_curves(y: np.ndarray, probs: np.ndarray, per: dict, path: Path, title: str) -> Path:
    """One ROC panel per condition, with its AUC and support."""
    from sklearn.metrics import roc_curve

    fig, axes = _grid(title, "False positive rate", "True positive rate")
    for k, (key, ax) in enumerate(zip(KEYS, axes, strict=True)):
        row = per[key]
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8, label="chance")
        if row["roc_auc"] is None:
            _undefined(ax, "undefined:\nonly one class\nin this split")
            ax.set_title(f"{ENGLISH_NAMES[k]}\nAUC n/a (n={row['support']})", fontsize=10)
            continue
        fpr, tpr, _ = roc_curve(y[:, k], probs[:, k])
        ax.plot(fpr, tpr, color="tab:blue", linewidth=1.6)
        ax.set_title(
            f"{ENGLISH_NAMES[k]}\nAUC {row['roc_auc']:.3f} (n={row['support']})", fontsize=10
        )
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
    return _save(fig, path)


def plot_pr_curves(y: np.ndarray, probs: np.ndarray, per: dict, path: Path, title: str) -> Path:
    """One precision-recall panel per condition: AP, chance level, tuned operating point."""
    from sklearn.metrics import precision_recall_curve

    fig, axes = _grid(title, "Recall", "Precision")
    for k, (key, ax) in enumerate(zip(KEYS, axes, strict=True)):
        row = per[key]
        if row["average_precision"] is None:
            _undefined(ax, "undefined:\nno positive image\nin this split")
            ax.set_title(f"{ENGLISH_NAMES[k]}\nAP n/a (n=0)", fontsize=10)
            continue
        precision, recall, _ = precision_recall_curve(y[:, k], probs[:, k])
        ax.step(recall, precision, where="post", color="tab:blue", linewidth=1.6)
        ax.axhline(y[:, k].mean(), linestyle="--", color="grey", linewidth=0.8)
        if row["precision"] is not None and row["recall"] is not None:
            ax.plot(
                row["recall"], row["precision"], "o", color="tab:red", markersize=6, clip_on=False
            )
        ax.set_title(
            f"{ENGLISH_NAMES[k]}\nAP {row['average_precision']:.3f} (n={row['support']})",
            fontsize=10,
        )
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
    return _save(fig, path)


def plot_reliability(
    y: np.ndarray, raw: np.ndarray, calibrated: np.ndarray, n_bins: int, path: Path, title: str
) -> Path:
    """Observed frequency against mean probability per bin, before and after calibration."""

    fig = _figure(13, 5.5)
    left, right = fig.subplots(1, 2)
    left.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8, label="perfect")
    width = 1.0 / n_bins
    for offset, (name, probs, colour) in enumerate(
        (("before", raw, "tab:orange"), ("after", calibrated, "tab:blue"))
    ):
        bins = reliability_bins(y, probs, n_bins)
        used = bins["count"] > 0
        ece = expected_calibration_error(y, probs, n_bins)
        left.plot(
            bins["confidence"][used],
            bins["frequency"][used],
            "o-",
            color=colour,
            label=f"{name} calibration (ECE {ece:.3f})",
        )
        right.bar(
            bins["edges"][:-1] + width * (0.25 + 0.5 * offset),
            bins["count"],
            width=width / 2,
            color=colour,
            label=name,
        )
    left.set_xlim(0, 1)
    left.set_ylim(0, 1)
    left.set_xlabel("Mean predicted probability in bin")
    left.set_ylabel("Observed fraction of positive labels")
    left.set_title("Reliability (all image x condition cells)")
    left.legend(loc="upper left")
    right.set_yscale("log")
    right.set_xlim(0, 1)
    right.set_xlabel("Predicted probability")
    right.set_ylabel("Label cells per bin (log scale)")
    right.set_title("How many predictions fall in each bin")
    right.legend()
    fig.suptitle(title, fontsize=14)
    return _save(fig, path)


def write_plots(
    run_dir: Path, y: np.ndarray, raw: np.ndarray, calibrated: np.ndarray, metrics: dict
) -> dict[str, Path]:
    """All four PNGs into ``run_dir``; returns {name: path}."""
    split = metrics["split"]
    n = metrics["n_images"][split]
    banner = " (DEMO: synthetic data)" if metrics.get("demo") else ""
    per = metrics["at_tuned"]["per_condition"]
    cm = np.asarray(metrics["confusion_matrix"]["matrix"])
    paths = {name: Path(run_dir) / file for name, file in PLOT_FILES.items()}
    plot_confusion_matrix(
        cm,
        paths["confusion_matrix"],
        f"Top-1 confusion matrix, {split} split ({int(cm.sum())} single-label images){banner}",
    )
    plot_roc_curves(
        y,
        calibrated,
        per,
        paths["roc_curves"],
        f"ROC curve per condition, {split} split ({n} images){banner}",
    )
    plot_pr_curves(
        y,
        calibrated,
        per,
        paths["pr_curves"],
        f"Precision-recall per condition, {split} split ({n} images); "
        f"red dot = tuned threshold; dashed = share of positives{banner}",
    )
    plot_reliability(
        y,
        raw,
        calibrated,
        metrics["calibration"]["n_bins"],
        paths["reliability"],
        f"Calibration on the {split} split, temperatures fitted on val{banner}",
    )
    return paths


# --------------------------------------------------------------------------- report
def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.2f}%"


def _f3(x) -> str:
    return "—" if x is None else f"{x:.3f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _headline(at5: dict, tuned: dict) -> list[str]:
    rows = [
        (
            "Element-wise binary accuracy (**the original project's metric**)",
            "elementwise_accuracy",
            _pct,
        ),
        (
            'Same metric, all-negative predictor ("no condition" everywhere)',
            "all_negative_elementwise_accuracy",
            _pct,
        ),
        (
            "Exact-match (subset) accuracy: every label of the image right",
            "exact_match_accuracy",
            _pct,
        ),
        (
            "Top-1 accuracy: most probable = true condition (single-label images)",
            "top1_accuracy",
            _pct,
        ),
        ("Hamming loss (share of label cells wrong)", "hamming_loss", _f3),
    ]
    table = [[label, fmt(at5[key]), fmt(tuned[key])] for label, key, fmt in rows]
    for avg in ("macro", "micro"):
        for name in ("precision", "recall", "f1"):
            table.append(
                [
                    f"{avg.capitalize()} {name.replace('f1', 'F1')}",
                    _f3(at5[avg][name]),
                    _f3(tuned[avg][name]),
                ]
            )
    for avg in ("macro", "micro"):
        for name, label in (("average_precision", "average precision"), ("roc_auc", "ROC AUC")):
            value = _f3(at5[avg][name])
            table.append([f"{avg.capitalize()} {label} (threshold-free)", value, value])
    return _table(["metric", "at 0.5", "at tuned thresholds"], table)


def _per_condition(at5: dict, tuned: dict) -> list[str]:
    rows = []
    for key in KEYS:
        a, t = at5["per_condition"][key], tuned["per_condition"][key]
        rows.append(
            [
                t["name"],
                str(t["support"]),
                f"{tuned['thresholds'][key]:.3f}",
                _f3(t["precision"]),
                _f3(t["recall"]),
                _f3(t["f1"]),
                _f3(a["precision"]),
                _f3(a["recall"]),
                _f3(a["f1"]),
                _f3(t["average_precision"]),
                _f3(t["roc_auc"]),
            ]
        )
    return _table(
        [
            "condition",
            "support",
            "tuned threshold",
            "precision",
            "recall",
            "F1",
            "precision @0.5",
            "recall @0.5",
            "F1 @0.5",
            "average precision",
            "ROC AUC",
        ],
        rows,
    )


def _calibration(metrics: dict) -> list[str]:
    cal = metrics["calibration"]
    before, after = cal["before"], cal["after"]
    lines = _table(
        ["", "before (raw sigmoid)", "after (temperature scaling)"],
        [
            [
                f"Expected calibration error ({cal['n_bins']} bins, all label cells)",
                _f3(before["ece"]),
                _f3(after["ece"]),
            ],
            ["Brier score (all label cells)", _f3(before["brier"]), _f3(after["brier"])],
            [
                "Top-1 accuracy (single-label images)",
                _pct(before["top1_accuracy"]),
                _pct(after["top1_accuracy"]),
            ],
        ],
    )
    lines += [
        "",
        "Per condition (temperature T: calibrated p = sigmoid(logit(p) / T); "
        "T > 1 softens over-confident outputs):",
        "",
    ]
    lines += _table(
        ["condition", "T", "ECE before", "ECE after", "Brier before", "Brier after"],
        [
            [
                name,
                f"{metrics['temperature'][key]:.3f}",
                _f3(before["per_condition"][key]["ece"]),
                _f3(after["per_condition"][key]["ece"]),
                _f3(before["per_condition"][key]["brier"]),
                _f3(after["per_condition"][key]["brier"]),
            ]
            for key, name in zip(KEYS, ENGLISH_NAMES, strict=True)
        ],
    )
    return lines


def render_report(metrics: dict, files: dict[str, Path]) -> str:
    """report.md text from the metrics.json sections."""
    split, scheme = metrics["split"], metrics["split_scheme"]
    at5, tuned = metrics["at_0.5"], metrics["at_tuned"]
    n = metrics["n_images"]

    out = [f"# Evaluation of `{metrics['run']}`", ""]
    if metrics.get("demo"):
        out += [
            "> **Demo model on synthetic data.** These numbers show that the pipeline works; "
            "they say nothing about recognising real scalp conditions.",
            "",
        ]
    out += [
        f"- Split evaluated: **{split}**, {n[split]} images "
        f"({at5['n_single_label']} with exactly one condition).",
        f"- Split scheme: **{scheme}**: "
        f"{SPLIT_SCHEMES.get(scheme, 'not recorded in the model card')}.",
        f"- Thresholds and temperatures fitted on: **val**, {n['val']} images.",
        f"- Labels: `{metrics['dataset_csv']}`.",
        f"- Evaluated: {metrics['evaluated']}.",
        "",
        "## Headline",
        "",
        *_headline(at5, tuned),
        "",
        f"**Why element-wise accuracy flatters.** The trivial all-negative predictor scores "
        f"{_pct(at5['all_negative_elementwise_accuracy'])} on it here, against our "
        f"{_pct(at5['elementwise_accuracy'])} at 0.5. {FLATTERY}",
        "",
        "Probabilities are calibrated (below) before thresholds apply; temperature scaling "
        "does not move any decision at 0.5, nor the ranking behind AP and ROC AUC.",
        "",
        "## Per condition",
        "",
        *_per_condition(at5, tuned),
        "",
        "`—` marks an undefined value (no positive image, or nothing predicted positive); "
        "macro averages are taken over the conditions where the value is defined.",
    ]
    both = [n for n in tuned["notes"] if n in at5["notes"]]
    notes = [
        *metrics.get("notes", []),
        *both,
        *(f"at tuned thresholds: {n}" for n in tuned["notes"] if n not in both),
        *(f"at 0.5: {n}" for n in at5["notes"] if n not in both),
    ]
    if notes:
        out += ["", "Notes:", "", *[f"- {note}" for note in notes]]
    out += ["", "## Calibration", "", *_calibration(metrics), "", "## Most confused pairs", ""]
    if metrics["most_confused"]:
        out += _table(
            ["true condition", "predicted as", "images", "share of the true condition"],
            [
                [p["true_name"], p["predicted_name"], str(p["count"]), _pct(p["rate"])]
                for p in metrics["most_confused"]
            ],
        )
    else:
        out.append("No single-label image was given a wrong top-1 condition.")
    out += ["", "## Plots", ""]
    titles = {
        "confusion_matrix": "Top-1 confusion matrix (rows true, columns predicted)",
        "roc_curves": "ROC curves per condition",
        "pr_curves": "Precision-recall curves per condition",
        "reliability": "Reliability diagram before and after calibration",
    }
    for name, title in titles.items():
        if name in files:
            out += [f"### {title}", "", f"![{title}]({Path(files[name]).name})", ""]
    commands = metrics["commands"]
    out += ["## How this was produced", "", "```sh"]
    if commands.get("train"):
        out.append(commands["train"])
    out += [commands["evaluate"], "```", ""]
    return "\n".join(out)


def write_report(path: Path, metrics: dict, files: dict[str, Path]) -> Path:
    """Write report.md atomically; returns its path."""
    path = Path(path)
    write_text_atomic(path, render_report(metrics, files))
    return path
