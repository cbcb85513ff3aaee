"""The one progress-bar helper: a rich bar on stderr, shown only where a person is watching.

``progress(show, description, total)`` is a context manager yielding an ``advance()`` callable
(for work done in threads or in chunks); :func:`progress_iter` wraps an iterable. Both show
nothing when ``show`` is False, when stderr is not a terminal (``show=None``), or in quiet mode.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from . import _log

__all__ = ["progress", "progress_iter"]

T = TypeVar("T")


def _visible(show: bool | None) -> bool:
    if _log.is_quiet():
        return False
    return sys.stderr.isatty() if show is None else bool(show)


@contextmanager
def progress(show: bool | None, description: str, total: int | None) -> Iterator[Callable[[], None]]:
    """Yield ``advance()``; draws a transient bar (description, bar, n/total, time left) on stderr.

    Args:
        show: True/False to force, None to show only when stderr is a terminal.
        description: text before the bar.
        total: number of ``advance()`` calls expected (None: unknown).
    """
    if not _visible(show):
        yield lambda: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=Console(stderr=True), transient=True,
    ) as bar:
        task = bar.add_task(description, total=total)
        yield lambda: bar.advance(task)


def progress_iter(
    items: Iterable[T], description: str, total: int | None = None, show: bool | None = None
) -> Iterator[T]:
    """Iterate over ``items`` with :func:`progress` (``total`` defaults to ``len(items)``)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with progress(show, description, total) as advance:
        for item in items:
            yield item
            advance()
