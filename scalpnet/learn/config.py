"""What a training run is: its settings, its phases and its fingerprint.

Phases (see :func:`plan_phases`):

* pretrained weights: ``head`` (backbone frozen, BatchNorm in inference mode) at
  ``head_lr``, then ``finetune`` (backbone unfrozen, BatchNorm kept frozen unless
  ``train_bn``) at the lower ``finetune_lr``;
* ``weights="none"``: one ``scratch`` phase training the whole network, BatchNorm
  included, at ``head_lr`` for ``head_epochs + finetune_epochs`` epochs (a frozen
  random backbone has nothing worth protecting and learns nothing on its own).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scalpnet.errors import ConfigError
from scalpnet.learn import distributed

PRECISIONS = (None, "mixed_float16", "mixed_bfloat16")
SCRATCH_BN_MOMENTUM = 0.9  # BatchNorm momentum when training from scratch
BFLOAT16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo names


def cpu_has_bfloat16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether the CPU computes bfloat16 natively (AVX512-BF16 or AMX; read from Linux's
    cpuinfo, so False elsewhere). Without it TensorFlow emulates bfloat16, slower than
    float32; with it mixed_bfloat16 trains faster (README, "The first run")."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    flags = {
        flag
        for line in text.splitlines()
        if line.startswith("flags")
        for flag in line.partition(":")[2].split()
    }
    return any(flag in flags for flag in BFLOAT16_CPU_FLAGS)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides how a model is trained (recorded in the model card).

    Attributes:
        out_dir: the run folder to write (and to resume from).
        image_size: side S of the processed images (the pipeline never resizes).
        batch_size: images per step on each replica (device); a step of a distributed run
            takes ``batch_size x replicas`` images (the global batch).
        head_epochs / finetune_epochs: epochs per phase (upper bounds: early stopping).
        head_lr / finetune_lr: peak learning rates (cosine decay within a phase).
        dropout: before the sigmoid head.
        weights: "imagenet", "none", or a local ResNet50 no-top weights file.
        precision: None, "mixed_float16" or "mixed_bfloat16" (GPUs); the head stays float32.
        jit: compile the train step with XLA.
        seed: Python, NumPy, TensorFlow, shuffle and augmentation seed.
        patience: early-stopping patience (epochs without improvement of ``monitor``).
        monitor: history column that picks the best epoch ("val_auc", "val_loss", ...).
        train_bn: also train BatchNorm layers when fine-tuning pretrained weights.
        augment: random flips/rotation/zoom/contrast/brightness on the training split.
        cache: keep decoded images in memory after the first epoch.
        deterministic: ``tf.config.experimental.enable_op_determinism()`` (slower).
        demo: the run is the synthetic demo; the card says so.
        verbose: Keras progress output (0 silent, 1 bars, 2 one line per epoch).
        strategy: "none", "mirrored" (local GPUs) or "multiworker" (machines named by
            ``TF_CONFIG``); see :mod:`scalpnet.learn.distributed`.
        devices: which devices "mirrored" uses ("gpu:N", "0,1", or "cpu:N" to split the
            CPU for tests); None for all local GPUs.
        lr_scaling: how learning rates grow with the replicas: "linear" (x replicas),
            "sqrt" or "none".
    """

    out_dir: Path = Path("runs/run")
    image_size: int = 256
    batch_size: int = 32
    head_epochs: int = 5
    finetune_epochs: int = 30
    head_lr: float = 1e-3
    finetune_lr: float = 1e-5
    dropout: float = 0.3
    weights: str = "imagenet"
    precision: str | None = None
    jit: bool = False
    seed: int = 42
    patience: int = 10
    monitor: str = "val_auc"
    train_bn: bool = False
    augment: bool = True
    cache: bool = False
    deterministic: bool = False
    demo: bool = False
    verbose: int | str = "auto"
    strategy: str = "none"
    devices: str | None = None
    lr_scaling: str = "linear"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (paths as strings)."""
        return {
            k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()
        }


# Fields that do not change what is trained: a run may be resumed with other values.
_NOT_FINGERPRINTED = ("out_dir", "verbose")


@dataclass(frozen=True)
class Phase:
    """One ``fit`` of the plan: which layers train, for how long, at what rate."""

    name: str  # "head" | "finetune" | "scratch"
    epochs: int
    lr: float
    train_backbone: bool
    train_bn: bool


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` leaves behind."""

    run_dir: Path
    best_epoch: int  # counted from 1
    val_metrics: dict[str, float]  # the saved model on the validation split
    resumed: bool = False  # continued a killed run
    already_complete: bool = False  # the run folder was already finished; nothing trained
    epochs_run: int = 0
    phases: list[dict] = field(default_factory=list)
    # False on a non-chief worker of a multi-worker run: the chief wrote run_dir.
    chief: bool = True


