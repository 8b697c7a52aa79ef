"""Near-duplicate groups on real photos, the chain guard, and the grouped split.

Real-photo ground truth:

* fixtures/real_scalp/manifest.csv: ``same_photo_group`` 1-4 are the same photo across
  Kaggle splits. Looking at the photos (aligned side by side, the "Dermnet" watermark lands
  on the same pixels) shows that the manifest's group 0 is not twin-free: the pairs in
  EXTRA_TWINS are the same photo too, and the web photos 45/46 are byte-identical. UNSURE
  lists links that may be the same photo under a large crop.
* fixtures/real_photos: "distinct as far as is known"; the audit found the pairs in
  real_photos_same_photo.csv (beside this file; the benchmark reads it too), and each was
  confirmed by eye (same hair and scale; three pairs sit in different condition folders).
"""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from scalpnet.data import copies, grouping, prepare, synthetic
from scalpnet.data.fingerprints import Scan, scan_strict
from scalpnet.data.preprocess import load_image, to_model_input
from scalpnet.errors import ConfigError
from scalpnet.labels import CONDITIONS, KEYS, NUM_CLASSES

EXTRA_TWINS = [
    ("alopecia_areata_0877", "alopecia_areata_0139"),
    ("alopecia_areata_0942", "alopecia_areata_0724"),
    ("alopecia_areata_0247", "alopecia_areata_0663"),
    ("alopecia_areata_0663", "alopecia_areata_0143"),
    ("alopecia_areata_0538", "alopecia_areata_0150"),
    ("alopecia_areata_0150", "alopecia_areata_0096"),
    ("alopecia_areata_0339", "alopecia_areata_0115"),
    ("web_tinea_capitis_tinea-scalp-47", "web_tinea_capitis_tinea-scalp-68"),
    ("web_alopecia_alopecia-areata-45", "web_alopecia_alopecia-areata-46"),  # same bytes
    ("alopecia_areata_0387", "alopecia_areata_0339"),  # mirrored, zoomed
    # Kaggle images that are crops of a web photo, zoomed 2-3x, mirrored or turned (the
    # watermark shows it); found once verification judged zoomed pairs in the coarser frame
    ("alopecia_areata_0663", "web_alopecia_alopecia-areata-97"),
    ("alopecia_areata_0139", "web_alopecia_alopecia-areata-95"),
    ("alopecia_areata_0387", "web_alopecia_alopecia-areata-98"),
]
UNSURE = [
    ("alopecia_areata_0615", "alopecia_areata_0096"),
    ("alopecia_areata_0119", "alopecia_areata_0877"),
]


def real_same_photo() -> list[tuple[str, str]]:
    """Pairs of real_photos files (condition/file) that are one photo."""
    with open(Path(__file__).with_name("real_photos_same_photo.csv"), newline="") as handle:
        return [(row["first"], row["second"]) for row in csv.DictReader(handle)]


def components(n: int, links: list[tuple[int, int]]) -> np.ndarray:
    """(n,) id of the connected component of each index under ``links``."""
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            x = parent[x]
        return x

    for a, b in links:
        parent[find(b)] = find(a)
    return np.array([find(i) for i in range(n)])


def joined_wrongly(groups: np.ndarray, allowed: np.ndarray) -> list[list[int]]:
    """Groups whose members are not all in one allowed set."""
    return [m.tolist() for m in _members(groups) if len(set(allowed[m].tolist())) > 1]


def _members(groups: np.ndarray) -> list[np.ndarray]:
    return [np.flatnonzero(groups == g) for g in np.unique(groups) if (groups == g).sum() > 1]


# --------------------------------------------------------------------------- real_photos
@pytest.fixture(scope="module")
def real_photos(real_photo_paths):
    """The 214 real photos, as prepare stores them (256 px, median blur), and their names."""
    paths = real_photo_paths
    names = [f"{p.parent.name}/{p.name}" for p in paths]
    return names, [load_image(p) for p in paths]


@pytest.mark.slow
def test_no_two_different_real_photos_are_joined(real_photos):
    names, images = real_photos
    same_photo = real_same_photo()
    scanned = Scan.of_images([to_model_input(rgb, 256) for rgb in images])
    found = grouping.find_groups(scanned)
    allowed = components(len(names), [(names.index(a), names.index(b)) for a, b in same_photo])
    wrong = joined_wrongly(found.groups, allowed)
    assert not wrong, [[names[i] for i in m] for m in wrong]
    # most known same-photo pairs are found from the originals alone (9 of 12 when this was
    # written; the other three are heavier crops, joined at lower thresholds or via copies)
    together = sum(found.groups[names.index(a)] == found.groups[names.index(b)]
                   for a, b in same_photo)  # fmt: skip
    print(f"\nknown same-photo pairs of real_photos found: {together} of {len(same_photo)}")
    assert together >= 8


