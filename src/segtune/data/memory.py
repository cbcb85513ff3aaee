"""Replay memory for incremental updates: a small class-balanced set of old training samples.

A run updated with ``segtune update`` keeps a few of its training samples in its own folder and
replays them while learning the new data (SSUL-M's exemplar memory, ``docs/incremental.md``
section 4). The memory is carried from update to update: the next update picks its memory from
the old memory plus the new samples, so every class seen so far stays represented.

Layout inside a run folder::

    memory.json                      # index, written last (see write_memory)
    memory/images/0000_<stem><ext>   # the original image files, copied byte for byte
    memory/masks/0000_<stem>.png     # decoded masks in the run's label space (8- or 16-bit gray)

Masks are stored already decoded: pixel values are class indices ``0..C-1`` of the run plus its
ignore value, so reading one back needs no colour map (``np.asarray(Image.open(path))``, or
:func:`segtune.data.decode.read_mask` with ``mask_format`` index).

``memory.json``::

    {"format": 1, "size": n, "items": [MemoryItem as dict, ...],
     "files": {"memory/images/...": "<sha256>", ...}, "sha256": "<hash of all files>", **meta}
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from .._io import atomic_path, atomic_write_json, sha256_file
from ..errors import RunError

__all__ = [
    "MEMORY_DIR",
    "MEMORY_FILE",
    "MEMORY_FORMAT",
    "MEMORY_IGNORE",
    "MemoryItem",
    "class_presence",
    "select_balanced",
    "write_memory",
    "load_memory",
    "memory_pairs",
    "memory_hash",
    "store_training_memory",
]

MEMORY_DIR = "memory"
MEMORY_FILE = "memory.json"
MEMORY_FORMAT = 1
#: label of unlabelled pixels in every memory mask.
MEMORY_IGNORE = 255

_IMAGES = "images"
_MASKS = "masks"
_RESERVED = ("format", "size", "items", "files", "sha256")
_FIX = "restore the run folder from a backup, or pass --memory 0 to update without a memory"


@dataclass
class MemoryItem:
    """One sample of a replay memory.

    Attributes:
        image: image path relative to the run folder (POSIX), e.g. ``memory/images/0003_foo.png``.
        mask: mask path relative to the run folder, e.g. ``memory/masks/0003_foo.png``.
        classes: sorted class indices present in the mask (ignore value excluded).
        pixels: labelled pixels per present class ``{class: count}``.
        source: where the sample came from (the original image path as text).
    """

    image: str
    mask: str
    classes: list[int] = field(default_factory=list)
    pixels: dict[int, int] = field(default_factory=dict)
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``pixels`` keys become strings, as JSON requires)."""
        d = asdict(self)
        d["pixels"] = {str(k): int(v) for k, v in self.pixels.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MemoryItem:
        """Inverse of :meth:`to_dict` (``pixels`` keys back to ``int``).

        Raises:
            KeyError, TypeError, ValueError: a malformed entry.
        """
        return cls(
            image=str(d["image"]),
            mask=str(d["mask"]),
            classes=[int(c) for c in d.get("classes", [])],
            pixels={int(k): int(v) for k, v in dict(d.get("pixels", {})).items()},
            source=str(d.get("source", "")),
        )


# ------------------------------------------------------------------ selection
def class_presence(mask: np.ndarray, num_classes: int, ignore_index: int) -> dict[int, int]:
    """Pixel counts of the classes present in a mask.

    Args:
        mask: ``(H, W)`` integer class indices in the run's label space.
        num_classes: number of classes ``C``; valid values are ``0..C-1``.
        ignore_index: value of unlabelled pixels (not counted).

    Returns:
        ``{class: pixels}`` for every class with at least one pixel, in increasing class order.

    Raises:
        ValueError: a value outside ``0..C-1`` that is not ``ignore_index`` (the caller names
            the file), or a non-integer mask.
    """
    m = np.asarray(mask)
    if m.dtype.kind not in "iub":
        raise ValueError(f"mask must hold integers, got dtype {m.dtype}")
    flat = m.reshape(-1).astype(np.int64, copy=False)
    flat = flat[flat != ignore_index]
    if flat.size == 0:
        return {}
    bad = (flat < 0) | (flat >= num_classes)
    if bad.any():
        values = np.unique(flat[bad])[:5].tolist()
        raise ValueError(
            f"label values {values} outside 0..{num_classes - 1} and not ignore_index={ignore_index}"
        )
    counts = np.bincount(flat, minlength=num_classes)
    return {int(c): int(counts[c]) for c in np.flatnonzero(counts)}


def select_balanced(
    presence: list[dict[int, int]], size: int, seed: int, exclude: Iterable[int] = (0,)
) -> list[int]:
    """Pick at most ``size`` samples so that every class is represented as evenly as possible.

    Rule (deterministic for a given ``seed``):

    1. ``classes`` = the sorted classes with at least one pixel in some sample, minus ``exclude``.
    2. ``rng = np.random.default_rng(seed)``; the class order is ``rng.permutation(classes)``,
       then the sample order is ``rng.permutation(len(presence))`` (used for ties only).
    3. Round robin over the class order: on each visit of class ``c``, among the samples not yet
       chosen that contain ``c``, take the one in which ``c`` has the most pixels; equal counts go
       to the sample earlier in the sample order. A class with no such sample left is skipped.
    4. Stop when ``size`` samples are chosen or a whole round chose nothing.

    Every class gets one sample before any class gets a second, so a class present in a single
    sample is always kept when ``size >= len(classes)``. Samples holding only excluded classes
    (typically background 0) are never chosen.

    Args:
        presence: per sample ``{class: pixels}`` (see :func:`class_presence`), length ``N``.
        size: maximum number of samples to choose (``<= 0`` chooses none).
        seed: random seed of the class order and tie breaking.
        exclude: classes that do not drive the selection (they may still appear in chosen masks).

    Returns:
        Indices into ``presence`` in the order they were chosen, at most ``size``, no repeats.
    """
    excluded = {int(c) for c in exclude}
    classes = sorted({int(c) for p in presence for c, n in p.items() if n > 0} - excluded)
    if size <= 0 or not classes:
        return []
    rng = np.random.default_rng(seed)
    class_order = [int(c) for c in rng.permutation(classes)]
    rank = np.empty(len(presence), dtype=np.int64)
    rank[rng.permutation(len(presence))] = np.arange(len(presence))
    # per class: candidate samples sorted by (most pixels, earlier in sample order)
    queues: dict[int, list[int]] = {
        c: sorted(
            (i for i, p in enumerate(presence) if p.get(c, 0) > 0),
            key=lambda i, c=c: (-presence[i][c], int(rank[i])),
        )
        for c in classes
    }
    heads = dict.fromkeys(classes, 0)
    taken: set[int] = set()
    chosen: list[int] = []
    while len(chosen) < size:
        progress = False
        for c in class_order:
            if len(chosen) >= size:
                break
            q = queues[c]
            k = heads[c]
            while k < len(q) and q[k] in taken:
                k += 1
            heads[c] = k
            if k == len(q):
                continue
            taken.add(q[k])
            chosen.append(q[k])
            progress = True
        if not progress:
            break
    return chosen


# ------------------------------------------------------------------ writing
def _png_array(mask: np.ndarray) -> np.ndarray:
    """The array to store: uint8 when every value is below 256, else uint16."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {m.shape}")
    if m.dtype.kind not in "iub":
        raise ValueError(f"mask must hold integers, got dtype {m.dtype}")
    lo = int(m.min()) if m.size else 0
    hi = int(m.max()) if m.size else 0
    if lo < 0 or hi > 65535:
        raise ValueError(
            f"mask values {lo}..{hi} cannot be stored in a PNG (0..65535); "
            "use a non-negative ignore_index"
        )
    return np.ascontiguousarray(m, dtype=np.uint8 if hi < 256 else np.uint16)


def _save_mask(path: Path, mask: np.ndarray) -> None:
    from PIL import Image

    arr = _png_array(mask)
    im = Image.fromarray(arr)  # "L" for uint8, "I;16" for uint16
    with atomic_path(path) as tmp:
        im.save(tmp, format="PNG")


def _combined_hash(files: dict[str, str]) -> str:
    """SHA-256 over ``"<sha256>  <path>\\n"`` lines sorted by path (``sha256sum`` format)."""
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(f"{files[rel]}  {rel}\n".encode())
    return h.hexdigest()


def _safe_stem(src: Path) -> str:
    """File stem for a stored copy: a memory's own ``NNNN_`` prefix is dropped (so names do not
    grow from update to update) and characters that are unsafe in a file name are replaced."""
    stem = src.stem
    if src.parent.name == _IMAGES and src.parent.parent.name == MEMORY_DIR:
        stem = re.sub(r"^\d{4}_", "", stem)
    safe = "".join(ch if ch.isprintable() and ch not in "/\\" else "_" for ch in stem)
    return safe or "sample"


def write_memory(
    run_dir: Path,
    pairs: Sequence[tuple[Path, np.ndarray]],
    presence: list[dict[int, int]],
    chosen: list[int],
    meta: dict[str, Any],
) -> dict[str, Any]:
    """Store the chosen samples as the run's replay memory.

    Files go first, ``memory.json`` last, so a kill never leaves a ``memory.json`` that points at
    missing or half-written files. An existing ``memory.json`` is removed before any file is
    replaced (a kill in between leaves a run without memory, never a wrong one); files of the
    previous memory that the new one does not use are deleted at the end. Sources inside the
    run's own ``memory/`` folder (a memory rebuilt in place) are read before anything is written.

    Args:
        run_dir: the run folder.
        pairs: per sample ``(image file, mask)``; ``mask`` is an ``(H, W)`` integer array in the
            run's label space (class indices plus the ignore value, all in ``0..65535``).
        presence: per sample ``{class: pixels}`` (from :func:`class_presence`), same length.
        chosen: indices into ``pairs`` (from :func:`select_balanced`); the k-th is stored as
            ``memory/images/{k:04d}_{stem}{suffix}`` and ``memory/masks/{k:04d}_{stem}.png``.
            Empty writes an empty memory.
        meta: extra top-level keys of ``memory.json`` (e.g. ``classes``, ``ignore_index``,
            ``seed``, ``budget``); must not use the reserved keys
            ``format, size, items, files, sha256``.

    Returns:
        The ``memory.json`` content.

    Raises:
        ValueError: reserved keys in ``meta``, an index out of range or repeated, lengths that
            differ, or a mask that is not ``(H, W)`` integers in ``0..65535``.
        OSError: an image cannot be read or a file cannot be written.
    """
    run_dir = Path(run_dir)
    clash = [k for k in _RESERVED if k in meta]
    if clash:
        raise ValueError(f"meta must not set the reserved memory.json keys {clash}")
    if len(presence) != len(pairs):
        raise ValueError(f"presence has {len(presence)} entries for {len(pairs)} pairs")
    if len(set(chosen)) != len(chosen):
        raise ValueError("chosen holds repeated indices")
    for i in chosen:
        if not 0 <= i < len(pairs):
            raise ValueError(f"chosen index {i} outside 0..{len(pairs) - 1}")
    masks = [_png_array(pairs[i][1]) for i in chosen]  # validate before touching disk

    mem = run_dir / MEMORY_DIR
    mem_abs = mem.absolute()
    # a rebuild in place may overwrite its own sources: read those first
    held: dict[int, bytes] = {}
    for i in chosen:
        src = Path(pairs[i][0]).absolute()
        if mem_abs in src.parents:
            held[i] = src.read_bytes()

    index = run_dir / MEMORY_FILE
    with contextlib.suppress(FileNotFoundError):
        index.unlink()

    items: list[MemoryItem] = []
    files: dict[str, str] = {}
    for k, (i, arr) in enumerate(zip(chosen, masks, strict=True)):
        src = Path(pairs[i][0])
        stem = _safe_stem(src)
        img_rel = PurePosixPath(MEMORY_DIR, _IMAGES, f"{k:04d}_{stem}{src.suffix}")
        mask_rel = PurePosixPath(MEMORY_DIR, _MASKS, f"{k:04d}_{stem}.png")
        img_dst = run_dir / img_rel
        with atomic_path(img_dst) as tmp:
            if i in held:
                tmp.write_bytes(held[i])
            else:
                shutil.copyfile(src, tmp)
        _save_mask(run_dir / mask_rel, arr)
        files[str(img_rel)] = sha256_file(img_dst)
        files[str(mask_rel)] = sha256_file(run_dir / mask_rel)
        p = {int(c): int(n) for c, n in sorted(presence[i].items()) if n > 0}
        items.append(MemoryItem(str(img_rel), str(mask_rel), sorted(p), p, str(src)))

    data: dict[str, Any] = {
        "format": MEMORY_FORMAT,
        "size": len(items),
        "items": [it.to_dict() for it in items],
        "files": files,
        "sha256": _combined_hash(files),
        **meta,
    }
    mem.mkdir(parents=True, exist_ok=True)
    atomic_write_json(index, data)
    _prune(run_dir, set(files))
    return data


def _prune(run_dir: Path, keep: set[str]) -> None:
    """Delete files under ``memory/images`` and ``memory/masks`` that ``keep`` does not name."""
    for sub in (_IMAGES, _MASKS):
        folder = run_dir / MEMORY_DIR / sub
        if not folder.is_dir():
            continue
        for f in folder.iterdir():
            rel = str(PurePosixPath(MEMORY_DIR, sub, f.name))
            if rel not in keep and (f.is_file() or f.is_symlink()):
                with contextlib.suppress(OSError):
                    f.unlink()


# ------------------------------------------------------------------ reading
def _read_index(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / MEMORY_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise RunError(f"{path}: cannot read the replay memory index ({e}) ({_FIX})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise RunError(
            f"{path}: replay memory index is not valid JSON ({e.msg}) ({_FIX})"
        ) from None
    if not isinstance(data, dict):
        raise RunError(f"{path}: replay memory index is not a JSON object ({_FIX})")
    return data


def _inside(rel: str) -> bool:
    p = PurePosixPath(rel)
    return not p.is_absolute() and ".." not in p.parts and p.parts[:1] == (MEMORY_DIR,)


def load_memory(run_dir: Path, verify: bool = True) -> tuple[list[MemoryItem], dict[str, Any]]:
    """Read a run's replay memory.

    Args:
        run_dir: the run folder.
        verify: recompute the SHA-256 of every memory file and compare with ``memory.json``.

    Returns:
        ``(items, data)``: the samples and the whole ``memory.json`` dict; ``([], {})`` when the
        run has no ``memory.json`` (a run without memory).

    Raises:
        RunError: ``memory.json`` unreadable, of an unknown format or malformed; a memory file
            missing; or (with ``verify``) a file whose content changed. The message names the
            file and says to restore the run folder or pass ``--memory 0``.
    """
    run_dir = Path(run_dir)
    index = run_dir / MEMORY_FILE
    data = _read_index(run_dir)
    if data is None:
        return [], {}
    if data.get("format") != MEMORY_FORMAT:
        raise RunError(
            f"{index}: replay memory format {data.get('format')!r} is not {MEMORY_FORMAT} "
            f"(update segtune, or {_FIX})"
        )
    try:
        items = [MemoryItem.from_dict(d) for d in data["items"]]
        files = {str(k): str(v) for k, v in dict(data.get("files", {})).items()}
        stored = str(data["sha256"])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise RunError(
            f"{index}: malformed replay memory index ({type(e).__name__}: {e}) ({_FIX})"
        ) from None
    names = [n for it in items for n in (it.image, it.mask)]
    for rel in names:
        if not _inside(rel):
            raise RunError(
                f"{index}: memory entry {rel!r} is outside the {MEMORY_DIR}/ folder ({_FIX})"
            )
        if not (run_dir / rel).is_file():
            raise RunError(f"{run_dir / rel}: replay memory file is missing ({_FIX})")
    if set(names) != set(files):
        raise RunError(f"{index}: memory items and file hashes do not match ({_FIX})")
    if verify:
        for rel in sorted(files):
            if sha256_file(run_dir / rel) != files[rel]:
                raise RunError(
                    f"{run_dir / rel}: replay memory file changed since it was written "
                    f"(checksum mismatch; {_FIX})"
                )
        if _combined_hash(files) != stored:
            raise RunError(f"{index}: replay memory checksum mismatch ({_FIX})")
    return items, data


def memory_pairs(run_dir: Path, items: Sequence[MemoryItem]) -> list[tuple[Path, Path]]:
    """Absolute ``(image, mask)`` paths of memory items.

    Args:
        run_dir: the run folder the items belong to.
        items: from :func:`load_memory`.

    Returns:
        One ``(image path, mask path)`` per item, in order.
    """
    base = Path(os.path.abspath(run_dir))
    return [(base / it.image, base / it.mask) for it in items]


def memory_hash(run_dir: Path) -> str | None:
    """The recorded SHA-256 of a run's memory (as stored, not recomputed), or ``None``.

    Args:
        run_dir: the run folder.

    Returns:
        The ``sha256`` of ``memory.json``; ``None`` when the run has no memory.

    Raises:
        RunError: ``memory.json`` unreadable or without a hash.
    """
    data = _read_index(Path(run_dir))
    if data is None:
        return None
    value = data.get("sha256")
    if not isinstance(value, str):
        raise RunError(f"{Path(run_dir) / MEMORY_FILE}: replay memory index has no sha256 ({_FIX})")
    return value


def store_training_memory(
    run_dir: Path, pairs: Sequence[tuple[Path, Path]], spec: Any, size: int, seed: int
) -> dict[str, Any] | None:
    """Choose ``size`` class-balanced pairs of a run's training data and store them with the run.

    Masks are decoded with ``spec`` and stored in the run's labels with ignore as 255 (as every
    memory). A class 0 named ``background`` is not a class to balance.

    Returns:
        The memory.json contents, or ``None`` when ``size`` is 0 or there are no pairs.
    """
    from .decode import read_mask

    if size <= 0 or not pairs or spec.num_classes >= MEMORY_IGNORE:
        return None
    arrays: list[tuple[Path, np.ndarray]] = []
    presence: list[dict[int, int]] = []
    for img, mask in pairs:
        m = read_mask(mask, spec)
        m = np.where((m >= 0) & (m < spec.num_classes), m, MEMORY_IGNORE).astype(np.int64)
        arrays.append((Path(img), m))
        presence.append(class_presence(m, spec.num_classes, MEMORY_IGNORE))
    exclude = (0,) if str(spec.classes[0]).lower() == "background" else ()
    chosen = select_balanced(presence, size, seed, exclude=exclude)
    return write_memory(Path(run_dir), arrays, presence, chosen,
                        {"classes": list(spec.classes), "ignore_index": MEMORY_IGNORE, "seed": int(seed)})
