"""A small, realistic-looking synthetic data set for demos, tests and smoke runs.

Backgrounds are random crops of real photographs bundled with scikit-image (astronaut,
coffee, cat, rocket, ...; a different photo and crop per image). Foreground objects are
textured shapes: class ``k`` is a given shape (disc, square, triangle, ...) filled with a
patch cut from a texture photograph (bricks, gravel, grass, ...) and tinted with a class
colour (jittered per object). Telling them apart from the clutter of a real photo needs
texture and shape features, so an ImageNet-pretrained encoder has a real head start.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
from PIL import Image

from .._io import atomic_path, atomic_write_yaml

__all__ = ["make_synthetic_dataset", "SYNTHETIC_CLASSES"]

#: class names by id (background first); ``num_classes`` takes the first N
SYNTHETIC_CLASSES = ("background", "disc", "square", "triangle", "hexagon", "star", "diamond", "cross")
_COLORS = (
    (0, 0, 0), (220, 20, 60), (30, 144, 255), (50, 205, 50),
    (255, 215, 0), (148, 0, 211), (255, 140, 0), (0, 206, 209),
)
# class tint (RGB, 0..1) and texture photo per foreground class
_TINTS = (
    (0.95, 0.35, 0.30), (0.30, 0.55, 1.00), (0.45, 0.95, 0.35), (1.00, 0.85, 0.25),
    (0.75, 0.40, 0.95), (1.00, 0.60, 0.20), (0.30, 0.95, 0.95),
)
_TEXTURES = ("brick", "gravel", "grass", "coins", "moon", "cell", "text")
_BACKGROUNDS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "camera", "clock")


@functools.cache
def _photo(name: str) -> np.ndarray:
    """A bundled scikit-image photo as ``(H, W, 3) uint8`` (gray photos replicated)."""
    from skimage import data

    a = np.asarray(getattr(data, name)())
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    return np.ascontiguousarray(a[:, :, :3], dtype=np.uint8)


def _available(names: tuple[str, ...]) -> list[str]:
    ok = []
    for n in names:
        try:
            _photo(n)
            ok.append(n)
        except Exception:  # noqa: BLE001 - a photo missing from this scikit-image build
            continue
    if not ok:  # pragma: no cover - scikit-image without its sample data
        raise RuntimeError("scikit-image sample images are not available (reinstall scikit-image)")
    return ok


def _random_crop(rng: np.random.Generator, photo: np.ndarray, h: int, w: int,
                 min_frac: float = 0.35) -> np.ndarray:
    """Random crop with the aspect of ``(h, w)`` covering a random share of ``photo``, resized."""
    ph, pw = photo.shape[:2]
    aspect = w / h
    max_h = min(ph, pw / aspect)
    ch = max_h * rng.uniform(min_frac, 1.0)
    cw = ch * aspect
    y0 = rng.uniform(0, ph - ch)
    x0 = rng.uniform(0, pw - cw)
    box = (int(x0), int(y0), int(x0 + cw), int(y0 + ch))
    im = Image.fromarray(photo).resize((w, h), Image.BILINEAR, box=box)
    out = np.asarray(im)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    return out


def _shape_polygon(cls: int, rng: np.random.Generator, cy: float, cx: float, r: float
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (rows, cols) of the polygon shape of foreground class ``cls`` (>= 2)."""
    rot = rng.uniform(0, 2 * math.pi)
    if cls == 5:  # star: 5 points, alternating radii
        ang = rot + np.arange(10) * math.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
    elif cls == 7:  # cross: 12-gon
        a, b = r, 0.35 * r
        pts = np.array([(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b),
                        (b, a), (-b, a), (-b, b), (-a, b), (-a, -b), (-b, -b)])
        c, s = math.cos(rot), math.sin(rot)
        ys = cy + pts[:, 0] * c - pts[:, 1] * s
        xs = cx + pts[:, 0] * s + pts[:, 1] * c
        return ys, xs
    else:
        n = {2: 4, 3: 3, 4: 6, 6: 4}[cls]
        ang = rot + np.arange(n) * 2 * math.pi / n
        rad = np.full(n, r)
        if cls == 6:  # diamond: stretched square
            rad = np.where(np.arange(n) % 2 == 0, 1.25 * r, 0.6 * r)
    return cy + rad * np.sin(ang), cx + rad * np.cos(ang)


