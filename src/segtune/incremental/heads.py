"""Growing a segmentation model's classifier for new classes (class-incremental steps).

:func:`expand_classifier` widens one conv; :func:`grow_model_classes` widens every class conv
of a :class:`~segtune.models.SegModel` in place. The old output channels are exact copies
(weights and bias), so their logits stay bitwise identical, except that the ``mib`` rule lowers
the background bias on purpose.

Init rules for the new channels live in :data:`INIT_REGISTRY` (each update method names its
own in ``Method.init``):

* ``mib`` (MiB, Cermelli et al. 2020): each new channel copies the background channel's
  weights; every new bias **and the background bias** become ``b_0 - log(num_new + 1)``. On
  every pixel the background and the new classes then split the old background probability
  evenly, and the old classes keep theirs.
* ``zeros``: new weights and biases 0 (new logits 0 everywhere).
* ``random``: PyTorch's default conv initialisation for the new channels.

Models whose logits are a sum of several convs (``lraspp_mobilenet_v3_large``: a low-level and
a high-level branch, ``low_classifier(low) + high_classifier(high)``) have every such conv
grown; the ``mib`` bias shift is split evenly between them so the summed logits are shifted by
``log(num_new + 1)`` once.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from .._registry import Registry

__all__ = [
    "INIT_REGISTRY",
    "InitRule",
    "expand_classifier",
    "find_classifier",
    "find_classifiers",
    "grow_model_classes",
]

#: ``rule(weight, bias, num_old, bias_share)``: fill the new rows ``[num_old:]`` of a grown
#: conv's weight (C_out, C_in, k, k) and bias (C_out,) (or None) in place; ``bias_share`` is
#: the fraction of a bias shift this conv carries (1 for a single classifier conv).
InitRule = Callable[[Tensor, Tensor | None, int, float], None]

INIT_REGISTRY: Registry[InitRule] = Registry("classifier init", "Method.init")


@INIT_REGISTRY.register("mib")
def _init_mib(weight: Tensor, bias: Tensor | None, num_old: int, bias_share: float) -> None:
    """New channels copy background; new and background biases become ``b_0 - log(n + 1)``."""
    num_new = weight.shape[0] - num_old
    weight[num_old:] = weight[0]
    if bias is None:
        if bias_share:
            raise ValueError("init 'mib' needs a classifier conv with a bias")
        return
    b0 = bias[0].clone()
    shifted = b0 - math.log(num_new + 1) * bias_share
    bias[num_old:] = shifted
    bias[0] = shifted  # intended: background gives up its share to the new classes


@INIT_REGISTRY.register("zeros")
def _init_zeros(weight: Tensor, bias: Tensor | None, num_old: int, bias_share: float) -> None:
    """New weights and biases 0."""
    weight[num_old:] = 0.0
    if bias is not None:
        bias[num_old:] = 0.0


@INIT_REGISTRY.register("random")
def _init_random(weight: Tensor, bias: Tensor | None, num_old: int, bias_share: float) -> None:
    """Keep the fresh conv's default (Kaiming-uniform) initialisation of the new channels."""


