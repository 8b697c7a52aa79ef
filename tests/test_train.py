"""train.py's demo recipe: its data is written once per recipe, and the card records it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def train_script():
    sys.path.insert(0, str(REPO))
    try:
        import train
    finally:
        sys.path.remove(str(REPO))
    return train


def test_demo_data_is_written_once_per_recipe(train_script, tmp_path):
    folder = tmp_path / "synthetic"
    train_script.make_demo_data(folder, per_class=2, sides=(64, 96))
    first = {p: p.stat().st_mtime_ns for p in folder.rglob("*.jpg")}
    assert len(first) == 20
    train_script.make_demo_data(folder, per_class=2, sides=(64, 96))  # same recipe: untouched
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*.jpg")} == first
    train_script.make_demo_data(folder, per_class=3, sides=(64, 96))  # another: rewritten
    assert len(list(folder.rglob("*.jpg"))) == 30
    assert json.loads((folder / "recipe.json").read_text())["per_class"] == 3


def test_the_demo_recipe_goes_into_the_config_and_the_card(train_script, tmp_path):
    args = train_script.build_parser().parse_args(["--demo"])
    config = train_script.train_config(args, train_script.DEMO_SIZE, tmp_path / "run")
    assert (config.image_size, config.batch_size) == (train_script.DEMO_SIZE, 32)
    assert (config.head_epochs, config.finetune_epochs) == train_script.DEMO_EPOCHS
    assert config.head_lr == train_script.DEMO_LR and config.weights == "none" and config.demo
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "model_card.json").write_text(json.dumps({"name": "run"}))
    train_script.record_demo_recipe(tmp_path / "run", args)
    card = json.loads((tmp_path / "run" / "model_card.json").read_text())
    assert card["name"] == "run"
    recipe = card["demo_recipe"]
    assert recipe["synthetic_images_per_condition"] == train_script.DEMO_PER_CLASS
    assert recipe["drawn_longer_side_px"] == list(train_script.DEMO_SIDES)
