"""The leakage audit: near-duplicate groups across train/val/test, as a report.

``audit`` reads a dataset (any layout ``layouts.discover`` knows), groups near-duplicate
images (``grouping.find_groups``) and measures how the groups straddle the splits, per
split pair and per condition; ``write_audit`` writes audit.json, groups.csv and a contact
sheet; ``summary`` gives the same in a few lines for the CLI.
"""

from __future__ import annotations

import csv
import io
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from scalpnet.data.fingerprints import same, scan
from scalpnet.data.grouping import (
    DEFAULT_NEIGHBOURS,
    DEFAULT_THRESHOLD,
    DEFAULT_WORD_NEIGHBOURS,
    SPLITS,
    DedupeConfig,
    Grouping,
    find_groups,
)
from scalpnet.data.layouts import discover, skipped_lines
from scalpnet.data.preprocess import load_image
from scalpnet.errors import ConfigError, DatasetError
from scalpnet.files import atomic_path, disk_full_as_error, write_json_atomic, write_text_atomic
from scalpnet.labels import ENGLISH_NAMES, KEYS, NUM_CLASSES

SPLIT_PAIRS = (("train", "test"), ("train", "val"), ("val", "test"))


@dataclass(frozen=True)
class AuditConfig:
    """What to audit and how. The CLI maps its flags onto these fields."""

    data: Path  # a Kaggle folder, a folder of class folders, or a labels.csv
    out: Path = Path("reports/audit")
    threshold: float = DEFAULT_THRESHOLD
    neighbours: int = DEFAULT_NEIGHBOURS
    word_neighbours: int = DEFAULT_WORD_NEIGHBOURS
    workers: int | None = None
    sheet_groups: int = 6  # rows in the contact sheet


@dataclass(frozen=True)
class AuditResult:
    """The images audited, their groups, and the leakage they show."""

    data: Path
    root: Path  # paths in groups.csv are relative to this when they can be
    paths: list[Path]  # (N,) images compared
    splits: list[str | None]  # (N,) the split each image is in, if the input has splits
    labels: np.ndarray  # (N, 10) 0/1
    grouping: Grouping
    exact: dict[str, list[list[int]]]  # "same_bytes" / "same_pixels" -> index sets
    skipped: list[tuple[Path, str]]
    elapsed: float  # seconds
    report: dict = field(default_factory=dict)  # the audit.json content


def _label_text(row: np.ndarray) -> str:
    names = [ENGLISH_NAMES[c] for c in np.flatnonzero(row)]
    return " + ".join(names) if names else "(none)"


def _leakage(splits: list[str | None], labels: np.ndarray, grouping: Grouping) -> dict | None:
    """Cross-split statistics: per split pair, per condition, test images with a train twin."""
    if any(s is None for s in splits):
        return None
    split_of = np.array(splits)
    members = grouping.members(min_size=2)
    in_group: dict[int, set[str]] = {}  # image -> the other splits its group reaches
    for m in members:
        present = set(split_of[m].tolist())
        for i in m.tolist():
            in_group[i] = present - {split_of[i]}
    twin_elsewhere = np.array([bool(in_group.get(i)) for i in range(len(splits))], bool)
    pairs = {}
    for a, b in SPLIT_PAIRS:
        spanning = sum(1 for m in members if {a, b} <= set(split_of[m].tolist()))
        a_with_b = sum(1 for i, s in enumerate(splits) if s == a and b in in_group.get(i, ()))
        b_with_a = sum(1 for i, s in enumerate(splits) if s == b and a in in_group.get(i, ()))
        pairs[f"{a}-{b}"] = {
            "groups": spanning,
            f"{a}_images_with_twin_in_{b}": a_with_b,
            f"{b}_images_with_twin_in_{a}": b_with_a,
        }
    per_condition = {}
    for c, key in enumerate(KEYS):
        has = labels[:, c] == 1
        n, k = int(has.sum()), int((has & twin_elsewhere).sum())
        per_condition[key] = {
            "images": n,
            "with_twin_in_other_split": k,
            "share": round(k / n, 4) if n else None,
        }
    n_test = int((split_of == "test").sum())
    test_train = pairs["train-test"]["test_images_with_twin_in_train"]
    return {
        "images_with_twin_in_other_split": int(twin_elsewhere.sum()),
        "groups_spanning_splits": sum(1 for m in members if len(set(split_of[m].tolist())) > 1),
        "split_pairs": pairs,
        "per_condition": per_condition,
        "test_with_twin_in_train": {
            "count": test_train,
            "of": n_test,
            "share": round(test_train / n_test, 4) if n_test else None,
        },
    }