def _render(rng: np.random.Generator, h: int, w: int, num_classes: int,
            backgrounds: list[str], textures: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """One ``(image (h, w, 3) uint8, mask (h, w) uint8)`` sample."""
    from skimage.draw import ellipse, polygon

    image = _random_crop(rng, _photo(backgrounds[rng.integers(len(backgrounds))]), h, w).astype(np.float32)
    image *= rng.uniform(0.75, 1.15)  # exposure
    mask = np.zeros((h, w), dtype=np.uint8)
    fg = list(range(1, num_classes))
    n_obj = int(rng.integers(max(2, len(fg)), max(3, len(fg) + 3)))
    classes = fg + [int(c) for c in rng.integers(1, num_classes, size=n_obj - len(fg))]
    rng.shuffle(classes)
    side = min(h, w)
    for cls in classes:
        r = side * rng.uniform(0.09, 0.2)
        cy, cx = rng.uniform(0.1 * h, 0.9 * h), rng.uniform(0.1 * w, 0.9 * w)
        if cls == 1:
            rr, cc = ellipse(cy, cx, r, r * rng.uniform(0.6, 1.0), shape=(h, w),
                             rotation=rng.uniform(-math.pi, math.pi))
        else:
            ys, xs = _shape_polygon(cls, rng, cy, cx, r)
            rr, cc = polygon(ys, xs, shape=(h, w))
        if rr.size == 0:
            continue
        tex_name = textures[(cls - 1) % len(textures)]
        tex = _random_crop(rng, _photo(tex_name), h, w, min_frac=0.25)
        t = tex[rr, cc].astype(np.float32).mean(axis=1) / 255.0
        t = (t - t.min()) / max(1e-3, float(t.max() - t.min()))
        tint = np.clip(np.asarray(_TINTS[(cls - 1) % len(_TINTS)]) + rng.normal(0, 0.07, 3), 0.05, 1.0)
        shade = rng.uniform(150, 255)
        image[rr, cc] = (0.35 + 0.65 * t)[:, None] * tint[None, :] * shade
        mask[rr, cc] = cls
    image += rng.normal(0, 4.0, size=image.shape).astype(np.float32)  # sensor noise
    return np.clip(image, 0, 255).astype(np.uint8), mask


def _write_png(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG", compress_level=1)


def make_synthetic_dataset(
    root: str | Path,
    n_train: int = 24,
    n_val: int = 8,
    size: tuple[int, int] | int = (160, 160),
    num_classes: int = 3,
    seed: int = 0,
) -> Path:
    """Write a synthetic segmentation data set with a ``dataset.yaml``.

    Layout::

        root/dataset.yaml
        root/train/images/img_0000.png   (H, W, 3) uint8 RGB
        root/train/masks/img_0000.png    (H, W) uint8 class index (0 = background)
        root/val/images/...  root/val/masks/...

    Classes are ``background, disc, square, triangle, hexagon, star, diamond, cross`` (the
    first ``num_classes``); every image holds each foreground class at least once.
    ``ignore_index`` is 255 (not used by the masks). The same arguments give byte-identical
    files.

    Args:
        root: output folder (created; existing files of the same names are replaced).
        n_train, n_val: number of training / validation pairs (``n_val`` may be 0).
        size: image size ``(height, width)``, or one int for square images.
        num_classes: 2..8, background included.
        seed: random seed.

    Returns:
        ``root`` as a Path (pass it to ``load_dataset_spec``).
    """
    root = Path(root)
    h, w = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if not 2 <= num_classes <= len(SYNTHETIC_CLASSES):
        raise ValueError(f"num_classes must be in 2..{len(SYNTHETIC_CLASSES)}, got {num_classes}")
    if n_train < 1 or n_val < 0:
        raise ValueError(f"need n_train >= 1 and n_val >= 0, got {n_train}, {n_val}")
    if min(h, w) < 16:
        raise ValueError(f"size must be at least 16x16, got {h}x{w}")
    backgrounds = _available(_BACKGROUNDS)
    textures = _available(_TEXTURES)
    splits = {}
    for split_id, (split, n) in enumerate((("train", n_train), ("val", n_val))):
        if n == 0:
            continue
        for i in range(n):
            rng = np.random.default_rng([int(seed), split_id, i])
            image, mask = _render(rng, h, w, num_classes, backgrounds, textures)
            _write_png(root / split / "images" / f"img_{i:04d}.png", image)
            _write_png(root / split / "masks" / f"img_{i:04d}.png", mask)
        splits[split] = {"images": f"{split}/images", "masks": f"{split}/masks"}
    atomic_write_yaml(
        root / "dataset.yaml",
        {
            "name": "synthetic-shapes",
            "classes": list(SYNTHETIC_CLASSES[:num_classes]),
            "colors": [list(c) for c in _COLORS[:num_classes]],
            "ignore_index": 255,
            "mask_format": "index",
            "splits": splits,
        },
    )
    return root
