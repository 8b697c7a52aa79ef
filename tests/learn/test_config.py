"""Training settings: phases, impossible settings, the fingerprint."""

from __future__ import annotations

from dataclasses import replace

import pytest

from scalpnet.errors import ConfigError
from scalpnet.learn.config import (
    TrainConfig,
    check_config,
    cpu_has_bfloat16,
    fingerprint,
    monitor_mode,
    plan_phases,
)


def test_phases_for_pretrained_and_scratch_weights():
    config = TrainConfig(weights="imagenet", head_epochs=3, finetune_epochs=7)
    head, finetune = plan_phases(config)
    assert (head.name, head.epochs, head.lr, head.train_backbone) == ("head", 3, 1e-3, False)
    assert (finetune.name, finetune.epochs, finetune.lr) == ("finetune", 7, 1e-5)
    assert finetune.train_backbone and not finetune.train_bn
    assert plan_phases(replace(config, train_bn=True))[1].train_bn
    assert [p.name for p in plan_phases(replace(config, head_epochs=0))] == ["finetune"]
    (scratch,) = plan_phases(replace(config, weights="none"))
    assert (scratch.name, scratch.epochs, scratch.lr) == ("scratch", 10, 1e-3)
    assert scratch.train_backbone and scratch.train_bn


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"precision": "float8"}, "precision"),
        ({"batch_size": 0}, "batch size"),
        ({"head_epochs": 0, "finetune_epochs": 0}, "at least one epoch"),
        ({"monitor": "auc"}, "validation metric"),
        ({"patience": 0}, "patience"),
        ({"head_lr": 0.0}, "head learning rate"),
        ({"finetune_lr": float("nan")}, "fine-tuning learning rate"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_impossible_settings_are_refused(change, message):
    with pytest.raises(ConfigError, match=message):
        check_config(replace(TrainConfig(), **change))


def test_fingerprint_ignores_the_run_folder_but_not_what_is_trained(tmp_path):
    config = TrainConfig(out_dir=tmp_path / "a")
    csv = tmp_path / "labels.csv"
    same = fingerprint(replace(config, out_dir=tmp_path / "b", verbose=0), csv)
    assert fingerprint(config, csv) == same
    assert fingerprint(replace(config, seed=1), csv) != same
    assert fingerprint(config, tmp_path / "other.csv") != same
    assert monitor_mode("val_loss") == "min" and monitor_mode("val_auc") == "max"


@pytest.mark.parametrize(
    ("flags", "native"),
    [
        ("fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni", True),
        ("fpu sse2 avx2 amx_bf16 amx_tile", True),
        ("fpu sse2 avx2 avx512f avx512_vnni", False),
    ],
)
def test_bfloat16_support_is_read_from_the_cpu_flags(tmp_path, flags, native):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: x\nflags\t\t: {flags}\n\n")
    assert cpu_has_bfloat16(cpuinfo) is native


def test_no_cpuinfo_means_no_bfloat16(tmp_path):
    assert cpu_has_bfloat16(tmp_path / "missing") is False
