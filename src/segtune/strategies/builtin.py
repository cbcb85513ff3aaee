"""The built-in transfer strategies: head, partial, full, discriminative, gradual, scratch.

===============  ==============================================  ==========================
name             trainable encoder stages at epoch e             encoder stage k lr
===============  ==============================================  ==========================
head             none (encoder frozen, its BatchNorm in eval)    lr (unused)
partial          k >= freeze_stages                              lr
full             all                                             lr
discriminative   all                                             lr x f x d**(S-1-k)
gradual          none while e < head_epochs, then 1 + (e -       lr x f x d**(S-1-k)
                 head_epochs) // unfreeze_every deepest stages
scratch          all (the model starts from random weights)      lr
classifier       none, and the decoder is frozen too: only the   (unused)
                 final class layer trains
===============  ==============================================  ==========================

``f`` = ``encoder_lr_factor``, ``d`` = ``stage_lr_decay`` (1 when unset), ``S`` = number of stages
(the deepest stage is ``S-1``). The head always trains at ``lr``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._registry import Registry
from ..errors import ConfigError
from .base import HEAD, Strategy, Unit, _fmt_lr, partition

if TYPE_CHECKING:
    from ..models import SegModel

__all__ = [
    "STRATEGY_REGISTRY",
    "ClassifierStrategy",
    "HeadStrategy",
    "PartialStrategy",
    "FullStrategy",
    "DiscriminativeStrategy",
    "GradualStrategy",
    "ScratchStrategy",
]

#: name -> Strategy subclass.
STRATEGY_REGISTRY: Registry[type[Strategy]] = Registry("strategy", "strategy.name")


class _ScaledEncoderLR(Strategy):
    """Encoder stages train at ``lr x encoder_lr_factor`` (x ``stage_lr_decay**k`` from the deepest)."""

    def validate(self) -> None:
        f, d = self.cfg.encoder_lr_factor, self.cfg.stage_lr_decay
        if not f > 0:
            raise ConfigError(f"strategy.encoder_lr_factor={f} must be > 0")
        if d is not None and not 0 < d <= 1:
            raise ConfigError(f"strategy.stage_lr_decay={d} must be in (0, 1]")

    def stage_lr(self, stage: int) -> float:
        decay = self.cfg.stage_lr_decay
        depth = self.num_stages - 1 - stage  # 0 for the deepest stage
        return self.lr * self.cfg.encoder_lr_factor * (decay**depth if decay is not None else 1.0)

    def _lr_text(self) -> str:
        text = f"head lr {_fmt_lr(self.lr)}, encoder lr x{self.cfg.encoder_lr_factor:g}"
        if self.cfg.stage_lr_decay is not None:
            text += (
                f" x{self.cfg.stage_lr_decay:g} per stage from the deepest "
                f"({_fmt_lr(self.stage_lr(self.num_stages - 1))} .. {_fmt_lr(self.stage_lr(0))})"
            )
        return text


@STRATEGY_REGISTRY.register("head")
class HeadStrategy(Strategy):
    """Only the decoder/head trains; the whole encoder is frozen (BatchNorm in eval mode)."""

    name = "head"
    # head-only training tolerates (and needs) a larger LR than updating the pretrained encoder
    # (benchmarks/RESULTS.md, "How segtune's defaults were chosen")
    default_lr = 3e-3

    def trainable_stages(self, epoch: int) -> list[int]:
        return []

    def describe(self) -> str:
        return (
            f"head: encoder frozen ({self.num_stages} stages, BatchNorm statistics fixed), "
            f"decoder and head train at lr {_fmt_lr(self.lr)}"
        )


@STRATEGY_REGISTRY.register("partial")
class PartialStrategy(Strategy):
    """The first ``freeze_stages`` encoder stages (input side) are frozen, the rest trains."""

    name = "partial"

    def validate(self) -> None:
        k = self.cfg.freeze_stages
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= self.num_stages:
            raise ConfigError(
                f"strategy.freeze_stages={k!r}: the {self.model.encoder_name} encoder has "
                f"{self.num_stages} stages (use 0..{self.num_stages})"
            )

    def trainable_stages(self, epoch: int) -> list[int]:
        return list(range(self.cfg.freeze_stages, self.num_stages))

    def describe(self) -> str:
        k = self.cfg.freeze_stages
        return (
            f"partial: first {k} of {self.num_stages} encoder stages frozen (BatchNorm statistics "
            f"fixed), the other {self.num_stages - k} and the head train at lr {_fmt_lr(self.lr)}"
        )


@STRATEGY_REGISTRY.register("full")
class FullStrategy(Strategy):
    """Everything trains at one learning rate, starting from pretrained weights."""

    name = "full"


@STRATEGY_REGISTRY.register("scratch")
class ScratchStrategy(Strategy):
    """Like ``full``, but the model is built with random weights (``pretrained`` is False)."""

    name = "scratch"
    pretrained = False

    def describe(self) -> str:
        return (
            f"scratch: random initial weights, all {self.num_stages} encoder stages and the head "
            f"train at lr {_fmt_lr(self.lr)}"
        )


@STRATEGY_REGISTRY.register("discriminative")
class DiscriminativeStrategy(_ScaledEncoderLR):
    """Everything trains; the encoder at a lower learning rate (optionally decaying per stage)."""

    name = "discriminative"

    def describe(self) -> str:
        return f"discriminative: all {self.num_stages} encoder stages and the head train; {self._lr_text()}"


@STRATEGY_REGISTRY.register("gradual")
class GradualStrategy(_ScaledEncoderLR):
    """fastai-style gradual unfreezing, deepest encoder stage first.

    Epochs ``< head_epochs`` train only the decoder/head; from then on one more encoder stage
    becomes trainable every ``unfreeze_every`` epochs, from the deepest towards the input.
    """

    name = "gradual"
    static = False

    def validate(self) -> None:
        super().validate()
        if self.cfg.head_epochs < 0:
            raise ConfigError(f"strategy.head_epochs={self.cfg.head_epochs} must be >= 0")
        if self.cfg.unfreeze_every < 1:
            raise ConfigError(f"strategy.unfreeze_every={self.cfg.unfreeze_every} must be >= 1")

    def num_unfrozen(self, epoch: int) -> int:
        """How many encoder stages (counted from the deepest) train in ``epoch``."""
        if epoch < self.cfg.head_epochs:
            return 0
        return min(self.num_stages, 1 + (epoch - self.cfg.head_epochs) // self.cfg.unfreeze_every)

    def trainable_stages(self, epoch: int) -> list[int]:
        n = self.num_unfrozen(epoch)
        return list(range(self.num_stages - n, self.num_stages))

    def full_epoch(self) -> int:
        """First epoch in which every encoder stage trains."""
        return self.cfg.head_epochs + (self.num_stages - 1) * self.cfg.unfreeze_every

    def describe(self) -> str:
        return (
            f"gradual: head only for {self.cfg.head_epochs} epoch(s), then one more encoder stage "
            f"every {self.cfg.unfreeze_every} epoch(s) from the deepest (all {self.num_stages} "
            f"from epoch {self.full_epoch() + 1}); {self._lr_text()}"
        )


@STRATEGY_REGISTRY.register("classifier")
class ClassifierStrategy(Strategy):
    """Only the final class layer(s) train: encoder and decoder frozen, their norms in eval mode.

    The frozen-body set-up of SSUL's incremental steps (``segtune update --method ssul``); as a
    fine-tuning strategy it is a linear probe on the decoder's features.
    """

    name = "classifier"

    def trainable_stages(self, epoch: int) -> list[int]:
        return []

    def units(self, model: SegModel | None = None) -> list[Unit]:
        """Encoder stages, then ``decoder`` (frozen) and ``head`` (the class layers only)."""
        model = model if model is not None else self.model
        *stages, head = partition(model)
        keys = set(model.class_head_keys())
        prefixes = {k.rsplit(".", 1)[0] for k in keys}
        classifier = [m for n, m in model.named_modules() if n in prefixes]
        decoder = Unit("decoder", None, [(n, p) for n, p in head.params if n not in keys],
                       [m for m in head.modules])
        cls_unit = Unit(HEAD, None, [(n, p) for n, p in head.params if n in keys], classifier)
        return [*stages, decoder, cls_unit]

    def unit_trains(self, unit: Unit, epoch: int) -> bool:
        return unit.name == HEAD

    def describe(self) -> str:
        return (
            f"classifier: encoder ({self.num_stages} stages) and decoder frozen (BatchNorm statistics "
            f"fixed), only the class layer trains at lr {_fmt_lr(self.lr)}"
        )
