"""Helpers shared by the benchmark scripts: machine line, peak memory, medians, RESULTS.md sections.

Imported by the scripts in this folder (each puts the folder on ``sys.path`` first), never by
``segtune`` itself.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "RESULTS.md"


def src_on_path() -> None:
    """Make ``import segtune`` work from a checkout without installing it."""
    src = str(REPO / "src")
    if src not in sys.path:
        sys.path.insert(0, src)


def machine(threads: int, shared: bool = True) -> str:
    """One line: architecture, cores, RAM, GPU, OS, torch version and intra-op threads."""
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    import torch

    gpu = "no GPU" if not torch.cuda.is_available() else torch.cuda.get_device_name(0)
    cores = f"{os.cpu_count()} CPU cores" + (" (shared with other jobs)" if shared else "")
    return (f"{platform.machine()}, {cores}{mem}, {gpu}, Linux {platform.release()}, "
            f"torch {torch.__version__}, {threads} intra-op thread(s)")


def rss_mb(field: str = "VmHWM") -> float:
    """This process's ``VmHWM`` (peak) or ``VmRSS`` (current) resident memory, MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return kb / (1024 * 1024 if sys.platform == "darwin" else 1024)


def median(xs: list[float]) -> float:
    """Median, NaN for an empty list."""
    return float(statistics.median(xs)) if xs else float("nan")


def write_section(body: str, start: str, end: str, path: Path = RESULTS) -> None:
    """Replace the text between ``start`` and ``end`` in ``path`` (append both when absent).

    The file is re-read right before writing and replaced atomically; nothing outside the
    markers changes.
    """
    text = path.read_text(encoding="utf-8") if path.is_file() else "# Benchmark results\n"
    block = f"{start}\n{body.rstrip()}\n{end}"
    i, j = text.find(start), text.find(end)
    if i >= 0 and j > i:
        text = text[:i] + block + text[j + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
