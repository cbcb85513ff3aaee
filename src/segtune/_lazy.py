"""Lazy package attributes: a package names where each public name lives, and imports the
module only when the name is first used (so importing the package stays cheap)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["lazy_getattr"]


def lazy_getattr(package: str, where: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: ``name`` comes from submodule ``where[name]``.

    Args:
        package: the package's ``__name__``.
        where: public name -> submodule name (``"spec"`` or ``".spec"``), relative to ``package``.

    Returns:
        The function to assign to the package's ``__getattr__``; a value it imports is cached in
        the package, and an unknown name raises ``AttributeError`` as usual.
    """

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module("." + module.lstrip("."), package), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
