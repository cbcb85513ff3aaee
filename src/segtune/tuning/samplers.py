"""Named Optuna samplers and pruners for ``segtune tune --sampler / --pruner``.

Each registry entry is a builder; ``tune`` looks names up here and never compares them as
strings, so a new sampler or pruner is one registered function.
"""

from __future__ import annotations

from typing import Any

from .._registry import Registry
from .space import SearchSpace

__all__ = ["SAMPLER_REGISTRY", "PRUNER_REGISTRY", "build_sampler", "build_pruner", "list_samplers", "list_pruners"]

#: ``name -> (space, seed) -> optuna sampler``
SAMPLER_REGISTRY: Registry[Any] = Registry("sampler", "tune --sampler")
#: ``name -> (max_epochs) -> optuna pruner``
PRUNER_REGISTRY: Registry[Any] = Registry("pruner", "tune --pruner")


@SAMPLER_REGISTRY.register("tpe")
def _tpe(space: SearchSpace, seed: int) -> Any:
    """Tree-structured Parzen estimator (Optuna's default): 5 random trials, then model-guided."""
    import optuna

    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=5)


@SAMPLER_REGISTRY.register("grid")
def _grid(space: SearchSpace, seed: int) -> Any:
    """Every combination of the space's choices / presets / grid: lists, in a seeded order."""
    import optuna

    return optuna.samplers.GridSampler(space.grid(), seed=seed)


@SAMPLER_REGISTRY.register("random")
def _random(space: SearchSpace, seed: int) -> Any:
    """Independent uniform (or log-uniform) samples."""
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)


@PRUNER_REGISTRY.register("median")
def _median(max_epochs: int | None) -> Any:
    """Stop a trial whose val mIoU after an epoch is below the median of earlier trials at that
    epoch (after 3 finished trials, from its 2nd epoch on)."""
    import optuna

    return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)


@PRUNER_REGISTRY.register("hyperband")
def _hyperband(max_epochs: int | None) -> Any:
    """Hyperband over epochs (1 to the longest run, reduction factor 3)."""
    import optuna

    return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max_epochs or "auto", reduction_factor=3)


@PRUNER_REGISTRY.register("none")
def _none(max_epochs: int | None) -> Any:
    """Never prune: every trial runs to its end."""
    import optuna

    return optuna.pruners.NopPruner()


def build_sampler(sampler: str | Any, space: SearchSpace, seed: int) -> Any:
    """A registered sampler by name, or an Optuna sampler object as given."""
    return SAMPLER_REGISTRY.get(sampler)(space, seed) if isinstance(sampler, str) else sampler


def build_pruner(pruner: str | Any, max_epochs: int | None) -> Any:
    """A registered pruner by name, or an Optuna pruner object as given."""
    return PRUNER_REGISTRY.get(pruner)(max_epochs) if isinstance(pruner, str) else pruner


def list_samplers() -> list[str]:
    """Registered ``tune --sampler`` names."""
    return SAMPLER_REGISTRY.names()


def list_pruners() -> list[str]:
    """Registered ``tune --pruner`` names."""
    return PRUNER_REGISTRY.names()
