"""Configuration: a tree of dataclasses, loaded from YAML and overridable from the CLI.

``Config`` holds one section per concern (data, model, strategy, loss, optim, train).
Every field has a default, so ``Config()`` is a valid configuration once ``data.root``
is set. ``Config.from_dict`` rejects unknown keys with the list of valid ones, and
``validate`` checks ranges; both raise :class:`~segtune.errors.ConfigError`.

Overrides use dotted keys, e.g. ``apply_overrides(cfg, ["optim.lr=3e-4", "train.epochs=5"])``.
"""

from __future__ import annotations

import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ._registry import did_you_mean
from .errors import ConfigError

__all__ = [
    "DataConfig",
    "ModelConfig",
    "StrategyConfig",
    "LossConfig",
    "OptimConfig",
    "TrainConfig",
    "Config",
    "apply_overrides",
    "parse_overrides",
    "override_dict",
    "budget_overrides",
]

CLASS_WEIGHTS = ("none", "inverse", "median")
SCHEDULES = ("cosine", "poly", "constant")
OPTIMIZERS = ("adamw", "sgd")
LR_SCALING = ("none", "linear", "sqrt")
AUGMENTS = ("full", "flip")


@dataclass
class DataConfig:
    """Where the data is and how it is fed to the model.

    Attributes:
        root: data set folder (holding ``dataset.yaml``, or ``images/`` + ``masks/``),
            or the path of a dataset.yaml file.
        val_fraction: share of training pairs held out for validation when the data set
            has no val split (seeded by ``train.seed``).
        crop_size: side in pixels of the square random crop used in training (a multiple of 32);
            None (default): chosen from the training images' sizes by ``auto``
            (:func:`segtune.strategies.auto.choose_shape`: 384, or less for smaller images).
        scale_min, scale_max: random rescale range applied before the crop (1, 1 = off, the
            default). On CamVid with the head strategy the usual 0.5-2 range (plus colour
            jitter) cost 3-7 mIoU points at 200 steps, and even 0.75-1.25 cost 2-3 points at
            200 and at 1000 steps on 367 images (on 23 images: -2 at 200 steps, +1 at 1000);
            see benchmarks/RESULTS.md. Turn it on when object sizes in use differ from training.
        hflip: random horizontal flip in training.
        color_jitter: strength of brightness/contrast/saturation jitter (0, the default,
            disables it; on CamVid 0.2 cost up to 2 mIoU points at 200 steps and 0.1 gained
            nothing, see benchmarks/RESULTS.md; worth trying when test images differ in
            lighting or camera from the training images).
        augment: ``auto`` (default: ``flip`` when the training images are no larger than a
            384 x 384 crop, else ``full``; :func:`segtune.strategies.auto.choose_shape`),
            ``full`` (random rescale, crop, flip and colour jitter as set above) or
            ``flip``: whole images, no rescale/crop/jitter, each padded bottom/right to the
            training set's largest size (rounded up to a multiple of 32; mask padding is
            ``ignore_index``) and flipped horizontally at random when ``hflip`` is set. With
            the ``head`` strategy, ``flip`` lets the frozen encoder's features be cached
            (``train.cache_features``).
        batch_size: training batch size (per device).
        val_batch_size: evaluation batch size.
        num_workers: data-loader worker processes (0 = load in the main process).
        cache: ``auto`` keeps decoded images in RAM when they fit in ``cache_max_gb``,
            ``ram`` always, ``none`` never.
        cache_max_gb: RAM budget for the decoded-image cache, GiB; also the budget of the
            frozen-encoder feature cache (``train.cache_features``), which goes to disk above it.
        max_train_images, max_val_images: use only the first N (seeded shuffle) pairs; for quick runs.
        skip_bad: train on the usable pairs when check-data finds problems (listed), instead of refusing.
        max_pixels: refuse images larger than this many pixels (Pillow's bomb guard is raised to it).
    """

    root: str | None = None
    val_fraction: float = 0.2
    crop_size: int | None = None
    scale_min: float = 1.0
    scale_max: float = 1.0
    hflip: bool = True
    color_jitter: float = 0.0
    augment: str = "auto"
    batch_size: int = 8
    val_batch_size: int = 4
    num_workers: int = 0
    cache: str = "auto"
    cache_max_gb: float = 4.0
    max_train_images: int | None = None
    max_val_images: int | None = None
    skip_bad: bool = False
    max_pixels: int = 180_000_000


