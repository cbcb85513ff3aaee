"""Export formats by name (``segtune export --format NAME``): one registered function each."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._registry import Registry

__all__ = ["FORMATS", "list_formats"]

#: name -> ``export(run, **options) -> report`` (imported when called: torch stays unloaded)
FORMATS: Registry[Callable[..., Any]] = Registry("export format", "--format")


@FORMATS.register("onnx")
def _onnx(run: Any, **options: Any) -> Any:
    from .onnx import export_onnx

    return export_onnx(run, **options)


def list_formats() -> list[str]:
    """Registered export format names."""
    return FORMATS.names()
