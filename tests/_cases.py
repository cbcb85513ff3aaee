"""Builders of bad-input data sets for tests/test_bad_inputs.py (all written under tmp_path).

``base_dataset`` writes a small, clean two-class data set (``bg``, ``fg``; ignore 255) with a
``dataset.yaml``. Each builder in :data:`ERROR_CASES` then adds one broken file (or pair) to its
train split and returns what ``segtune check-data`` must say about it: the file name the problem
line names, a fragment of the message and a fragment of the hint.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

H, W = 40, 48  # size of the generated check-only images (train runs use 64x64)


@dataclass
class Expect:
    """What check-data must report for a case: on a line naming ``name``, ``what`` and ``hint``."""

    name: str
    what: str
    hint: str
    level: str = "error"


# ---------------------------------------------------------------------------- writers
def image_array(h: int = H, w: int = W, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def write_image(path: Path, h: int = H, w: int = W, seed: int = 0, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image_array(h, w, seed)).save(path, format=fmt)
    return path


def write_mask(path: Path, arr: np.ndarray, mode: str | None = None, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(arr, mode=mode) if mode else Image.fromarray(arr)
    im.save(path, format=fmt)
    return path


def label_mask(h: int = H, w: int = W, value: int = 1) -> np.ndarray:
    """Background with a ``value`` block in the top-left quarter (both classes present)."""
    m = np.zeros((h, w), np.uint8)
    m[: h // 2, : w // 2] = value
    return m


def png_with_header_size(path: Path, width: int, height: int) -> Path:
    """A tiny real PNG whose IHDR claims ``width`` x ``height`` (CRC fixed): Pillow reads the
    size from the header without allocating the pixels."""
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    # signature (8) | length (4) | b"IHDR" (4) | width (4) | height (4) | ... (5) | CRC (4)
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF
    data[29:33] = struct.pack(">I", crc)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(data))
    return path


def exif_jpeg(path: Path, stored: np.ndarray, orientation: int) -> Path:
    """Save ``stored`` (H, W, 3) as a JPEG with an EXIF orientation tag."""
    ex = Image.Exif()
    ex[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(stored).save(path, format="JPEG", quality=95, exif=ex.tobytes())
    return path


def write_yaml(root: Path, text: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.yaml").write_text(text, encoding="utf-8")
    return root / "dataset.yaml"


BASE_YAML = "name: cases\nclasses: [bg, fg]\ncolors: [[0, 0, 0], [255, 0, 0]]\nignore_index: 255\n"
SPLITS_YAML = (
    "splits:\n  train: {images: train/images, masks: train/masks}\n"
    "  val: {images: val/images, masks: val/masks}\n"
)


def base_dataset(
    root: Path,
    n_train: int = 3,
    n_val: int = 1,
    size: tuple[int, int] = (H, W),
    yaml_head: str | None = BASE_YAML,
) -> Path:
    """A clean two-class data set with ``n_train`` + ``n_val`` pairs and a dataset.yaml."""
    h, w = size
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            write_image(root / split / "images" / f"ok{i}.png", h, w, seed=100 + i + (50 if split == "val" else 0))
            m = label_mask(h, w)
            m[-1, -1] = 1 + (i % 1)
            write_mask(root / split / "masks" / f"ok{i}.png", m)
    if yaml_head is not None:
        write_yaml(root, yaml_head + SPLITS_YAML)
    return root


def train_dirs(root: Path) -> tuple[Path, Path]:
    return root / "train" / "images", root / "train" / "masks"


# ---------------------------------------------------------------------------- error cases
def case_size_mismatch(root: Path) -> Expect:
    ti, tm = train_dirs(root)
    write_image(ti / "sizes.png", seed=1)
    write_mask(tm / "sizes.png", label_mask(H, W - 1))
    return Expect("sizes.png", f"image sizes.png is {W}x{H} but the mask is {W - 1}x{H}", "never resizes")


def case_16bit_out_of_range(root: Path) -> Expect:
    ti, tm = train_dirs(root)
    write_image(ti / "deep.png", seed=2)
    m = label_mask().astype(np.uint16)
    m[0, 0] = 300  # would be 255 or 44 if clipped/wrapped to 8 bit
    write_mask(tm / "deep.png", m)  # uint16 -> 16-bit PNG
    return Expect("deep.png", "300 (1 px)", "add the missing classes")


def case_value_over_classes(root: Path) -> Expect:
    ti, tm = train_dirs(root)
    write_image(ti / "values.png", seed=3)
    m = label_mask()
    m[0, :3] = 7
    write_mask(tm / "values.png", m)
    return Expect("values.png", "outside the 2 classes (0..1) and not ignore_index 255: 7 (3 px)", "classes:")


def case_rgb_unknown_colour(root: Path) -> Expect:
    ti, tm = train_dirs(root)
    write_image(ti / "colour.png", seed=4)
    m = np.zeros((H, W, 3), np.uint8)
    m[:5, :5] = (255, 0, 0)  # fg
    m[10:12, 10:14] = (7, 8, 9)  # unknown: 8 px
    write_mask(tm / "colour.png", m)
    return Expect("colour.png", "(7, 8, 9) x 8 px", "unknown_as_ignore: true")


def case_truncated_png(root: Path) -> Expect:
    ti, tm = train_dirs(root)
    p = write_image(ti / "trunc.png", 64, 64, seed=5)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    write_mask(tm / "trunc.png", label_mask(64, 64))
    return Expect("trunc.png", "corrupt or truncated image", "replace or re-export")


def case_zero_byte(root: Path) -> Expect:
    ti, tm = train_dirs(root)
    write_image(ti / "empty.png", seed=6)
    (tm / "empty.png").write_bytes(b"")
    return Expect("empty.png", "empty file (0 bytes)", "replace or re-export")


def case_text_as_png(root: Path) -> Expect:
    ti, tm = train_dirs(root)
    (ti / "notes.png").write_text("this is not an image\n")
    write_mask(tm / "notes.png", label_mask())
    return Expect("notes.png", "not an image Pillow can read", "replace or re-export")


def case_same_stem(root: Path) -> Expect:
    ti, tm = train_dirs(root)
    write_image(ti / "twice.png", seed=7)
    write_image(ti / "twice.jpg", seed=7)
    write_mask(tm / "twice.png", label_mask())
    return Expect("twice", "2 images share the stem 'twice': twice.jpg, twice.png", "all but one")


def case_decompression_bomb(root: Path) -> Expect:
    ti, tm = train_dirs(root)
    png_with_header_size(ti / "huge.png", 20000, 20000)
    write_mask(tm / "huge.png", label_mask())
    return Expect("huge.png", "20000x20000 = 400 Mpx, above the limit of 180 Mpx", "--max-pixels")


def case_exif_mask_raw_size(root: Path) -> Expect:
    ti, tm = train_dirs(root)
    exif_jpeg(ti / "turned.jpg", image_array(H, W, 8), orientation=6)  # displayed W x H swapped
    write_mask(tm / "turned.png", label_mask(H, W))  # matches the stored, not the displayed size
    return Expect("turned.png", "EXIF orientation (6)", "rotate the mask")


def case_varying_alpha_mask(root: Path) -> Expect:
    ti, tm = train_dirs(root)
    write_image(ti / "alpha.png", seed=9)
    m = np.zeros((H, W, 4), np.uint8)
    m[..., 3] = 255
    m[:3, :3, 3] = 0
    write_mask(tm / "alpha.png", m)
    return Expect("alpha.png", "varying alpha channel", "single-channel")


def case_empty_masks_folder(root: Path) -> Expect:
    """Adds a test split whose masks folder is empty."""
    write_image(root / "test" / "images" / "t0.png", seed=10)
    (root / "test" / "masks").mkdir(parents=True)
    y = root / "dataset.yaml"
    y.write_text(y.read_text() + "  test: {images: test/images, masks: test/masks}\n")
    return Expect("test/masks", "no mask files found", "accepted extensions")


def case_broken_symlink(root: Path) -> Expect:
    ti, tm = train_dirs(root)
    (ti / "gone.png").symlink_to(root / "nowhere" / "gone.png")
    write_mask(tm / "gone.png", label_mask())
    return Expect("gone.png", "broken symbolic link", "point the link at an existing file")


def case_symlink_loop(root: Path) -> Expect:
    ti, _ = train_dirs(root)
    (ti / "loop.png").symlink_to(ti / "loop.png")
    return Expect("loop.png", "symbolic link loop", "point the link at an existing file")


ERROR_CASES: dict[str, Callable[[Path], Expect]] = {
    "size_mismatch": case_size_mismatch,
    "mask_16bit_out_of_range": case_16bit_out_of_range,
    "value_over_classes": case_value_over_classes,
    "rgb_unknown_colour": case_rgb_unknown_colour,
    "truncated_png": case_truncated_png,
    "zero_byte": case_zero_byte,
    "text_named_png": case_text_as_png,
    "same_stem": case_same_stem,
    "decompression_bomb": case_decompression_bomb,
    "exif_mask_raw_size": case_exif_mask_raw_size,
    "varying_alpha_mask": case_varying_alpha_mask,
    "broken_symlink": case_broken_symlink,
    "symlink_loop": case_symlink_loop,
    "empty_masks_folder": case_empty_masks_folder,
}


# ---------------------------------------------------------------------------- warning cases
def case_jpeg_mask(root: Path) -> Expect:
    ti, tm = train_dirs(root)
    write_image(ti / "lossy.png", seed=20)
    write_mask(tm / "lossy.jpg", np.zeros((H, W), np.uint8), fmt="JPEG")  # constant: no stray values
    return Expect("masks", "1 mask(s) are JPEG (e.g. lossy.jpg): lossy compression", "save masks as PNG", "warning")


def case_16bit_image(root: Path) -> Expect:
    ti, tm = train_dirs(root)
    g = (np.arange(H * W, dtype=np.uint32).reshape(H, W) * 30).astype(np.uint16)
    write_mask(ti / "deep16.png", g)  # a 16-bit grey image
    write_mask(tm / "deep16.png", label_mask())
    return Expect("deep16.png", "16-bit image scaled to 8 bit by bit depth", "", "warning")


def case_multiframe_tiff(root: Path) -> Expect:
    ti, tm = train_dirs(root)
    frames = [Image.fromarray(image_array(seed=s)) for s in (21, 22)]
    frames[0].save(ti / "pages.tif", save_all=True, append_images=frames[1:])
    write_mask(tm / "pages.png", label_mask())
    return Expect("pages.tif", "has 2 frames/pages, using the first", "", "warning")


def case_varying_alpha_image(root: Path) -> Expect:
    ti, tm = train_dirs(root)
    a = np.concatenate([image_array(seed=23), np.full((H, W, 1), 255, np.uint8)], axis=2)
    a[:4, :4, 3] = 0
    Image.fromarray(a, mode="RGBA").save(ti / "rgba.png")
    write_mask(tm / "rgba.png", label_mask())
    return Expect("rgba.png", "varying alpha (transparency) channel; it is dropped", "", "warning")


def case_all_ignore_mask(root: Path) -> Expect:
    ti, tm = train_dirs(root)
    write_image(ti / "blank.png", seed=24)
    write_mask(tm / "blank.png", np.full((H, W), 255, np.uint8))
    return Expect("blank.png", "every pixel is ignore_index 255", "label it or remove the pair", "warning")


def case_tiny_image(root: Path) -> Expect:
    ti, tm = train_dirs(root)
    write_image(ti / "dot.png", 1, 1, seed=25)
    write_mask(tm / "dot.png", np.ones((1, 1), np.uint8))
    return Expect("dot.png", "tiny image (1x1, under 32 px on a side)", "padded with ignore pixels", "warning")


def case_leakage(root: Path) -> Expect:
    ti, _ = train_dirs(root)
    (root / "val" / "images" / "copy.png").write_bytes((ti / "ok0.png").read_bytes())
    write_mask(root / "val" / "masks" / "copy.png", label_mask())
    return Expect("copy.png", "same image content as", "remove it from val or train", "warning")


def case_image_without_mask(root: Path) -> Expect:
    ti, _ = train_dirs(root)
    write_image(ti / "lonely.png", seed=26)
    return Expect("lonely.png", "image has no mask (skipped)", "add lonely.png to", "warning")


def case_mask_without_image(root: Path) -> Expect:
    _, tm = train_dirs(root)
    write_mask(tm / "orphan.png", label_mask())
    return Expect("orphan.png", "mask has no image (skipped)", "add the image to", "warning")


WARNING_CASES: dict[str, Callable[[Path], Expect]] = {
    "jpeg_mask": case_jpeg_mask,
    "image_16bit": case_16bit_image,
    "multiframe_tiff": case_multiframe_tiff,
    "varying_alpha_image": case_varying_alpha_image,
    "all_ignore_mask": case_all_ignore_mask,
    "tiny_1x1_image": case_tiny_image,
    "train_val_leakage": case_leakage,
    "image_without_mask": case_image_without_mask,
    "mask_without_image": case_mask_without_image,
}
