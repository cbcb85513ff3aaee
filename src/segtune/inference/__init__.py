"""Inference: a trained model segmenting images of any size (padding, Gaussian-blended tiles,
test-time augmentation, probability maps and class areas, batch folders)."""

from .predictor import Predictor, collect_images, predict
from .tiling import list_blends
from .tta import TTA, parse_tta

__all__ = ["Predictor", "predict", "collect_images", "TTA", "parse_tta", "list_blends"]
