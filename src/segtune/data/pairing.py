"""Pairing images with masks by file stem, and the :class:`Problem` record used by check-data.

Rules:

* Extensions are matched case-insensitively. Images: png, jpg, jpeg, tif, tiff, bmp, webp.
  Masks: png, tif, tiff (jpg/jpeg accepted with a warning: lossy compression corrupts edges).
* Stems are compared after Unicode NFC normalisation, so ``café.png`` matches ``café.png`` whichever
  way the file system stored the accent; spaces and non-ASCII names are fine.
* A mask named ``<stem>_mask`` / ``_label`` / ``_gt`` / ``_L`` (and a few more) is paired with image
  ``<stem>`` when there is no exact match.
* Hidden files (``.DS_Store``, ``._x.jpg``) are ignored, symlinks are followed, broken ones reported.
* Two images (or two masks) with the same stem are ambiguous: reported with all candidates and
  left out.
"""

from __future__ import annotations

import errno
import os
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "Problem",
    "split_pairs",
    "split_items",
    "collect_images",
    "read_stem_list",
    "IMAGE_EXTS",
    "MASK_EXTS",
    "LOSSY_MASK_EXTS",
    "MASK_SUFFIXES",
    "list_files",
    "find_pairs",
    "stem_key",
]

IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"})
MASK_EXTS = frozenset({".png", ".tif", ".tiff"})
LOSSY_MASK_EXTS = frozenset({".jpg", ".jpeg"})
MASK_SUFFIXES = (
    "_mask",
    "-mask",
    "_masks",
    "_label",
    "-label",
    "_labels",
    "_labelids",
    "_gt",
    "_seg",
    "_segmentation",
    "_annot",
    "_annotation",
    "_l",
)


