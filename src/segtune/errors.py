"""User-facing errors.

Every problem a user can fix (bad data, bad config, missing weights) is raised as a
:class:`SegtuneError` whose message is one line: the file, what is wrong, how to fix it.
The CLI prints it as ``error: <message>`` and exits with code 2, never a traceback.
"""

from __future__ import annotations

__all__ = ["SegtuneError", "DataError", "ConfigError", "WeightsError", "RunError"]


class SegtuneError(Exception):
    """Base class of errors the user can fix; the CLI turns them into exit code 2."""

    exit_code = 2


class DataError(SegtuneError):
    """A data set file or folder is missing, unreadable or inconsistent."""


class ConfigError(SegtuneError, ValueError):
    """A configuration value or dataset.yaml key is invalid."""


class WeightsError(SegtuneError):
    """Pretrained or saved weights are missing, unsafe, corrupt or do not fit the model."""


class RunError(SegtuneError):
    """A run folder is missing, incomplete, or would be overwritten."""
