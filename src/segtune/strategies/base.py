"""The :class:`Strategy` base: parameter partition, param groups, freezing and the BatchNorm policy.

A strategy is a pure function of ``(model, epoch)``: which encoder stages train and at which
learning rate. Subclasses only override :meth:`Strategy.trainable_stages` and
:meth:`Strategy.stage_lr`; the mechanics live here:

* :meth:`Strategy.param_groups` returns named groups covering *every* parameter from step 0
  (frozen ones included; they get no gradient, so AdamW/SGD skip them), with explicit ``lr`` and
  ``weight_decay`` per group (0 for biases and norm parameters). No ``add_param_group`` mid-run,
  so LR schedulers see every group from the start.
* :meth:`Strategy.apply` sets ``requires_grad`` and registers the norm layers of frozen stages with
  :meth:`SegModel.set_frozen_norms`, which keeps them in eval mode even across ``model.train()``,
  so their running statistics never move.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..config import StrategyConfig
    from ..models import SegModel

__all__ = ["Strategy", "Unit", "partition", "norm_layers", "HEAD"]

HEAD = "head"


@dataclass
class Unit:
    """A set of parameters that trains together: one encoder stage, or the head.

    Attributes:
        name: ``encoder.<k>`` (k = 0 at the input) or ``head``.
        stage: encoder stage index, ``None`` for the head.
        params: ``(qualified name, parameter)`` pairs.
        modules: the modules of the unit (for the norm policy).
    """

    name: str
    stage: int | None
    params: list[tuple[str, nn.Parameter]]
    modules: list[nn.Module]


def norm_layers(modules: list[nn.Module]) -> list[nn.Module]:
    """Norm layers with running statistics (BatchNorm, SyncBatchNorm, InstanceNorm) in ``modules``."""
    out: list[nn.Module] = []
    seen: set[int] = set()
    for mod in modules:
        for m in mod.modules():
            if isinstance(m, _NormBase) and id(m) not in seen:
                seen.add(id(m))
                out.append(m)
    return out


def partition(model: SegModel) -> list[Unit]:
    """Split the model's parameters into encoder stages (input -> output) and the head.

    Every parameter lands in exactly one unit: parameters not reached through
    :meth:`SegModel.encoder_stages` or :meth:`SegModel.head_modules` (direct parameters of a
    container module) go to stage 0 when they are in the encoder, else to the head.

    Returns:
        ``[encoder.0, ..., encoder.<S-1>, head]``.
    """
    names = {id(p): n for n, p in model.named_parameters()}
    owner: dict[int, Unit] = {}
    units: list[Unit] = []

    def fill(unit: Unit) -> None:
        for mod in unit.modules:
            for p in mod.parameters():
                if id(p) not in owner:
                    owner[id(p)] = unit
                    unit.params.append((names[id(p)], p))
        units.append(unit)

    for k, mods in enumerate(model.encoder_stages()):
        fill(Unit(f"encoder.{k}", k, [], list(mods)))
    fill(Unit(HEAD, None, [], list(model.head_modules())))
    enc_ids = {id(p) for p in model.encoder.parameters()}
    for n, p in model.named_parameters():
        if id(p) not in owner:
            unit = units[0] if id(p) in enc_ids and len(units) > 1 else units[-1]
            owner[id(p)] = unit
            unit.params.append((n, p))
    return units


def _fmt_lr(lr: float) -> str:
    return f"{lr:.3g}"


class Strategy:
    """Base transfer strategy; see the module docstring.

    Args:
        model: the :class:`~segtune.models.SegModel` to train.
        cfg: the ``strategy`` config section.
        lr: learning rate of the decoder/head (``optim.lr``).

    What the rest of segtune needs to know about a strategy it asks the object, never the name:

    Attributes:
        name: strategy name (``strategy.name``).
        pretrained: whether the model should start from pretrained weights (False for scratch).
        static: True when the trainable pattern never changes during a run (all but gradual).
        default_lr: head/decoder learning rate used when ``optim.lr`` is not set (AdamW).
        num_stages: number of encoder stages S.
        encoder_frozen: (property) no encoder stage trains in any epoch, so the encoder is a
            fixed function (its features can be cached).
    """

    name: ClassVar[str] = "base"
    pretrained: ClassVar[bool] = True
    static: ClassVar[bool] = True
    default_lr: ClassVar[float] = 1e-3

    def __init__(self, model: SegModel, cfg: StrategyConfig, lr: float) -> None:
        if not lr > 0:
            raise ConfigError(f"optim.lr={lr} must be > 0")
        self.model = model
        self.cfg = cfg
        self.lr = float(lr)
        self.num_stages = len(model.encoder_stages())
        self.validate()

    @property
    def encoder_frozen(self) -> bool:
        """True when no encoder stage trains in any epoch of the run."""
        return self.static and not self.trainable_stages(0)

    # ----------------------------------------------------------- policy hooks
    def validate(self) -> None:
        """Check the config against the model; raise ConfigError. Override as needed."""

    def trainable_stages(self, epoch: int) -> list[int]:
        """Encoder stage indices (0 = input side) that train in ``epoch`` (the head always trains)."""
        return list(range(self.num_stages))

    def stage_lr(self, stage: int) -> float:
        """Learning rate of encoder stage ``stage`` (0 = input side)."""
        return self.lr

    def describe(self) -> str:
        """One line saying what trains, when, and at which learning rate."""
        return f"{self.name}: all {self.num_stages} encoder stages and the head train at lr {_fmt_lr(self.lr)}"

    # -------------------------------------------------------------- mechanics
    def units(self, model: SegModel | None = None) -> list[Unit]:
        """Encoder stages and head of ``model`` (default: the model given at construction)."""
        return partition(model if model is not None else self.model)

    def unit_lr(self, unit: Unit) -> float:
        """Learning rate of a unit (the head uses ``lr``)."""
        return self.lr if unit.stage is None else self.stage_lr(unit.stage)

    def unit_trains(self, unit: Unit, epoch: int) -> bool:
        """Whether ``unit`` trains in ``epoch`` (the head always does; encoder stages when listed
        by :meth:`trainable_stages`)."""
        return unit.stage is None or unit.stage in self.trainable_stages(epoch)

    def group_trainable(self, group: str, epoch: int) -> bool:
        """Whether param group ``group`` (as named by :meth:`param_groups`) trains in ``epoch``."""
        base = group.removesuffix(".no_decay")
        unit = next(u for u in self.units() if u.name == base)
        return self.unit_trains(unit, epoch)

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer param groups covering every parameter of the model, from step 0.

        Args:
            weight_decay: applied to weights with 2+ dimensions; biases and norm parameters
                (1-D) go to ``<unit>.no_decay`` groups with ``weight_decay`` 0.

        Returns:
            ``[{"name", "params", "lr", "weight_decay"}, ...]``: ``head``, ``head.no_decay``,
            then ``encoder.<S-1>`` ... ``encoder.0`` (deepest first), empty groups left out.
            Frozen parameters are included with ``requires_grad=False`` (no gradient, so the
            optimizer skips them) so unfreezing later never needs ``add_param_group``.
        """
        units = self.units()
        ordered = [units[-1], *reversed(units[:-1])]
        groups: list[dict[str, Any]] = []
        for unit in ordered:
            lr = self.unit_lr(unit)
            decay = [p for _, p in unit.params if p.ndim > 1]
            no_decay = [p for _, p in unit.params if p.ndim <= 1]
            if decay:
                groups.append(
                    {
                        "name": unit.name,
                        "params": decay,
                        "lr": lr,
                        "weight_decay": float(weight_decay),
                    }
                )
            if no_decay:
                groups.append(
                    {
                        "name": f"{unit.name}.no_decay",
                        "params": no_decay,
                        "lr": lr,
                        "weight_decay": 0.0,
                    }
                )
        return groups

    def set_trainable(self, model: SegModel, epoch: int) -> None:
        """Set ``requires_grad`` for ``epoch`` only (no module modes).

        Call it once before wrapping the model in DDP so frozen parameters are excluded from
        gradient synchronisation.
        """
        for unit in self.units(model):
            flag = self.unit_trains(unit, epoch)
            for _, p in unit.params:
                p.requires_grad_(flag)

    def set_norm_modes(self, model: SegModel, epoch: int) -> None:
        """Keep the norm layers of frozen units in eval mode; others follow ``model.training``."""
        frozen = [m for unit in self.units(model) if not self.unit_trains(unit, epoch)
                  for m in norm_layers(unit.modules)]
        model.set_frozen_norms(frozen)

    def apply(self, model: SegModel, epoch: int) -> None:
        """Make ``model`` match ``epoch``: ``requires_grad`` per stage and frozen norms in eval mode.

        Idempotent. Call at train start, at every epoch start and after each validation. The
        frozen norms stay in eval mode through later ``model.train()`` calls (see
        :meth:`SegModel.set_frozen_norms`); all other modules follow ``model.training``.
        """
        self.set_trainable(model, epoch)
        self.set_norm_modes(model, epoch)

    def summary(self, epoch: int = 0) -> list[dict[str, Any]]:
        """One row per unit: ``{"group", "trainable", "total", "lr"}`` (parameter counts at ``epoch``).

        Rows are ordered as :meth:`units`: ``encoder.0`` (input side) ... ``encoder.<S-1>``, ``head``.
        """
        rows = []
        for unit in self.units():
            total = sum(p.numel() for _, p in unit.params)
            rows.append(
                {
                    "group": unit.name,
                    "trainable": total if self.unit_trains(unit, epoch) else 0,
                    "total": total,
                    "lr": self.unit_lr(unit),
                }
            )
        return rows

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"
