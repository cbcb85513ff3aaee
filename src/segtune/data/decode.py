"""Reading images and masks from disk, with the traps of Pillow handled.

* Images: EXIF orientation applied, gray / 1-bit replicated to 3 channels, alpha dropped
  (warning when it varies), CMYK converted, 16-bit scaled by bit depth (never clipped),
  multi-frame files read at their first frame. Always ``(H, W, 3) uint8``.
* Masks: class indices as ``(H, W) int64``. 8/16-bit single-channel values are kept as they
  are (no clipping), palette PNG indices ARE the class ids (never ``convert('L')``), RGB colour
  masks are mapped through ``DatasetSpec.colors``, binary masks are thresholded at
  ``binary_threshold`` (0/255 -> 0/1), and a ``label_map`` (stored value -> class id) is applied.
* JPEG masks (lossy: stray values on class edges) are snapped to the nearest valid value (class
  id, ignore value, label-map key or class colour); the number of changed pixels is kept in
  ``_Decoded.changed`` for check-data.
* Unreadable, empty, truncated, non-image and over-large files raise
  :class:`DecodeError` (a :class:`~segtune.errors.DataError`) with a one-line message
  ``<file>: <what is wrong> (<how to fix>)``.
"""

from __future__ import annotations

import stat
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .. import _log
from ..errors import DataError


class MaskEncoding(Protocol):
    """What decoding a mask needs to know of a data set (:class:`~segtune.data.spec.DatasetSpec`
    provides it; decoding does not import the spec module)."""

    mask_format: str
    colors: list[tuple[int, int, int]] | None
    ignore_color: tuple[int, int, int] | None
    ignore_index: int
    ignore_index_explicit: bool
    unknown_as_ignore: bool
    binary_threshold: int
    label_map: dict[int, int] | None

    @property
    def num_classes(self) -> int: ...

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DecodeError",
    "MaskEncoding",
    "read_image",
    "read_mask",
    "image_size",
    "mask_values_summary",
]

DEFAULT_MAX_PIXELS = 180_000_000
_ORIENTATION_TAG = 0x0112
_SKIP_HINT = "replace or re-export the file, or remove it; train --skip-bad (data.skip_bad) trains without it"


class DecodeError(DataError):
    """A file could not be decoded as a usable image or mask.

    Attributes:
        path: the offending file.
        what: what is wrong (one line).
        hint: how to fix it (one line, may be empty).
    """

    def __init__(self, path: str | Path, what: str, hint: str = "") -> None:
        self.path = str(path)
        self.what = what
        self.hint = hint
        super().__init__(f"{_safe_name(path)}: {what}" + (f" ({hint})" if hint else ""))


@dataclass
class _Decoded:
    """Result of an internal decode: the array plus what was noticed on the way."""

    array: np.ndarray
    notes: list[tuple[str, str]] = field(default_factory=list)  # (kind, message)
    orientation: int = 1
    raw_size: tuple[int, int] = (0, 0)  # (W, H) as stored, before EXIF transpose
    changed: int = 0  # mask pixels snapped (JPEG) or thresholded (binary) to a valid value


# ------------------------------------------------------------------ notices
_NOTICED: set[str] = set()


def _notice_once(kind: str, path: Path | str, msg: str, level: str = "warn") -> None:
    """Log a per-file notice once per kind per process (training reads thousands of files)."""
    if kind in _NOTICED:
        return
    _NOTICED.add(kind)
    text = (
        f"{path}: {msg} (further files like this are not reported; run check-data for a full list)"
    )
    (_log.warn if level == "warn" else _log.info)(text)


_INFO_KINDS = {"cmyk", "binary_threshold"}


def _emit(path: Path, notes: list[tuple[str, str]]) -> None:
    for kind, msg in notes:
        _notice_once(kind, path, msg, "info" if kind in _INFO_KINDS else "warn")