def _build_report(result: AuditResult, config: AuditConfig) -> dict:
    members = result.grouping.members(min_size=2)
    labels_differ = sum(1 for m in members if len({result.labels[i].tobytes() for i in m}) > 1)
    consistency = result.grouping.consistency()
    checked = sum(c for c, _ in consistency.values())
    matching = sum(k for _, k in consistency.values())
    least = [
        {"group": g, "size": int((result.grouping.groups == g).sum()), "checked": c, "matching": k}
        for g, (c, k) in sorted(consistency.items(), key=lambda item: item[1][1] / item[1][0])[:10]
        if k < c
    ]

    def exact(kind: str) -> dict:
        sets = result.exact[kind]
        return {
            "sets": len(sets),
            "images": sum(len(s) for s in sets),
            "examples": [[str(result.paths[i]) for i in s] for s in sets[:20]],
        }

    return {
        "data": str(result.data),
        "images": len(result.paths),
        "skipped": [{"path": str(p), "reason": r} for p, r in result.skipped],
        "threshold": config.threshold,
        "neighbours": config.neighbours,
        "word_neighbours": config.word_neighbours,
        "method": "candidates: low-frequency DCT views of 32x32 grey thumbnails under 8 "
        "rotations/flips, plus SIFT visual words; pair score: SIFT matches of 160x160 detail "
        "views that agree on one pose, one RANSAC affine transform (refined by ECC), correlation "
        "of the aligned fine texture; groups: "
        "links at the threshold, strongest first, two groups merged only when most cross "
        "pairs of their first members match too",
        "groups": {
            "count": len(members),
            "images": int(sum(len(m) for m in members)),
            "largest": len(members[0]) if members else 0,
            "sizes": {str(k): v for k, v in sorted(Counter(len(m) for m in members).items())},
            "with_different_labels": labels_differ,
            "links_refused_by_merge_check": result.grouping.refused,
            "members_checked_against_anchor": checked,
            "members_matching_anchor": matching,
            "least_consistent": least,
        },
        "leakage": _leakage(result.splits, result.labels, result.grouping),
        "exact_duplicates": {kind: exact(kind) for kind in ("same_bytes", "same_pixels")},
        "elapsed_seconds": round(result.elapsed, 2),
        "stage_seconds": result.grouping.seconds,
    }


