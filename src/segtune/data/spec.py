"""Data set description: ``dataset.yaml`` (or a bare ``images/`` + ``masks/`` folder).

A ``dataset.yaml`` looks like::

    name: camvid
    classes: [Sky, Building, ...]          # class id = position in this list
    colors: [[128, 128, 128], ...]         # optional; needed for RGB colour masks
    ignore_index: 11                       # mask value excluded from loss and metrics (default 255)
    mask_format: index                     # auto | index | palette | rgb | binary
    binary_threshold: 128                  # binary masks: values >= this are class 1
    unknown_as_ignore: false               # RGB masks: colours not in colors -> ignore_index
    label_map: {7: 0, 8: 1, 0: ignore}     # optional: stored mask value -> class id (others kept)
    splits:
      train: {images: train, masks: trainannot}   # relative to the yaml's folder
      val: {images: val, masks: valannot, list: val.txt}   # list: one file stem per line

A standard layout is named with ``format:`` (``voc``, ``cityscapes``, ``ade20k``, ``coco``; see
:mod:`segtune.formats`), optionally with ``root:`` (the data folder, default the yaml's folder);
the keys written beside it override the layout's. A split may also take ``coco: FILE.json``
(masks rasterised from COCO annotations and cached), ``image_suffix`` / ``mask_suffix`` (stripped
from file stems before pairing) and ``recursive: true`` (search sub-folders).

:func:`load_dataset_spec` turns it into a :class:`DatasetSpec`. A folder without a yaml but
with ``images/`` + ``masks/`` (or ``train/images`` + ``train/masks`` and so on) also works: the
classes are then inferred by scanning the mask values. A folder in one of the standard layouts
is detected when exactly one layout matches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .. import _log
from .._registry import did_you_mean
from ..errors import ConfigError, DataError

__all__ = [
    "Split",
    "DatasetSpec",
    "load_dataset_spec",
    "MASK_FORMATS",
    "SPLIT_NAMES",
    "DATASET_KEYS",
    "SPLIT_KEYS",
]

MASK_FORMATS = ("auto", "index", "palette", "rgb", "binary")
SPLIT_NAMES = ("train", "val", "test")
DATASET_KEYS = (
    "name",
    "classes",
    "colors",
    "ignore_index",
    "mask_format",
    "splits",
    "ignore_color",
    "unknown_as_ignore",
    "format",
    "root",
    "label_map",
    "binary_threshold",
    "coco_crowd",
)
SPLIT_KEYS = ("images", "masks", "list", "image_suffix", "mask_suffix", "recursive", "coco")
_YAML_NAMES = ("dataset.yaml", "dataset.yml")


@dataclass
class Split:
    """One split of a data set: an images folder and (optionally) a masks folder.

    Attributes:
        images: folder of images (absolute or relative to the working directory).
        masks: folder of masks paired with the images by file stem; ``None`` for an
            unlabelled split (prediction only).
        list_file: optional text file with one stem per line: only those images are in the split.
        image_suffix: stripped from image stems before pairing (Cityscapes ``_leftImg8bit``).
        mask_suffix: stripped from mask stems before pairing; with it only masks whose stem ends
            with it are taken (Cityscapes ``_gtFine_labelIds``).
        recursive: search sub-folders of ``images`` and ``masks`` too.
        coco: the COCO JSON the masks were rasterised from (``masks`` is then the cache folder).
    """

    images: Path
    masks: Path | None = None
    list_file: Path | None = None
    image_suffix: str = ""
    mask_suffix: str = ""
    recursive: bool = False
    coco: Path | None = None


@dataclass
class DatasetSpec:
    """A resolved data set description.

    Attributes:
        root: the data set folder (the folder of ``dataset.yaml``).
        classes: class names; a mask value ``k`` in ``[0, len(classes))`` is class ``classes[k]``.
        colors: one ``(r, g, b)`` per class (used to read RGB colour masks and to draw overlays),
            or ``None``.
        ignore_index: mask value excluded from loss and metrics; never a valid class id.
        mask_format: ``auto`` | ``index`` | ``palette`` | ``rgb`` | ``binary``.
        splits: split name (``train``/``val``/``test``) -> :class:`Split`.
        name: data set name (defaults to the folder name).
        ignore_color: optional RGB colour of unlabelled pixels in RGB masks (maps to ``ignore_index``).
        unknown_as_ignore: RGB masks: read colours that are not in ``colors`` as ``ignore_index``
            (with a warning) instead of refusing the mask.
        yaml_path: the ``dataset.yaml`` this spec was read from (``None`` if inferred).
        ignore_index_explicit: ``True`` when ``ignore_index`` was written in dataset.yaml. In ``auto``
            mode, masks holding only 0 and 255 are read as binary (255 -> 1) when there are two
            classes and 255 was not explicitly declared the ignore value.
        format: the standard layout this spec was built from (``format:``), or ``""``.
        label_map: stored mask value -> class id (or ``ignore_index``), applied to index and palette
            masks; values not in the map are kept as stored. ``None``: values are class ids.
        binary_threshold: ``mask_format: binary``: values >= this are class 1, below class 0
            (masks holding only 0 and 1 are read as they are).
    """

    root: Path
    classes: list[str]
    colors: list[tuple[int, int, int]] | None = None
    ignore_index: int = 255
    mask_format: str = "auto"
    splits: dict[str, Split] = field(default_factory=dict)
    name: str = ""
    ignore_color: tuple[int, int, int] | None = None
    unknown_as_ignore: bool = False
    yaml_path: Path | None = None
    ignore_index_explicit: bool = False
    format: str = ""
    label_map: dict[int, int] | None = None
    binary_threshold: int = 128

    @property
    def num_classes(self) -> int:
        """Number of classes ``C`` (mask values ``0..C-1``)."""
        return len(self.classes)

    @property
    def source(self) -> str:
        """Where this spec came from (the yaml file, or the folder when inferred), for messages."""
        return str(self.yaml_path if self.yaml_path is not None else self.root)

    def to_dict(self) -> dict[str, Any]:
        """A YAML/JSON-serialisable dict in the ``dataset.yaml`` schema (absolute split folders)."""
        d: dict[str, Any] = {"name": self.name, "classes": list(self.classes)}
        if self.colors is not None:
            d["colors"] = [list(c) for c in self.colors]
        d["ignore_index"] = self.ignore_index
        d["mask_format"] = self.mask_format
        if self.ignore_color is not None:
            d["ignore_color"] = list(self.ignore_color)
        if self.unknown_as_ignore:
            d["unknown_as_ignore"] = True
        if self.label_map is not None:
            d["label_map"] = dict(self.label_map)
        if self.binary_threshold != 128:
            d["binary_threshold"] = self.binary_threshold
        d["splits"] = {k: _split_dict(s) for k, s in self.splits.items()}
        return d


def _split_dict(s: Split) -> dict[str, Any]:
    d: dict[str, Any] = {"images": str(s.images)}
    if s.masks is not None:
        d["masks"] = str(s.masks)
    if s.list_file is not None:
        d["list"] = str(s.list_file)
    if s.image_suffix:
        d["image_suffix"] = s.image_suffix
    if s.mask_suffix:
        d["mask_suffix"] = s.mask_suffix
    if s.recursive:
        d["recursive"] = True
    return d


def load_dataset_spec(path: str | Path, known: dict[str, Any] | None = None) -> DatasetSpec:
    """Load a data set description.

    Args:
        path: a folder holding ``dataset.yaml``; the path of a yaml file; or a folder with
            ``images/`` + ``masks/`` (single train split) or ``train/``, ``val/``, ``test/``
            subfolders each holding ``images/`` + ``masks/``. Without a yaml the classes are
            inferred by scanning the training masks (named ``class_0..class_K``) and a value of 255
            on top of the others is taken as the ignore value, with a notice.
        known: a trained model's ``classes``, ``ignore_index`` and ``colors`` (its model.yaml):
            used instead of scanning the masks when the folder has no yaml (``evaluate RUN DIR``).

    Returns:
        The resolved :class:`DatasetSpec`; relative split folders are resolved against the
        yaml's folder.

    Raises:
        DataError: the path does not exist or holds neither a yaml nor images/masks folders.
        ConfigError: the yaml is malformed, has unknown keys (the message names the valid ones)
            or inconsistent values.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(
            f"{p}: data set not found (give a folder with dataset.yaml, or a dataset.yaml file)"
        )
    if p.is_file():
        return _from_yaml(p)
    for n in _YAML_NAMES:
        if (p / n).is_file():
            return _from_yaml(p / n)
    splits = _folder_splits(p)
    if splits:
        return _known_spec(p, splits, known) if known and known.get("classes") else _infer_spec(p, splits)
    return _detect_layout(p)


