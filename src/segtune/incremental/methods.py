"""Incremental-update methods: what an update step optimises, one registered class per method.

A method is a small object: its class attributes say what it needs (``needs_old_model``,
``needs_features``, the classifier ``init`` for new classes, a forced ``strategy``, the kinds of
update it supports), and :meth:`Method.loss` is a function of the new logits, the old model's
outputs and the batch. :class:`IncrementalModule` (a :class:`~segtune.engine.module.SegTuneModule`)
runs the old model next to the new one and calls it; the training loop is the engine's.

Two kinds of update (``step.kind``):

* ``class`` (class-incremental): channel 0 is background, channels ``[1, num_old)`` the classes
  learned before, ``[num_old, C)`` the classes added now. Training labels hold the new classes,
  0 for every other labelled pixel (old, future or true background) and ``ignore_index``.
* ``data`` (data-incremental): same classes, new images; labels as in plain training.

=======  ================================================================================
method   objective (``kd_weight`` = lambda, default 10 as MiB; PLOP's POD factors)
=======  ================================================================================
ft       the run's loss on the step's labels (the lower bound: forgets)
lwf      ft + lambda x KD(new old-channels, old)  (LwF, Li & Hoiem 2017)
mib      class: unbiased CE + lambda x unbiased KD, MiB init (Cermelli et al., CVPR 2020);
         data: ft + lambda x KD (MiB's unbiased terms reduce to plain ones, PLOP#11)
plop     class: CE on entropy pseudo-labels (per-class median thresholds) x nu + Local POD on
         encoder/decoder features (0.01) and logits (0.0005) x sqrt(C / C_new), MiB init
         (Douillard et al., CVPR 2021); data: ft + Local POD
ssul     class only: encoder and decoder frozen (strategy ``classifier``), the old class rows
         of the classifier kept fixed, CE on labels where background pixels that the old model
         gives an old class with probability >= 0.7 take that class (SSUL's pseudo-labels;
         simplified: no saliency-based "unknown" class, softmax CE instead of BCE)
=======  ================================================================================

Replay (``--memory N``) is orthogonal: memory samples are mixed into the step's data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import _log
from .._registry import Registry
from .._tensor import suppress_classes
from ..engine.module import SegTuneModule
from .losses import (
    entropy_pseudo_labels,
    entropy_uncertainty,
    kd_loss,
    local_pod,
    logits_merge_new_into_background,
    median_uncertainty_thresholds,
    unbiased_cross_entropy,
    unbiased_kd,
)

__all__ = ["METHOD_REGISTRY", "Method", "Step", "IncrementalModule", "list_methods", "build_method"]

#: method name -> Method subclass.
METHOD_REGISTRY: Registry[type[Method]] = Registry("update method", "--method")


@dataclass(frozen=True)
class Step:
    """What kind of update this is.

    Attributes:
        kind: ``class`` or ``data``.
        num_old: channels of the old model (background included for ``class``).
        num_classes: channels of the new model.
        ignore_index: label excluded from every term.
    """

    kind: str
    num_old: int
    num_classes: int
    ignore_index: int

    @property
    def num_new(self) -> int:
        return self.num_classes - self.num_old


class Method:
    """Base method: plain fine-tuning on the step's labels (``ft``).

    Args:
        step: the update being made.
        kd_weight: weight of the distillation term (lwf, mib).
        pod_weight: multiplier of PLOP's Local POD factors.
    """

    name: ClassVar[str] = "ft"
    needs_old_model: ClassVar[bool] = False
    needs_features: ClassVar[bool] = False
    init: ClassVar[str] = "mib"
    strategy: ClassVar[str | None] = None
    kinds: ClassVar[tuple[str, ...]] = ("class", "data")
    summary: ClassVar[str] = "fine-tunes on the new data only (forgets what it does not see)"

    def __init__(self, step: Step, kd_weight: float = 10.0, pod_weight: float = 1.0) -> None:
        self.step = step
        self.kd_weight = float(kd_weight)
        self.pod_weight = float(pod_weight)

    def prepare(self, module: IncrementalModule, loader: Any) -> None:
        """One pass before training (PLOP's thresholds); nothing by default."""

    def loss(self, module: IncrementalModule, logits: Tensor, batch: dict[str, Any], old: dict[str, Any]) -> Tensor:
        """Scalar objective. ``old``: ``{"logits": (N, num_old, H, W), "features": [...]}`` from
        the frozen old model (empty when ``needs_old_model`` is False); ``batch["mask"]`` (N, H, W)."""
        return module.loss_fn(logits, batch["mask"])


@METHOD_REGISTRY.register("ft")
class FineTune(Method):
    """Lower bound: the run's own loss on the step's labels."""


@METHOD_REGISTRY.register("lwf")
class LwF(Method):
    name = "lwf"
    needs_old_model = True
    summary = "fine-tunes with distillation of the old model's outputs (LwF)"

    def loss(self, module, logits, batch, old):
        return module.loss_fn(logits, batch["mask"]) + self.kd_weight * kd_loss(logits, old["logits"])


@METHOD_REGISTRY.register("mib")
class MiB(Method):
    name = "mib"
    needs_old_model = True
    summary = "unbiased cross-entropy and distillation with MiB's classifier initialisation"

    def loss(self, module, logits, batch, old):
        y = batch["mask"]
        if self.step.kind == "data":  # no background shift: the unbiased terms are the plain ones
            return module.loss_fn(logits, y) + self.kd_weight * kd_loss(logits, old["logits"])
        ce = unbiased_cross_entropy(logits, y, self.step.num_old, self.step.ignore_index)
        return ce + self.kd_weight * unbiased_kd(logits, old["logits"])


@METHOD_REGISTRY.register("plop")
class PLOP(Method):
    name = "plop"
    needs_old_model = True
    needs_features = True
    summary = "entropy pseudo-labels of old classes and multi-scale feature distillation (PLOP)"
    feature_factor: ClassVar[float] = 0.01
    logits_factor: ClassVar[float] = 0.0005

    def __init__(self, step: Step, kd_weight: float = 10.0, pod_weight: float = 1.0) -> None:
        super().__init__(step, kd_weight, pod_weight)
        self.thresholds: Tensor | None = None

    @torch.no_grad()
    def prepare(self, module: IncrementalModule, loader: Any) -> None:
        """Per old class, the median uncertainty of the background pixels the old model gives
        that class, over the step's training data (a true median; floor 0.001)."""
        if self.step.kind != "class":
            return
        us, cs = [], []
        for batch in loader:
            old_logits = module.old_forward(batch["image"].to(module.device))["logits"]
            u, c = entropy_uncertainty(old_logits)
            bg = batch["mask"].to(u.device) == 0
            us.append(u[bg].float().cpu())
            cs.append(c[bg].cpu())
        u_all = torch.cat(us) if us else torch.zeros(0)
        c_all = torch.cat(cs) if cs else torch.zeros(0, dtype=torch.long)
        if u_all.numel() > 2_000_000:  # exact median of a seeded subsample: bounded memory
            idx = torch.randperm(u_all.numel(), generator=torch.Generator().manual_seed(0))[:2_000_000]
            u_all, c_all = u_all[idx], c_all[idx]
        self.thresholds = median_uncertainty_thresholds(u_all, c_all, self.step.num_old)
        _log.info("plop: pseudo-label thresholds (median uncertainty per old class): "
                  + ", ".join(f"{t:.3f}" for t in self.thresholds.tolist()))

    def _pod(self, module: IncrementalModule, logits: Tensor, old: dict[str, Any]) -> Tensor:
        new_feats = module.last_features
        old_feats = old.get("features") or []
        maps_old = list(old_feats) + [old["logits"]]
        merged = logits_merge_new_into_background(logits, self.step.num_old) if self.step.kind == "class" else logits
        maps_new = list(new_feats) + [merged]
        factors = [self.feature_factor] * len(old_feats) + [self.logits_factor]
        adaptive = math.sqrt(self.step.num_classes / max(1, self.step.num_new)) if self.step.kind == "class" else 1.0
        return self.pod_weight * adaptive * local_pod(maps_old, maps_new, factors=factors)

    def loss(self, module, logits, batch, old):
        y = batch["mask"]
        if self.step.kind == "data":
            return module.loss_fn(logits, y) + self._pod(module, logits, old)
        labels, nu = entropy_pseudo_labels(old["logits"], y, self.step.num_old, self.thresholds, self.step.ignore_index)
        per_pixel = F.cross_entropy(logits.float(), labels, ignore_index=self.step.ignore_index, reduction="none")
        valid = (labels != self.step.ignore_index).float()
        weighted = per_pixel * nu.view(-1, 1, 1) * valid
        ce = weighted.sum() / valid.sum().clamp_min(1.0)
        return ce + self._pod(module, logits, old)


@METHOD_REGISTRY.register("ssul")
class SSUL(Method):
    name = "ssul"
    needs_old_model = True
    init = "zeros"  # the old rows (background included) stay exactly as the parent had them
    strategy = "classifier"
    kinds = ("class",)
    summary = "frozen encoder and decoder, only the new classes' classifier rows learn (SSUL, simplified)"
    confidence: ClassVar[float] = 0.7

    def loss(self, module, logits, batch, old):
        y = batch["mask"].clone()
        p = old["logits"].float().softmax(1)
        conf, cls = p[:, 1:].max(1)  # the old model's best old (non-background) class
        take = (y == 0) & (conf >= self.confidence)
        y[take] = cls[take] + 1
        return F.cross_entropy(logits.float(), y, ignore_index=self.step.ignore_index)


def list_methods() -> list[str]:
    """Names accepted by ``segtune update --method`` (besides ``auto``)."""
    return METHOD_REGISTRY.names()


def build_method(name: str, step: Step, kd_weight: float = 10.0, pod_weight: float = 1.0) -> Method:
    """The method ``name`` for ``step``.

    Raises:
        ConfigError: unknown name (with a suggestion), or a method that does not apply to this
            kind of update (e.g. ``ssul`` for new images of the same classes).
    """
    from ..errors import ConfigError

    cls = METHOD_REGISTRY.get(name, also=("auto",))
    if step.kind not in cls.kinds:
        raise ConfigError(
            f"--method {name}: works for {' and '.join(cls.kinds)}-incremental updates only, this one is "
            f"{step.kind}-incremental (choose one of: "
            f"{', '.join(n for n in list_methods() if step.kind in METHOD_REGISTRY.get(n).kinds)})"
        )
    return cls(step, kd_weight=kd_weight, pod_weight=pod_weight)


class IncrementalModule(SegTuneModule):
    """A :class:`SegTuneModule` whose objective is an incremental :class:`Method`.

    The frozen old model (eval mode, no gradients) runs on every training batch when the method
    needs it; it is held outside the module's parameters, so checkpoints hold only the new model.

    Args:
        model, strategy, loss, optim, num_classes, ignore_index, class_names: as SegTuneModule.
        method: the update method.
        old_model: the parent run's model (``None`` when the method does not need it).
        suppress: classes never predicted in validation (the synthetic background).
        fixed_rows: ``{parameter name: rows}`` of classifier parameters restored after every
            optimiser step (SSUL keeps the old classes' rows unchanged).
    """

    def __init__(self, model: nn.Module, strategy: Any, loss: nn.Module, optim: Any, num_classes: int,
                 ignore_index: int, class_names: list[str] | None, method: Method,
                 old_model: nn.Module | None = None, suppress: list[int] | tuple[int, ...] = (),
                 fixed_rows: int = 0) -> None:
        super().__init__(model, strategy, loss, optim, num_classes, ignore_index, class_names)
        self.method = method
        self._old = [old_model.eval().requires_grad_(False)] if old_model is not None else []
        self.suppress = list(suppress)
        self.fixed_rows = int(fixed_rows)
        self._fixed: dict[str, Tensor] = {}
        self.last_features: list[Tensor] = []

    # ------------------------------------------------------------ old model
    @property
    def old_model(self) -> nn.Module | None:
        return self._old[0] if self._old else None

    @torch.no_grad()
    def old_forward(self, x: Tensor) -> dict[str, Any]:
        """The old model's logits (and features when the method distils them) on ``x``."""
        old = self.old_model
        assert old is not None
        x = self._input(x)
        if self.method.needs_features and getattr(old, "splits_encoder_decoder", False):
            feats, dec = _features(old, x)
            return {"logits": old.net.segmentation_head(dec), "features": [*feats, dec]}
        return {"logits": old(x)}

    def on_fit_start(self) -> None:
        if self.old_model is not None:
            self.old_model.to(self.device)
            if self._channels_last:
                self.old_model.to(memory_format=torch.channels_last)
        if self.fixed_rows:
            self._fixed = {n: p.detach()[: self.fixed_rows].clone()
                           for n, p in self.model.named_parameters() if n in set(self.model.class_head_keys())}
        dm = self.trainer.datamodule
        # whole training images without augmentation, in file order (the training loader's
        # resumable position is left alone)
        loader = torch.utils.data.DataLoader(dm.dataset("train", dm.eval_transform()),
                                             batch_size=int(dm.cfg.val_batch_size), collate_fn=dm.collate_fn())
        self.method.prepare(self, loader)

    # ---------------------------------------------------------------- train
    def forward_train(self, batch: dict[str, Any]) -> Tensor:
        x = self._input(batch["image"])
        if self.method.needs_features and getattr(self.model, "splits_encoder_decoder", False):
            feats, dec = _features(self.model, x)
            self.last_features = [*feats, dec]
            return self.model.net.segmentation_head(dec)
        self.last_features = []
        return self.model(x)

    def training_loss(self, logits: Tensor, batch: dict[str, Any]) -> Tensor:
        old = self.old_forward(batch["image"]) if self.method.needs_old_model else {}
        return self.method.loss(self, logits, batch, old)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._fixed:  # the old classes' classifier rows stay exactly as they were
            with torch.no_grad():
                for n, p in self.model.named_parameters():
                    if n in self._fixed:
                        p[: self.fixed_rows].copy_(self._fixed[n].to(p.device))

    def predict_logits(self, x: Tensor) -> Tensor:
        return suppress_classes(super().predict_logits(x), self.suppress)


def _features(model: nn.Module, x: Tensor) -> tuple[list[Tensor], Tensor]:
    """Encoder features (stride 2 and deeper) and the decoder output of an SMP SegModel."""
    feats = model.encode(x)
    dec = model.net.decoder(feats)
    return [f for f in feats[1:] if f.shape[1] > 0], dec