@pytest.mark.slow
def test_planted_copies_of_real_photos_are_found_for_each_family(real_photos):
    """One copy per family of each of 16 real photos, mixed with 40 other originals."""
    _, images = real_photos
    rng = np.random.default_rng(7)
    chosen = rng.choice(len(images), 56, replace=False)
    with_copies, others = chosen[:16], chosen[16:]
    batch, owner, family = [], [], []
    for k in chosen.tolist():
        batch.append(to_model_input(images[k], 256))
        owner.append(k)
        family.append("")
    for k in with_copies.tolist():
        for name in copies.FAMILIES:
            copy, _ = copies.plant(images[k], np.random.default_rng([k, len(name)]), (name,))
            batch.append(to_model_input(copy, 256))
            owner.append(k)
            family.append(name)
    found = grouping.find_groups(Scan.of_images(batch))
    owner, family = np.array(owner), np.array(family)
    first = {k: i for i, k in enumerate(owner.tolist()) if family[i] == ""}
    report = {}
    for name in copies.FAMILIES:
        mine = np.flatnonzero(family == name)
        report[name] = sum(found.groups[i] == found.groups[first[owner[i]]] for i in mine)
    print("\ncopies grouped with their photo, of 16 per family:", report)
    assert all(found_ >= 14 for found_ in report.values()), report
    assert len(others) and not joined_wrongly(found.groups, owner)


# --------------------------------------------------------------------------- the chain guard
def test_a_chain_of_partial_matches_does_not_join_two_photos(real_photos):
    """B is the left half of A next to the right half of C: A~B and B~C pass a loose
    threshold, A and C are different photos; they must not end in one group."""
    names, images = real_photos
    a = to_model_input(images[names.index("Psoriasis/psoriasis-scalp-69.jpg")], 256)
    c = to_model_input(images[names.index("Tinea Capitis/tinea-scalp-8.jpg")], 256)
    b = np.concatenate([a[:, :128], c[:, 128:]], axis=1)
    scanned = Scan.of_images([a, b, c])
    loose = 0.3
    found = grouping.find_groups(scanned, threshold=loose, neighbours=2, workers=1)
    score = {tuple(p): s for p, s in zip(found.pairs.tolist(), found.scores, strict=True)}
    assert score[0, 1] >= loose and score[1, 2] >= loose, score
    assert score.get((0, 2), 0.0) < loose, score
    assert found.groups[0] != found.groups[2]
    assert found.refused == 1


def test_two_crops_that_share_nothing_still_join_the_photo_they_came_from(real_photos):
    """L and R are the top-left and bottom-right quarters of photo A, zoomed back to its
    size: each verifies against A, and L and R share no pixel. Under the alignment their
    links imply, the pair L-R cannot be judged, which must not count against the merge."""
    names, images = real_photos
    a = to_model_input(images[names.index("Psoriasis/psoriasis-scalp-69.jpg")], 256)
    left, right = to_model_input(a[:128, :128], 256), to_model_input(a[128:, 128:], 256)
    found = grouping.find_groups(Scan.of_images([a, left, right]), neighbours=2, workers=1)
    assert found.groups[0] == found.groups[1] == found.groups[2], found.scores
    assert found.refused == 0
    assert all(found.anchor_match.values())


