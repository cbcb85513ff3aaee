"""Inference: a trained model segmenting images of any size (padding, tiling, batch folders)."""

from .predictor import Predictor, collect_images, predict

__all__ = ["Predictor", "predict", "collect_images"]
