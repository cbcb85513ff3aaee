"""Prediction on single images, folders and images larger than memory allows in one pass."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .. import _log
from .._progress import progress_iter
from .._tensor import cpu_channels_last, round_up, suppress_classes
from ..data.pairing import collect_images
from ..errors import ConfigError, DataError
from ..models.modelfile import load_model
from .outputs import area_rows, quantize_probabilities, write_areas_csv, write_probability_maps
from .tiling import BLENDS, blended_bands, tile_grid
from .tta import TTA, parse_tta, tta_probabilities

__all__ = ["Predictor", "predict", "parse_shard", "shard_files", "collect_images"]

class Predictor:
    """A trained model ready to segment images of any size.

    Images are normalised as in training, padded (reflect) to a multiple of 32 and cropped
    back, so the output mask has exactly the input's height and width. Images with more than
    ``tile_pixels`` pixels are processed in overlapping tiles whose softmax probabilities are
    blended with Gaussian weights (:mod:`segtune.inference.tiling`), streamed in bands of rows
    to bound memory. With ``tta``, every image (or tile) is predicted in several flipped or
    rescaled views whose probabilities are averaged (:mod:`segtune.inference.tta`).

    Args:
        model: ``(N,3,H,W) -> (N,C,H,W)`` logits.
        meta: the run's model.yaml contents (classes, colors, ignore_index, normalization).
        device: ``cpu``/``cuda`` (default: cuda if available).
        tile_size: side of a tile in pixels (multiple of 32).
        tile_pixels: images above this many pixels are tiled.
        max_pixels: image files above this many pixels are refused (Pillow's decompression-bomb
            guard is raised to it); arrays passed directly are not limited.
        tta: test-time augmentation, a :class:`~segtune.inference.tta.TTA` or its text
            (``flip``, ``scales=0.75,1,1.25``, ``flip,scales=...``); None: one plain pass.
        blend: tile weighting, ``gaussian`` (default) or ``uniform`` (plain average).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        meta: dict[str, Any],
        device: str | torch.device | None = None,
        tile_size: int = 1024,
        tile_pixels: int = 2048 * 2048,
        max_pixels: int | None = None,
        tta: TTA | str | None = None,
        blend: str = "gaussian",
    ) -> None:
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self._channels_last = cpu_channels_last(self.model, self.device)
        self.meta = meta
        self.classes: list[str] = list(meta.get("classes") or [])
        self.colors = meta.get("colors")
        self.ignore_index = int(meta.get("ignore_index", 255))
        # classes never predicted (e.g. the synthetic background of an incremental model)
        self.suppress: list[int] = list((meta.get("inference") or {}).get("suppress", []))
        norm = meta.get("normalization", {})
        self.mean = torch.tensor(norm.get("mean", [0.5] * 3), dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(norm.get("std", [0.5] * 3), dtype=torch.float32).view(1, 3, 1, 1)
        if int(tile_size) < 32 or int(tile_size) % 32:
            raise ConfigError(f"--tile-size {tile_size}: must be a positive multiple of 32 (e.g. 512 or 1024)")
        self.tile_size = tile_size
        self.tile_pixels = tile_pixels
        self.max_pixels = max_pixels
        tta = parse_tta(tta)
        self.tta: TTA | None = None if tta is None or tta.is_plain else tta
        BLENDS.get(blend)  # unknown names fail here, not at the first large image
        self.blend = blend

    @classmethod
    def from_run(cls, run_dir: str | Path, device: str | None = None, **kwargs: Any) -> Predictor:
        """Load the model of a run folder (safetensors + model.yaml, hash-checked)."""
        model, meta = load_model(run_dir)
        return cls(model, meta, device=device, **kwargs)

    # ------------------------------------------------------------------ core
    @staticmethod
    def _check(image: np.ndarray) -> None:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise DataError(f"expected an (H, W, 3) uint8 image, got shape {image.shape} {image.dtype}")

    def _to_tensor(self, image: np.ndarray) -> torch.Tensor:
        self._check(image)
        x = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1)[None].float().div_(255)
        return (x - self.mean) / self.std

    @torch.inference_mode()
    def _forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        """(1,3,H,W) normalised -> (1,C,H,W) float logits on the model's device, any H, W.

        The one place the model runs (every prediction path goes through it).
        """
        h, w = x.shape[-2:]
        ph, pw = round_up(h) - h, round_up(w) - w
        if ph or pw:
            mode = "reflect" if h > ph and w > pw else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        x = x.to(self.device)
        if self._channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return suppress_classes(self.model(x).float()[..., :h, :w], self.suppress)

    @torch.inference_mode()
    def _probs_padded(self, x: torch.Tensor) -> torch.Tensor:
        """(1,3,H,W) normalised -> (1,C,H,W) softmax probabilities on the CPU, any H, W
        (averaged over the TTA views when ``tta`` is set)."""
        if self.tta is not None:
            return tta_probabilities(self._forward_padded, x, self.tta).cpu().contiguous()
        return self._forward_padded(x).softmax(1).cpu().contiguous()

    def _bands(self, image: np.ndarray) -> Iterator[tuple[int, torch.Tensor]]:
        """Final probabilities ``(C, rows, W)`` of consecutive bands of rows, top to bottom.

        One band for an image of at most ``tile_pixels`` pixels; otherwise the Gaussian-blended
        tiles of :func:`~segtune.inference.tiling.blended_bands` (at most ``C x tile x W`` held).
        """
        h, w = image.shape[:2]
        if h * w <= self.tile_pixels:
            yield 0, self._probs_padded(self._to_tensor(image))[0]
            return

        def tile_probs(y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
            return self._probs_padded(self._to_tensor(image[y0:y1, x0:x1]))[0]

        yield from blended_bands(tile_probs, h, w, self.tile_size, self.blend)

    @torch.inference_mode()
    def predict_proba(self, image: np.ndarray | str | Path) -> torch.Tensor:
        """Class probabilities ``(C, H, W)`` float32 for one image (path, PIL image or (H,W,3) uint8)."""
        image = self._load(image)
        self._check(image)
        return torch.cat([band for _, band in self._bands(image)], 1)

    @torch.inference_mode()
    def predict(self, image: np.ndarray | str | Path) -> np.ndarray:
        """Class index mask ``(H, W)`` int64 with the input's height and width.

        Equals ``predict_proba(image).argmax(0)``; tiled images are streamed in bands of rows,
        so C x H x W scores are never held.
        """
        image = self._load(image)
        self._check(image)
        h, w = image.shape[:2]
        if h * w <= self.tile_pixels and self.tta is None:
            # argmax of the logits: the softmax is monotonic, so this is the argmax of the
            # probabilities (unless two classes' probabilities round to the same float32) without
            # computing C x H x W exponentials
            return self._forward_padded(self._to_tensor(image))[0].argmax(0).cpu().numpy().astype(np.int64, copy=False)
        return self.predict_with_probabilities(image, keep_probabilities=False)[0]

    @torch.inference_mode()
    def predict_with_probabilities(
        self, image: np.ndarray | str | Path, keep_probabilities: bool = True
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Mask ``(H, W)`` int64 and probabilities ``(C, H, W)`` uint8 (round(255 x p)), or None
        when not kept; the mask is the argmax of the float probabilities, band by band."""
        image = self._load(image)
        self._check(image)
        h, w = image.shape[:2]
        mask = np.empty((h, w), dtype=np.int64)
        probs: np.ndarray | None = None
        for row0, band in self._bands(image):
            n = band.shape[1]
            mask[row0 : row0 + n] = band.argmax(0).numpy()
            if keep_probabilities:
                if probs is None:
                    probs = np.empty((band.shape[0], h, w), dtype=np.uint8)
                probs[:, row0 : row0 + n] = quantize_probabilities(band)
        return mask, probs

    def _tile_grid(self, h: int, w: int) -> tuple[list[int], list[int]]:
        """Top and left edges of the tiles (stride 3/4 of a tile) covering an ``h x w`` image."""
        return tile_grid(h, w, self.tile_size)

    __call__ = predict

    def _load(self, image: Any) -> np.ndarray:
        if isinstance(image, (str, Path)):
            from ..data import read_image

            return read_image(image, **self._limits())
        if not isinstance(image, np.ndarray):  # PIL image
            from PIL import Image

            if isinstance(image, Image.Image):
                return np.asarray(image.convert("RGB"))
        return image

    def _limits(self) -> dict[str, int]:
        return {} if self.max_pixels is None else {"max_pixels": int(self.max_pixels)}

    # --------------------------------------------------------------- folders
    def predict_paths(
        self,
        inputs: str | Path | Sequence[str | Path],
        out_dir: str | Path,
        overlay: bool = False,
        skip_existing: bool = False,
        overwrite: bool = False,
        progress: bool = True,
        shard: tuple[int, int] | None = None,
        probabilities: bool = False,
        areas: str | Path | None = None,
    ) -> list[Path]:
        """Segment a file, a folder (recursively) or a list of files; write palette PNG masks.

        Files are read, predicted and written one at a time, so memory does not grow with the
        number of images (only the list of paths and, with ``areas``, C rows per image are kept).

        Args:
            inputs: image file(s) or folder(s).
            out_dir: output folder; masks go to ``<stem>.png``, overlays to ``overlays/<stem>.png``.
            overlay: also write a colour overlay of the prediction on the image.
            skip_existing: leave images whose mask already exists (resume an interrupted folder).
            overwrite: replace existing masks (otherwise an existing mask is an error).
            progress: show a progress bar.
            shard: ``(i, n)``: predict only shard ``i`` of ``n`` (0-based), the images at
                positions ``i, i + n, i + 2n, ...`` of the sorted list, so ``n`` processes (e.g. a
                Slurm job array) split a folder without overlap; see :func:`shard_files`.
            probabilities: also write per-class probability maps, uint8 PNGs in
                ``probabilities/<stem>/`` (see :mod:`segtune.inference.outputs`).
            areas: also write this CSV of per-image class areas (pixels and fraction; skipped
                images are counted from their existing masks).

        Returns:
            Paths of the masks written.
        """
        files = collect_images(inputs)
        if shard is not None:
            n_all = len(files)
            files = shard_files(files, shard)
            _log.info(f"shard {shard[0]}/{shard[1]}: {len(files)} of {n_all} images")
        out_dir = Path(out_dir)
        self._preflight(files, out_dir, skip_existing, overwrite, areas)
        written: list[Path] = []
        rows: list[dict[str, object]] = []
        skipped = 0
        for f in progress_iter(files, "predicting", show=None if progress else False):
            mask_path = out_dir / f"{f.stem}.png"
            if skip_existing and mask_path.exists():
                skipped += 1
                if areas is not None:
                    from PIL import Image

                    rows += area_rows(f.name, np.asarray(Image.open(mask_path)), self._class_names())
                continue
            pred = self._predict_file(f, out_dir, overlay, probabilities)
            if areas is not None:
                rows += area_rows(f.name, pred, self._class_names())
            written.append(mask_path)
        if skipped:
            _log.info(f"skipped {skipped} image(s) whose mask already exists")
        if probabilities and written:
            _log.info(f"probability maps (uint8, 255 = 1.0) in {out_dir / 'probabilities'}")
        if areas is not None:
            write_areas_csv(areas, rows)
            _log.info(f"class areas of {len(rows) // max(1, len(self._class_names()))} image(s) in {areas}")
        return written

    def _class_names(self) -> list[str]:
        n = int((self.meta.get("model") or {}).get("num_classes") or len(self.classes))
        return self.classes if len(self.classes) == n else [f"class_{k}" for k in range(n)]

    def _preflight(self, files: Sequence[Path], out_dir: Path, skip_existing: bool, overwrite: bool,
                   areas: str | Path | None) -> None:
        """Refuse before anything is written: empty, non-image and over-limit files (from their
        headers), and outputs that exist and would be replaced without ``overwrite``."""
        from ..data.decode import DEFAULT_MAX_PIXELS, image_size

        limit = self.max_pixels if self.max_pixels is not None else DEFAULT_MAX_PIXELS
        for f in files:
            with _predict_hint():
                image_size(f, max_pixels=limit)
        if not skip_existing and not overwrite:
            taken = [f for f in files if (out_dir / f"{f.stem}.png").exists()]
            if taken:
                raise DataError(
                    f"{out_dir / (taken[0].stem + '.png')}: already exists ({len(taken)} outputs would be "
                    "replaced); pass --skip-existing to resume or --overwrite to replace"
                )
        if areas is not None and (Path(areas).is_dir() or Path(areas).resolve() == out_dir.resolve()):
            raise DataError(f"{areas}: is a folder; give --areas a CSV file name, e.g. --areas areas.csv")
        if areas is not None and Path(areas).exists() and not (skip_existing or overwrite):
            raise DataError(f"{areas}: already exists; pass --overwrite to replace it or choose another --areas file")

    def _predict_file(self, f: Path, out_dir: Path, overlay: bool, probabilities: bool) -> np.ndarray:
        """Predict one file and write its mask (last, so an existing mask means "done"),
        overlay and probability maps; returns the ``(H, W)`` int64 mask."""
        from ..data import read_image
        from ..report import overlay as make_overlay
        from ..report import save_mask_png

        with _predict_hint():
            image = read_image(f, **self._limits())
        if probabilities:
            pred, probs = self.predict_with_probabilities(image)
        else:
            pred, probs = self.predict(image), None
        out_dir.mkdir(parents=True, exist_ok=True)  # only once there is something to write
        if probs is not None:
            write_probability_maps(out_dir, f.stem, probs, self._class_names())
        if overlay:
            from PIL import Image

            from .._io import atomic_path

            ov = make_overlay(image, pred, self.colors, alpha=0.5, ignore_index=self.ignore_index)
            (out_dir / "overlays").mkdir(exist_ok=True)
            with atomic_path(out_dir / "overlays" / f"{f.stem}.png", durable=False) as tmp:
                Image.fromarray(ov).save(tmp)
        save_mask_png(out_dir / f"{f.stem}.png", pred, self.colors, durable=False)  # rename-atomic
        return pred


@contextlib.contextmanager
def _predict_hint() -> Iterator[None]:
    """Bad input files: replace the training-oriented hint (--skip-bad) by one for predict."""
    from ..data.decode import _SKIP_HINT, DecodeError

    try:
        yield
    except DecodeError as e:
        if e.hint != _SKIP_HINT:
            raise
        raise DecodeError(
            e.path, e.what, "replace or re-export the file, or leave it out of the inputs"
        ) from None


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with ``0 <= I < N`` (0-based, as Slurm's ``SLURM_ARRAY_TASK_ID``).

    Raises:
        ConfigError: anything else, with an example.
    """
    from ..errors import ConfigError

    parts = str(text).strip().split("/")
    try:
        i, n = (int(x) for x in parts) if len(parts) == 2 else (None, None)
    except ValueError:
        i, n = None, None
    if i is None or n is None or not 0 <= i < n:
        raise ConfigError(
            f"--shard {text}: expected I/N with 0 <= I < N, 0-based (e.g. 0/4 .. 3/4, or "
            "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT with --array=0-3)"
        )
    return i, n


def shard_files(files: Sequence[Path], shard: tuple[int, int]) -> list[Path]:
    """Shard ``i`` of ``n`` (0-based): every ``n``-th file of the sorted list, starting at ``i``.

    The ``n`` shards are disjoint and together hold every file; their sizes differ by at most one.
    """
    from ..errors import ConfigError

    i, n = (int(v) for v in shard)
    if not 0 <= i < n:
        raise ConfigError(f"shard=({i}, {n}): need 0 <= i < n (0-based shard index i of n)")
    return sorted(files)[i::n]




def predict(run: str | Path, inputs: str | Path | Sequence[str | Path], out: str | Path, **kwargs: Any) -> list[Path]:
    """Segment images with a trained run; see :meth:`Predictor.predict_paths`.

    ``device``, ``tile_size``, ``tile_pixels``, ``max_pixels``, ``tta`` (e.g. ``"flip"``) and
    ``blend`` configure the :class:`Predictor`; the other keyword arguments go to
    :meth:`Predictor.predict_paths` (e.g. ``probabilities=True``, ``areas="areas.csv"``).
    """
    own = ("device", "tile_size", "tile_pixels", "max_pixels", "tta", "blend")
    setup = {k: kwargs.pop(k) for k in own if k in kwargs}
    return Predictor.from_run(run, **setup).predict_paths(inputs, out, **kwargs)
