"""Dataset preparation on small synthetic datasets in every input layout."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import scalpnet.data
from scalpnet import cli, files
from scalpnet.data import layouts, prepare, synthetic
from scalpnet.data.preprocess import preprocess_image
from scalpnet.errors import ConfigError, DatasetError, DiskFullError
from scalpnet.labels import CONDITIONS, ENGLISH_NAMES, KEYS, NUM_CLASSES

REPO = Path(__file__).resolve().parents[2]
SIZE = 32  # processed side: small keeps these tests fast
COLUMNS = ["path", "split", "source", *KEYS]


def write_jpeg(path: Path, condition: int, seed: int) -> None:
    """A small synthetic JPEG of ``condition`` with a seed-dependent size."""
    rng = np.random.default_rng(seed)
    size = (int(rng.integers(40, 90)), int(rng.integers(40, 90)))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(synthetic.make_image(condition, rng, size)).save(path, quality=90)


def make_kaggle(root: Path, counts=(8, 1, 1), split_names=("train", "val", "test")) -> Path:
    """``root/{train,val,test}/<Class>/<key>_NNNN.jpg`` with ``counts`` images per class."""
    for condition, c in enumerate(CONDITIONS):
        number = 0
        for split, n in zip(split_names, counts, strict=True):
            for _ in range(n):
                number += 1
                path = root / split / c.english / f"{c.key}_{number:04d}.jpg"
                write_jpeg(path, condition, 100 * condition + number)
    return root


def make_folders(root: Path, per_class) -> Path:
    """``root/<Class>/<key>_NNNN.jpg``; ``per_class`` is one count or one per condition."""
    counts = [per_class] * NUM_CLASSES if isinstance(per_class, int) else per_class
    for condition, (c, n) in enumerate(zip(CONDITIONS, counts, strict=True)):
        for number in range(1, n + 1):
            write_jpeg(root / c.english / f"{c.key}_{number:04d}.jpg", condition, number)
    return root


@pytest.fixture(scope="module")
def kaggle_template(tmp_path_factory) -> Path:
    return make_kaggle(tmp_path_factory.mktemp("template") / "Hair Diseases - Final")


@pytest.fixture
def kaggle(tmp_path, kaggle_template) -> Path:
    """A fresh copy of a 100-image Kaggle-layout dataset (8/1/1 per class)."""
    return Path(shutil.copytree(kaggle_template, tmp_path / "raw" / "Hair Diseases - Final"))


def run(data: Path, out: Path, **kwargs) -> prepare.PrepareResult:
    config = prepare.PrepareConfig(data=data, out=out, **{"image_size": SIZE, **kwargs})
    return prepare.prepare_dataset(config, progress=False)


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames), list(reader)


def fingerprint(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``folder`` (and every folder): content hash and mtime."""
    result = {}
    for path in sorted(folder.rglob("*")):
        key = path.relative_to(folder).as_posix()
        if path.is_dir():
            result[key] = ("dir", 0)
        else:
            result[key] = (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
    return result


def label_of(row: dict[str, str]) -> list[int]:
    return [int(row[k]) for k in KEYS]


# --------------------------------------------------------------------------- Kaggle layout
def test_kaggle_layout_keeps_the_shipped_split(kaggle, tmp_path):
    result = run(kaggle, tmp_path / "out")
    assert result.layout == "kaggle" and result.split_scheme == "shipped"
    assert result.totals == {"train": 80, "val": 10, "test": 10}
    for key in KEYS:
        assert [result.counts[s][key] for s in prepare.SPLITS] == [8, 1, 1]
    assert result.processed == 100 and result.reused == 0 and result.skipped == []

    columns, rows = read_csv(result.csv_path)
    assert result.csv_path == tmp_path / "out" / "labels.csv"
    assert columns == COLUMNS
    assert len(rows) == 100
    for row in rows:
        source = Path(row["source"])
        assert source.is_relative_to(kaggle) and source.is_file()
        assert row["split"] == source.parts[len(kaggle.parts)]  # train/val/test folder
        labels = label_of(row)
        assert sum(labels) == 1
        assert CONDITIONS[labels.index(1)].english == source.parent.name
        png = result.csv_path.parent / row["path"]  # relative to the CSV
        assert not Path(row["path"]).is_absolute() and png.suffix == ".png"
        assert row["split"] not in Path(row["path"]).parts  # names never depend on the split
    # train rows first, then val, then test
    assert [r["split"] for r in rows] == ["train"] * 80 + ["val"] * 10 + ["test"] * 10


def test_processed_pngs_are_exactly_preprocess_image_output(kaggle, tmp_path):
    result = run(kaggle, tmp_path / "out")
    _, rows = read_csv(result.csv_path)
    for row in rows[::7]:
        png = np.asarray(Image.open(result.csv_path.parent / row["path"]))
        assert png.shape == (SIZE, SIZE, 3) and png.dtype == np.uint8
        np.testing.assert_array_equal(png, preprocess_image(row["source"], SIZE))  # RGB, not BGR


def test_report_json(kaggle, tmp_path):
    result = run(kaggle, tmp_path / "out")
    report = json.loads(result.report_path.read_text())
    assert result.report_path == tmp_path / "out" / "prepare_report.json"
    assert report["split_scheme"] == "shipped"
    assert report["image_size"] == SIZE
    assert report["images"] == 100
    assert report["totals"] == {"train": 80, "val": 10, "test": 10}
    assert report["counts"]["val"]["head_lice"] == 1
    assert report["skipped"] == [] and report["skipped_count"] == 0
    assert report["elapsed_s"] >= 0 and report["layout"] == "kaggle"


@pytest.mark.parametrize("val_name", ["valid", "validation", "VAL"])
def test_val_folder_aliases(tmp_path, val_name):
    data = make_kaggle(tmp_path / "data", (1, 1, 1), ("train", val_name, "Test"))
    result = run(data, tmp_path / "out")
    assert result.totals == {"train": 10, "val": 10, "test": 10}


def test_a_wrapper_folder_around_the_dataset_is_stepped_into(kaggle, tmp_path):
    wrapper = kaggle.parent  # raw/ holds only "Hair Diseases - Final"
    result = run(wrapper, tmp_path / "out")
    assert result.layout == "kaggle" and sum(result.totals.values()) == 100


def test_unknown_class_folder_names_the_folder_and_the_expected_names(kaggle, tmp_path):
    write_jpeg(kaggle / "train" / "Dandruff" / "x.jpg", 0, 0)
    with pytest.raises(DatasetError) as info:
        run(kaggle, tmp_path / "out")
    message = str(info.value)
    assert "Dandruff" in message
    assert all(name in message for name in ENGLISH_NAMES)
    assert not (tmp_path / "out" / "labels.csv").exists()


def test_folder_names_are_matched_loosely(tmp_path):
    for condition, name in enumerate(KEYS):  # snake_case folder names
        write_jpeg(tmp_path / "data" / name.upper() / "a.jpg", condition, condition)
    result = run(tmp_path / "data", tmp_path / "out")
    assert sum(result.totals.values()) == 10


# --------------------------------------------------------------------------- flat folders
def test_flat_folders_get_a_stratified_seeded_8_1_1_split(tmp_path):
    sizes = [10, 7, 13, 23, 5, 1, 2, 31, 9, 11]
    data = make_folders(tmp_path / "data", sizes)
    result = run(data, tmp_path / "out", seed=3)
    assert result.layout == "folders" and result.split_scheme == "random"
    for key, n in zip(KEYS, sizes, strict=True):
        got = [result.counts[s][key] for s in prepare.SPLITS]
        assert sum(got) == n
        for count, ratio in zip(got, (0.8, 0.1, 0.1), strict=True):
            assert abs(count - n * ratio) < 1, (key, n, got)

    _, first = read_csv(result.csv_path)
    _, again = read_csv(run(data, tmp_path / "out", seed=3).csv_path)
    assert first == again  # seeded
    _, other = read_csv(run(data, tmp_path / "out2", seed=4).csv_path)
    assert {r["path"]: r["split"] for r in first} != {r["path"]: r["split"] for r in other}


def test_random_split_of_a_kaggle_dataset_reuses_every_processed_image(kaggle, tmp_path):
    _, a = read_csv(run(kaggle, tmp_path / "out").csv_path)
    resplit = run(kaggle, tmp_path / "out", split="random", seed=1)
    assert resplit.split_scheme == "random"
    assert resplit.processed == 0 and resplit.reused == 100  # the split is only a column
    _, b = read_csv(resplit.csv_path)
    assert {r["path"] for r in a} == {r["path"] for r in b}
    assert {r["path"]: r["split"] for r in a} != {r["path"]: r["split"] for r in b}


# --------------------------------------------------------------------------- CSV input
def write_label_csv(tmp_path: Path, with_split: bool) -> Path:
    images = tmp_path / "photos"
    rows = []
    for i in range(12):
        write_jpeg(images / f"p{i:02d}.jpg", i % NUM_CLASSES, i)
        row = {"image": f"photos/p{i:02d}.jpg", "patient": f"id{i}", "Head Lice": "0",
               "psoriasis": "0", "Alopecia_Areata": "0"}  # fmt: skip
        if i % 3 == 0:
            row["Head Lice"] = "1"
        if i % 2 == 0:
            row["psoriasis"] = "1"
        if i == 5:
            row["Alopecia_Areata"] = "1"
        if with_split:
            row["split"] = ["train", "valid", "test"][i % 3]
        rows.append(row)
    rows.append({**rows[0], "image": "photos/missing.jpg"})
    path = tmp_path / "labels_in.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.mark.parametrize("with_split", [True, False])
def test_multi_label_csv_input(tmp_path, with_split):
    source_csv = write_label_csv(tmp_path, with_split)
    result = run(source_csv, tmp_path / "out")
    assert result.layout == "csv"
    assert result.split_scheme == ("shipped" if with_split else "random")
    assert [(p.name, r) for p, r in result.skipped] == [("missing.jpg", "file not found")]
    columns, rows = read_csv(result.csv_path)
    assert columns == COLUMNS and len(rows) == 12
    by_name = {Path(r["source"]).name: r for r in rows}
    both = by_name["p00.jpg"]  # head lice + psoriasis
    assert label_of(both) == [0, 0, 0, 1, 0, 0, 1, 0, 0, 0]
    assert Path(both["path"]).parts[:2] == ("images", "multi")
    assert label_of(by_name["p01.jpg"]) == [0] * 10  # no condition: allowed
    assert Path(by_name["p01.jpg"]["path"]).parts[:2] == ("images", "none")
    assert label_of(by_name["p05.jpg"]) == [1, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    assert (
        result.counts["train"]["psoriasis"]
        + result.counts["val"]["psoriasis"]
        + result.counts["test"]["psoriasis"]
        == 6
    )
    if with_split:
        assert by_name["p01.jpg"]["split"] == "val"  # "valid" normalised
    for row in rows:
        assert (result.csv_path.parent / row["path"]).is_file()


def test_csv_with_a_label_column_of_names_the_real_photo_manifest(real_scalp_dir, tmp_path):
    with (real_scalp_dir / "manifest.csv").open() as handle:
        manifest = list(csv.DictReader(handle))
    before = fingerprint(real_scalp_dir)
    result = run(real_scalp_dir / "manifest.csv", tmp_path / "out")
    assert result.layout == "csv" and result.skipped == []
    assert sum(result.totals.values()) == len(manifest) == 73
    for key, name in zip(KEYS, ENGLISH_NAMES, strict=True):
        expected = sum(row["label"] == name for row in manifest)
        assert sum(result.counts[s][key] for s in prepare.SPLITS) == expected
    assert fingerprint(real_scalp_dir) == before  # read-only fixtures untouched


def test_label_column_with_several_names_and_an_unknown_name(tmp_path):
    write_jpeg(tmp_path / "a.jpg", 0, 0)
    write_jpeg(tmp_path / "b.jpg", 1, 1)
    (tmp_path / "in.csv").write_text("file,label\na.jpg,Head Lice; psoriasis\nb.jpg,\n")
    result = run(tmp_path / "in.csv", tmp_path / "out")
    _, rows = read_csv(result.csv_path)
    by_name = {Path(r["source"]).name: label_of(r) for r in rows}
    assert by_name == {"a.jpg": [0, 0, 0, 1, 0, 0, 1, 0, 0, 0], "b.jpg": [0] * 10}
    (tmp_path / "in.csv").write_text("file,label\na.jpg,Dandruff\n")
    with pytest.raises(DatasetError, match="line 2: unknown condition 'Dandruff'"):
        run(tmp_path / "in.csv", tmp_path / "out")


@pytest.mark.parametrize(
    ("header", "line", "message"),
    [
        ("file_name_typo,psoriasis", "a.jpg,1", "no image path column"),
        ("path,dandruff", "a.jpg,1", "no condition columns"),
        ("path,psoriasis", "a.jpg,2", "line 2, column 'psoriasis': expected 0 or 1, got '2'"),
        ("path,psoriasis,split", "a.jpg,1,holdout", "is not one of train, val, test"),
        ("path,psoriasis,Psoriasis", "a.jpg,1,1", "both name the condition"),
    ],
)
def test_malformed_csv_is_a_dataset_error(tmp_path, header, line, message):
    write_jpeg(tmp_path / "a.jpg", 0, 0)
    path = tmp_path / "in.csv"
    path.write_text(f"{header}\n{line}\n")
    with pytest.raises(DatasetError, match=message.replace("(", r"\(")):
        run(path, tmp_path / "out")


# --------------------------------------------------------------------------- re-runs
def test_rerun_processes_nothing_and_changes_nothing(kaggle, tmp_path):
    out = tmp_path / "out"
    first = run(kaggle, out)
    before = fingerprint(out / "images")
    csv_bytes = first.csv_path.read_bytes()
    second = run(kaggle, out)
    assert second.processed == 0 and second.reused == 100
    assert fingerprint(out / "images") == before  # not even rewritten
    assert second.csv_path.read_bytes() == csv_bytes
    assert second.counts == first.counts


def test_changed_added_and_removed_sources_are_followed(kaggle, tmp_path):
    out = tmp_path / "out"
    run(kaggle, out)
    changed = kaggle / "train" / "Psoriasis" / "psoriasis_0002.jpg"
    write_jpeg(changed, 9, 999)  # new content, new mtime
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))
    removed = kaggle / "test" / "Folliculitis" / "folliculitis_0010.jpg"
    removed.unlink()
    write_jpeg(kaggle / "val" / "Head Lice" / "head_lice_0100.jpg", 3, 5)

    result = run(kaggle, out)
    assert result.processed == 2 and result.reused == 98
    assert result.counts["test"]["folliculitis"] == 0 and result.counts["val"]["head_lice"] == 2
    _, rows = read_csv(result.csv_path)
    by_source = {Path(r["source"]): r for r in rows}
    png = np.asarray(Image.open(out / by_source[changed]["path"]))
    np.testing.assert_array_equal(png, preprocess_image(changed, SIZE))
    assert len(list((out / "images").rglob("*.png"))) == 100  # the removed one's PNG is gone