# --------------------------------------------------------------------------- plan
def check_config(config: TrainConfig) -> None:
    """Raise ConfigError for settings that cannot work."""
    if config.precision not in PRECISIONS:
        raise ConfigError(
            "precision must be one of none, mixed_float16, mixed_bfloat16; "
            f"got {config.precision!r}"
        )
    if config.batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {config.batch_size}")
    if config.head_epochs < 0 or config.finetune_epochs < 0:
        raise ConfigError(
            f"epochs must be >= 0, got head {config.head_epochs}, finetune {config.finetune_epochs}"
        )
    if config.head_epochs + config.finetune_epochs < 1:
        raise ConfigError("at least one epoch of training is needed")
    if config.patience < 1:
        raise ConfigError(f"patience must be at least 1, got {config.patience}")
    for name, lr in (("head", config.head_lr), ("fine-tuning", config.finetune_lr)):
        if not 0 < lr < 1:  # also refuses NaN
            raise ConfigError(f"the {name} learning rate must be in (0, 1), got {lr}")
    if not 0 <= config.dropout < 1:
        raise ConfigError(f"dropout must be in [0, 1), got {config.dropout}")
    if config.strategy not in distributed.STRATEGIES:
        raise ConfigError(
            f"strategy must be one of {', '.join(distributed.STRATEGIES)}; got {config.strategy!r}"
        )
    distributed.lr_factor(config.lr_scaling, 1)  # raises ConfigError for an unknown rule
    if not config.monitor.startswith("val_"):
        raise ConfigError(
            f"monitor must be a validation metric such as val_auc, got {config.monitor!r}"
        )


def pretrained(config: TrainConfig) -> bool:
    """True when the backbone starts from ImageNet or a weights file, not from random."""
    return str(config.weights).lower() != "none"


def plan_phases(config: TrainConfig, lr_factor: float = 1.0) -> list[Phase]:
    """The phases to run, in order (see the module docstring).

    ``lr_factor`` multiplies the learning rates (see :func:`scalpnet.learn.distributed.lr_factor`).
    """
    head_lr, finetune_lr = config.head_lr * lr_factor, config.finetune_lr * lr_factor
    if not pretrained(config):
        epochs = config.head_epochs + config.finetune_epochs
        return [Phase("scratch", epochs, head_lr, train_backbone=True, train_bn=True)]
    phases = []
    if config.head_epochs:
        phases.append(Phase("head", config.head_epochs, head_lr, False, False))
    if config.finetune_epochs:
        phases.append(Phase("finetune", config.finetune_epochs, finetune_lr, True, config.train_bn))
    return phases


def monitor_mode(monitor: str) -> str:
    """ "min" for losses, "max" for the other metrics."""
    return "min" if monitor.endswith("loss") else "max"


def fingerprint(config: TrainConfig, csv_path: str | Path) -> str:
    """A hash of what is trained on what: equal for the same command, whatever the run folder."""
    fields = {k: v for k, v in config.to_dict().items() if k not in _NOT_FINGERPRINTED}
    fields["csv"] = str(Path(csv_path).resolve())
    blob = json.dumps(fields, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
