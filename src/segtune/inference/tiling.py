"""Sliding-window inference: overlapping tiles blended with Gaussian (or uniform) weights.

A tile's predictions are least reliable near its borders, where the network saw padding
instead of context. Each tile's class probabilities are therefore weighted by a 2-D Gaussian
centred on the tile (sigma = 1/8 of the tile side, as nnU-Net does) before the overlapping
tiles are summed and divided by the summed weights, so a pixel's result comes mostly from the
tile in which it lies most centrally, and tile seams do not show. ``uniform`` weights (the
plain average of the overlapping tiles) are kept for comparison (``benchmarks/tiling.py``).

Rows are streamed in bands (:func:`blended_bands`): once a row of tiles is done, the image
rows above the next row of tiles are final and handed out, so the scores held at any time
are at most ``C x tile x W`` floats, whatever the image height.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from .._registry import Registry

__all__ = ["BLENDS", "blend_tiles", "blended_bands", "gaussian_weights", "list_blends", "tile_count",
           "tile_grid", "uniform_weights"]

#: Tile weighting rules by name: ``(height, width) -> (1, height, width)`` float32 weights > 0.
BLENDS: Registry[Callable[[int, int], torch.Tensor]] = Registry("tile blending", "--blend")

#: A tile's class probabilities: ``(y0, y1, x0, x1) -> (C, y1 - y0, x1 - x0)`` float32 on the CPU.
TileFn = Callable[[int, int, int, int], torch.Tensor]


@BLENDS.register("gaussian")
def gaussian_weights(h: int, w: int, sigma_scale: float = 1 / 8) -> torch.Tensor:
    """Separable Gaussian ``(1, h, w)`` float32, 1 at the centre, sigma = ``sigma_scale`` x side.

    The corners keep ``exp(-8)`` of the centre's weight (never 0), so every pixel of a tile
    counts and pixels covered by a single tile get exactly that tile's values.
    """

    def axis(n: int) -> torch.Tensor:
        c = (n - 1) / 2
        s = max(n * sigma_scale, 1e-6)
        return torch.exp(-0.5 * ((torch.arange(n, dtype=torch.float64) - c) / s) ** 2)

    return (axis(h)[:, None] * axis(w)[None, :]).float()[None]


@BLENDS.register("uniform")
def uniform_weights(h: int, w: int) -> torch.Tensor:
    """All ones ``(1, h, w)``: overlapping tiles are plainly averaged."""
    return torch.ones(1, h, w)


def list_blends() -> list[str]:
    """Registered tile blending names (``gaussian``, ``uniform``)."""
    return BLENDS.names()


def tile_grid(h: int, w: int, tile: int, overlap: float = 0.25) -> tuple[list[int], list[int]]:
    """Top and left edges of the tiles covering an ``h x w`` image (pixels).

    Tiles are ``tile x tile`` (smaller only where the image is), spaced ``tile x (1 - overlap)``
    apart; the last row and column are moved in to end exactly at the image's edge.
    """
    stride = max(1, int(round(tile * (1 - overlap))))
    ys = list(range(0, max(h - tile, 0) + 1, stride))
    xs = list(range(0, max(w - tile, 0) + 1, stride))
    if ys[-1] + tile < h:
        ys.append(h - tile)
    if xs[-1] + tile < w:
        xs.append(w - tile)
    return ys, xs


def blended_bands(
    tile_fn: TileFn, h: int, w: int, tile: int, blend: str = "gaussian", overlap: float = 0.25
) -> Iterator[tuple[int, torch.Tensor]]:
    """Blend the tiles of an ``h x w`` image, handing out finished bands of rows top to bottom.

    Args:
        tile_fn: a tile's probabilities ``(y0, y1, x0, x1) -> (C, y1-y0, x1-x0)`` float32.
        h, w: image size in pixels.
        tile: tile side in pixels.
        blend: registered weighting (``gaussian`` or ``uniform``).
        overlap: fraction of a tile shared with its neighbour.

    Yields:
        ``(row0, probs)``: blended probabilities ``(C, rows, w)`` float32 of image rows
        ``row0 .. row0 + rows - 1``; consecutive bands tile the image without gaps. At most
        ``C x tile x w`` scores are held at once.
    """
    weight_fn = BLENDS.get(blend)
    ys, xs = tile_grid(h, w, tile, overlap)
    weights: dict[tuple[int, int], torch.Tensor] = {}
    acc: torch.Tensor | None = None  # (C, rows, w): weighted sums of image rows lo .. lo + rows - 1
    wsum = torch.zeros(1, 0, w)
    lo = 0
    for k, y0 in enumerate(ys):
        y1 = min(y0 + tile, h)
        for x0 in xs:
            x1 = min(x0 + tile, w)
            p = tile_fn(y0, y1, x0, x1)
            size = (int(p.shape[1]), int(p.shape[2]))
            if size not in weights:
                weights[size] = weight_fn(*size)
            wt = weights[size]
            if acc is None:
                acc = torch.zeros(p.shape[0], 0, w)
            if acc.shape[1] < y1 - lo:  # extend the band down to this tile row's bottom
                grow = y1 - lo - acc.shape[1]
                acc = torch.cat([acc, acc.new_zeros(acc.shape[0], grow, w)], 1)
                wsum = torch.cat([wsum, wsum.new_zeros(1, grow, w)], 1)
            acc[:, y0 - lo : y1 - lo, x0:x1] += p * wt
            wsum[:, y0 - lo : y1 - lo, x0:x1] += wt
        assert acc is not None
        done = ys[k + 1] if k + 1 < len(ys) else h  # no later tile reaches above this row
        n = done - lo
        yield lo, acc[:, :n] / wsum[:, :n]
        acc, wsum = acc[:, n:].clone(), wsum[:, n:].clone()
        lo = done


def blend_tiles(tile_fn: TileFn, h: int, w: int, tile: int, blend: str = "gaussian",
                overlap: float = 0.25) -> torch.Tensor:
    """The whole blended ``(C, h, w)`` float32 probabilities (the bands of :func:`blended_bands`)."""
    return torch.cat([band for _, band in blended_bands(tile_fn, h, w, tile, blend, overlap)], 1)


def tile_count(h: int, w: int, tile: int, overlap: float = 0.25) -> int:
    """Number of tiles :func:`tile_grid` places on an ``h x w`` image."""
    ys, xs = tile_grid(h, w, tile, overlap)
    return len(ys) * len(xs)

