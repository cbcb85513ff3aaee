"""A small name -> builder registry with decorator registration and "did you mean" errors.

Used for architectures (:mod:`segtune.models.factory`), strategies (:mod:`segtune.strategies`)
and losses (:mod:`segtune.losses`). Unknown names raise :class:`~segtune.errors.ConfigError`
with the closest registered name and the full list.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from typing import Generic, TypeVar

from .errors import ConfigError

__all__ = ["Registry", "did_you_mean"]

T = TypeVar("T")


def did_you_mean(name: str, valid: list[str] | tuple[str, ...]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest valid name, or ``""``."""
    close = difflib.get_close_matches(
        str(name).lower(), [v.lower() for v in valid], n=1, cutoff=0.5
    )
    if not close:
        return ""
    original = next(v for v in valid if v.lower() == close[0])
    return f" (did you mean '{original}'?)"


class Registry(Generic[T]):
    """Map lower-case names to objects (builders, classes).

    Args:
        kind: what is registered, used in error messages (e.g. ``"architecture"``).
        key: the config key users set, used in error messages (e.g. ``"model.arch"``).
    """

    def __init__(self, kind: str, key: str) -> None:
        self.kind = kind
        self.key = key
        self._items: dict[str, T] = {}

    def register(self, *names: str) -> Callable[[T], T]:
        """Decorator registering an object under one or more names.

        Raises:
            ValueError: if a name is already taken (a programming error, not a user one).
        """

        def deco(obj: T) -> T:
            for name in names:
                n = name.lower()
                if n in self._items:
                    raise ValueError(f"{self.kind} '{name}' is registered twice")
                self._items[n] = obj
            return obj

        return deco

    def get(self, name: str, also: tuple[str, ...] = ()) -> T:
        """Look a name up (case-insensitive).

        Args:
            name: the registered name.
            also: other values the config key accepts (e.g. ``auto``), listed first in the error.

        Raises:
            ConfigError: unknown name, with the closest match and the valid names.
        """
        n = str(name).lower()
        if n not in self._items:
            valid = [*also, *self.names()]
            raise ConfigError(
                f"{self.key}={name!r}: unknown {self.kind}{did_you_mean(n, valid)}; "
                f"choose one of: {', '.join(valid)}"
            )
        return self._items[n]

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names matching a shell-style pattern, in registration order."""
        return [n for n in self._items if fnmatch.fnmatch(n, pattern.lower())]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items