def _detect_layout(p: Path) -> DatasetSpec:
    """A folder in exactly one standard layout (VOC, Cityscapes, ...) -> its spec."""
    from ..formats import detect_layouts, list_layouts

    found = detect_layouts(p)
    if len(found) > 1:
        raise ConfigError(
            f"{p}: the folder matches several layouts: {', '.join(found)} "
            "(write a dataset.yaml naming one with format:)"
        )
    if not found:
        raise DataError(
            f"{p}: no dataset.yaml and no images/ + masks/ folders, nor a known layout ({', '.join(list_layouts())}) "
            "(add a dataset.yaml with splits:, or put images in images/ and masks in masks/)"
        )
    _log.info(f"{p}: detected the {found[0]} layout (write format: {found[0]} in a dataset.yaml to make it explicit)")
    return _from_dict({"format": found[0]}, p.resolve(), None)


# ------------------------------------------------------------------ yaml
def _unknown_key(source: Path, where: str, key: Any, valid: tuple[str, ...]) -> ConfigError:
    return ConfigError(
        f"{source}: unknown key '{where}{key}'{did_you_mean(key, valid)}; valid keys: {', '.join(valid)}"
    )


def _from_yaml(yaml_path: Path) -> DatasetSpec:
    try:
        d = yaml.safe_load(yaml_path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{yaml_path}: not valid YAML ({str(e).splitlines()[0]})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{yaml_path}: cannot read dataset.yaml ({e})") from None
    if d is None:
        d = {}
    if not isinstance(d, dict):
        raise ConfigError(f"{yaml_path}: expected a mapping with keys {', '.join(DATASET_KEYS)}")
    for k in d:
        if k not in DATASET_KEYS:
            raise _unknown_key(yaml_path, "", k, DATASET_KEYS)
    return _from_dict(d, yaml_path.parent.resolve(), yaml_path)


def _with_layout(d: dict[str, Any], root: Path, source: Path) -> tuple[dict[str, Any], Path]:
    """Merge the named layout's description under the user's keys; returns (dict, data root)."""
    data_root = _resolve(root, d["root"]) if d.get("root") else root
    if not d.get("format"):
        return d, data_root
    from ..formats import describe_layout

    try:
        base = describe_layout(str(d["format"]), data_root)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    merged = {**base, **{k: v for k, v in d.items() if k != "root"}}
    merged["format"] = base["format"]
    return merged, data_root


def _from_dict(d: dict[str, Any], root: Path, yaml_path: Path | None) -> DatasetSpec:
    """Build and validate a spec from a dataset.yaml-style dict (paths relative to ``root``)."""
    source = yaml_path if yaml_path is not None else root
    d, data_root = _with_layout(d, root, source)
    if not d.get("format") and d.get("splits") is None and not _folder_splits(data_root):
        from ..formats import detect_layouts

        found = detect_layouts(data_root)
        if len(found) == 1:  # a dataset.yaml without splits: beside a standard layout
            _log.info(f"{source}: no splits: given; detected the {found[0]} layout in {data_root}")
            d, data_root = _with_layout({**d, "format": found[0]}, root, source)
    splits = _parse_splits(d, data_root if d.get("format") or d.get("root") else root, source)
    opts = _parse_options(d, source)
    classes = d.get("classes")
    coco_split = next((s for s in splits.values() if s.coco is not None), None)
    if classes is None and coco_split is not None and opts["colors"] is None:
        from ..formats.coco import coco_classes, load_coco

        classes = coco_classes(load_coco(coco_split.coco))
    spec = DatasetSpec(root=root, classes=[], splits=splits, name=str(d.get("name") or root.name),
                       yaml_path=yaml_path.resolve() if yaml_path is not None else None,
                       format=str(d.get("format") or ""), **opts)
    if classes is None:
        if spec.colors is not None:
            spec.classes = [f"class_{i}" for i in range(len(spec.colors))]
        else:
            _fill_inferred_classes(spec)
    else:
        spec.classes = _parse_classes(source, classes)
    spec.label_map = _parse_label_map(source, d.get("label_map"), spec)
    _validate(spec)
    if coco_split is not None:
        _rasterize_coco_splits(spec, str(d.get("coco_crowd") or "class"))
    return spec


def _parse_classes(source: Path, classes: Any) -> list[str]:
    if not isinstance(classes, list) or not classes:
        raise ConfigError(f"{source}: classes must be a non-empty list of names, got {classes!r}")
    classes = [str(c) for c in classes]
    dups = sorted({c for c in classes if classes.count(c) > 1})
    if dups:
        raise ConfigError(f"{source}: duplicate class names {dups} (class names must be unique)")
    return classes


def _parse_splits(d: dict[str, Any], root: Path, source: Path) -> dict[str, Split]:
    raw_splits = d.get("splits")
    if raw_splits is None:
        splits = _folder_splits(root)
        if not splits:
            raise ConfigError(
                f"{source}: no 'splits:' and no images/ + masks/ folders beside it "
                "(add splits: {train: {images: DIR, masks: DIR}})"
            )
        return splits
    if not isinstance(raw_splits, dict) or not raw_splits:
        raise ConfigError(
            f"{source}: 'splits' must be a mapping like {{train: {{images: DIR, masks: DIR}}}}"
        )
    return {sname: _parse_split(source, root, sname, sval) for sname, sval in raw_splits.items()}


def _parse_split(source: Path, root: Path, sname: Any, sval: Any) -> Split:
    if sname not in SPLIT_NAMES:
        raise _unknown_key(source, "splits.", sname, SPLIT_NAMES)
    if isinstance(sval, str):  # shorthand: a folder holding images/ + masks/
        base = _resolve(root, sval)
        sval = {"images": str(base / "images"), "masks": str(base / "masks")}
    if not isinstance(sval, dict):
        raise ConfigError(
            f"{source}: splits.{sname} must be a mapping {{images: DIR, masks: DIR}}, got {sval!r}"
        )
    for k in sval:
        if k not in SPLIT_KEYS:
            raise _unknown_key(source, f"splits.{sname}.", k, SPLIT_KEYS)
    if not sval.get("images"):
        raise ConfigError(f"{source}: splits.{sname} needs 'images: DIR'")
    if sval.get("masks") and sval.get("coco"):
        raise ConfigError(f"{source}: splits.{sname} has both masks: and coco: (keep one)")
    for k in ("image_suffix", "mask_suffix"):
        if not isinstance(sval.get(k, ""), str):
            raise ConfigError(f"{source}: splits.{sname}.{k} must be a text, got {sval[k]!r}")
    if not isinstance(sval.get("recursive", False), bool):
        raise ConfigError(f"{source}: splits.{sname}.recursive must be true or false")
    masks, lst, coco = sval.get("masks"), sval.get("list"), sval.get("coco")
    return Split(
        images=_resolve(root, sval["images"]),
        masks=_resolve(root, masks) if masks else None,
        list_file=_resolve(root, lst) if lst else None,
        image_suffix=sval.get("image_suffix", ""),
        mask_suffix=sval.get("mask_suffix", ""),
        recursive=bool(sval.get("recursive", False)) or bool(coco),
        coco=_resolve(root, coco) if coco else None,
    )


def _parse_options(d: dict[str, Any], source: Path) -> dict[str, Any]:
    """The scalar keys: mask_format, ignore_index, colours, unknown_as_ignore, binary_threshold."""
    mask_format = d.get("mask_format") or "auto"
    if mask_format not in MASK_FORMATS:
        raise ConfigError(
            f"{source}: mask_format: {mask_format!r} is not valid{did_you_mean(str(mask_format), MASK_FORMATS)}; "
            f"valid: {', '.join(MASK_FORMATS)}"
        )
    ignore_index = d.get("ignore_index")
    explicit = ignore_index is not None
    ignore_index = 255 if ignore_index is None else ignore_index
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise ConfigError(f"{source}: ignore_index must be an integer, got {ignore_index!r}")
    ignore_color = None
    if d.get("ignore_color") is not None:
        ignore_color = _parse_colors(source, [d["ignore_color"]], "ignore_color")[0]  # type: ignore[index]
    unknown_as_ignore = d.get("unknown_as_ignore") or False
    if not isinstance(unknown_as_ignore, bool):
        raise ConfigError(f"{source}: unknown_as_ignore must be true or false, got {unknown_as_ignore!r}")
    thr = d.get("binary_threshold", 128)
    if isinstance(thr, bool) or not isinstance(thr, int) or not 1 <= thr <= 65535:
        raise ConfigError(f"{source}: binary_threshold must be an integer 1..65535, got {thr!r}")
    crowd = d.get("coco_crowd") or "class"
    if crowd not in ("class", "ignore"):
        raise ConfigError(f"{source}: coco_crowd: {crowd!r} is not valid; choose class or ignore")
    return {
        "colors": _parse_colors(source, d.get("colors"), "colors"),
        "ignore_index": ignore_index,
        "ignore_index_explicit": explicit,
        "mask_format": mask_format,
        "ignore_color": ignore_color,
        "unknown_as_ignore": unknown_as_ignore,
        "binary_threshold": thr,
    }


def _parse_label_map(source: Path, raw: Any, spec: DatasetSpec) -> dict[int, int] | None:
    """``{stored value: class id | 'ignore'}`` -> ``{int: int}`` ('ignore' / null -> ignore_index)."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: label_map must be a mapping {{stored value: class id or ignore}}")
    out: dict[int, int] = {}
    for k, v in raw.items():
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ConfigError(f"{source}: label_map key {k!r} is not a mask value (an integer >= 0)")
        if v is None or v == "ignore":
            out[k] = spec.ignore_index
        elif isinstance(v, int) and not isinstance(v, bool) and (0 <= v < spec.num_classes or v == spec.ignore_index):
            out[k] = v
        else:
            raise ConfigError(
                f"{source}: label_map {k}: {v!r} is not a class id 0..{spec.num_classes - 1} or 'ignore'"
            )
    return out


def _rasterize_coco_splits(spec: DatasetSpec, crowd: str) -> None:
    """Point each COCO split's masks at its cached rasterised masks (built on first use)."""
    from ..formats.coco import coco_masks

    for split in spec.splits.values():
        if split.coco is not None:
            split.masks = coco_masks(split.coco, spec.classes, crowd, spec.ignore_index)
    if spec.mask_format == "auto":
        spec.mask_format = "index"


def _validate(spec: DatasetSpec) -> None:
    src = spec.source
    c = spec.num_classes
    if 0 <= spec.ignore_index < c:
        raise ConfigError(
            f"{src}: ignore_index {spec.ignore_index} is also a class id ({spec.classes[spec.ignore_index]!r}); "
            f"use a value outside 0..{c - 1}, e.g. 255"
        )
    if spec.colors is not None:
        if len(spec.colors) != c:
            raise ConfigError(
                f"{src}: {len(spec.colors)} colors for {c} classes (give exactly one [r, g, b] per class)"
            )
        seen: dict[tuple[int, int, int], int] = {}
        for i, col in enumerate(spec.colors):
            if col in seen:
                raise ConfigError(
                    f"{src}: classes {spec.classes[seen[col]]!r} and {spec.classes[i]!r} share colour "
                    f"{list(col)} (colours must be unique)"
                )
            seen[col] = i
        if spec.ignore_color is not None and spec.ignore_color in seen:
            raise ConfigError(
                f"{src}: ignore_color {list(spec.ignore_color)} is also a class colour"
            )
    if spec.mask_format == "rgb" and spec.colors is None:
        raise ConfigError(f"{src}: mask_format: rgb needs colors: (one [r, g, b] per class)")
    if spec.mask_format == "binary" and c != 2:
        raise ConfigError(f"{src}: mask_format: binary needs exactly 2 classes, got {c}")


def _parse_colors(src: Path, raw: Any, key: str) -> list[tuple[int, int, int]] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise ConfigError(f"{src}: {key} must be a list of [r, g, b] triples, got {raw!r}")
    out: list[tuple[int, int, int]] = []
    for col in raw:
        if (
            not isinstance(col, (list, tuple))
            or len(col) != 3
            or not all(
                isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in col
            )
        ):
            raise ConfigError(f"{src}: {key} entry {col!r} is not [r, g, b] with integers 0..255")
        out.append((int(col[0]), int(col[1]), int(col[2])))
    return out


def _resolve(root: Path, p: Any) -> Path:
    q = Path(str(p)).expanduser()
    return (q if q.is_absolute() else root / q).resolve()


# ------------------------------------------------------------ no yaml
def _folder_splits(root: Path) -> dict[str, Split]:
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return {"train": Split(images=root / "images", masks=root / "masks")}
    out: dict[str, Split] = {}
    for s in SPLIT_NAMES:
        if (root / s / "images").is_dir():
            m = root / s / "masks"
            out[s] = Split(images=root / s / "images", masks=m if m.is_dir() else None)
    if "train" not in out:
        return {}
    return out


def _infer_spec(root: Path, splits: dict[str, Split]) -> DatasetSpec:
    root = root.resolve()
    spec = DatasetSpec(root=root, classes=[], splits=splits, name=root.name)
    _fill_inferred_classes(spec)
    _validate(spec)
    return spec


def _known_spec(root: Path, splits: dict[str, Split], known: dict[str, Any]) -> DatasetSpec:
    """A folder without a yaml read with a trained model's classes (no mask scan)."""
    root = root.resolve()
    colors = known.get("colors")
    spec = DatasetSpec(root=root, classes=[str(c) for c in known["classes"]], splits=splits, name=root.name,
                       colors=[tuple(int(v) for v in c) for c in colors] if colors else None,  # type: ignore[misc]
                       ignore_index=int(known.get("ignore_index", 255)))
    _validate(spec)
    _log.info(f"{root}: no dataset.yaml; reading its masks with the model's {spec.num_classes} classes "
              f"(ignore value {spec.ignore_index})")
    return spec


def _binary_jpegs(spec: DatasetSpec, folder: Path, files: list[Path]) -> bool:
    """``auto`` masks that are all 0/255 JPEGs: make ``spec`` binary (two classes) and say so."""
    if spec.mask_format != "auto" or not _jpeg_binary(files):
        return False
    spec.classes = ["class_0", "class_1"]
    spec.mask_format = "binary"
    _log.warn(
        f"{folder}: JPEG masks with values near 0 and 255 (compression noise): reading them as binary, "
        f"values >= {spec.binary_threshold} -> class_1 (write a dataset.yaml with classes: and mask_format: "
        "binary to make it explicit)"
    )
    return True


def _jpeg_binary(files: list[Path], probe: int = 16) -> bool:
    """True when every mask is a JPEG and (in up to ``probe`` of them) at least 98% of the pixels lie
    within 64 of 0 or 255, both ends present: a 0/255 binary mask blurred by compression."""
    import numpy as np

    from .decode import DecodeError, _open
    from .pairing import LOSSY_MASK_EXTS

    if not files or any(f.suffix.lower() not in LOSSY_MASK_EXTS for f in files):
        return False
    low = high = 0
    for f in files[:probe]:
        try:
            with _open(f, 1 << 62, "mask") as im:
                a = np.asarray(im.convert("L"))
        except DecodeError:
            continue
        lo, hi = int((a < 64).sum()), int((a >= 192).sum())
        if lo + hi < 0.98 * a.size:
            return False
        low, high = low + lo, high + hi
    return low > 0 and high > 0


def _scan_mask_values(masks_dir: Path, files: list[Path]) -> tuple[set[int], list[tuple[int, int, int]] | None, int]:
    """The label values of all readable masks, the first palette found, and how many masks were read."""
    from .decode import mask_values_summary

    values: set[int] = set()
    palette: list[tuple[int, int, int]] | None = None
    n = 0
    for f in files:
        try:
            vals, pal, is_color = mask_values_summary(f)
        except DataError:
            continue  # reported by check-data
        if is_color:
            raise ConfigError(
                f"{f}: RGB colour mask but no dataset.yaml to map colours to classes "
                "(write a dataset.yaml with classes: and colors:, and mask_format: rgb)"
            )
        values.update(int(v) for v in vals)
        if pal is not None and palette is None:
            palette = pal
        n += 1
    if n == 0:
        raise DataError(
            f"{masks_dir}: no readable masks to infer classes from (add a dataset.yaml with classes:)"
        )
    return values, palette, n


def _classes_from_values(spec: DatasetSpec, masks_dir: Path, values: set[int]) -> None:
    """Classes (and binary format / ignore index) from the label values found, in place."""
    vals_sorted = sorted(values)
    if min(vals_sorted) < 0:
        raise DataError(
            f"{masks_dir}: masks hold negative values {vals_sorted[:5]} (class ids must be >= 0)"
        )
    if spec.mask_format in ("auto", "binary") and values <= {0, 255} and 255 in values:
        spec.classes = ["class_0", "class_1"]
        spec.mask_format = "binary"
        _log.warn(
            f"{masks_dir}: masks hold only 0 and 255: reading them as binary (0 -> class_0, 255 -> class_1); "
            "write a dataset.yaml with ignore_index: 255 if 255 means 'unlabelled'"
        )
    else:
        top = max(vals_sorted)
        if spec.ignore_index_explicit:
            labels = [v for v in vals_sorted if v != spec.ignore_index]
            top = max(labels) if labels else 0
        elif top == 255 and len(vals_sorted) > 1:
            spec.ignore_index = 255
            top = max(v for v in vals_sorted if v != 255)
            _log.info(
                f"{masks_dir}: mask value 255 is treated as 'ignore' (unlabelled); "
                "write a dataset.yaml to change this"
            )
        elif top >= 255:
            spec.ignore_index = 65535 if top < 65535 else top + 1
        spec.classes = [f"class_{i}" for i in range(top + 1)]


def _lossless_if_any(masks_dir: Path, files: list[Path]) -> list[Path]:
    """The masks to infer classes from: the lossless ones when some masks are JPEG and some are not
    (a JPEG's compression noise would otherwise become dozens of classes)."""
    from .pairing import LOSSY_MASK_EXTS

    lossless = [f for f in files if f.suffix.lower() not in LOSSY_MASK_EXTS]
    if not lossless or len(lossless) == len(files):
        return files
    lossy = next(f for f in files if f.suffix.lower() in LOSSY_MASK_EXTS)
    _log.warn(f"{masks_dir}: classes inferred from the {len(lossless)} lossless masks only, not from the "
              f"{len(files) - len(lossless)} JPEG mask(s) (e.g. {lossy.name}: compression noise); save masks as PNG")
    return lossless


def _fill_inferred_classes(spec: DatasetSpec) -> None:
    """Scan training masks to infer the classes (and binary/ignore conventions) in place."""
    from .pairing import list_files

    split = spec.splits.get("train") or next(iter(spec.splits.values()))
    if spec.mask_format == "binary":
        spec.classes = ["class_0", "class_1"]
        return
    if split.masks is None:
        raise ConfigError(
            f"{spec.source}: no classes: given and no masks to infer them from (add classes:)"
        )
    files, _ = list_files(split.masks, kind="mask", recursive=split.recursive)
    if _binary_jpegs(spec, split.masks, files):
        return
    values, palette, n = _scan_mask_values(split.masks, _lossless_if_any(split.masks, files))
    _classes_from_values(spec, split.masks, values)
    if spec.colors is None and palette is not None and spec.mask_format != "binary":
        pal = palette + [(0, 0, 0)] * max(0, spec.num_classes - len(palette))
        cols = pal[: spec.num_classes]
        if len(set(cols)) == len(cols):
            spec.colors = cols
    _log.info(
        f"{spec.source}: no classes listed: found {spec.num_classes} classes in {n} masks "
        f"({', '.join(spec.classes[:6])}{', ...' if spec.num_classes > 6 else ''}); "
        "name them in a dataset.yaml (classes:)"
    )
