"""The leakage audit: the CLI verb, its report files, its messages."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pytest

from scalpnet import cli, files
from scalpnet.data import audit, grouping
from scalpnet.errors import DatasetError
from scalpnet.labels import KEYS, NUM_CLASSES


def real_manifest(real_scalp_dir: Path) -> list[dict]:
    with open(real_scalp_dir / "manifest.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def make_kaggle_from_fixtures(real_scalp_dir: Path, root: Path) -> Path:
    """The real photos in the Kaggle layout, each in its manifest split ('unknown': train)."""
    for row in real_manifest(real_scalp_dir):
        split = {"": "train", "unknown": "train"}.get(row["kaggle_split"], row["kaggle_split"])
        folder = root / split / row["label"]
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(real_scalp_dir / row["file"], folder / row["file"])
    return root


def write_labels_csv(real_scalp_dir: Path, groups: set[str], path: Path) -> Path:
    """A labels.csv of the fixture's photos in the known same-photo ``groups``."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "split", *KEYS])
        for r in real_manifest(real_scalp_dir):
            if r["same_photo_group"] in groups:
                writer.writerow([str(real_scalp_dir / r["file"]), r["kaggle_split"], 1,
                                 *[0] * (NUM_CLASSES - 1)])  # fmt: skip
    return path


def test_audit_cli_on_a_kaggle_folder(tmp_path, real_scalp_dir, capsys):
    data = make_kaggle_from_fixtures(real_scalp_dir, tmp_path / "Hair Diseases - Final")
    notes = next((data / "train").iterdir()) / "notes.jpg"
    notes.write_text("not a photo")
    out = tmp_path / "audit"
    assert (
        cli.main(["audit", "--data", str(data), "--out", str(out), "--word-neighbours", "12"]) == 0
    )
    printed = capsys.readouterr().out
    assert "Test images with a near-duplicate in train" in printed
    # the unreadable file is named with why, and where the full list is
    assert f"skipped {notes}: " in printed and "not an image" in printed
    assert f"every skipped file and why: {out / 'audit.json'}" in printed
    report = json.loads((out / "audit.json").read_text())
    assert report["images"] == 73 and report["threshold"] == grouping.DEFAULT_THRESHOLD
    assert [s["path"] for s in report["skipped"]] == [str(notes)]
    assert (report["neighbours"], report["word_neighbours"]) == (grouping.DEFAULT_NEIGHBOURS, 12)
    leak = report["leakage"]
    # documented: group 2 (0123 train / 0134 test), 3 (0322 / 0803), 4 (0398 train / 0960 val)
    assert leak["split_pairs"]["train-test"]["test_images_with_twin_in_train"] >= 2
    assert leak["split_pairs"]["train-val"]["val_images_with_twin_in_train"] >= 1
    assert leak["test_with_twin_in_train"]["of"] == 4
    assert leak["per_condition"]["psoriasis"]["with_twin_in_other_split"] == 0
    assert report["exact_duplicates"]["same_bytes"]["sets"] == 1
    with open(out / "groups.csv", newline="") as handle:
        groups = list(csv.DictReader(handle))
    assert list(groups[0]) == ["path", "group", "split", "label", "anchor", "matches_anchor"]
    assert all(r["matches_anchor"] in {"", "1"} for r in groups)  # every group consistent
    assert sum(r["anchor"] == "1" for r in groups) == report["groups"]["count"]
    group_of = {Path(r["path"]).stem: r["group"] for r in groups}
    for a, b in [("0123", "0134"), ("0322", "0803"), ("0398", "0960")]:
        assert group_of[f"alopecia_areata_{a}"] == group_of[f"alopecia_areata_{b}"]
    assert (out / "contact_sheet.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_audit_on_a_labels_csv(tmp_path, real_scalp_dir):
    csv_path = write_labels_csv(real_scalp_dir, {"2", "3", "4"}, tmp_path / "labels.csv")
    result = audit.audit(audit.AuditConfig(data=csv_path, out=tmp_path / "a"))
    assert result.report["groups"]["count"] == 3
    assert result.report["leakage"]["images_with_twin_in_other_split"] == 6
    written = audit.write_audit(result, tmp_path / "a")
    assert set(written) == {"groups_csv", "contact_sheet", "audit_json"}
    text = audit.summary(result, written["audit_json"])
    assert "6 / 6" in text
    assert re.search(r"\b1 (groups|images|links|sets)\b", text) is None, text  # "1 group"


def test_a_full_disk_shows_the_findings_then_one_line_and_leaves_no_half_file(
    tmp_path, real_scalp_dir, capsys, monkeypatch
):
    csv_path = write_labels_csv(real_scalp_dir, {"2", "3"}, tmp_path / "labels.csv")
    out = tmp_path / "audit"
    monkeypatch.setenv(files.FAULT_ENV, "enospc:contact_sheet:1")
    monkeypatch.setattr(files, "_fault_counts", {})
    assert cli.main(["audit", "--data", str(csv_path), "--out", str(out)]) == 2
    printed, err = capsys.readouterr()
    assert "Near-duplicate groups: 2 holding 4 images" in printed  # what it found is shown
    assert err.strip() == err.strip().splitlines()[0] and "Traceback" not in err
    assert err.startswith(f"error: the disk is full: saving in '{out}'")
    assert list(out.iterdir()) == []  # the sheet went first: nothing half-written, no temp


def test_audit_cli_mistakes_are_one_line(tmp_path, capsys):
    assert cli.main(["audit", "--data", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
    with pytest.raises(DatasetError):
        audit.audit(audit.AuditConfig(data=tmp_path / "missing"))
    data = tmp_path / "Hair Diseases - Final"
    (data / "train").mkdir(parents=True)
    assert cli.main(["audit", "--data", str(data), "--out", str(data / "audit")]) == 2
    err = capsys.readouterr().err.strip()
    assert "is inside the dataset" in err and "\n" not in err
    assert [p.name for p in data.iterdir()] == ["train"]  # nothing written into it


def test_audit_help_quotes_the_real_defaults(capsys):
    with pytest.raises(SystemExit):
        cli.main(["audit", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"default {grouping.DEFAULT_THRESHOLD}," in text
    assert f"default {grouping.DEFAULT_NEIGHBOURS};" in text
    assert f"default {grouping.DEFAULT_WORD_NEIGHBOURS};" in text
    assert "reports/audit" in text


def test_audit_refuses_an_unknown_split_folder_and_says_what_to_do(tmp_path, capsys):
    for split in ("train", "test", "unknown"):
        folder = tmp_path / "data" / split / "Psoriasis"
        folder.mkdir(parents=True)
        (folder / "a.jpg").write_bytes(b"")
    assert cli.main(["audit", "--data", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "'unknown/'" in err
    assert "move or remove" in err and "point --data at" in err
