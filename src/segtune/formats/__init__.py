"""Standard data set layouts (Pascal VOC, Cityscapes, ADE20K) and labelling-tool exports (COCO JSON).

A layout turns a folder in a well-known structure into the ``dataset.yaml`` schema
(:mod:`segtune.data.spec` reads it): class names, colours, the ignore value, a label map from the
stored values to class ids, and the splits (folders, split list files, file-name suffixes). It is
named with ``format:`` in dataset.yaml, or detected when exactly one layout matches a folder
without a dataset.yaml. COCO JSON annotations are rasterised to index masks once and cached
(:mod:`segtune.formats.coco`).

This package imports nothing from :mod:`segtune.data` (the data package imports it).
"""

from __future__ import annotations

from .layouts import LAYOUTS, Layout, describe_layout, detect_layouts, list_layouts

__all__ = ["LAYOUTS", "Layout", "describe_layout", "detect_layouts", "list_layouts"]