@dataclass
class Problem:
    """One problem found in a data set, printed on one line.

    Attributes:
        path: the file or folder concerned.
        message: what is wrong.
        hint: how to fix it (may be empty).
        level: ``"error"`` (the pair cannot be used / the data set is wrong) or ``"warning"``.
    """

    path: str
    message: str
    hint: str = ""
    level: str = "error"

    def __str__(self) -> str:
        p = str(self.path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        return f"{p}: {self.message}" + (f" ({self.hint})" if self.hint else "")

    @property
    def is_error(self) -> bool:
        """True for ``level == "error"``."""
        return self.level == "error"


def stem_key(path: Path | str) -> str:
    """Matching key of a file: its stem, NFC-normalised (case kept)."""
    return unicodedata.normalize("NFC", Path(path).stem)


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def list_files(
    folder: str | Path, kind: str = "image", recursive: bool = False
) -> tuple[list[Path], list[Problem]]:
    """List the image (or mask) files inside ``folder``.

    Args:
        folder: folder to list (symlinks to files followed).
        kind: ``"image"`` or ``"mask"`` (selects the accepted extensions; masks also take jpg).
        recursive: also list sub-folders (not symlinked ones), e.g. Cityscapes' city folders.

    Returns:
        ``(files, problems)``: files sorted by name; problems for a missing or empty folder and
        for broken or looping symlinks.
    """
    folder = Path(folder)
    exts = IMAGE_EXTS if kind == "image" else (MASK_EXTS | LOSSY_MASK_EXTS)
    problems: list[Problem] = []
    if not folder.exists():
        return [], [
            Problem(str(folder), f"{kind}s folder not found", "check the splits: in dataset.yaml")
        ]
    if not folder.is_dir():
        return [], [
            Problem(
                str(folder), f"{kind}s folder is not a folder", "check the splits: in dataset.yaml"
            )
        ]
    files: list[Path] = []
    other_exts: dict[str, int] = {}
    todo = [folder]
    n_subdirs = 0
    while todo:
        sub = todo.pop(0)
        subdirs = _scan(sub, exts, files, other_exts, problems)
        if isinstance(subdirs, Problem):
            return [], [subdirs]
        if recursive:
            todo += [d for d in subdirs if not d.is_symlink()]  # no symlink loops
        else:
            n_subdirs += len(subdirs)
    if not files:
        extra = []
        if other_exts:
            extra.append(
                f"{sum(other_exts.values())} file(s) with other extensions: "
                + ", ".join(sorted(other_exts))
            )
        if n_subdirs:
            extra.append(f"{n_subdirs} subfolder(s), which are not searched")
        accepted = ", ".join(sorted(e.lstrip(".") for e in exts))
        problems.append(
            Problem(
                str(folder),
                f"no {kind} files found" + (f" ({'; '.join(extra)})" if extra else ""),
                f"accepted extensions: {accepted}",
            )
        )
    return files, problems


def _scan(
    folder: Path, exts: frozenset[str], files: list[Path], other_exts: dict[str, int], problems: list[Problem]
) -> list[Path] | Problem:
    """Add the files of one folder to ``files``; return its (non-symlink) sub-folders."""
    subdirs: list[Path] = []
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as e:
        return Problem(str(folder), f"cannot list folder ({e.strerror or e})", "check permissions")
    for entry in entries:
        name = entry.name
        if _is_hidden(name):
            continue
        path = folder / name
        if entry.is_symlink():
            try:
                os.stat(path)
            except OSError as e:
                loop = e.errno == errno.ELOOP
                problems.append(
                    Problem(
                        str(path),
                        "symbolic link loop" if loop else "broken symbolic link (target missing)",
                        "point the link at an existing file, or remove it",
                    )
                )
                continue
        try:
            is_file = entry.is_file()  # follows symlinks
            is_dir = not is_file and entry.is_dir()
        except OSError:
            continue
        if is_dir:
            subdirs.append(path)
            continue
        if not is_file:
            continue
        ext = Path(name).suffix.lower()
        if ext in exts:
            files.append(path)
        else:
            other_exts[ext or "(none)"] = other_exts.get(ext or "(none)", 0) + 1
    return subdirs


def _group(files: list[Path], suffix: str = "", only_suffixed: bool = False) -> dict[str, list[Path]]:
    """Files by matching key (NFC stem, ``suffix`` stripped; ``only_suffixed`` drops the others)."""
    out: dict[str, list[Path]] = {}
    for f in files:
        key = stem_key(f)
        if suffix and key.endswith(suffix) and len(key) > len(suffix):
            key = key[: -len(suffix)]
        elif only_suffixed:
            continue
        out.setdefault(key, []).append(f)
    return out


def read_stem_list(path: str | Path) -> list[str]:
    """Stems of a split list file: one per line (first word; blank and ``#`` lines skipped).

    Raises:
        DataError: the file cannot be read.
    """
    from ..errors import DataError

    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the split list file ({e}); check list: in dataset.yaml") from None
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(unicodedata.normalize("NFC", Path(line.split()[0]).stem))
    return out


def split_items(split: Any) -> tuple[list[tuple[Path, Path | None]], list[Problem]]:
    """Every ``(image, mask or None)`` of a split: its pairs (:func:`split_pairs`), or each image
    with ``None`` when the split has no masks; plus the problems found listing or pairing them."""
    if split.masks is None:
        files, problems = list_files(split.images, "image", getattr(split, "recursive", False))
        return [(f, None) for f in files], problems
    pairs, problems = split_pairs(split)
    return [(i, m) for i, m in pairs], problems


def split_pairs(split: Any) -> tuple[list[tuple[Path, Path]], list[Problem]]:
    """Pairs of a :class:`~segtune.data.spec.Split`, honouring its list file, suffixes and recursion.

    Args:
        split: a split with ``images``, ``masks`` (not None), ``list_file``, ``image_suffix``,
            ``mask_suffix`` and ``recursive``.

    Returns:
        ``(pairs, problems)`` as :func:`find_pairs`; a stem listed in the list file without an
        image is a warning.
    """
    stems = read_stem_list(split.list_file) if getattr(split, "list_file", None) is not None else None
    pairs, problems = find_pairs(
        split.images, split.masks, recursive=getattr(split, "recursive", False),
        image_suffix=getattr(split, "image_suffix", ""), mask_suffix=getattr(split, "mask_suffix", ""),
        stems=set(stems) if stems is not None else None,
    )
    if stems is not None:
        found = {_key(p[0], getattr(split, "image_suffix", "")) for p in pairs}
        found |= {_key(Path(p.path), getattr(split, "image_suffix", "")) for p in problems}
        missing = [s for s in stems if s not in found]
        if missing:
            problems.append(Problem(
                str(split.list_file),
                f"{len(missing)} listed stem(s) have no image, e.g. {', '.join(missing[:3])}",
                f"add the images to {split.images} or remove the lines",
                level="warning",
            ))
    return pairs, problems


def _key(path: Path, suffix: str) -> str:
    key = stem_key(path)
    return key[: -len(suffix)] if suffix and key.endswith(suffix) else key


def _strip_suffix(stem: str) -> str | None:
    low = stem.lower()
    for s in MASK_SUFFIXES:
        if low.endswith(s) and len(stem) > len(s):
            return stem[: -len(s)]
    return None


def find_pairs(
    images_dir: str | Path,
    masks_dir: str | Path,
    *,
    recursive: bool = False,
    image_suffix: str = "",
    mask_suffix: str = "",
    stems: set[str] | None = None,
) -> tuple[list[tuple[Path, Path]], list[Problem]]:
    """Pair images with masks by file stem.

    Args:
        images_dir: folder of images.
        masks_dir: folder of masks.
        recursive: search sub-folders too.
        image_suffix: stripped from image stems before matching.
        mask_suffix: stripped from mask stems before matching; masks without it are not taken.
        stems: when given, only images whose (suffix-stripped) stem is in it; unmatched masks of
            other stems are not reported.

    Returns:
        ``(pairs, problems)``: ``(image, mask)`` paths sorted by stem, and the problems found:
        missing/empty folder (error), broken symlink (error), same stem used twice (error, all
        candidates listed), image without mask and mask without image (warnings: skipped),
        JPEG masks (one warning per folder).
    """
    images, problems = list_files(images_dir, "image", recursive)
    masks, mproblems = list_files(masks_dir, "mask", recursive)
    problems += mproblems
    img_by = _group(images, image_suffix)
    mask_by = _group(masks, mask_suffix, only_suffixed=bool(mask_suffix))
    if stems is not None:
        img_by = {k: v for k, v in img_by.items() if k in stems}
        mask_by = {k: v for k, v in mask_by.items() if k in stems}

    _merge_suffixed_masks(img_by, mask_by)
    pairs, matched_problems = _match_groups(img_by, mask_by, masks_dir, have_masks=bool(masks))
    problems += matched_problems
    problems += _orphan_masks(img_by, mask_by, images_dir, have_images=bool(images))
    problems += _lossy_masks(pairs, masks_dir)
    pairs.sort(key=lambda p: (stem_key(p[0]), str(p[0])))
    return pairs, problems


def _merge_suffixed_masks(img_by: dict[str, list[Path]], mask_by: dict[str, list[Path]]) -> None:
    """Masks named ``<stem>_mask`` etc. join image ``<stem>``'s group when nothing matches exactly (in place)."""
    for key in list(mask_by):
        if key in img_by:
            continue
        base = _strip_suffix(key)
        if base is not None and base in img_by:
            mask_by.setdefault(base, []).extend(mask_by.pop(key))


def _match_groups(img_by: dict[str, list[Path]], mask_by: dict[str, list[Path]], masks_dir: str | Path,
                  have_masks: bool) -> tuple[list[tuple[Path, Path]], list[Problem]]:
    """One ``(image, mask)`` per stem; ambiguous stems (errors) and images without a mask (warnings)."""
    problems: list[Problem] = []
    pairs: list[tuple[Path, Path]] = []
    for key, group in img_by.items():
        if len(group) > 1:
            problems.append(
                Problem(
                    str(group[0].parent / key),
                    f"ambiguous: {len(group)} images share the stem '{key}': "
                    + ", ".join(p.name for p in group),
                    "rename or remove all but one",
                )
            )
            continue
        if key not in mask_by:
            if not have_masks:
                continue  # the empty/missing masks folder is reported once
            problems.append(
                Problem(
                    str(group[0]),
                    "image has no mask (skipped)",
                    f"add {key}.png to {masks_dir}",
                    level="warning",
                )
            )
            continue
        mgroup = mask_by[key]
        if len(mgroup) > 1:
            problems.append(
                Problem(
                    str(mgroup[0].parent / key),
                    f"ambiguous: {len(mgroup)} masks match image {group[0].name}: "
                    + ", ".join(p.name for p in mgroup),
                    "rename or remove all but one",
                )
            )
            continue
        pairs.append((group[0], mgroup[0]))
    return pairs, problems


def _orphan_masks(img_by: dict[str, list[Path]], mask_by: dict[str, list[Path]], images_dir: str | Path,
                  have_images: bool) -> list[Problem]:
    """A warning for each mask whose stem has no image (none when the image folder is empty)."""
    problems: list[Problem] = []
    for key, mgroup in mask_by.items():
        if key not in img_by and have_images:
            for m in mgroup:
                problems.append(
                    Problem(
                        str(m),
                        "mask has no image (skipped)",
                        f"add the image to {images_dir}, or remove the mask",
                        level="warning",
                    )
                )
    return problems


def _lossy_masks(pairs: list[tuple[Path, Path]], masks_dir: str | Path) -> list[Problem]:
    """One warning for a folder whose paired masks include JPEGs."""
    problems: list[Problem] = []
    lossy = [m for _, m in pairs if m.suffix.lower() in LOSSY_MASK_EXTS]
    if lossy:
        problems.append(
            Problem(
                str(masks_dir),
                f"{len(lossy)} mask(s) are JPEG (e.g. {lossy[0].name}): lossy compression puts stray values on class edges",
                "save masks as PNG",
                level="warning",
            )
        )
    return problems


def collect_images(inputs: str | Path | Sequence[str | Path]) -> list[Path]:
    """Image files under the given files/folders (case-insensitive extensions, hidden files skipped).

    Raises:
        DataError: a folder without images, a missing path, or two images with the same stem (both
            would write ``<stem>.png``).
    """
    from ..errors import DataError

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
