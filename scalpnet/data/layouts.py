"""Where the labelled images of an input are: the three dataset layouts ScalpNet reads.

:func:`discover` recognises the Kaggle layout (``train/ val/ test/<Class>/*.jpg``, with
val spelled val, valid or validation), a flat folder of class folders, and a CSV of image
paths with one 0/1 column per condition (multi-label) or one label column. It returns
:class:`Item` values (source path, a stable key, (10,) 0/1 labels, the split the input
assigns) and the files it had to skip with the reason. Used by ``prepare`` and by the
leakage audit (``audit``), so both read a dataset the same way.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from scalpnet.data.preprocess import IMAGE_KINDS
from scalpnet.errors import DatasetError
from scalpnet.labels import ENGLISH_NAMES, KEYS, NUM_CLASSES, find_condition

SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".heic", ".heif"}
)

_SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val", "dev": "val",
    "test": "test", "testing": "test",
}  # fmt: skip
_PATH_COLUMNS = (
    "path",
    "file",
    "filename",
    "file_name",
    "filepath",
    "file_path",
    "image",
    "image_path",
    "img",
    "img_path",
)
_LABEL_COLUMNS = ("label", "labels", "class", "condition", "conditions", "diagnosis")
_RESERVED_COLUMNS = {"split", "source", "group", *_LABEL_COLUMNS}
_JUNK_FILES = {"thumbs.db", "desktop.ini"}


@dataclass(frozen=True)
class Item:
    """One labelled source image found in the input."""

    source: Path  # absolute path of the raw file
    key: str  # its path relative to the dataset root (posix); names the output file
    labels: tuple[int, ...]  # (10,) 0/1 in labels.KEYS order
    split: str | None = None  # the split the input assigns, if any


@dataclass(frozen=True)
class Discovery:
    """The labelled images an input holds, and the files that could not be used."""

    root: Path  # the dataset root (for a CSV: its folder)
    layout: str  # "kaggle" | "folders" | "csv"
    items: list[Item]
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def skipped_lines(skipped: list[tuple[Path, str]], report: Path, shown: int = 5) -> list[str]:
    """The lines a CLI prints about the files it skipped: the first ``shown`` with why, how
    many more, and the report that lists them all (none when nothing was skipped)."""
    lines = [f"  skipped {path}: {reason}" for path, reason in skipped[:shown]]
    if len(skipped) > shown:
        lines.append(f"  ... and {len(skipped) - shown} more")
    if skipped:
        lines.append(f"every skipped file and why: {report}")
    return lines


# --------------------------------------------------------------------------- discovery
def _visible(path: Path | str) -> bool:
    name = Path(path).name
    return not name.startswith(".") and name != "__MACOSX"


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and _visible(p))


def _one_hot(index: int) -> tuple[int, ...]:
    return tuple(int(i == index) for i in range(NUM_CLASSES))


def _unknown_folder(folder: Path) -> DatasetError:
    return DatasetError(
        f"unknown class folder '{folder}'; expected one of: {', '.join(ENGLISH_NAMES)} "
        "(case, spaces and underscores do not matter)"
    )


def _class_images(
    folder: Path, root: Path, split: str | None, exclude: Path | None
) -> tuple[list[Item], list[tuple[Path, str]]]:
    """Every image under one class folder (nested folders included) and the files it skipped."""
    index = find_condition(folder.name)
    if index is None:
        raise _unknown_folder(folder)
    items, skipped = [], []
    for path in sorted(folder.rglob("*")):
        if exclude is not None and path.is_relative_to(exclude):
            continue
        if not path.is_file() or not all(_visible(p) for p in path.relative_to(root).parts):
            continue
        if path.name.lower() in _JUNK_FILES:
            continue
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            skipped.append((path, f"not an image file extension ({path.suffix or 'none'})"))
            continue
        items.append(Item(path, path.relative_to(root).as_posix(), _one_hot(index), split))
    return items, skipped


def images_in(folder: Path) -> list[Path]:
    """Every image file under ``folder`` by its extension (nested folders included; hidden
    files and folders skipped), sorted."""
    return [
        path
        for path in sorted(folder.rglob("*"))
        if path.is_file()
        and path.suffix.lower() in IMAGE_EXTENSIONS
        and all(_visible(part) for part in path.relative_to(folder).parts)
    ]


def _loose_files(folder: Path) -> list[tuple[Path, str]]:
    return [
        (p, "not inside a class folder")
        for p in sorted(folder.iterdir())
        if p.is_file() and _visible(p) and p.suffix.lower() in IMAGE_EXTENSIONS
    ]


def _find_root(folder: Path) -> Path:
    """Step into a lone wrapper folder (e.g. ``archive/Hair Diseases - Final/``)."""
    for _ in range(3):
        subdirs = _subdirs(folder)
        names = [p.name for p in subdirs]
        known = any(n.casefold() in _SPLIT_ALIASES or find_condition(n) is not None for n in names)
        if known or len(subdirs) != 1 or _loose_files(folder):
            return folder
        folder = subdirs[0]
    return folder


def discover(data: Path, exclude: Path | None = None) -> Discovery:
    """Find the labelled images in a Kaggle folder, a folder of class folders, or a CSV.

    Args:
        data: the dataset folder (or a wrapper folder holding just it), or a CSV file.
        exclude: a folder inside ``data`` to ignore (e.g. an output folder).

    Raises:
        DatasetError: missing path, unknown class folder, malformed CSV, or no images.
    """
    data = Path(data).expanduser()
    if data.is_file():
        if data.suffix.lower() != ".csv":
            raise DatasetError(
                f"'{data}' is a file but not a CSV; expected a dataset folder "
                "(train/ val/ test/ or class folders) or a CSV of image paths and labels"
            )
        found = _discover_csv(data.resolve())
    elif data.is_dir():
        found = _discover_folder(_find_root(data.resolve()), exclude)
    else:
        raise DatasetError(
            f"no such dataset folder or CSV: '{data}' (expected e.g. "
            "'Hair Diseases - Final' with train/ val/ test/ inside)"
        )
    if not found.items:
        raise DatasetError(
            f"no images found in '{data}'; expected class folders named like "
            f"{ENGLISH_NAMES[0]!r} holding image files ({IMAGE_KINDS})"
        )
    return found


def _discover_folder(root: Path, exclude: Path | None) -> Discovery:
    subdirs = [p for p in _subdirs(root) if exclude is None or not p.is_relative_to(exclude)]
    split_dirs = [p for p in subdirs if p.name.casefold() in _SPLIT_ALIASES]
    items, skipped = [], _loose_files(root)
    if split_dirs:
        for other in subdirs:
            if other not in split_dirs:
                raise DatasetError(
                    f"'{root}' mixes split folders ({', '.join(p.name for p in split_dirs)}) "
                    f"with '{other.name}/', which is not a split this program knows (train/, "
                    "val/ or valid/ or validation/, test/); move or remove "
                    f"'{other}', or point --data at the folder that holds only "
                    "train/ val/ test/"
                )
        seen: dict[str, Path] = {}
        for split_dir in split_dirs:
            split = _SPLIT_ALIASES[split_dir.name.casefold()]
            if split in seen:
                raise DatasetError(
                    f"'{root}' has two {split} folders: '{seen[split].name}' and '{split_dir.name}'"
                )
            seen[split] = split_dir
            skipped += _loose_files(split_dir)
            for folder in _subdirs(split_dir):
                found, bad = _class_images(folder, root, split, exclude)
                items += found
                skipped += bad
        return Discovery(root, "kaggle", items, skipped)
    for folder in subdirs:
        found, bad = _class_images(folder, root, None, exclude)
        items += found
        skipped += bad
    return Discovery(root, "folders", items, skipped)


def _parse_flag(value: str, where: str) -> int:
    text = value.strip().casefold()
    if text in {"1", "1.0", "true", "yes"}:
        return 1
    if text in {"0", "0.0", "false", "no", ""}:
        return 0
    raise DatasetError(f"{where}: expected 0 or 1, got {value!r}")


def _parse_names(value: str, where: str) -> tuple[int, ...]:
    """'Psoriasis' or 'head lice; psoriasis' -> (10,) 0/1."""
    flags = [0] * NUM_CLASSES
    for name in filter(None, (n.strip() for n in re.split(r"[;|]", value))):
        index = find_condition(name)
        if index is None:
            raise DatasetError(
                f"{where}: unknown condition {name!r}; expected one of: {', '.join(ENGLISH_NAMES)}"
            )
        flags[index] = 1
    return tuple(flags)


def _discover_csv(csv_path: Path) -> Discovery:
    """Rows of a CSV: a path column, optional split, and the labels as one 0/1 column per
    condition (multi-label) or as one column of condition names (``label``; ';' between
    several)."""
    import pandas as pd  # only this input needs pandas

    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise DatasetError(f"could not read '{csv_path}' as a CSV: {exc}") from None
    lower = {str(c).strip().casefold(): c for c in table.columns}
    path_column = next((lower[n] for n in _PATH_COLUMNS if n in lower), None)
    if path_column is None:
        raise DatasetError(
            f"'{csv_path}' has no image path column; expected one named "
            f"{' or '.join(repr(n) for n in _PATH_COLUMNS[:3])} (columns: {list(table.columns)})"
        )
    condition_columns: dict[int, str] = {}
    for column in table.columns:
        name = str(column).strip()
        if column == path_column or name.casefold() in _RESERVED_COLUMNS:
            continue
        index = find_condition(name)
        if index is None:
            continue
        if index in condition_columns:
            raise DatasetError(
                f"'{csv_path}': columns {condition_columns[index]!r} and {column!r} both "
                f"name the condition {ENGLISH_NAMES[index]!r}"
            )
        condition_columns[index] = column
    label_column = next((lower[n] for n in _LABEL_COLUMNS if n in lower), None)
    if not condition_columns and label_column is None:
        raise DatasetError(
            f"'{csv_path}' has no condition columns; expected 0/1 columns named like "
            f"{', '.join(KEYS)}, or one 'label' column of condition names "
            f"(columns: {list(table.columns)})"
        )
    split_column = lower.get("split")
    root = csv_path.parent
    items, skipped, seen = [], [], set()
    for row_number, row in enumerate(table.to_dict("records"), start=2):
        where = f"'{csv_path.name}' line {row_number}"
        text = str(row[path_column]).strip()
        if not text:
            raise DatasetError(f"{where}: empty image path")
        source = Path(text).expanduser()
        source = Path(os.path.abspath(source if source.is_absolute() else root / source))
        if condition_columns:
            labels = tuple(
                _parse_flag(
                    str(row[condition_columns[i]]), f"{where}, column {condition_columns[i]!r}"
                )
                if i in condition_columns
                else 0
                for i in range(NUM_CLASSES)
            )
        else:
            labels = _parse_names(str(row[label_column]), where)
        split = None
        if split_column is not None:
            split = _SPLIT_ALIASES.get(str(row[split_column]).strip().casefold())
            if split is None:
                raise DatasetError(
                    f"{where}: split {row[split_column]!r} is not one of train, val, test"
                )
        key = Path(
            os.path.normpath(source.relative_to(root) if source.is_relative_to(root) else source)
        ).as_posix()
        if key in seen:
            skipped.append((source, "listed twice in the CSV"))
            continue
        seen.add(key)
        if not source.is_file():
            skipped.append((source, "file not found"))
            continue
        items.append(Item(source, key, labels, split))
    return Discovery(root, "csv", items, skipped)