# ------------------------------------------------------------------ opening
def _safe_name(path: Path | str) -> str:
    return str(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _pillow_message(e: BaseException, path: Path) -> str:
    msg = str(e) or type(e).__name__
    for form in (repr(str(path)), str(path)):
        msg = msg.replace(form, "").replace("  ", " ")
    return msg.strip().rstrip(":").strip() or type(e).__name__


def _check_file(path: Path, kind: str) -> None:
    try:
        st = path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            raise DecodeError(
                path, "broken symbolic link", "point the link at an existing file, or remove it"
            ) from None
        raise DecodeError(path, "file not found", "check the path, or re-run check-data") from None
    except OSError as e:
        raise DecodeError(
            path, f"cannot access file ({e.strerror or e})", "check permissions and symlinks"
        ) from None
    if not stat.S_ISREG(st.st_mode):
        raise DecodeError(
            path, f"not a regular file, cannot read it as an {kind}", "remove it from the folder"
        )
    if st.st_size == 0:
        raise DecodeError(path, "empty file (0 bytes)", _SKIP_HINT)


def _raise_limit(max_pixels: int) -> None:
    """Let Pillow open images up to ``max_pixels`` (its bomb guard is raised, never lowered)."""
    cur = Image.MAX_IMAGE_PIXELS
    if cur is not None and cur < max_pixels:
        Image.MAX_IMAGE_PIXELS = int(max_pixels)


_LIMIT_LOCK = threading.Lock()


def _header_size(path: Path) -> tuple[int, int] | None:
    """``(W, H)`` from the file header with Pillow's bomb guard off (nothing is decoded)."""
    with _LIMIT_LOCK:
        old = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with Image.open(path) as im:
                    return tuple(im.size)  # type: ignore[return-value]
        except Exception:  # noqa: BLE001 - only used to make a message more precise
            return None
        finally:
            Image.MAX_IMAGE_PIXELS = old


def _px(n: int) -> str:
    return f"{n / 1e6:.0f} Mpx" if n >= 10_000_000 else f"{n:,} px"


def _too_big(
    path: Path, size: tuple[int, int] | None, max_pixels: int, kind: str = "image"
) -> DecodeError:
    desc = f"{size[0]}x{size[1]} = {_px(size[0] * size[1])}" if size else "too many pixels"
    return DecodeError(
        path,
        f"{kind} is {desc}, above the limit of {_px(max_pixels)}",
        "raise the limit with --max-pixels (data.max_pixels) if you trust the file; "
        "predict runs large images in tiles, for training cut it into tiles",
    )


def _open(path: Path, max_pixels: int, kind: str, load: bool = True) -> Image.Image:
    """Open ``path`` with Pillow, refusing empty, non-image and over-limit files; optionally load pixels."""
    _check_file(path, kind)
    _raise_limit(max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except Image.DecompressionBombError:
        raise _too_big(path, _header_size(path), max_pixels, kind) from None
    except UnidentifiedImageError:
        raise DecodeError(
            path, "not an image Pillow can read (cannot identify image file)", _SKIP_HINT
        ) from None
    except Exception as e:  # noqa: BLE001 - any decoder failure is a bad file
        raise DecodeError(
            path, f"cannot open {kind}: {_pillow_message(e, path)}", _SKIP_HINT
        ) from None
    w, h = im.size
    if w * h > max_pixels:
        im.close()
        raise _too_big(path, (w, h), max_pixels, kind)
    if w <= 0 or h <= 0:
        im.close()
        raise DecodeError(path, f"{kind} has no pixels ({w}x{h})", _SKIP_HINT)
    if load:
        try:
            im.load()
        except Exception as e:  # noqa: BLE001 - truncated / corrupt data
            im.close()
            raise DecodeError(
                path, f"corrupt or truncated {kind}: {_pillow_message(e, path)}", _SKIP_HINT
            ) from None
    return im


def _orientation(im: Image.Image, loaded: bool = True) -> int:
    """EXIF orientation (1..8) without decoding pixels where the format allows it."""
    if im.format == "PNG" and not loaded:  # PNG getexif() would decode the pixels
        raw = im.info.get("exif")
        if not raw:
            return 1
        ex = Image.Exif()
        ex.load(raw if isinstance(raw, bytes) else bytes(raw))
        o = ex.get(_ORIENTATION_TAG, 1)
    else:
        o = im.getexif().get(_ORIENTATION_TAG, 1)
    try:
        o = int(o)
    except (TypeError, ValueError):
        return 1
    return o if 1 <= o <= 8 else 1


def _apply_orientation(
    im: Image.Image, notes: list[tuple[str, str]], path: Path
) -> tuple[Image.Image, int]:
    try:
        o = _orientation(im)
    except Exception as e:  # noqa: BLE001 - malformed EXIF must not kill training
        notes.append(
            ("exif_bad", f"unreadable EXIF data, orientation ignored ({_pillow_message(e, path)})")
        )
        return im, 1
    if o == 1:
        return im, 1
    try:
        return ImageOps.exif_transpose(im), o
    except Exception as e:  # noqa: BLE001
        notes.append(
            ("exif_bad", f"could not apply EXIF orientation {o} ({_pillow_message(e, path)})")
        )
        return im, 1


def _frames(im: Image.Image, notes: list[tuple[str, str]], what: str) -> None:
    n = getattr(im, "n_frames", 1) or 1
    if n > 1:
        notes.append(("multiframe", f"{what} has {n} frames/pages, using the first"))


def _scale16(a: np.ndarray, bits: int) -> np.ndarray:
    a = np.clip(a.astype(np.float64), 0, 2**bits - 1)
    return np.rint(a * (255.0 / (2**bits - 1))).astype(np.uint8)


def _drop_alpha(rgb: np.ndarray, alpha: np.ndarray, notes: list[tuple[str, str]]) -> np.ndarray:
    if alpha.size and alpha.min() != alpha.max():
        notes.append(
            ("alpha_varies", "image has a varying alpha (transparency) channel; it is dropped")
        )
    return rgb


# ------------------------------------------------------------------ images
def _read_image(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> _Decoded:
    notes: list[tuple[str, str]] = []
    im = _open(path, max_pixels, "image")
    try:
        _frames(im, notes, "image")
        raw_size = im.size
        im2, orient = _apply_orientation(im, notes, path)
        arr = _to_rgb(im2, notes)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001
        raise DecodeError(
            path, f"cannot convert image: {_pillow_message(e, path)}", _SKIP_HINT
        ) from None
    finally:
        im.close()
    return _Decoded(np.ascontiguousarray(arr), notes, orient, raw_size)


def _to_rgb(im: Image.Image, notes: list[tuple[str, str]]) -> np.ndarray:
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im)
    if mode == "L":
        g = np.asarray(im)
        return np.repeat(g[:, :, None], 3, axis=2)
    if mode == "1":
        g = np.asarray(im.convert("L"))
        return np.repeat(g[:, :, None], 3, axis=2)
    if mode in ("P", "PA"):
        if mode == "PA" or "transparency" in im.info:
            a = np.asarray(im.convert("RGBA"))
            return _drop_alpha(a[:, :, :3], a[:, :, 3], notes)
        return np.asarray(im.convert("RGB"))
    if mode in ("LA", "La"):
        a = np.asarray(im.convert("LA"))
        return _drop_alpha(np.repeat(a[:, :, :1], 3, axis=2), a[:, :, 1], notes)
    if mode in ("RGBA", "RGBa"):
        a = np.asarray(im.convert("RGBA"))
        return _drop_alpha(a[:, :, :3], a[:, :, 3], notes)
    if mode == "CMYK":
        notes.append(("cmyk", "CMYK image converted to RGB"))
        return np.asarray(im.convert("RGB"))
    if mode.startswith("I;16"):
        notes.append(("16bit", "16-bit image scaled to 8 bit by bit depth (value x 255/65535)"))
        g = _scale16(np.asarray(im), 16)
        return np.repeat(g[:, :, None], 3, axis=2)
    if mode == "I":
        a = np.asarray(im)
        bits = 16 if a.size == 0 or int(a.max()) <= 65535 else 32
        notes.append(
            ("16bit", f"{bits}-bit image scaled to 8 bit by bit depth (value x 255/{2**bits - 1})")
        )
        g = _scale16(a, bits)
        return np.repeat(g[:, :, None], 3, axis=2)
    if mode == "F":
        a = np.nan_to_num(np.asarray(im, dtype=np.float64))
        if a.size and a.min() >= 0 and a.max() <= 1:
            g = np.rint(a * 255).astype(np.uint8)
        else:
            notes.append(("float", "floating-point image clipped to 0..255"))
            g = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return np.repeat(g[:, :, None], 3, axis=2)
    return np.asarray(im.convert("RGB"))


def read_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image as RGB.

    Args:
        path: image file (png, jpg, tif, bmp, ...).
        max_pixels: refuse images with more pixels than this (Pillow's bomb guard is raised to it).

    Returns:
        ``(H, W, 3) uint8`` array, EXIF orientation applied (so ``H, W`` are the displayed size).

    Raises:
        DecodeError: (a DataError) missing, empty, non-image, truncated/corrupt or over-large file.
    """
    p = Path(path)
    d = _read_image(p, max_pixels)
    _emit(p, d.notes)
    return d.array


def image_size(path: str | Path, max_pixels: int | None = None) -> tuple[int, int]:
    """Size of an image from its header, EXIF orientation applied, without decoding pixels.

    Args:
        path: image or mask file.
        max_pixels: when given, refuse files above this many pixels (DecodeError).

    Returns:
        ``(W, H)`` as displayed (swapped for EXIF orientations 5..8).

    Raises:
        DecodeError: missing, empty or non-image file (or over ``max_pixels``).
    """
    p = Path(path)
    im = _open(p, max_pixels if max_pixels is not None else 1 << 62, "image", load=False)
    try:
        w, h = im.size
        try:
            o = _orientation(im, loaded=False)
        except Exception:  # noqa: BLE001 - malformed EXIF: stored size
            o = 1
    finally:
        im.close()
    return (h, w) if o in (5, 6, 7, 8) else (w, h)


# ------------------------------------------------------------------ masks
def _mask_array(im: Image.Image, path: Path, as_rgb: bool) -> tuple[np.ndarray, bool]:
    """Raw mask values: ``(H, W)`` integer array, or ``(H, W, 3)`` for colour masks.

    Returns ``(array, is_palette)``. Constant alpha channels are dropped; varying alpha is an error.
    """
    mode = im.mode
    if mode == "P":
        if as_rgb:
            return np.asarray(im.convert("RGB")), False
        return np.asarray(im), True
    if mode == "PA":
        a = np.asarray(im)
        _mask_alpha(a[:, :, 1], path, 2)
        if as_rgb:
            return np.asarray(im.convert("RGB")), False
        return np.ascontiguousarray(a[:, :, 0]), True
    if mode == "1":
        return np.asarray(im).astype(np.uint8), False
    if mode == "L" or mode.startswith("I;16") or mode == "I":
        return np.asarray(im), False
    if mode in ("LA", "La"):
        a = np.asarray(im.convert("LA"))
        _mask_alpha(a[:, :, 1], path, 2)
        return np.ascontiguousarray(a[:, :, 0]), False
    if mode == "F":
        a = np.asarray(im, dtype=np.float64)
        if not np.all(np.isfinite(a)) or not np.all(a == np.round(a)):
            raise DecodeError(
                path,
                "floating-point mask with fractional values (class ids must be integers)",
                "save masks as 8/16-bit PNG with one class index per pixel",
            )
        return a.astype(np.int64), False
    if mode == "RGB":
        return np.asarray(im), False
    if mode == "RGBX":
        return np.asarray(im.convert("RGB")), False
    if mode in ("RGBA", "RGBa"):
        a = np.asarray(im.convert("RGBA"))
        _mask_alpha(a[:, :, 3], path, 4)
        return np.ascontiguousarray(a[:, :, :3]), False
    raise DecodeError(
        path,
        f"mask has unsupported colour mode {mode} ({len(im.getbands())} channels)",
        "save masks as single-channel class-index PNG, palette PNG or RGB PNG",
    )


def _mask_alpha(alpha: np.ndarray, path: Path, channels: int) -> None:
    if alpha.size and alpha.min() != alpha.max():
        raise DecodeError(
            path,
            f"{channels}-channel mask with a varying alpha channel so it is unclear which channel holds the classes",
            "save masks as single-channel class-index PNG, or RGB without alpha",
        )


def _map_colors(
    rgb: np.ndarray, spec: MaskEncoding, path: Path, notes: list[tuple[str, str]] | None = None
) -> np.ndarray:
    """Map ``(H, W, 3) uint8`` colours to ``(H, W) int64`` class ids through ``spec.colors``.

    Colours not in ``spec.colors`` raise :class:`DecodeError`, or become ``spec.ignore_index``
    (with a note appended to ``notes``) when ``spec.unknown_as_ignore`` is set.
    """
    colors = list(spec.colors or [])
    ids = list(range(len(colors)))
    if spec.ignore_color is not None:
        colors.append(tuple(spec.ignore_color))
        ids.append(spec.ignore_index)
    rgb = rgb.astype(np.int64, copy=False)
    codes = (rgb[:, :, 0] << 16) | (rgb[:, :, 1] << 8) | rgb[:, :, 2]
    keys = np.array([(r << 16) | (g << 8) | b for r, g, b in colors], dtype=np.int64)
    vals = np.array(ids, dtype=np.int64)
    order = np.argsort(keys)
    keys, vals = keys[order], vals[order]
    idx = np.clip(np.searchsorted(keys, codes), 0, max(len(keys) - 1, 0))
    hit = keys[idx] == codes if len(keys) else np.zeros(codes.shape, bool)
    if not hit.all():
        uniq, counts = np.unique(codes[~hit], return_counts=True)
        order2 = np.argsort(-counts)
        shown = ", ".join(
            f"({c >> 16}, {(c >> 8) & 255}, {c & 255}) x {n} px"
            for c, n in zip(uniq[order2][:5], counts[order2][:5], strict=True)
        )
        more = f" and {len(uniq) - 5} more" if len(uniq) > 5 else ""
        what = f"{int(counts.sum())} pixels have {len(uniq)} colour(s) not in dataset.yaml colors: {shown}{more}"
        if spec.unknown_as_ignore:
            out = vals[idx]
            out[~hit] = spec.ignore_index
            if notes is not None:
                notes.append(("unknown_colors", f"{what}; read as ignore_index {spec.ignore_index} (unknown_as_ignore)"))
            return out
        raise DecodeError(
            path,
            what,
            "add them to colors: in dataset.yaml (one per class), set ignore_color: for unlabelled pixels "
            "or unknown_as_ignore: true to read every unknown colour as ignore, or fix the mask",
        )
    return vals[idx]


def _read_mask(path: Path, spec: MaskEncoding, max_pixels: int = DEFAULT_MAX_PIXELS) -> _Decoded:
    notes: list[tuple[str, str]] = []
    im = _open(path, max_pixels, "mask")
    try:
        _frames(im, notes, "mask")
        raw_size = im.size
        im2, orient = _apply_orientation(im, notes, path)
        fmt = spec.mask_format
        a, is_pal = _mask_array(im2, path, as_rgb=(fmt == "rgb"))
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001
        raise DecodeError(
            path, f"cannot read mask: {_pillow_message(e, path)}", _SKIP_HINT
        ) from None
    finally:
        im.close()
    jpeg = path.suffix.lower() in (".jpg", ".jpeg")
    if jpeg:
        notes.append(("jpeg_mask", "JPEG mask: lossy compression puts stray values on class edges"))
    if a.ndim == 3:
        equal = bool(
            np.array_equal(a[:, :, 0], a[:, :, 1]) and np.array_equal(a[:, :, 0], a[:, :, 2])
        )
        if fmt != "rgb" and equal:
            a = np.ascontiguousarray(a[:, :, 0])
        else:
            _check_colour_mask(path, spec, fmt)
            changed = 0
            if jpeg:
                a, changed = _snap_colors(a, spec)
            return _Decoded(_map_colors(a, spec, path, notes), notes, orient, raw_size, changed)
    elif fmt == "rgb":
        g = a.astype(np.int64)
        if g.size and (g.min() < 0 or g.max() > 255):
            raise DecodeError(
                path,
                "mask_format: rgb but the mask is a 16-bit single-channel image",
                "set mask_format: index for class-index masks",
            )
        rgb = np.repeat(g[:, :, None], 3, axis=2)
        changed = 0
        if jpeg:
            rgb, changed = _snap_colors(rgb, spec)
        return _Decoded(_map_colors(rgb, spec, path, notes), notes, orient, raw_size, changed)
    out, changed = _index_values(a.astype(np.int64), spec, is_pal, jpeg, notes)
    return _Decoded(out, notes, orient, raw_size, changed)


def _check_colour_mask(path: Path, spec: MaskEncoding, fmt: str) -> None:
    """Refuse a colour mask the data set cannot map (wrong format, or no colours)."""
    if fmt in ("index", "palette", "binary"):
        raise DecodeError(
            path,
            f"RGB colour mask but dataset.yaml says mask_format: {fmt}",
            "set mask_format: rgb and list colors: (one [r, g, b] per class) in dataset.yaml",
        )
    if fmt != "rgb" and spec.colors is None:
        raise DecodeError(
            path,
            "RGB colour mask but dataset.yaml has no colors:",
            "add colors: to dataset.yaml, one [r, g, b] per class in class order",
        )


def _index_values(
    out: np.ndarray, spec: MaskEncoding, is_pal: bool, jpeg: bool, notes: list[tuple[str, str]]
) -> tuple[np.ndarray, int]:
    """Single-channel stored values ``(H, W) int64`` -> class ids, and the pixels snapped/thresholded."""
    fmt = spec.mask_format
    if fmt == "binary":
        thr = int(getattr(spec, "binary_threshold", 128))
        notes.append(("binary_threshold", f"binary masks: values >= {thr} are class 1, below are class 0 "
                                          "(binary_threshold in dataset.yaml; 0/1 masks are read as they are)"))
        if not out.size or int(out.max()) <= 1:
            return out, 0
        changed = int(np.count_nonzero((out != 0) & (out != 255)))
        return (out >= thr).astype(np.int64), changed
    changed = 0
    label_map = getattr(spec, "label_map", None)
    if jpeg:
        out, changed = _snap_values(out, _valid_values(spec, out, label_map))
    if (
        fmt == "auto"
        and not is_pal
        and spec.num_classes == 2
        and not (spec.ignore_index_explicit and spec.ignore_index == 255)
        and out.size
        and int(out.max()) == 255
        and bool(np.all((out == 0) | (out == 255)))
    ):
        out[out == 255] = 1
        notes.append(
            (
                "binary_auto",
                "mask holds only 0 and 255 and there are 2 classes: reading 255 as class 1 "
                "(set mask_format: binary to silence this, or ignore_index: 255 if 255 means unlabelled)",
            )
        )
    if label_map:
        out = _apply_label_map(out, label_map)
    return out, changed


def _valid_values(spec: MaskEncoding, out: np.ndarray, label_map: dict[int, int] | None) -> np.ndarray:
    """The stored values a JPEG mask is snapped to."""
    if label_map:
        return np.array(sorted(label_map), np.int64)
    if (
        spec.mask_format == "auto"
        and spec.num_classes == 2
        and not (spec.ignore_index_explicit and spec.ignore_index == 255)
        and out.size
        and int(out.max()) > 1
    ):
        return np.array([0, 255], np.int64)  # a 0/255 binary mask, read as binary afterwards
    return np.array(sorted(set(range(spec.num_classes)) | {int(spec.ignore_index)}), np.int64)


def _snap_values(out: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, int]:
    """Each value -> the nearest of ``valid`` (sorted; ties to the lower); returns (array, changed)."""
    if not out.size or not valid.size:
        return out, 0
    idx = np.clip(np.searchsorted(valid, out), 1, max(len(valid) - 1, 1))
    lo = valid[idx - 1] if len(valid) > 1 else valid[np.zeros_like(idx)]
    hi = valid[idx] if len(valid) > 1 else lo
    snapped = np.where(np.abs(out - lo) <= np.abs(hi - out), lo, hi)
    return snapped, int(np.count_nonzero(snapped != out))


def _snap_colors(rgb: np.ndarray, spec: MaskEncoding) -> tuple[np.ndarray, int]:
    """Each colour -> the nearest class colour (or ``ignore_color``); returns ``(H, W, 3)`` and changed pixels."""
    palette = list(spec.colors or [])
    if spec.ignore_color is not None:
        palette.append(tuple(spec.ignore_color))
    if not palette or not rgb.size:
        return rgb, 0
    pal = np.array(palette, np.int64)
    flat = rgb.reshape(-1, 3).astype(np.int64)
    codes = (flat[:, 0] << 16) | (flat[:, 1] << 8) | flat[:, 2]
    uniq, inverse = np.unique(codes, return_inverse=True)
    cols = np.stack([uniq >> 16, (uniq >> 8) & 255, uniq & 255], axis=1)
    nearest = pal[np.argmin(((cols[:, None, :] - pal[None, :, :]) ** 2).sum(axis=2), axis=1)]
    out = nearest[inverse.ravel()]
    changed = int(np.count_nonzero((out != flat).any(axis=1)))
    return out.reshape(rgb.shape).astype(np.uint8), changed


def _apply_label_map(out: np.ndarray, label_map: dict[int, int]) -> np.ndarray:
    """Stored values -> class ids through ``label_map`` (values not in it are kept as stored)."""
    if not out.size or int(out.min()) < 0:
        return out
    top = max(int(out.max()), max(label_map)) + 1
    lut = np.arange(top, dtype=np.int64)
    for k, v in label_map.items():
        lut[k] = v
    return lut[out]


def read_mask(
    path: str | Path, spec: MaskEncoding, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Read a mask as class indices.

    Args:
        path: mask file (png, tif; jpg accepted with a warning).
        spec: the data set description (``mask_format``, ``colors``, ``ignore_index``, classes).
        max_pixels: refuse masks with more pixels than this.

    Returns:
        ``(H, W) int64`` class ids. Values are not clipped: anything outside ``[0, C)`` other than
        ``spec.ignore_index`` is left as stored (check-data reports it).

    Raises:
        DecodeError: (a DataError) unreadable/empty/truncated file, RGB mask without a colour map,
            unknown colours (named with their pixel counts), or a mask with a varying alpha channel.
    """
    p = Path(path)
    d = _read_mask(p, spec, max_pixels)
    _emit(p, d.notes)
    return d.array


def mask_values_summary(
    path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[np.ndarray, list[tuple[int, int, int]] | None, bool]:
    """Distinct raw values of a mask, used to infer classes when there is no dataset.yaml.

    Args:
        path: mask file.
        max_pixels: refuse files above this many pixels.

    Returns:
        ``(values, palette, is_color)``: sorted distinct values ``(K,) int64`` (empty for colour
        masks), the palette colours of a palette PNG (else ``None``), and whether the mask is an
        RGB colour mask (channels differ).

    Raises:
        DecodeError: unreadable file.
    """
    p = Path(path)
    im = _open(p, max_pixels, "mask")
    try:
        pal = None
        if im.mode in ("P", "PA"):
            raw = im.getpalette() or []
            pal = [(raw[i], raw[i + 1], raw[i + 2]) for i in range(0, len(raw) - 2, 3)]
        a, _ = _mask_array(im, p, as_rgb=False)
    finally:
        im.close()
    if a.ndim == 3:
        if np.array_equal(a[:, :, 0], a[:, :, 1]) and np.array_equal(a[:, :, 0], a[:, :, 2]):
            a = a[:, :, 0]
        else:
            return np.zeros(0, np.int64), None, True
    return np.unique(a.astype(np.int64)), pal, False