def test_changing_the_image_size_reprocesses_everything(kaggle, tmp_path):
    run(kaggle, tmp_path / "out")
    result = prepare.prepare_dataset(
        prepare.PrepareConfig(kaggle, tmp_path / "out", image_size=24), progress=False
    )
    assert result.processed == 100
    _, rows = read_csv(result.csv_path)
    assert Image.open(tmp_path / "out" / rows[0]["path"]).size == (24, 24)


def test_interrupted_run_leftovers_are_cleaned_and_finished(kaggle, tmp_path):
    # What a killed run leaves: some PNGs never written, a half-written temp file, and a
    # state file from the last checkpoint that lacks the newest PNGs.
    out = tmp_path / "out"
    run(kaggle, out)
    state_path = out / prepare.STATE_NAME
    state = json.loads(state_path.read_text())
    names = sorted(state["entries"])
    for name in names[:5]:
        (out / name).unlink()  # not written yet
    for name in names[5:8]:
        del state["entries"][name]  # written after the last checkpoint
    state_path.write_text(json.dumps(state))
    partial = out / (names[9] + ".1234-5678.tmp")
    partial.write_bytes(b"\x89PNG half")
    (out / "labels.csv.1234-5678.tmp").write_text("path,spl")

    result = run(kaggle, out)
    assert result.processed == 8 and result.reused == 92
    assert not list(out.rglob("*.tmp"))
    _, rows = read_csv(result.csv_path)
    assert len(rows) == 100
    for row in rows:
        assert Image.open(out / row["path"]).size == (SIZE, SIZE)