@dataclass
class ModelConfig:
    """Which network and which starting weights.

    Attributes:
        arch: ``unet`` | ``fpn`` | ``deeplabv3plus`` (SMP, on a timm encoder) or
            ``fcn_resnet50`` | ``deeplabv3_resnet50`` | ``lraspp_mobilenet_v3_large`` (torchvision).
        encoder: timm encoder name for SMP architectures (default ImageNet EfficientNet-Lite0),
            or ``smp-<name>`` for one of SMP's own encoders (``smp-vgg16``, ``smp-resnet50``).
        weights: ``imagenet`` (bundled offline weights for EfficientNet-Lite0/1/2; any other
            encoder's from the torch / Hugging Face cache or, when reachable, the network, see
            :mod:`segtune.hub`), ``coco`` (torchvision COCO checkpoints of the torchvision
            architectures, class layer re-initialised), ``none`` (random init), a path to a
            weights file (safetensors or torch state dict; encoder or whole model), or a segtune
            run folder to start from.
    """

    arch: str = "unet"
    encoder: str = "tf_efficientnet_lite0"
    weights: str = "imagenet"


@dataclass
class StrategyConfig:
    """How transfer happens: which parameters train, at which learning rate, when.

    Attributes:
        name: ``auto`` (chosen from a probe of the training data, i.e. the number of images and
            a measured domain shift, by the measured tables in :mod:`segtune.strategies.auto`;
            the choice and why is printed) | ``head`` | ``partial`` | ``full`` | ``discriminative`` | ``gradual`` | ``scratch``.
        freeze_stages: ``partial``: number of encoder stages (from the input side) kept frozen.
        encoder_lr_factor: ``discriminative``: encoder LR = head LR x this factor.
        stage_lr_decay: ``discriminative``: if set, stage k from the top gets factor x decay**k.
        head_epochs: ``gradual``: epochs with only the decoder/head training.
        unfreeze_every: ``gradual``: epochs between unfreezing successive encoder stages (deepest first).
    """

    name: str = "auto"
    freeze_stages: int = 2
    encoder_lr_factor: float = 0.1
    stage_lr_decay: float | None = None
    head_epochs: int = 1
    unfreeze_every: int = 1


@dataclass
class LossConfig:
    """Training loss (all honour the data set's ignore_index).

    Attributes:
        name: ``ce`` | ``dice`` | ``focal`` | ``ce+dice``.
        class_weights: ``none`` | ``inverse`` | ``median`` (from training-mask pixel frequencies;
            with ``ce+dice`` they weight the CE term only, the Dice term is already a macro mean;
            with ``dice`` alone they weight its mean over classes, which hurt inside ce+dice on
            CamVid (not measured for dice alone), so consider pairing
            ``loss.name: dice`` with ``class_weights: none``). Default ``median``: on CamVid it
            lifted the rare classes (Pole, Sign, Fence, Pedestrian, Bicyclist) from IoU 0-17 to
            2-57 and mIoU by 9-10 points at 200 steps (benchmarks/RESULTS.md).
        focal_gamma: focusing parameter of the focal loss.
        dice_weight: weight of the Dice term in ``ce+dice``.
    """

    name: str = "ce+dice"
    class_weights: str = "median"
    focal_gamma: float = 2.0
    dice_weight: float = 1.0


@dataclass
class OptimConfig:
    """Optimiser and learning-rate schedule.

    Attributes:
        optimizer: ``adamw`` | ``sgd`` (momentum 0.9, nesterov).
        lr: learning rate of the decoder/head (encoder groups derive theirs from the strategy);
            ``None`` = the measured default for the strategy and data size (printed).
        weight_decay: the L2 regularisation term: decoupled weight decay with AdamW (each step
            multiplies the weights by ``1 - lr x weight_decay``), the classic L2 penalty
            ``weight_decay / 2 x sum w^2`` (gradient ``weight_decay x w``) with SGD. Applied to
            weights with 2+ dimensions, not to biases or norm parameters.
        l1: L1 regularisation: adds ``l1 x sum |w|`` over the trainable weights (2+ dimensions,
            the same ones weight decay acts on) to the training loss, so each gradient gains
            ``l1 x sign(w)``; pushes weights to exactly 0 (sparsity). 0 (default) disables it;
            the term is logged as ``l1`` and left out of the reported train loss.
        schedule: ``cosine`` | ``poly`` | ``constant``, stepped per optimiser step.
        warmup_steps: linear warm-up length in optimiser steps (0 disables it).
        grad_clip: clip the global gradient norm to this value (0 disables it).
        lr_scaling: ``none`` | ``linear`` | ``sqrt``: with ``train.devices x train.num_nodes``
            = W training processes the global batch is W x ``data.batch_size``; ``linear``
            multiplies ``lr`` (and so every group's LR) by W, ``sqrt`` by sqrt(W), ``none``
            uses it as given. ``lr`` is meant for one process; a run prints the rule it uses.
    """

    optimizer: str = "adamw"
    lr: float | None = None
    weight_decay: float = 1e-4
    l1: float = 0.0
    schedule: str = "cosine"
    warmup_steps: int = 20
    grad_clip: float = 1.0
    lr_scaling: str = "none"


