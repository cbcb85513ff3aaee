"""Deployment: ONNX export (float and INT8) checked against PyTorch, and torch-free inference.

* :func:`export_onnx` (``segtune export RUN --format onnx``): ``model.onnx`` with dynamic batch,
  height and width, class names, colours, normalisation and the run's SHA-256 in its metadata;
  verified on real images before it is written.
* :mod:`segtune.export.runtime`: :class:`~segtune.export.runtime.OnnxSegmenter` runs the file with
  numpy, Pillow and onnxruntime only (``segtune predict MODEL.onnx ...`` uses it).

Names are imported lazily, so ``import segtune.export.runtime`` never pulls in torch.
"""

from __future__ import annotations

from .._lazy import lazy_getattr

__all__ = ["export_onnx", "ExportReport", "OnnxSegmenter", "FORMATS"]

_LAZY = {"export_onnx": ".onnx", "ExportReport": ".onnx", "OnnxSegmenter": ".runtime", "FORMATS": ".formats"}


__getattr__ = lazy_getattr(__name__, _LAZY)
