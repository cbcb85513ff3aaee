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
from ..data.pairing import IMAGE_EXTS
from ..errors import DataError
from ..models.modelfile import load_model

__all__ = ["Predictor", "predict", "parse_shard", "shard_files", "collect_images"]

class Predictor:
    """A trained model ready to segment images of any size.

    Images are normalised as in training, padded (reflect) to a multiple of 32 and cropped
    back, so the output mask has exactly the input's height and width. Images with more than
    ``tile_pixels`` pixels are processed in overlapping tiles (sliding window, averaged
    softmax) to bound memory.

    Args:
        model: ``(N,3,H,W) -> (N,C,H,W)`` logits.
        meta: the run's model.yaml contents (classes, colors, ignore_index, normalization).
        device: ``cpu``/``cuda`` (default: cuda if available).
        tile_size: side of a tile in pixels (multiple of 32).
        tile_pixels: images above this many pixels are tiled.
        max_pixels: image files above this many pixels are refused (Pillow's decompression-bomb
            guard is raised to it); arrays passed directly are not limited.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        meta: dict[str, Any],
        device: str | torch.device | None = None,
        tile_size: int = 1024,
        tile_pixels: int = 2048 * 2048,
        max_pixels: int | None = None,
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
        self.tile_size = tile_size
        self.tile_pixels = tile_pixels
        self.max_pixels = max_pixels

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
        """(1,3,H,W) normalised -> (1,C,H,W) softmax probabilities on the CPU, any H, W."""
        return self._forward_padded(x).softmax(1).cpu().contiguous()

    @torch.inference_mode()
    def predict_proba(self, image: np.ndarray | str | Path) -> torch.Tensor:
        """Class probabilities ``(C, H, W)`` float32 for one image (path, PIL image or (H,W,3) uint8)."""
        image = self._load(image)
        self._check(image)
        h, w = image.shape[:2]
        if h * w <= self.tile_pixels:
            return self._probs_padded(self._to_tensor(image))[0]
        t = self.tile_size
        probs: torch.Tensor | None = None
        counts = torch.zeros(1, h, w)
        ys, xs = self._tile_grid(h, w)
        for y0 in ys:
            for x0 in xs:
                p = self._probs_padded(self._to_tensor(image[y0 : y0 + t, x0 : x0 + t]))[0]
                if probs is None:
                    probs = torch.zeros(p.shape[0], h, w)
                probs[:, y0 : y0 + p.shape[1], x0 : x0 + p.shape[2]] += p
                counts[:, y0 : y0 + p.shape[1], x0 : x0 + p.shape[2]] += 1
        assert probs is not None
        return probs / counts

    def predict(self, image: np.ndarray | str | Path) -> np.ndarray:
        """Class index mask ``(H, W)`` int64 with the input's height and width.

        Tiled images are streamed in bands of tile rows (:meth:`_predict_tiled`): the result
        equals ``predict_proba(image).argmax(0)`` without holding C x H x W scores.
        """
        image = self._load(image)
        self._check(image)
        h, w = image.shape[:2]
        if h * w <= self.tile_pixels:
            # argmax of the logits: the softmax is monotonic, so this is the argmax of the
            # probabilities (unless two classes' probabilities round to the same float32) without
            # computing C x H x W exponentials
            return self._forward_padded(self._to_tensor(image))[0].argmax(0).cpu().numpy().astype(np.int64, copy=False)
        return self._predict_tiled(image)

    def _tile_grid(self, h: int, w: int) -> tuple[list[int], list[int]]:
        """Top and left edges of the tiles (stride 3/4 of a tile) covering an ``h x w`` image."""
        t = self.tile_size
        stride = t * 3 // 4
        ys = list(range(0, max(h - t, 0) + 1, stride))
        xs = list(range(0, max(w - t, 0) + 1, stride))
        if ys[-1] + t < h:
            ys.append(h - t)
        if xs[-1] + t < w:
            xs.append(w - t)
        return ys, xs

    @torch.inference_mode()
    def _predict_tiled(self, image: np.ndarray) -> np.ndarray:
        """Sliding-window mask keeping class scores only for the rows still being summed.

        The same tiles are added in the same order and divided by the same counts as in
        :meth:`predict_proba`, so the mask is identical; once a row of tiles is done, the rows
        above the next one are final, turned into class indices and dropped. Memory: a band of
        ``C x tile_size x W`` scores instead of ``C x H x W``, and the input is normalised
        tile by tile.
        """
        h, w = image.shape[:2]
        t = self.tile_size
        ys, xs = self._tile_grid(h, w)
        out = np.empty((h, w), dtype=np.int64)
        acc: torch.Tensor | None = None  # (C, rows, w): image rows lo .. lo + rows - 1
        cnt = torch.zeros(1, 0, w)
        lo = 0
        for k, y0 in enumerate(ys):
            y1 = min(y0 + t, h)
            for x0 in xs:
                p = self._probs_padded(self._to_tensor(image[y0:y1, x0 : x0 + t]))[0]
                if acc is None:
                    acc = torch.zeros(p.shape[0], 0, w)
                if acc.shape[1] < y1 - lo:  # extend the band down to this tile row's bottom
                    grow = y1 - lo - acc.shape[1]
                    acc = torch.cat([acc, acc.new_zeros(acc.shape[0], grow, w)], 1)
                    cnt = torch.cat([cnt, cnt.new_zeros(1, grow, w)], 1)
                acc[:, y0 - lo : y1 - lo, x0 : x0 + p.shape[2]] += p
                cnt[:, y0 - lo : y1 - lo, x0 : x0 + p.shape[2]] += 1
            assert acc is not None
            done = ys[k + 1] if k + 1 < len(ys) else h  # no later tile reaches above this row
            n = done - lo
            out[lo:done] = (acc[:, :n] / cnt[:, :n]).argmax(0).numpy()
            acc, cnt = acc[:, n:].clone(), cnt[:, n:].clone()
            lo = done
        return out

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
    ) -> list[Path]:
        """Segment a file, a folder (recursively) or a list of files; write palette PNG masks.

        Files are read, predicted and written one at a time, so memory does not grow with the
        number of images (only the list of paths is kept).

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

        Returns:
            Paths of the masks written.
        """
        from ..data.decode import DEFAULT_MAX_PIXELS, image_size
        from ..report import overlay as make_overlay
        from ..report import save_mask_png

        files = collect_images(inputs)
        if shard is not None:
            n_all = len(files)
            files = shard_files(files, shard)
            _log.info(f"shard {shard[0]}/{shard[1]}: {len(files)} of {n_all} images")
        # pre-flight: empty, non-image and over-limit files are refused from their headers
        # before anything is written (no partial output folder)
        limit = self.max_pixels if self.max_pixels is not None else DEFAULT_MAX_PIXELS
        for f in files:
            with _predict_hint():
                image_size(f, max_pixels=limit)
        out_dir = Path(out_dir)
        colors = self.colors
        if not skip_existing and not overwrite:
            taken = [f for f in files if (out_dir / f"{f.stem}.png").exists()]
            if taken:
                raise DataError(
                    f"{out_dir / (taken[0].stem + '.png')}: already exists ({len(taken)} outputs would be "
                    "replaced); pass --skip-existing to resume or --overwrite to replace"
                )
        written = []
        skipped = 0
        for f in progress_iter(files, "predicting", show=None if progress else False):
            mask_path = out_dir / f"{f.stem}.png"
            if skip_existing and mask_path.exists():
                skipped += 1
                continue
            from ..data import read_image

            with _predict_hint():
                image = read_image(f, **self._limits())
            pred = self.predict(image)
            out_dir.mkdir(parents=True, exist_ok=True)  # only once there is something to write
            save_mask_png(mask_path, pred, colors, durable=False)  # rename-atomic; --skip-existing redoes
            if overlay:
                from PIL import Image

                from .._io import atomic_path

                ov = make_overlay(image, pred, colors, alpha=0.5, ignore_index=self.ignore_index)
                (out_dir / "overlays").mkdir(exist_ok=True)
                with atomic_path(out_dir / "overlays" / f"{f.stem}.png", durable=False) as tmp:
                    Image.fromarray(ov).save(tmp)
            written.append(mask_path)
        if skipped:
            _log.info(f"skipped {skipped} image(s) whose mask already exists")
        return written


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


def collect_images(inputs: str | Path | Sequence[str | Path]) -> list[Path]:
    """Image files under the given files/folders (case-insensitive extensions, hidden files skipped)."""
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    files: list[Path] = []
    stems: dict[str, Path] = {}
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(
                q for q in p.rglob("*")
                if q.is_file() and q.suffix.lower() in IMAGE_EXTS and not q.name.startswith(".")
            )
            if not found:
                raise DataError(f"{p}: no images found (looked for {', '.join(sorted(IMAGE_EXTS))})")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"{p}: no such file or folder")
    for f in files:
        if f.stem in stems and stems[f.stem] != f:
            raise DataError(f"{f}: same name as {stems[f.stem]}; both would write {f.stem}.png (predict them separately)")
        stems[f.stem] = f
    return files


def predict(run: str | Path, inputs: str | Path | Sequence[str | Path], out: str | Path, **kwargs: Any) -> list[Path]:
    """Segment images with a trained run; see :meth:`Predictor.predict_paths`."""
    device = kwargs.pop("device", None)
    return Predictor.from_run(run, device=device).predict_paths(inputs, out, **kwargs)