@dataclass
class TrainConfig:
    """Loop length, reproducibility, devices and outputs.

    Attributes:
        epochs: maximum number of epochs; ``None`` = the measured default for the data size (printed).
        max_steps: stop after this many optimiser steps (overrides epochs when set).
        seed: seeds Python, NumPy and torch; a CPU run with the same seed repeats exactly.
        early_stopping: stop when val mIoU has not improved for this many validations (0 disables).
        val_every: validate every N epochs.
        precision: ``auto`` (bf16-mixed on GPUs that support it, else 32), ``32``, ``16-mixed``, ``bf16-mixed``.
        accelerator, devices, num_nodes: passed to Lightning (``cpu`` | ``gpu`` | ``auto``;
            devices per node; machines). More than one process in all trains with DDP: each
            process takes ``data.batch_size`` images per step (see ``docs/cluster.md``).
        sync_batchnorm: under DDP, compute BatchNorm statistics over the global batch
            (SyncBatchNorm; GPUs only). Helps when the per-device batch is small (< 8).
        out: parent folder of run folders.
        name: run folder name (default: ``<arch>-<strategy>``, numbered if taken).
        overwrite: allow replacing an existing run folder of the same name.
        num_overlays: validation images written as input | truth | prediction PNGs (and sent
            to the logger at every validation when ``logger`` is set).
        logger: ``none`` | ``csv`` | ``tensorboard`` | ``mlflow``: experiment tracking with
            Lightning's loggers, written under the run folder (``logs/csv``, ``logs/tensorboard``,
            ``mlruns/``): per-step loss and learning rates, per-epoch losses, mIoU and per-class
            IoU, validation overlays as images; see :mod:`segtune.tracking`. ``history.csv`` is
            written either way. TensorBoard and MLflow need ``pip install "segtune[tracking]"``.
        memory: training samples stored with the run (``memory/``, class-balanced) for a later
            ``segtune update`` to replay, so an update can remember the old data even when it is
            gone; 0 stores none.
        progress: show a progress bar.
        deterministic: ask torch for deterministic algorithms.
        checkpoint_every: optimiser steps between mid-epoch saves of ``checkpoints/last.ckpt``
            (besides the one at every epoch end), so a killed run loses at most this many
            steps: ``segtune train --resume RUN`` continues from it and, on CPU with the same
            seed, ends with bitwise the same weights as an uninterrupted run. ``0`` = auto:
            every 50 steps, but at most one save per minute (a checkpoint holds the weights
            and the optimiser state, roughly 3x the model size).
        cache_features: ``auto`` | ``on`` | ``off``. Frozen-encoder feature cache: with the
            ``head`` strategy and ``data.augment: flip`` on an SMP architecture, single
            process, the encoder is a fixed function of (image, flip), so its features are
            computed once per training image and flip (fp16, in RAM within
            ``data.cache_max_gb``, else in memory-mapped files under ``<run>/feature_cache/``,
            deleted at the end of the run) and the decoder trains from them. ``auto`` = on
            exactly when that holds (the run log says which and why); ``on`` refuses a run
            where it does not hold; ``off`` always runs the encoder.
    """

    epochs: int | None = None
    max_steps: int | None = None
    seed: int = 0
    early_stopping: int = 10
    val_every: int = 1
    precision: str = "auto"
    accelerator: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    sync_batchnorm: bool = False
    out: str = "runs"
    name: str | None = None
    overwrite: bool = False
    num_overlays: int = 4
    logger: str = "none"
    memory: int = 20
    progress: bool = True
    deterministic: bool = True
    checkpoint_every: int = 0
    cache_features: str = "auto"