KILLABLE = """
import sys, time
from pathlib import Path
from scalpnet.data import prepare
original = prepare.process_image
def slow(*args):
    time.sleep(0.04)
    return original(*args)
prepare.process_image = slow
config = prepare.PrepareConfig(
    Path(sys.argv[1]), Path(sys.argv[2]), image_size=32, workers=1, executor="threads"
)
prepare.prepare_dataset(config, progress=False)
"""


def test_a_run_killed_mid_way_finishes_on_the_next_run(kaggle, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", KILLABLE, str(kaggle), str(out)], env=env)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and child.poll() is None:
            pngs = list((out / "images").rglob("*.png")) if out.exists() else []
            if len(pngs) >= 20 and (out / prepare.STATE_NAME).exists():
                break
            time.sleep(0.05)
        assert child.poll() is None, "the child finished before it could be killed"
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait()
    assert not (out / "labels.csv").exists()
    done_before = len(list((out / "images").rglob("*.png")))
    assert 20 <= done_before < 100

    result = run(kaggle, out)
    assert 0 < result.processed <= 100 - 20 + 2  # the checkpointed work was kept
    assert result.processed + result.reused == 100
    _, rows = read_csv(result.csv_path)
    assert len(rows) == 100
    for row in rows[::9]:
        png = np.asarray(Image.open(out / row["path"]))
        np.testing.assert_array_equal(png, preprocess_image(row["source"], SIZE))
    assert not list(out.rglob("*.tmp"))


# --------------------------------------------------------------------------- bad files
def test_a_full_disk_is_one_line_keeps_every_whole_image_and_the_next_run_finishes(
    kaggle, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "out"
    monkeypatch.setenv(files.FAULT_ENV, "enospc:.png:30")  # the 30th image meets a full disk
    monkeypatch.setattr(files, "_fault_counts", {})
    kept_so_far = r"the (\d+) of 100 images prepared so far are kept"
    with pytest.raises(DiskFullError, match=kept_so_far) as caught:
        run(kaggle, out, executor="threads")
    kept = int(re.search(kept_so_far, str(caught.value)).group(1))
    assert 0 < kept < 30
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]  # no half-written PNG
    monkeypatch.setattr(files, "_fault_counts", {})
    argv = ["prepare", "--data", str(kaggle), "--out", str(out), "--image-size", str(SIZE)]
    assert cli.main([*argv, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: the disk is full: saving in ") and "\n" not in err
    assert "run the same command again to finish" in err
    monkeypatch.delenv(files.FAULT_ENV)
    finished = run(kaggle, out)
    assert finished.reused >= kept and finished.reused + finished.processed == 100
    assert len(read_csv(finished.csv_path)[1]) == 100


def test_corrupt_and_non_image_files_are_skipped_and_reported(kaggle, tmp_path):
    folder = kaggle / "train" / "Lichen Planus"
    good = (folder / "lichen_planus_0001.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (folder / "notes.jpg").write_text("a text file named .jpg\n")
    (folder / "empty.png").write_bytes(b"")
    (folder / "readme.txt").write_text("about these photos\n")
    (folder / ".DS_Store").write_bytes(b"\0\0")  # hidden files are not data

    result = run(kaggle, tmp_path / "out")
    reasons = {p.name: r for p, r in result.skipped}
    assert set(reasons) == {"truncated.jpg", "notes.jpg", "empty.png", "readme.txt"}
    assert "corrupt or truncated" in reasons["truncated.jpg"]
    assert "not an image" in reasons["notes.jpg"]
    assert "empty" in reasons["empty.png"]
    assert "extension" in reasons["readme.txt"]
    assert result.totals["train"] == 80 and result.counts["train"]["lichen_planus"] == 8
    report = json.loads(result.report_path.read_text())
    assert report["skipped_count"] == 4
    assert {Path(s["path"]).name for s in report["skipped"]} == set(reasons)
    assert all(s["reason"] for s in report["skipped"])
    text = prepare.summary(result)
    assert "4 skipped" in text and "notes.jpg" in text and "prepare_report.json" in text


def test_the_raw_dataset_is_never_modified(kaggle, tmp_path):
    (kaggle / "train" / "Psoriasis" / "bad.jpg").write_text("not an image")
    before = fingerprint(kaggle)
    run(kaggle, tmp_path / "out")
    run(kaggle, tmp_path / "out", split="random")
    assert fingerprint(kaggle) == before


def test_all_files_unreadable_is_an_error(tmp_path):
    folder = tmp_path / "data" / "Psoriasis"
    folder.mkdir(parents=True)
    (folder / "a.jpg").write_text("text")
    with pytest.raises(DatasetError, match="none of the 1 images"):
        run(tmp_path / "data", tmp_path / "out")


# --------------------------------------------------------------------------- user mistakes
def test_missing_path_is_a_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match="no such dataset folder or CSV"):
        run(tmp_path / "nope", tmp_path / "out")


def test_empty_folder_is_a_dataset_error(tmp_path):
    (tmp_path / "data").mkdir()
    with pytest.raises(DatasetError, match="no images found"):
        run(tmp_path / "data", tmp_path / "out")


def test_a_file_that_is_not_a_csv_is_a_dataset_error(tmp_path):
    (tmp_path / "x.zip").write_bytes(b"PK")
    with pytest.raises(DatasetError, match="not a CSV"):
        run(tmp_path / "x.zip", tmp_path / "out")


def test_output_inside_the_dataset_is_refused(kaggle):
    with pytest.raises(DatasetError, match="inside the dataset"):
        run(kaggle, kaggle / "processed")
    assert not (kaggle / "processed").exists()


@pytest.mark.parametrize(
    "change",
    [
        {"split": "stratified"},
        {"image_size": 8},
        {"workers": 0},
        {"ratios": (0.8, -0.1, 0.3)},
        {"executor": "gpu"},
    ],
)
def test_bad_settings_are_config_errors(kaggle, tmp_path, change):
    with pytest.raises(ConfigError):
        run(kaggle, tmp_path / "out", **change)


# --------------------------------------------------------------------------- grouped split
def test_grouped_split_calls_grouping_on_the_processed_images(kaggle, tmp_path, monkeypatch):
    calls = []

    def assign_grouped_splits(image_paths, labels, ratios, seed, threshold=0.9):
        calls.append((list(image_paths), np.array(labels), ratios, seed, threshold))
        n = len(image_paths)
        groups = np.arange(n) // 2  # pairs
        splits = [prepare.SPLITS[g % 3] for g in groups]
        return splits, groups

    fake = types.ModuleType("scalpnet.data.grouping")
    fake.assign_grouped_splits = assign_grouped_splits
    monkeypatch.setitem(sys.modules, "scalpnet.data.grouping", fake)
    monkeypatch.setattr(scalpnet.data, "grouping", fake, raising=False)

    out = tmp_path / "out"
    result = run(kaggle, out, split="grouped", seed=9, dedupe_threshold=0.75)
    assert result.split_scheme == "grouped"
    [(paths, labels, ratios, seed, threshold)] = calls
    assert (seed, threshold, tuple(ratios)) == (9, 0.75, (0.8, 0.1, 0.1))
    assert labels.shape == (100, NUM_CLASSES) and labels.dtype == np.uint8
    assert all(p.suffix == ".png" and p.is_file() and p.is_relative_to(out) for p in paths)
    columns, rows = read_csv(result.csv_path)
    assert columns == ["path", "split", "source", "group", *KEYS]
    by_path = {r["path"]: r for r in rows}
    for i, path in enumerate(paths):
        row = by_path[path.relative_to(out).as_posix()]
        assert int(row["group"]) == i // 2 and row["split"] == prepare.SPLITS[(i // 2) % 3]
        assert label_of(row) == labels[i].tolist()
    assert json.loads(result.report_path.read_text())["split_scheme"] == "grouped"


# --------------------------------------------------------------------------- the summary
def test_splits_left_empty_are_a_warning_that_says_why(tmp_path):
    copies = tmp_path / "copies" / CONDITIONS[0].english
    copies.mkdir(parents=True)
    write_jpeg(copies / "one.jpg", 0, 1)
    for k in range(2, 13):  # 12 copies of one photo: one near-duplicate group
        shutil.copy(copies / "one.jpg", copies / f"copy{k}.jpg")
    grouped = run(tmp_path / "copies", tmp_path / "grouped", split="grouped")
    assert (grouped.groups, grouped.largest_group) == (1, 12)
    assert grouped.totals == {"train": 12, "val": 0, "test": 0}
    warning = "val and test hold no image (its 12 images form 1 near-duplicate group(s)"
    assert f"warning: {warning}" in prepare.summary(grouped)
    report = json.loads(grouped.report_path.read_text())
    assert report["empty_splits"].startswith(warning) and report["largest_group"] == 12
    few = run(make_folders(tmp_path / "few", [2] + [0] * (NUM_CLASSES - 1)), tmp_path / "r")
    assert "(2 images are too few for three splits)" in prepare.summary(few)
    assert prepare.empty_splits(run(make_folders(tmp_path / "ok", 10), tmp_path / "o")) is None


def test_a_condition_with_no_training_image_is_a_warning(tmp_path):
    data = tmp_path / "shipped"
    write_jpeg(data / "train" / CONDITIONS[0].english / "a.jpg", 0, 1)
    write_jpeg(data / "train" / CONDITIONS[0].english / "b.jpg", 0, 2)
    for split, seed in (("val", 3), ("test", 4)):
        write_jpeg(data / split / CONDITIONS[6].english / f"{split}.jpg", 6, seed)
    result = run(data, tmp_path / "out")
    warning = (
        f"{CONDITIONS[6].english} has images in val or test but none in train: a model cannot "
        "learn to recognise it"
    )
    assert f"warning: {warning}" in prepare.summary(result)
    assert json.loads(result.report_path.read_text())["untrained_conditions"].startswith(warning)
    assert (
        prepare.untrained_conditions(run(make_folders(tmp_path / "ok", 10), tmp_path / "o")) is None
    )


def test_summary_lists_every_condition_and_the_totals(kaggle, tmp_path):
    text = prepare.summary(run(kaggle, tmp_path / "out"))
    for name in ENGLISH_NAMES:
        assert name in text
    assert "shipped" in text and "0 skipped" in text and "labels.csv" in text
    images_line = next(line for line in text.splitlines() if line.startswith("images"))
    assert images_line.split()[1:] == ["80", "10", "10", "100"]


def test_discover_is_usable_on_its_own(kaggle):
    found = layouts.discover(kaggle)
    assert found.layout == "kaggle" and len(found.items) == 100
    assert {i.split for i in found.items} == set(prepare.SPLITS)
    buffer = io.StringIO()
    print(found.items[0].key, file=buffer)
    assert buffer.getvalue().startswith(("train/", "val/", "test/"))


def test_worker_processes_write_the_same_files_as_threads(kaggle, tmp_path):
    threads = run(kaggle, tmp_path / "t", executor="threads", workers=2)
    processes = run(kaggle, tmp_path / "p", executor="processes", workers=2)
    assert processes.processed == threads.processed == 100
    assert threads.csv_path.read_text().replace(str(tmp_path / "t"), "") == (
        processes.csv_path.read_text().replace(str(tmp_path / "p"), "")
    )
    a, b = fingerprint(tmp_path / "t" / "images"), fingerprint(tmp_path / "p" / "images")
    assert {k: v[0] for k, v in a.items()} == {k: v[0] for k, v in b.items()}
    assert json.loads(processes.report_path.read_text())["executor"] == "processes"


def test_executor_choice():
    assert prepare.executor_kind("auto") == "threads"
    assert prepare.executor_kind("threads") == "threads"
    assert prepare.executor_kind("processes") == "processes"


def test_files_in_the_output_folder_that_are_not_ours_are_left_alone(kaggle, tmp_path):
    out = tmp_path / "out"
    mine = [out / "images" / "psoriasis" / "holiday.png", out / "images" / "x" / "y-0123456789.png"]
    for path in mine:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"my own picture")
    run(kaggle, out)
    run(kaggle, out)
    assert all(path.read_bytes() == b"my own picture" for path in mine)


def test_an_interrupt_stops_early_and_keeps_the_finished_work(kaggle, tmp_path, monkeypatch):
    calls = []
    original = prepare.process_image

    def interrupted(source, dest, size):
        calls.append(source)
        if len(calls) == 30:
            raise KeyboardInterrupt
        return original(source, dest, size)

    monkeypatch.setattr(prepare, "process_image", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(kaggle, tmp_path / "out", workers=1, executor="threads")
    assert len(calls) < 60  # the queued work was dropped, not finished first
    state = json.loads((tmp_path / "out" / prepare.STATE_NAME).read_text())
    assert 12 <= len(state["entries"]) < 30  # whole tasks (chunks) finished before it
    monkeypatch.setattr(prepare, "process_image", original)
    result = run(kaggle, tmp_path / "out")
    assert result.reused == len(state["entries"]) and result.processed == 100 - result.reused


def test_an_unexpected_decoder_error_skips_that_file_only(kaggle, tmp_path, monkeypatch):
    bad = kaggle / "val" / "Psoriasis" / "psoriasis_0009.jpg"
    original = prepare.preprocess.preprocess_image

    def fragile(source, size):
        if Path(source) == bad:
            raise IndexError("list index out of range")  # e.g. a Pillow plugin on fuzzed data
        return original(source, size)

    monkeypatch.setattr(prepare.preprocess, "preprocess_image", fragile)
    result = run(kaggle, tmp_path / "out")
    assert result.skipped == [(bad, "could not decode it (IndexError: list index out of range)")]
    assert sum(result.totals.values()) == 99