def audit(config: AuditConfig) -> AuditResult:
    """Find near-duplicate groups in a dataset and measure how they straddle its splits.

    Raises:
        DatasetError: the input is missing or malformed (see ``layouts.discover``), or the
            report would go inside the dataset folder.
    """

    DedupeConfig(
        config.threshold, config.neighbours,
        workers=config.workers, word_neighbours=config.word_neighbours,
    ).check()  # fmt: skip
    data, out = Path(config.data).expanduser(), Path(config.out).expanduser().resolve()
    if data.is_dir() and out.is_relative_to(data.resolve()):
        raise DatasetError(
            f"the report folder '{out}' is inside the dataset '{data}', where the next audit "
            "or prepare would read it as a split or a condition; choose an --out outside it"
        )
    started = time.perf_counter()
    found = discover(Path(config.data))
    items = sorted(found.items, key=lambda item: item.key)
    scanned = scan([item.source for item in items], config.workers)
    ok = [i for i, error in enumerate(scanned.errors) if error is None]
    skipped = list(found.skipped) + [
        (items[i].source, scanned.errors[i]) for i, e in enumerate(scanned.errors) if e is not None
    ]
    readable = scanned.subset(ok)
    grouping = find_groups(
        readable, config.threshold, config.neighbours, config.workers,
        word_neighbours=config.word_neighbours,
    )  # fmt: skip
    result = AuditResult(
        data=Path(config.data),
        root=found.root,
        paths=[items[i].source for i in ok],
        splits=[items[i].split for i in ok],
        labels=np.array([items[i].labels for i in ok], np.uint8).reshape(-1, NUM_CLASSES),
        grouping=grouping,
        exact={
            "same_bytes": same(readable.file_digests),
            "same_pixels": same(readable.pixel_digests),
        },
        skipped=skipped,
        elapsed=time.perf_counter() - started,
    )
    result.report.update(_build_report(result, config))
    return result