@dataclass
class Config:
    """The full, resolved configuration of a segtune run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    # ------------------------------------------------------------------ I/O
    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON-serialisable)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, source: str = "config") -> Config:
        """Build from a nested dict; unknown sections or keys raise ConfigError naming valid ones."""
        cfg = cls()
        for section, values in (d or {}).items():
            sec = _get_section(cfg, section, source)
            if values is None:
                continue
            if not isinstance(values, dict):
                raise ConfigError(f"{source}: section '{section}' must be a mapping, got {values!r}")
            for key, value in values.items():
                _set_field(sec, section, key, value, source)
        return cfg

    @classmethod
    def from_yaml(cls, path: str | Path) -> Config:
        """Load a YAML file written by :meth:`to_yaml` or by hand (partial files are fine)."""
        path = Path(path)
        try:
            d = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if d is not None and not isinstance(d, dict):
            raise ConfigError(f"{path}: expected a mapping of sections (data:, model:, ...)")
        return cls.from_dict(d, source=str(path))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    # ----------------------------------------------------------- validation
    def validate(self) -> Config:
        """Check values and their ranges; raise ConfigError with the key and the allowed values."""
        # names are checked by their registries (one source of truth; imported here, not at the
        # top, because the registries' modules import torch)
        from .losses import LOSS_REGISTRY
        from .strategies import STRATEGY_REGISTRY
        from .strategies.auto import AUTO

        if self.strategy.name != AUTO:
            STRATEGY_REGISTRY.get(self.strategy.name, also=(AUTO,))
        LOSS_REGISTRY.get(self.loss.name)
        from .tracking import check_logger

        check_logger(self.train.logger)  # also: the logger's package is installed
        _choice("loss.class_weights", self.loss.class_weights, CLASS_WEIGHTS)
        _choice("optim.schedule", self.optim.schedule, SCHEDULES)
        _choice("optim.optimizer", self.optim.optimizer, OPTIMIZERS)
        _choice("optim.lr_scaling", self.optim.lr_scaling, LR_SCALING)
        _choice("data.cache", self.data.cache, ("auto", "ram", "none"))
        _choice("data.augment", self.data.augment, ("auto", *AUGMENTS))
        _choice("train.cache_features", self.train.cache_features, ("auto", "on", "off"))
        _choice("train.precision", self.train.precision, ("auto", "32", "16-mixed", "bf16-mixed"))
        if self.optim.lr is not None:
            _positive("optim.lr", self.optim.lr)
        _nonneg("optim.weight_decay", self.optim.weight_decay)
        _nonneg("optim.l1", self.optim.l1)
        _nonneg("optim.warmup_steps", self.optim.warmup_steps)
        _nonneg("optim.grad_clip", self.optim.grad_clip)
        if self.train.epochs is not None:
            _positive("train.epochs", self.train.epochs)
        if self.train.max_steps is not None:
            _positive("train.max_steps", self.train.max_steps)
        _nonneg("train.early_stopping", self.train.early_stopping)
        _nonneg("train.memory", self.train.memory)
        _positive("train.val_every", self.train.val_every)
        _nonneg("train.checkpoint_every", self.train.checkpoint_every)
        _positive("train.devices", self.train.devices)
        _positive("train.num_nodes", self.train.num_nodes)
        _positive("data.batch_size", self.data.batch_size)
        _positive("data.val_batch_size", self.data.val_batch_size)
        _nonneg("data.num_workers", self.data.num_workers)
        if self.data.crop_size is not None:
            _positive("data.crop_size", self.data.crop_size)
        if self.data.crop_size is not None and self.data.crop_size % 32:
            raise ConfigError(
                f"data.crop_size={self.data.crop_size} must be a multiple of 32 "
                f"(try {max(32, round(self.data.crop_size / 32) * 32)})"
            )
        if not 0 < self.data.scale_min <= self.data.scale_max:
            raise ConfigError(
                f"data.scale_min={self.data.scale_min} / scale_max={self.data.scale_max}: need 0 < min <= max"
            )
        if not 0 <= self.data.val_fraction < 1:
            raise ConfigError(f"data.val_fraction={self.data.val_fraction} must be in [0, 1)")
        _nonneg("data.color_jitter", self.data.color_jitter)
        _positive("strategy.encoder_lr_factor", self.strategy.encoder_lr_factor)
        _nonneg("strategy.freeze_stages", self.strategy.freeze_stages)
        _nonneg("strategy.head_epochs", self.strategy.head_epochs)
        _positive("strategy.unfreeze_every", self.strategy.unfreeze_every)
        if self.strategy.stage_lr_decay is not None and not 0 < self.strategy.stage_lr_decay <= 1:
            raise ConfigError(
                f"strategy.stage_lr_decay={self.strategy.stage_lr_decay} must be in (0, 1]"
            )
        _nonneg("loss.focal_gamma", self.loss.focal_gamma)
        _nonneg("loss.dice_weight", self.loss.dice_weight)
        return self


def apply_overrides(cfg: Config, overrides: list[str] | dict[str, Any]) -> Config:
    """Apply ``section.key=value`` overrides (values parsed as YAML scalars) in place; return cfg."""
    items = overrides.items() if isinstance(overrides, dict) else [_split_override(o) for o in overrides]
    for dotted, value in items:
        if "." not in dotted:
            raise ConfigError(
                f"override '{dotted}': use section.key=value, sections: {', '.join(_sections())}"
            )
        section, key = dotted.split(".", 1)
        sec = _get_section(cfg, section, "override")
        if isinstance(value, str):
            value = yaml.safe_load(value) if value != "" else None
        _set_field(sec, section, key, value, "override")
    return cfg


# ---------------------------------------------------------------- helpers
def _sections() -> list[str]:
    return [f.name for f in fields(Config)]


def parse_overrides(texts: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``section.key=value`` strings (``--set``) as ``{"section.key": "value"}``; a later key wins."""
    return dict(_split_override(t) for t in texts)