def expand_classifier(
    conv: nn.Conv2d, num_new: int, init: str = "mib", *, bias_share: float = 1.0
) -> nn.Conv2d:
    """A copy of ``conv`` with ``num_new`` more output channels.

    Args:
        conv: the classifier conv (any kernel size, ``groups == 1``), C_old output channels.
        num_new: output channels to add (>= 1).
        init: name of a rule in :data:`INIT_REGISTRY` for the new channels.
        bias_share: fraction of the ``mib`` bias shift put on this conv (see the module
            docstring; 1 for a model with a single classifier conv).

    Returns:
        A new ``nn.Conv2d`` (same device, dtype, hyper-parameters, ``requires_grad`` and
        train/eval mode) with ``C_old + num_new`` outputs; output channels ``[0, C_old)`` are
        exact copies of ``conv``'s, except the background bias under ``mib``.

    Raises:
        ConfigError: unknown ``init``.
        ValueError: not a Conv2d, grouped conv, or ``num_new < 1``.
    """
    if not isinstance(conv, nn.Conv2d) or conv.groups != 1:
        raise ValueError(f"expected an nn.Conv2d with groups=1, got {conv!r}")
    if isinstance(num_new, bool) or not isinstance(num_new, int) or num_new < 1:
        raise ValueError(f"num_new={num_new!r} must be a positive integer")
    rule = INIT_REGISTRY.get(init)
    num_old = conv.out_channels
    new = nn.Conv2d(
        conv.in_channels,
        num_old + num_new,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=1,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    with torch.no_grad():
        new.weight[:num_old].copy_(conv.weight)
        if conv.bias is not None:
            new.bias[:num_old].copy_(conv.bias)
        rule(new.weight, new.bias, num_old, float(bias_share))
    new.weight.requires_grad_(conv.weight.requires_grad)
    if conv.bias is not None:
        new.bias.requires_grad_(conv.bias.requires_grad)
    new.train(conv.training)
    return new


def find_classifiers(
    model: nn.Module, num_classes: int | None = None
) -> list[tuple[nn.Module, str, nn.Conv2d]]:
    """Every conv that produces the class logits, as ``(parent, attribute name, conv)``.

    For a :class:`~segtune.models.SegModel` the candidates are the modules its
    ``class_head_keys()`` name (the head layers whose shape depends on ``num_classes``): one
    conv for SMP architectures and the torchvision FCN/DeepLabV3, two for LR-ASPP. Scanning
    the whole head by channel count would be wrong: with ``num_classes=16`` a U-Net's last
    decoder convs also output 16 channels. For any other module, the last ``nn.Conv2d`` (in
    module order) with ``num_classes`` outputs is returned alone.

    Args:
        model: a SegModel, or any module when ``num_classes`` is given.
        num_classes: current class count; default ``model.num_classes``.

    Returns:
        Non-empty list in module order; ``setattr(parent, name, new_conv)`` replaces one.

    Raises:
        ValueError: no class count known or no matching conv.
    """
    n = getattr(model, "num_classes", None) if num_classes is None else num_classes
    if n is None:
        raise ValueError(f"{type(model).__name__} has no num_classes attribute: pass num_classes")
    head_keys = getattr(model, "class_head_keys", None)
    if callable(head_keys):
        names = list(dict.fromkeys(k.rsplit(".", 1)[0] for k in head_keys()))
        found = [(nm, model.get_submodule(nm)) for nm in names]
        convs = [(nm, m) for nm, m in found if isinstance(m, nn.Conv2d) and m.out_channels == n]
    else:
        convs = [
            (nm, m)
            for nm, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and m.out_channels == n
        ][-1:]
    if not convs:
        raise ValueError(f"{type(model).__name__}: no conv with {n} output channels in the head")
    out = []
    for name, conv in convs:
        parent_name, _, attr = name.rpartition(".")
        out.append((model.get_submodule(parent_name), attr, conv))
    return out


def find_classifier(
    model: nn.Module, num_classes: int | None = None
) -> tuple[nn.Module, str, nn.Conv2d]:
    """The last class conv of :func:`find_classifiers` (the only one for most models)."""
    return find_classifiers(model, num_classes)[-1]


def grow_model_classes(model: nn.Module, num_new: int, init: str = "mib") -> list[str]:
    """Add ``num_new`` classes to a model in place by widening every class conv.

    Each conv of :func:`find_classifiers` is replaced by :func:`expand_classifier` (the ``mib``
    bias shift split evenly between them) and ``model.num_classes`` grows when the model has
    that attribute, so ``describe()`` and saved model files reflect the new class count. Build
    the optimizer after this call: the replaced parameters are new tensors.

    Args:
        model: a SegModel (or a module with a ``num_classes`` attribute).
        num_new: classes to add (>= 1).
        init: rule name in :data:`INIT_REGISTRY`.

    Returns:
        Qualified names of the replaced convs.
    """
    INIT_REGISTRY.get(init)  # an unknown name fails before the model is touched
    found = find_classifiers(model)
    by_id = {id(m): nm for nm, m in model.named_modules()}
    names = [by_id[id(conv)] for _, _, conv in found]
    for parent, attr, conv in found:
        setattr(parent, attr, expand_classifier(conv, num_new, init, bias_share=1.0 / len(found)))
    if hasattr(model, "num_classes"):
        model.num_classes = int(model.num_classes) + num_new
    return names


def add_background(model: nn.Module) -> list[str]:
    """Prepend a background channel (index 0) to every class conv of ``model``, in place.

    For a model trained without a background class, before its first class-incremental update:
    the background is *synthetic* ("not one of this step's classes"). Its weights and bias start
    at 0, the old class channels move to ``[1, C + 1)`` as exact copies, so their logits are
    unchanged; ``model.num_classes`` grows by one.

    Returns:
        Qualified names of the replaced convs.
    """
    found = find_classifiers(model)
    by_id = {id(m): nm for nm, m in model.named_modules()}
    names = [by_id[id(conv)] for _, _, conv in found]
    for parent, attr, conv in found:
        grown = expand_classifier(conv, 1, "zeros")
        with torch.no_grad():  # move the new (zero) channel to the front
            order = [conv.out_channels, *range(conv.out_channels)]
            grown.weight.copy_(grown.weight[order].clone())
            if grown.bias is not None:
                grown.bias.copy_(grown.bias[order].clone())
        setattr(parent, attr, grown)
    if hasattr(model, "num_classes"):
        model.num_classes = int(model.num_classes) + 1
    return names
