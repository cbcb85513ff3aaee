"""Torch-free inference of an exported ``model.onnx``: numpy, Pillow and onnxruntime only.

This module never imports torch, Lightning or segtune's training code (a test runs it in a
fresh process and checks ``sys.modules``), so a deployment needs ``pip install onnxruntime
numpy pillow`` and segtune itself, or just the README's snippet, which does the same in a
dozen lines without segtune.

Everything the model needs is read from the ONNX file's ``metadata_props`` (written by
:func:`segtune.export.export_onnx`): class names, colours, the normalisation (mean/std of
RGB/255) and the size multiple the network needs. The input ``image`` is ``(N, 3, H, W)``
float32 normalised RGB with ``H`` and ``W`` multiples of ``pad_multiple`` (32); the output
``logits`` is ``(N, C, H, W)`` float32. Images are padded (reflect, as
:class:`segtune.inference.Predictor` does) and the logits cropped back, so a mask has the
input's height and width.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, SegtuneError

__all__ = ["OnnxSegmenter", "predict_paths", "read_metadata", "INSTALL_HINT"]

INSTALL_HINT = "install the export extra: pip install 'segtune[export]' (or pip install onnxruntime)"


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise SegtuneError(f"onnxruntime is not installed; {INSTALL_HINT}") from None
    return onnxruntime


def read_metadata(session: Any, path: str | Path) -> dict[str, Any]:
    """The segtune entries of an ONNX session's ``metadata_props``, JSON values decoded.

    Raises:
        SegtuneError: the file was not written by ``segtune export`` (no ``segtune_format`` key).
    """
    raw = dict(session.get_modelmeta().custom_metadata_map)
    if "segtune_format" not in raw:
        raise SegtuneError(
            f"{path}: ONNX file without segtune metadata (classes, normalisation); "
            "export it with `segtune export RUN --format onnx`"
        )
    out: dict[str, Any] = {}
    for k, v in raw.items():
        try:
            out[k] = json.loads(v)
        except (TypeError, ValueError):
            out[k] = v
    return out


class OnnxSegmenter:
    """An exported model ready to segment images, on onnxruntime's CPU provider.

    Args:
        path: ``.onnx`` file written by ``segtune export``.
        threads: intra-op threads (default: onnxruntime's choice, all cores).

    Attributes:
        classes, colors: class names and ``(r, g, b)`` colours (from the metadata).
        mean, std: normalisation of RGB/255 inputs, shape ``(3,)``.
        multiple: H and W are padded to a multiple of this (pixels).
        meta: all segtune metadata entries.
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        path = Path(path)
        if path.suffix.lower() != ".onnx" or not path.is_file():
            what = "not found" if not path.exists() else "not an .onnx file"
            raise DataError(f"{path}: {what} (give the model.onnx written by `segtune export`)")
        ort = _ort()
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise SegtuneError(f"{path}: onnxruntime cannot load it ({str(e).splitlines()[0]}); "
                               "re-export it with `segtune export`") from None
        self.path = path
        self.meta = read_metadata(self.session, path)
        self.classes: list[str] = list(self.meta.get("classes") or [])
        self.colors: list[list[int]] | None = self.meta.get("colors")
        self.ignore_index = int(self.meta.get("ignore_index", 255))
        norm = self.meta.get("normalization") or {}
        self.mean = np.asarray(norm.get("mean", [0.5] * 3), np.float32)
        self.std = np.asarray(norm.get("std", [0.5] * 3), np.float32)
        self.multiple = int(self.meta.get("pad_multiple", 32))
        self._input = self.session.get_inputs()[0].name

    def preprocess(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Same-size ``(H, W, 3)`` uint8 images -> ``(N, 3, H', W')`` float32 network input
        (normalised, padded at the bottom/right to multiples of :attr:`multiple`)."""
        for im in images:
            if im.ndim != 3 or im.shape[2] != 3 or im.dtype != np.uint8 or im.shape != images[0].shape:
                raise DataError(f"expected same-size (H, W, 3) uint8 images, got {im.shape} {im.dtype}")
        x = (np.stack(images).astype(np.float32) / 255.0 - self.mean) / self.std
        h, w = x.shape[1:3]
        ph, pw = -h % self.multiple, -w % self.multiple
        if ph or pw:
            mode = "reflect" if h > ph and w > pw else "edge"  # torch's reflect / replicate
            x = np.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)), mode=mode)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    def logits(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """``(N, C, H, W)`` float32 logits of same-size uint8 images, cropped to their size."""
        h, w = images[0].shape[:2]
        out = self.session.run(None, {self._input: self.preprocess(images)})[0]
        return out[:, :, :h, :w]

    def predict(self, image: np.ndarray | str | Path) -> np.ndarray:
        """Class index mask ``(H, W)`` int64 of one image (path or ``(H, W, 3)`` uint8 array)."""
        if not isinstance(image, np.ndarray):
            image = read_rgb(image)
        return self.logits([image])[0].argmax(0).astype(np.int64)

    __call__ = predict


def read_rgb(path: str | Path) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB of an image file, EXIF orientation applied (Pillow only)."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read the image ({e}); replace it or leave it out") from None


def _palette(colors: list[list[int]] | None) -> list[int]:
    pal = [0] * 768
    for i, c in enumerate(colors or []):
        pal[3 * i : 3 * i + 3] = [int(v) for v in c]
    return pal


def _save_png(path: Path, array: np.ndarray, palette: list[int] | None = None) -> None:
    """Write a PNG through a temporary name + rename (never half-written under ``path``)."""
    from PIL import Image

    from .._io import atomic_path

    im = Image.fromarray(array)
    if palette is not None:
        im.putpalette(palette)
    with atomic_path(path, durable=False) as tmp:
        im.save(tmp)


def _overlay(image: np.ndarray, mask: np.ndarray, colors: list[list[int]] | None, ignore: int) -> np.ndarray:
    pal = np.asarray(_palette(colors), np.float32).reshape(256, 3)
    col = pal[np.clip(mask, 0, 255)]
    blend = 0.5 * image.astype(np.float32) + 0.5 * col
    keep = (mask == ignore)[..., None]
    return np.where(keep, image, blend).round().astype(np.uint8)


def predict_paths(
    model: str | Path | OnnxSegmenter,
    inputs: str | Path | Sequence[str | Path],
    out: str | Path,
    *,
    overlay: bool = False,
    skip_existing: bool = False,
    overwrite: bool = False,
    shard: tuple[int, int] | None = None,
    threads: int | None = None,
) -> list[Path]:
    """Segment image files/folders with an exported model; writes ``OUT/<stem>.png`` palette masks.

    The ``segtune predict MODEL.onnx ...`` path: same outputs as with a run folder (masks whose
    pixel values are class indices, optional ``overlays/``), images read with Pillow (EXIF
    orientation applied), each image whole (no tiling).

    Args:
        model: ``.onnx`` file or a loaded :class:`OnnxSegmenter`.
        inputs: image files and/or folders (searched recursively).
        out: output folder (created when the first mask is written).
        overlay: also write colour overlays to ``OUT/overlays/``.
        skip_existing, overwrite: what to do with masks already in ``out`` (default: refuse).
        shard: ``(i, n)``: only every ``n``-th image of the sorted list, from ``i``.
        threads: onnxruntime intra-op threads.

    Returns:
        The mask files written.
    """
    seg = model if isinstance(model, OnnxSegmenter) else OnnxSegmenter(model, threads=threads)
    from ..data.pairing import collect_images

    files = collect_images(inputs)
    if shard is not None:
        files = sorted(files)[shard[0] :: shard[1]]
    out = Path(out)
    if not skip_existing and not overwrite:
        taken = [f for f in files if (out / f"{f.stem}.png").exists()]
        if taken:
            raise DataError(f"{out / (taken[0].stem + '.png')}: already exists ({len(taken)} outputs would be "
                            "replaced); pass --skip-existing to resume or --overwrite to replace")
    palette = _palette(seg.colors)
    written: list[Path] = []
    for f in files:
        target = out / f"{f.stem}.png"
        if skip_existing and target.exists():
            continue
        image = read_rgb(f)
        mask = seg.predict(image)
        out.mkdir(parents=True, exist_ok=True)
        _save_png(target, mask.astype(np.uint8), palette)
        if overlay:
            (out / "overlays").mkdir(exist_ok=True)
            _save_png(out / "overlays" / f"{f.stem}.png", _overlay(image, mask, seg.colors, seg.ignore_index))
        written.append(target)
    return written
