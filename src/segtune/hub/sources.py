"""Which file holds the pretrained weights of an encoder or a torchvision model.

The answers are read from the libraries' own metadata (timm's ``pretrained_cfg``, SMP's
``pretrained_settings``, torchvision's weights enums), never written out by hand, so every
encoder those libraries know has its source.

==========================  ===========================================  =====================
weights                     file                                          cache
==========================  ===========================================  =====================
timm encoder, ``imagenet``  ``timm/<name>.<tag>`` on the HF hub, or the   HF hub / torch hub
                            timm release URL
SMP encoder, ``imagenet``   ``smp-hub/<name>.imagenet`` on the HF hub     HF hub
torchvision, ``imagenet``   the backbone's ``IMAGENET1K_V1`` URL          torch hub
torchvision, ``coco``       ``COCO_WITH_VOC_LABELS_V1`` URL (21 classes)  torch hub
==========================  ===========================================  =====================
"""

from __future__ import annotations

from .cache import HubFile

__all__ = ["timm_source", "smp_source", "torchvision_source"]


def timm_source(name: str) -> HubFile | None:
    """ImageNet (or the tag's) weights of timm model ``name`` (``resnet50`` or ``resnet50.a1_in1k``).

    Returns:
        None when timm has no pretrained weights for it.
    """
    import timm

    try:
        cfg = timm.get_pretrained_cfg(name)
    except Exception:  # noqa: BLE001 - an unknown tag simply has no weights
        cfg = None
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        return None
    fname = getattr(cfg, "hf_hub_filename", None)
    names = (fname,) if fname else ("model.safetensors", "pytorch_model.bin")
    tag = f"{name.split('.')[0]}.{cfg.tag}" if getattr(cfg, "tag", None) else name
    return HubFile(label=f"timm {tag} weights", url=cfg.url or None, hf_repo=cfg.hf_hub_id or None,
                   hf_filenames=names)


def smp_source(name: str, weights: str = "imagenet") -> HubFile | None:
    """Weights ``weights`` of SMP's own encoder ``name`` (``vgg16``, ``resnet50``...), or None."""
    from segmentation_models_pytorch.encoders import encoders

    settings = (encoders.get(name) or {}).get("pretrained_settings", {}).get(weights)
    if not settings or "repo_id" not in settings:
        return None
    return HubFile(label=f"SMP {name} {weights} weights", hf_repo=settings["repo_id"],
                   hf_filenames=("model.safetensors",), hf_revision=settings.get("revision"))


def torchvision_source(enum_name: str, member: str) -> HubFile:
    """A torchvision weights file, e.g. ``("DeepLabV3_ResNet50_Weights", "COCO_WITH_VOC_LABELS_V1")``."""
    import torchvision.models as tvm
    import torchvision.models.segmentation as tvseg

    enum = getattr(tvseg, enum_name, None) or getattr(tvm, enum_name)
    w = enum[member]
    return HubFile(label=f"torchvision {enum_name}.{member}", url=w.url)