# --------------------------------------------------------------------------- real_scalp
def real_manifest(real_scalp_dir: Path) -> list[dict]:
    with open(real_scalp_dir / "manifest.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_real_scalp_documented_groups_are_whole_and_nothing_else_merges(real_scalp_dir):
    rows = real_manifest(real_scalp_dir)
    found = grouping.find_groups(scan_strict([real_scalp_dir / r["file"] for r in rows]))
    documented = np.array([int(r["same_photo_group"]) for r in rows])
    for g in range(1, 5):
        parts = set(found.groups[documented == g].tolist())
        assert len(parts) == 1, f"same_photo_group {g} split into {len(parts)} groups"
    stems = [Path(r["file"]).stem for r in rows]
    links = [(a, b) for a, b in itertools.combinations(range(len(rows)), 2)
             if documented[a] > 0 and documented[a] == documented[b]]  # fmt: skip
    links += [(stems.index(a), stems.index(b)) for a, b in EXTRA_TWINS + UNSURE]
    wrong = joined_wrongly(found.groups, components(len(rows), links))
    assert not wrong, [[rows[i]["file"] for i in m] for m in wrong]
    # every group is consistent: its members match its anchor
    for g, (checked, matching) in found.consistency().items():
        assert matching == checked, (g, checked, matching)


def test_bad_settings_are_config_errors():
    scanned = Scan.of_images([np.zeros((64, 64, 3), np.uint8)] * 2)
    for change in (
        {"threshold": 1.5},
        {"threshold": 0.0},
        {"neighbours": 0},
        {"word_neighbours": 0},
        {"workers": 0},
    ):
        with pytest.raises(ConfigError):
            grouping.find_groups(scanned, **change)


# --------------------------------------------------------------------------- grouped splits
def test_group_split_keeps_groups_whole_and_proportions():
    rng = np.random.default_rng(0)
    n = 2400
    labels = np.eye(NUM_CLASSES, dtype=np.uint8)[rng.integers(0, NUM_CLASSES, n)]
    groups = np.arange(n)
    groups[:900] = np.arange(900) // 3  # 300 groups of three
    groups[900:960] = 300 + np.arange(60) // 6  # ten groups of six
    for g in np.unique(groups):  # a photo's copies share its label
        labels[groups == g] = labels[groups == g][0]
    splits = np.array(grouping.group_split(groups, labels, seed=5))
    for g in np.unique(groups):
        assert len(set(splits[groups == g])) == 1
    for c in range(NUM_CLASSES):
        has = labels[:, c] == 1
        for name, ratio in zip(grouping.SPLITS, (0.8, 0.1, 0.1), strict=True):
            assert abs((splits[has] == name).sum() - ratio * has.sum()) <= 3, (c, name)
    assert grouping.group_split(groups, labels, seed=5) == splits.tolist()
    assert grouping.group_split(groups, labels, seed=6) != splits.tolist()
    no_val = grouping.group_split(groups, labels, ratios=(0.9, 0.0, 0.1), seed=5)
    assert "val" not in no_val


def test_identical_pixels_always_share_a_group():
    rgb = np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    flat = np.full((64, 64, 3), 128, np.uint8)  # no keypoints: only the digest can join
    found = grouping.find_groups(Scan.of_images([flat, rgb, flat.copy()]), workers=1)
    assert found.groups[0] == found.groups[2] != found.groups[1]


def make_raw_with_copies(root: Path, per_class: int = 10, with_copies: int = 4) -> dict[str, str]:
    """Class folders of synthetic JPEGs; the first ``with_copies`` photos per class get two
    planted copies (a turn + crop, a greyscale turn). Returns file name -> original's name."""
    owner = {}
    for condition, c in enumerate(CONDITIONS):
        folder = root / c.english
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            rgb = synthetic.make_image(condition, np.random.default_rng([condition, k]), (300, 300))
            name = f"{c.key}_{k:03d}"
            variants = {name: rgb}
            if k < with_copies:
                cut = round(0.92 * len(rgb))
                variants[f"{name}_copy1"] = copies.turn(rgb[:cut, :cut], 1 + k % 7)
                grey = np.repeat(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[:, :, None], 3, 2)
                variants[f"{name}_copy2"] = copies.turn(grey, (3 + k) % 8)
            for file, image in variants.items():
                cv2.imwrite(str(folder / f"{file}.jpg"), image[:, :, ::-1],
                            [cv2.IMWRITE_JPEG_QUALITY, 90])  # fmt: skip
                owner[f"{file}.jpg"] = name
    return owner


def read_labels(csv_path: Path) -> list[dict]:
    with open(csv_path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_prepare_grouped_split_is_leak_free_stratified_and_seeded(tmp_path):
    raw = tmp_path / "raw"
    owner = make_raw_with_copies(raw)
    config = prepare.PrepareConfig(raw, tmp_path / "out", image_size=256, split="grouped", seed=3)
    result = prepare.prepare_dataset(config, progress=False)
    assert result.split_scheme == "grouped"
    assert json.loads(result.report_path.read_text())["split_scheme"] == "grouped"
    rows = read_labels(result.csv_path)
    assert "group" in rows[0]
    by_file = {Path(r["source"]).name: r for r in rows}
    # planted copies join their original's group; originals never merge
    group_of = {file: row["group"] for file, row in by_file.items()}
    planted = [file for file in owner if file != f"{owner[file]}.jpg"]
    found = sum(group_of[file] == group_of[f"{owner[file]}.jpg"] for file in planted)
    assert found >= 0.95 * len(planted), f"{found} of {len(planted)} copies grouped"
    originals = [file for file in owner if file == f"{owner[file]}.jpg"]
    assert len({group_of[file] for file in originals}) == len(originals)
    # no group spans splits
    split_of_group: dict[str, set[str]] = {}
    for row in rows:
        split_of_group.setdefault(row["group"], set()).add(row["split"])
    assert all(len(s) == 1 for s in split_of_group.values())
    # per condition: 14 images (4 groups of 3 + 6 singles) -> 11.2 : 1.4 : 1.4, within 2
    for key in KEYS:
        mine = [r["split"] for r in rows if r[key] == "1"]
        for name, ratio in zip(grouping.SPLITS, (0.8, 0.1, 0.1), strict=True):
            assert abs(mine.count(name) - ratio * len(mine)) <= 2, (key, name, mine)
    # seeded: the same seed gives the same split, another seed another one
    again = prepare.prepare_dataset(
        prepare.PrepareConfig(raw, tmp_path / "again", image_size=256, split="grouped", seed=3),
        progress=False,
    )
    assert [(r["path"], r["split"]) for r in read_labels(again.csv_path)] == [
        (r["path"], r["split"]) for r in rows
    ]
    other = grouping.assign_grouped_splits(
        [result.csv_path.parent / r["path"] for r in rows],
        np.array([[int(r[k]) for k in KEYS] for r in rows]),
        seed=4,
    )[0]
    assert other != [r["split"] for r in rows]
