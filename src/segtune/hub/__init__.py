"""Pretrained weights from the torch / Hugging Face caches or the network, never hanging offline.

Public API: :class:`HubFile`, :func:`fetch`, :func:`cached_path`, :func:`offline_reason`,
:func:`torch_hub_dir`, :func:`hf_hub_cache`, and the sources :func:`timm_source`,
:func:`smp_source`, :func:`torchvision_source`.
"""

from .cache import (
    OFFLINE_ENV,
    HubFile,
    cached_path,
    fetch,
    hf_hub_cache,
    offline_reason,
    torch_hub_dir,
)
from .sources import smp_source, timm_source, torchvision_source

__all__ = [
    "OFFLINE_ENV",
    "HubFile",
    "cached_path",
    "fetch",
    "hf_hub_cache",
    "offline_reason",
    "smp_source",
    "timm_source",
    "torch_hub_dir",
    "torchvision_source",
]
