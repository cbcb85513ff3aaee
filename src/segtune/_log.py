"""Minimal user-facing logging to stderr (library code never calls print directly)."""

from __future__ import annotations

import sys

__all__ = ["info", "warn", "set_quiet", "is_quiet"]

_QUIET = False


def set_quiet(quiet: bool) -> None:
    """Silence :func:`info` (warnings are still shown)."""
    global _QUIET
    _QUIET = quiet


def is_quiet() -> bool:
    """Whether :func:`info` lines (and progress bars) are silenced."""
    return _QUIET


def info(msg: str) -> None:
    """Print an informational line to stderr."""
    if not _QUIET:
        print(msg, file=sys.stderr, flush=True)


def warn(msg: str) -> None:
    """Print a warning line (prefixed ``warning:``) to stderr."""
    print(f"warning: {msg}", file=sys.stderr, flush=True)