def _display_path(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


def _sheet_groups(result: AuditResult, limit: int) -> tuple[list[np.ndarray], str]:
    """The groups the contact sheet shows: the largest that span splits, else the largest."""
    members = result.grouping.members(min_size=2)
    if all(s is not None for s in result.splits):
        crossing = [m for m in members if len({result.splits[i] for i in m}) > 1]
        if crossing:
            return crossing[:limit], "largest near-duplicate groups that span splits"
    return members[:limit], "largest near-duplicate groups"


def _contact_sheet(result: AuditResult, path: Path, limit: int, per_row: int = 8) -> bool:
    """Draw one row per group: thumbnails titled with split and file name. False: no groups."""
    shown, title = _sheet_groups(result, limit)
    if not shown:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(per_row, max(len(m) for m in shown))
    fig, axes = plt.subplots(
        len(shown), cols, figsize=(2.1 * cols + 1.6, 2.5 * len(shown)), squeeze=False
    )
    fig.suptitle(f"{title} (threshold {result.grouping.threshold:.2f})", fontsize=13)
    for row, m in enumerate(shown):
        splits = Counter(str(result.splits[i]) for i in m)
        spread = ", ".join(f"{s} {splits[s]}" for s in (*SPLITS, "None") if s in splits)
        label = f"group {int(result.grouping.groups[m[0]])}\n{len(m)} images\n{spread}"
        axes[row, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=10)
        for col in range(cols):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            if col >= len(m):
                ax.axis("off")
                continue
            i = int(m[col])
            thumb = cv2.resize(
                load_image(result.paths[i], min_size=128), (128, 128), interpolation=cv2.INTER_AREA
            )
            ax.imshow(thumb)
            name = result.paths[i].name
            name = name if len(name) <= 24 else name[:10] + "…" + name[-12:]
            ax.set_title(f"{result.splits[i] or ''}\n{name}", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    try:
        with atomic_path(path) as staged:
            fig.savefig(staged, format="png", dpi=90)
    finally:
        plt.close(fig)
    return True


def write_audit(result: AuditResult, out: Path, sheet_groups: int = 6) -> dict[str, Path]:
    """Write contact_sheet.png, groups.csv (images in groups of 2+) and audit.json into ``out``.

    groups.csv: path, group, split, label, anchor (1 for the group's anchor image) and
    matches_anchor (1/0 when the member was verified against the anchor, empty if not).
    Each file is written whole or not at all; audit.json, which names the others, last.

    Raises:
        ConfigError: ``out`` cannot be made.
        DiskFullError: the disk filled up (no file is left half-written).
    """
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the audit folder '{out}': {exc.strerror}") from None
    with disk_full_as_error(out, None, "no file in it is half-written", "run the audit again"):
        return _write_files(result, out, sheet_groups)


def _write_files(result: AuditResult, out: Path, sheet_groups: int) -> dict[str, Path]:
    written = {}
    sheet = out / "contact_sheet.png"  # the largest: a full disk stops the audit here first
    if _contact_sheet(result, sheet, sheet_groups):
        written["contact_sheet"] = sheet
    else:
        sheet.unlink(missing_ok=True)
    lines = io.StringIO()
    writer = csv.writer(lines, lineterminator="\n")
    writer.writerow(["path", "group", "split", "label", "anchor", "matches_anchor"])
    g = result.grouping
    for m in g.members(min_size=2):
        anchor = g.anchors[int(g.groups[m[0]])]
        for i in m.tolist():
            match = g.anchor_match.get(i)
            writer.writerow([
                _display_path(result.paths[i], result.root), int(g.groups[i]),
                result.splits[i] or "", _label_text(result.labels[i]), int(i == anchor),
                "" if match is None else int(match),
            ])  # fmt: skip
    written["groups_csv"] = write_text_atomic(out / "groups.csv", lines.getvalue())
    report = dict(result.report)
    report["files"] = {k: v.name for k, v in written.items()}
    written["audit_json"] = write_json_atomic(out / "audit.json", report)
    return written


def _share(k: int, n: int) -> str:
    return f"{k} / {n} ({100 * k / n:.1f}%)" if n else f"{k} / 0"


def _count(n: int, noun: str) -> str:
    """3, "group" -> "3 groups"; 1, "group" -> "1 group"."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def summary(result: AuditResult, report: Path) -> str:
    """The audit in a few lines of text, for the CLI; ``report``: where audit.json went."""
    r = result.report
    g = r["groups"]
    lines = [
        f"Audited {_count(r['images'], 'image')} from '{result.data}' in "
        f"{r['elapsed_seconds']:.1f} s "
        f"(threshold {r['threshold']:.2f}, {len(r['skipped'])} skipped).",
        *skipped_lines(result.skipped, report),
        f"Near-duplicate groups: {g['count']} holding {_count(g['images'], 'image')} "
        f"(largest {g['largest']}; {g['with_different_labels']} with mixed labels).",
        f"Consistency: {g['members_matching_anchor']} of {g['members_checked_against_anchor']} "
        f"members checked match their group's anchor; "
        f"{_count(g['links_refused_by_merge_check'], 'link')} refused because the groups they "
        "would join did not match.",
    ]
    leak = r["leakage"]
    if leak is None:
        lines.append("The input has no train/val/test splits: no leakage to measure.")
    else:
        lines.append(
            f"Images with a near-duplicate in another split: "
            f"{_share(leak['images_with_twin_in_other_split'], r['images'])} "
            f"in {_count(leak['groups_spanning_splits'], 'group')}"
        )
        for name, pair in leak["split_pairs"].items():
            a, b = name.split("-")
            lines.append(
                f"  {a}–{b}: {_count(pair['groups'], 'group')}; {a} images with a twin in {b}: "
                f"{pair[f'{a}_images_with_twin_in_{b}']}, {b} images with one in {a}: "
                f"{pair[f'{b}_images_with_twin_in_{a}']}"
            )
        lines.append("Per condition (images with a twin in another split):")
        for key, name in zip(KEYS, ENGLISH_NAMES, strict=True):
            c = leak["per_condition"][key]
            if c["images"]:
                lines.append(f"  {name:<23} {_share(c['with_twin_in_other_split'], c['images'])}")
        t = leak["test_with_twin_in_train"]
        lines.append(f"Test images with a near-duplicate in train: {_share(t['count'], t['of'])}")
    e = r["exact_duplicates"]
    lines.append(
        f"Exact duplicates: {_count(e['same_bytes']['sets'], 'set')} of identical files "
        f"({_count(e['same_bytes']['images'], 'image')}), "
        f"{_count(e['same_pixels']['sets'], 'set')} of identical pixels "
        f"({_count(e['same_pixels']['images'], 'image')})."
    )
    return "\n".join(lines)