def budget_overrides(epochs: int | None = None, max_steps: int | None = None, lr: float | None = None,
                     progress: bool = True) -> dict[str, Any]:
    """The ``--epochs`` / ``--max-steps`` / ``--lr`` / ``--no-progress`` flags of a command as
    overrides (``train.epochs``, ``train.max_steps``, ``optim.lr``, ``train.progress``); None is left out."""
    out: dict[str, Any] = {}
    for key, value in (("train.epochs", epochs), ("train.max_steps", max_steps), ("optim.lr", lr)):
        if value is not None:
            out[key] = value
    if not progress:
        out["train.progress"] = False
    return out


def override_dict(overrides: dict[str, Any] | list[str] | None) -> dict[str, Any]:
    """Overrides as a dict, values of ``key=value`` strings read as YAML scalars (a dict is copied)."""
    if not overrides:
        return {}
    if isinstance(overrides, dict):
        return dict(overrides)
    return {k: yaml.safe_load(v) if v != "" else v for k, v in parse_overrides(overrides).items()}


def _split_override(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise ConfigError(f"override '{text}': expected key=value, e.g. optim.lr=3e-4")
    k, v = text.split("=", 1)
    return k.strip(), v.strip()


def _get_section(cfg: Config, section: str, source: str) -> Any:
    valid = _sections()
    if section not in valid:
        raise ConfigError(
            f"{source}: unknown section '{section}'{did_you_mean(section, valid)}; valid: {', '.join(valid)}"
        )
    return getattr(cfg, section)


# string options with on/off values
_ON_OFF_KEYS = frozenset({"train.cache_features"})


def _set_field(sec: Any, section: str, key: str, value: Any, source: str) -> None:
    by_name = {f.name: f for f in fields(sec)}
    if key not in by_name:
        valid = list(by_name)
        raise ConfigError(
            f"{source}: unknown key '{section}.{key}'{did_you_mean(key, valid)}; valid: {', '.join(valid)}"
        )
    hint = typing.get_type_hints(type(sec))[key]
    if isinstance(value, bool) and f"{section}.{key}" in _ON_OFF_KEYS:
        value = "on" if value else "off"  # YAML reads a bare on/off (yes/no) as a boolean
    setattr(sec, key, _coerce(value, hint, f"{section}.{key}", source))


def _coerce(value: Any, hint: Any, name: str, source: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        real = [a for a in args if a is not type(None)]
        if len(real) == 1:  # Optional[X]: X's own message is the clearest
            return _coerce(value, real[0], name, source)
        for a in real:
            try:
                return _coerce(value, a, name, source)
            except ConfigError:
                continue
        raise ConfigError(f"{source}: {name}={value!r} has the wrong type (expected {hint})")
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{source}: {name}={value!r} must be true or false")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{source}: {name}={value!r} must be an integer")
        try:
            f = float(value)
        except ValueError:
            raise ConfigError(f"{source}: {name}={value!r} must be an integer") from None
        if f != int(f):
            raise ConfigError(f"{source}: {name}={value!r} must be an integer")
        return int(f)
    if hint is float:
        if isinstance(value, bool):
            raise ConfigError(f"{source}: {name}={value!r} must be a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{source}: {name}={value!r} must be a number") from None
    if hint is str:
        if isinstance(value, (dict, list)) or value is None:
            raise ConfigError(f"{source}: {name}={value!r} must be a string")
        return str(value)
    return value


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(
            f"{name}={value!r} is not valid{did_you_mean(str(value), list(allowed))}; choose one of: {', '.join(allowed)}"
        )


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{name}={value} must be > 0")


def _nonneg(name: str, value: float) -> None:
    if not value >= 0:
        raise ConfigError(f"{name}={value} must be >= 0")


