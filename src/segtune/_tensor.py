"""Small tensor and size helpers shared by training, evaluation and prediction."""

from __future__ import annotations

import torch

__all__ = ["CPU_CHUNK_PIXELS", "cpu_channels_last", "forward_chunked", "round_up", "suppress_classes"]

#: On a CPU, an inference forward pass takes at most this many pixels (images x H x W) at once.
CPU_CHUNK_PIXELS = 1 << 18


def round_up(n: int, multiple: int = 32) -> int:
    """Smallest multiple of ``multiple`` that is >= ``n`` (sizes in pixels)."""
    return -(-int(n) // multiple) * multiple


def cpu_channels_last(model: torch.nn.Module, device: str | torch.device) -> bool:
    """Put ``model``'s 4-D weights in channels-last layout when it runs on the CPU; True if done.

    oneDNN's CPU convolutions are ~20-30% faster in NHWC than in NCHW for segtune's networks
    (forward and backward; ``benchmarks/overhead.py``, ``benchmarks/throughput.py``). The
    parameters stay the same objects (only their strides change), so optimisers, state dicts
    and checkpoints are unaffected; results differ from NCHW only by float rounding. GPUs are
    left alone.
    """
    if torch.device(device).type != "cpu":
        return False
    model.to(memory_format=torch.channels_last)
    return True


def forward_chunked(model: torch.nn.Module, x: torch.Tensor, max_pixels: int = CPU_CHUNK_PIXELS) -> torch.Tensor:
    """``model(x)`` for an inference batch ``(N, 3, H, W)``, run a few images at a time on a CPU.

    On a CPU a forward pass over several large images at once is slower per image than one
    image at a time (its activations spill the caches): 4 x 480x384 in one pass took 1.6x as
    long as four single-image passes (Unet + EfficientNet-Lite0, ``benchmarks/throughput.py``);
    at 256x256 it is a draw and at 128x128 the batch wins. So on a CPU the batch is split into
    chunks of at most ``max_pixels`` pixels (at least one image) and the logits ``(N, C, H, W)``
    concatenated. Results are those of ``model(x)`` (per-image computation in eval mode); a model
    in training mode (batch statistics) or on a GPU runs the whole batch at once.
    """
    n, h, w = x.shape[0], x.shape[-2], x.shape[-1]
    per = max(1, int(max_pixels) // max(1, h * w))
    if x.device.type != "cpu" or model.training or per >= n:
        return model(x)
    return torch.cat([model(c) for c in x.split(per)])


def suppress_classes(logits: torch.Tensor, classes: list[int] | tuple[int, ...]) -> torch.Tensor:
    """``logits`` ``(N, C, H, W)`` with the given class channels set to the lowest float, so an
    argmax (or softmax) never picks them; returned unchanged when ``classes`` is empty."""
    if not classes:
        return logits
    out = logits.clone()
    out[:, list(classes)] = torch.finfo(out.dtype).min
    return out
