"""Prediction with trained runs."""

from .predictor import IMAGE_EXTENSIONS, Predictor, collect_images, predict, progress_iter

__all__ = ["Predictor", "predict", "collect_images", "progress_iter", "IMAGE_EXTENSIONS"]
