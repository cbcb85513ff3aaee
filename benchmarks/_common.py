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


def load_avg() -> float:
    """The 1-minute load average (NaN where the OS has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return float("nan")


def load_sentence(load: list[float] | None, cores: int | None = None) -> str:
    """What the machine's load was during a run, from the recorded ``[start, end]`` load averages."""
    if not load:
        return "Load average not recorded."
    cores = cores or os.cpu_count() or 1
    busy = max(load) > 0.5
    return (f"1-min load average {load[0]:.1f} at the start and {load[-1]:.1f} at the end on {cores} cores"
            + (" (other jobs were running: absolute speeds are low and noisy, ratios of contenders alternated in "
               "the same run are the comparable numbers)." if busy else "."))


def command_line(script: str, argv: list[str] | None) -> str:
    """``python benchmarks/<script> ARGS`` as this process was invoked."""
    args = argv if argv is not None else sys.argv[1:]
    return f"python benchmarks/{script}" + ("" if not args else " " + " ".join(args))


def save_json(path: Path, doc: object) -> None:
    """Write ``doc`` as indented JSON, atomically (temp file + rename)."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def rel(path: Path) -> str:
    """``path`` relative to the repository when inside it (for the RESULTS.md text)."""
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)
