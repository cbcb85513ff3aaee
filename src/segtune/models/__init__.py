"""Segmentation models: SMP decoders on timm encoders and torchvision models, offline weights.

Public API: :func:`create_model`, :class:`SegModel`, :func:`list_architectures`,
:func:`list_encoders`, :func:`efficientnet_lite_state_dict`, :func:`load_state_file`.
"""

from .factory import ARCHITECTURES, DEFAULT_ENCODER, SegModel, create_model, list_architectures
from .weights import (
    BUNDLED_ENCODERS,
    efficientnet_lite_state_dict,
    list_encoders,
    load_state_file,
    remap_efficientnet_lite,
)

__all__ = [
    "ARCHITECTURES",
    "BUNDLED_ENCODERS",
    "DEFAULT_ENCODER",
    "SegModel",
    "create_model",
    "efficientnet_lite_state_dict",
    "list_architectures",
    "list_encoders",
    "load_state_file",
    "remap_efficientnet_lite",
]
