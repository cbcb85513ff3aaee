"""Data-parallel training on several devices or machines (Lightning DDP).

``train.devices x train.num_nodes`` processes each hold a full copy of the model, train on
their own share of every epoch (``data.batch_size`` is per process) and average gradients
after every backward pass, so all copies stay identical. What segtune adds to Lightning's
``ddp`` strategy:

* **Who writes the run folder.** Only global rank 0 creates the run folder and writes files
  (``config.yaml``, checkpoints, ``model.safetensors``, ``metrics.json``, overlays). Other
  ranks learn the folder from rank 0 (:data:`RUN_DIR_ENV`, set before Lightning starts the
  other processes) or from ``train.name``; they create nothing and return right after ``fit``.
  :func:`launch_rank` tells the ranks apart before ``torch.distributed`` starts.
* **Frozen parameters.** DDP only synchronises the parameters that require gradients when it
  wraps the model, so static strategies (``head``, ``partial``, ...) freeze before ``fit``.
  ``gradual`` changes the trainable set mid-run: every parameter is registered with DDP
  (``requires_grad`` on at wrap time) and DDP runs with ``find_unused_parameters=True``;
  stages still frozen get no gradient on any rank, so the optimiser skips them exactly as in
  a one-process run. The price is one autograd-graph walk per step.
* **Validation counts every image once.** Lightning's default ``DistributedSampler`` pads
  the validation set with repeated images to split it evenly; segtune gives validation an
  ``UnrepeatedDistributedSampler`` (shares differ by at most one image) and the confusion
  matrix is summed over ranks (``dist_reduce_fx="sum"``), so validation metrics are those of
  the whole validation set.
* **SyncBatchNorm** (``train.sync_batchnorm``, GPUs only): converted with timm's converter,
  which keeps the activation of timm's ``BatchNormAct2d`` layers (Lightning's default
  converter would silently drop it), and converted back after training.
* **Learning rate.** ``optim.lr_scaling`` (``none`` | ``linear`` | ``sqrt``) multiplies the
  configured LR by ``world_size`` or ``sqrt(world_size)``; the rule in use is printed.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch.plugins.layer_sync import LayerSync
from torch import nn

from ..errors import ConfigError, DataError
from .run import default_run_name

if TYPE_CHECKING:

    from ..config import Config

__all__ = [
    "RUN_DIR_ENV",
    "world_size",
    "launch_rank",
    "follower_run_dir",
    "check_distributed_config",
    "lr_factor",
    "ddp_summary",
    "ddp_strategy",
    "TimmSyncBatchNorm",
    "check_val_size",
]

#: Rank 0 exports its run folder here before Lightning launches the other local processes.
RUN_DIR_ENV = "SEGTUNE_RUN_DIR"

def world_size(cfg: Config) -> int:
    """Number of training processes: ``train.devices x train.num_nodes``."""
    return int(cfg.train.devices) * int(cfg.train.num_nodes)


def launch_rank(devices: int) -> int:
    """Global rank of this process as its launcher announced it, before ``torch.distributed`` starts.

    Mirrors Lightning's choice of cluster environment: torchrun (``RANK``), Slurm
    (``SLURM_PROCID`` when the job was started with ``srun``), LSF, MPI; otherwise Lightning
    itself launches the local processes and sets ``LOCAL_RANK`` / ``NODE_RANK``.
    """
    from lightning.fabric.plugins.environments import (
        LightningEnvironment,
        LSFEnvironment,
        MPIEnvironment,
        SLURMEnvironment,
        TorchElasticEnvironment,
    )

    for env_type in (TorchElasticEnvironment, SLURMEnvironment, LSFEnvironment, MPIEnvironment):
        if env_type.detect():
            return int(env_type().global_rank())
    env = LightningEnvironment()
    return int(env.node_rank()) * int(devices) + int(env.local_rank())


def follower_run_dir(cfg: Config) -> Path:
    """The run folder as a rank other than 0 sees it (nothing is created).

    Rank 0's folder when it launched this process (:data:`RUN_DIR_ENV`), else
    ``train.out / train.name`` (give ``--name`` when an external launcher such as ``srun``
    starts all ranks at once). Checkpoint paths do not depend on it: Lightning broadcasts
    them from rank 0.
    """
    given = os.environ.get(RUN_DIR_ENV)
    if given:
        return Path(given)
    name = cfg.train.name or default_run_name(cfg.model.arch, cfg.strategy.name)
    return Path(cfg.train.out) / name


def check_distributed_config(cfg: Config) -> None:
    """Refuse multi-process settings that cannot work, with the fix in the message."""
    if cfg.train.sync_batchnorm and world_size(cfg) == 1:
        from .. import _log

        _log.warn("train.sync_batchnorm has no effect with one training process (ignored)")
    if cfg.train.sync_batchnorm and world_size(cfg) > 1:
        acc = str(cfg.train.accelerator).lower()
        if acc == "cpu" or (acc == "auto" and not torch.cuda.is_available()):
            raise ConfigError(
                "train.sync_batchnorm: SyncBatchNorm needs GPUs (torch has no CPU implementation); "
                "drop --sync-bn for CPU training"
            )


def lr_factor(rule: str, world: int) -> float:
    """LR multiplier of ``optim.lr_scaling`` for ``world`` processes (1 for one process)."""
    if rule == "linear":
        return float(world)
    if rule == "sqrt":
        return math.sqrt(world)
    return 1.0


def ddp_summary(world: int, batch_size: int, lr: float, rule: str) -> str:
    """The line printed at the start of a multi-process run (batch sizes and the LR rule)."""
    head = f"DDP: {world} processes x batch {batch_size} = global batch {world * batch_size}; LR scaling rule: {rule}"
    if rule == "none":
        return (
            f"{head} (lr {lr:.3g} used as given, tuned for one process; to scale it with the "
            f"{world}x larger global batch set optim.lr_scaling=linear -> {lr * world:.3g} "
            f"(usual for SGD) or sqrt -> {lr * math.sqrt(world):.3g} (usual for AdamW))"
        )
    f = lr_factor(rule, world)
    how = f"x {world}" if rule == "linear" else f"x sqrt({world})"
    return f"{head} (lr {lr:.3g} {how} = {lr * f:.3g} for the head; encoder groups scale with it)"


def ddp_strategy(static: bool) -> Any:
    """Lightning's ``ddp`` strategy (gloo on CPU, NCCL on CUDA).

    ``find_unused_parameters`` is on only for strategies whose trainable set changes during
    the run (``gradual``): see the module docstring.
    """
    from lightning.pytorch.strategies import DDPStrategy

    return DDPStrategy(find_unused_parameters=not static)


class TimmSyncBatchNorm(LayerSync):
    """SyncBatchNorm conversion that keeps timm's fused norm + activation layers intact.

    ``apply`` uses :func:`timm.layers.convert_sync_batchnorm` (``BatchNormAct2d`` ->
    ``SyncBatchNormAct`` with the same activation; plain BatchNorm -> ``SyncBatchNorm``);
    ``revert`` turns them back into ``BatchNormAct2d`` / ``BatchNorm2d`` sharing the same
    parameters and buffers, so the trained model is the ordinary architecture again.
    """

    def apply(self, model: nn.Module) -> nn.Module:
        from timm.layers import convert_sync_batchnorm

        return convert_sync_batchnorm(model)

    def revert(self, model: nn.Module) -> nn.Module:
        return _revert_sync_bn(model)


def _revert_sync_bn(module: nn.Module) -> nn.Module:
    from timm.layers.norm_act import BatchNormAct2d, SyncBatchNormAct

    out = module
    if isinstance(module, nn.SyncBatchNorm):
        args = (module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        if isinstance(module, SyncBatchNormAct):
            out = BatchNormAct2d(*args, apply_act=False)
            out.act = module.act  # submodules: re-added below too
            out.drop = module.drop
        else:
            out = nn.BatchNorm2d(*args)
        if module.affine:
            with torch.no_grad():
                out.weight = module.weight
                out.bias = module.bias
        out.running_mean = module.running_mean
        out.running_var = module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.training = module.training
    for name, child in module.named_children():
        out.add_module(name, _revert_sync_bn(child))
    return out


def check_val_size(n_val: int, world: int) -> None:
    """Refuse DDP with fewer validation images than processes.

    Raises:
        DataError: a rank without a validation batch would leave the others waiting.
    """
    if n_val < world:
        raise DataError(
            f"{n_val} validation image(s) for {world} training processes: every process needs at "
            "least one (add validation images, or train on fewer devices)"
        )
