"""Candidate encoders for ranking: parsed from ``--candidates`` and built offline.

Syntax of one candidate (a comma-separated list of them is ``--candidates``):

==============================  ========================================================
``tf_efficientnet_lite0``       a timm encoder with its bundled ImageNet weights
``random:tf_efficientnet_lite0``  the same encoder, randomly initialised (seeded): the
                                reference that should rank last
``runs/unet-head``              the encoder of a segtune run folder (SMP architectures)
``weights.safetensors``         a local weights file (encoder or whole model) for the
                                default encoder ``tf_efficientnet_lite0``
``tf_efficientnet_lite2:w.pt``  a local weights file for another timm encoder
==============================  ========================================================
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError, WeightsError

if TYPE_CHECKING:
    from ..models import SegModel

__all__ = ["Candidate", "parse_candidates", "build_encoder", "DEFAULT_CANDIDATES"]

#: the bundled EfficientNet-Lite encoders and the random-initialisation reference
DEFAULT_CANDIDATES = (
    "tf_efficientnet_lite0,tf_efficientnet_lite1,tf_efficientnet_lite2,random:tf_efficientnet_lite0"
)
_RANDOM = "random:"


@dataclass(frozen=True)
class Candidate:
    """One encoder to score.

    Attributes:
        label: the text the user gave (the row name in the table).
        kind: ``imagenet`` | ``random`` | ``run`` | ``file``.
        encoder: timm encoder name (for ``run``: read from the run's model.yaml when built).
        source: the run folder or weights file (``None`` for ``imagenet`` and ``random``).
    """

    label: str
    kind: str
    encoder: str
    source: Path | None = None

    @property
    def is_random(self) -> bool:
        """True for the randomly initialised reference."""
        return self.kind == "random"


def _one(text: str) -> Candidate:
    from ..models import DEFAULT_ENCODER

    path = Path(text).expanduser()
    if text.lower().startswith(_RANDOM):
        return Candidate(text, "random", text[len(_RANDOM):] or DEFAULT_ENCODER)
    if path.is_dir():
        return Candidate(text, "run", "", path)
    if path.is_file():
        return Candidate(text, "file", DEFAULT_ENCODER, path)
    head, sep, tail = text.partition(":")
    if sep and tail:
        if not Path(tail).expanduser().is_file():
            raise WeightsError(
                f"{tail}: weights file not found (candidate '{text}'; write ENCODER:FILE with an "
                "existing safetensors or state-dict file)"
            )
        return Candidate(text, "file", head, Path(tail).expanduser())
    if any(ch in text for ch in "/\\") or text.endswith((".safetensors", ".pt", ".pth", ".bin", ".ckpt")):
        raise WeightsError(
            f"{text}: candidate not found (no such run folder or weights file; candidates are "
            "timm encoder names, random:ENCODER, run folders or weights files)"
        )
    return Candidate(text, "imagenet", text)


def parse_candidates(candidates: str | Sequence[str] | None = None) -> list[Candidate]:
    """Parse ``--candidates`` (a comma-separated string or a list; ``None``: the default four).

    Raises:
        ConfigError: empty or repeated candidates.
        WeightsError: a path-like candidate that does not exist.
    """
    if candidates is None:
        candidates = DEFAULT_CANDIDATES
    items = candidates.split(",") if isinstance(candidates, str) else list(candidates)
    texts = [str(t).strip() for t in items if str(t).strip()]
    if not texts:
        raise ConfigError("--candidates: empty (give e.g. tf_efficientnet_lite0,random:tf_efficientnet_lite0)")
    dupes = sorted({t for t in texts if texts.count(t) > 1})
    if dupes:
        raise ConfigError(f"--candidates: '{dupes[0]}' is listed twice (give each candidate once)")
    return [_one(t) for t in texts]


def build_encoder(candidate: Candidate, seed: int = 0) -> SegModel:
    """A Unet (SMP) whose encoder holds the candidate's weights, in eval mode on the CPU.

    Only ``encode()`` is used; the decoder is whatever the builder made. Random weights are drawn
    from a generator seeded with ``seed`` (the global torch RNG is left as it was).

    Raises:
        ConfigError: unknown encoder, or a run folder of a non-SMP architecture.
        WeightsError: missing, unsafe or non-fitting weights (one line naming the file).
        RunError: a folder that is not a finished segtune run.
    """
    import torch

    from ..models import create_model

    if candidate.kind == "run":
        from ..models.modelfile import load_model

        model, _ = load_model(candidate.source)
    elif candidate.kind == "file":
        try:
            model = create_model("unet", encoder=candidate.encoder, num_classes=2, weights=str(candidate.source))
        except WeightsError as e:  # a whole-model file of another class count: take its encoder
            model = create_model("unet", encoder=candidate.encoder, num_classes=2, weights="none")
            if not _encoder_from_whole_model(model, candidate.source):
                raise e from None
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            weights = "imagenet" if candidate.kind == "imagenet" else "none"
            model = create_model("unet", encoder=candidate.encoder, num_classes=2, weights=weights)
    if not model.splits_encoder_decoder:
        raise ConfigError(
            f"{candidate.source}: holds a {model.arch} model; rank-encoders reads the encoder of SMP "
            "architectures (unet, fpn, ...) only"
        )
    return model.eval()


def _encoder_from_whole_model(model: SegModel, path: Path) -> bool:
    """Load the encoder tensors of a whole-model state dict into ``model.encoder``.

    Returns:
        False (nothing loaded) unless every encoder tensor is found with the right shape.
    """
    from ..models import load_state_file
    from ..models._loading import match_state

    enc = model.encoder
    shapes = {k: tuple(v.shape) for k, v in enc.state_dict().items()}
    mapped, _, _ = match_state(load_state_file(path), shapes)
    needed = [k for k in shapes if not k.endswith("num_batches_tracked")]
    if any(k not in mapped or tuple(mapped[k].shape) != shapes[k] for k in needed):
        return False
    enc.load_state_dict(mapped, strict=False)
    return True
