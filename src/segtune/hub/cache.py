"""Where downloaded weights live, whether the network may be used, and fetching one file.

Two caches are read, located from the environment at call time (so a changed ``TORCH_HOME`` or
``HF_HOME`` takes effect without a restart):

* torch hub: ``$TORCH_HOME/hub/checkpoints/<file name of the URL>`` (``TORCH_HOME`` defaults to
  ``$XDG_CACHE_HOME/torch``, then ``~/.cache/torch``); torchvision and older timm versions put
  their downloads there.
* Hugging Face hub: ``$HF_HUB_CACHE`` or ``$HF_HOME/hub`` (default ``~/.cache/huggingface/hub``),
  layout ``models--<org>--<name>/snapshots/<revision>/<file>``; timm and SMP download there.

The network is used only when the file is in neither cache, the environment does not forbid it
(``SEGTUNE_OFFLINE=1``, ``HF_HUB_OFFLINE=1``) and a connection to the host opens within
``SEGTUNE_HUB_TIMEOUT`` seconds (default 3): an offline machine fails fast, never hangs.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from .. import _log
from ..errors import WeightsError

__all__ = [
    "HubFile",
    "torch_hub_dir",
    "hf_hub_cache",
    "cached_path",
    "offline_reason",
    "fetch",
    "OFFLINE_ENV",
]

#: Set to 1 to never try the network for weights (the caches are still read).
OFFLINE_ENV = "SEGTUNE_OFFLINE"
_TRUE = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class HubFile:
    """One downloadable weights file, known by a URL and/or a Hugging Face repository.

    Attributes:
        label: what it is, for messages (``timm resnet50.a1_in1k (ImageNet)``).
        url: a plain download URL (cached under ``torch_hub_dir()`` by its file name).
        hf_repo: Hugging Face model repository (``timm/resnet50.a1_in1k``).
        hf_filenames: file names tried in the repository, first found wins.
        hf_revision: the commit or branch to download (``main`` when None).
    """

    label: str
    url: str | None = None
    hf_repo: str | None = None
    hf_filenames: tuple[str, ...] = ("model.safetensors", "pytorch_model.bin")
    hf_revision: str | None = None

    @property
    def url_filename(self) -> str | None:
        """The file name at the end of ``url`` (None without a URL)."""
        return Path(urlparse(self.url).path).name if self.url else None

    def hf_url(self) -> str | None:
        """The Hugging Face Hub download URL of the first of ``hf_filenames`` (None without ``hf_repo``)."""
        if not self.hf_repo:
            return None
        return f"https://huggingface.co/{self.hf_repo}/resolve/{self.hf_revision or 'main'}/{self.hf_filenames[0]}"


def _env_path(name: str) -> Path | None:
    v = os.environ.get(name, "").strip()
    return Path(v).expanduser() if v else None


def _xdg_cache() -> Path:
    return _env_path("XDG_CACHE_HOME") or Path.home() / ".cache"


def torch_hub_dir() -> Path:
    """``$TORCH_HOME/hub/checkpoints``: torch hub's download folder."""
    home = _env_path("TORCH_HOME") or _xdg_cache() / "torch"
    return home / "hub" / "checkpoints"


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache folder (``$HF_HUB_CACHE``, ``$HF_HOME/hub``, ``~/.cache/huggingface/hub``)."""
    direct = _env_path("HF_HUB_CACHE") or _env_path("HUGGINGFACE_HUB_CACHE")
    if direct:
        return direct
    home = _env_path("HF_HOME") or _xdg_cache() / "huggingface"
    return home / "hub"


def _hf_repo_dir(repo: str) -> Path:
    return hf_hub_cache() / ("models--" + repo.replace("/", "--"))


def _hf_cached(f: HubFile) -> Path | None:
    """The file in the HF cache: the pinned or ``main`` revision first, then any snapshot."""
    assert f.hf_repo
    repo = _hf_repo_dir(f.hf_repo)
    snaps = repo / "snapshots"
    if not snaps.is_dir():
        return None
    revs: list[str] = []
    ref = repo / "refs" / (f.hf_revision or "main")
    if ref.is_file():
        revs.append(ref.read_text(encoding="utf-8").strip())
    if f.hf_revision:
        revs.append(f.hf_revision)
    revs += sorted(p.name for p in snaps.iterdir() if p.name not in revs)
    for rev in revs:
        for name in f.hf_filenames:
            p = snaps / rev / name
            if p.is_file():
                return p
    return None


def cached_path(f: HubFile) -> Path | None:
    """The file when it is already in one of the caches, else None (never touches the network)."""
    if f.hf_repo:
        p = _hf_cached(f)
        if p is not None:
            return p
    if f.url_filename:
        p = torch_hub_dir() / f.url_filename
        if p.is_file():
            return p
    return None


def _hosts(f: HubFile) -> list[str]:
    hosts = ["huggingface.co"] if f.hf_repo else []
    if f.url:
        hosts.append(urlparse(f.url).hostname or "")
    return [h for h in hosts if h]


def offline_reason(host: str = "huggingface.co") -> str | None:
    """Why the network must not or cannot be used (``None`` when ``host`` answers).

    Checks ``SEGTUNE_OFFLINE`` / ``HF_HUB_OFFLINE`` first, then opens a TCP connection to
    ``host:443`` with a timeout of ``SEGTUNE_HUB_TIMEOUT`` seconds (default 3).
    """
    for var in (OFFLINE_ENV, "HF_HUB_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return f"{var}={os.environ[var]}"
    try:
        timeout = float(os.environ.get("SEGTUNE_HUB_TIMEOUT", "3"))
    except ValueError:
        timeout = 3.0
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return None
    except OSError as e:
        return f"{host} unreachable: {type(e).__name__}"


def _download(f: HubFile, host: str) -> Path:
    """Download into the cache that belongs to ``host``; partial files never get the final name."""
    if host == "huggingface.co" and f.hf_repo:
        from huggingface_hub import hf_hub_download

        last: Exception | None = None
        for name in f.hf_filenames:
            try:
                return Path(hf_hub_download(f.hf_repo, name, revision=f.hf_revision,
                                            cache_dir=str(hf_hub_cache()), etag_timeout=10))
            except Exception as e:  # noqa: BLE001 - a missing file name: try the next one
                last = e
        raise OSError((str(last).splitlines() or ["download failed"])[0])
    import torch.hub

    assert f.url and f.url_filename
    dst = torch_hub_dir() / f.url_filename
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(f.url, str(dst), progress=not _log.is_quiet())  # temp file + rename
    return dst


def _where(f: HubFile) -> str:
    if f.url:
        return f"fetch {f.url} and put it in {torch_hub_dir()}/"
    return (
        f"fetch {f.hf_url()} and put it at "
        f"{_hf_repo_dir(f.hf_repo or '')}/snapshots/{f.hf_revision or 'main'}/{f.hf_filenames[0]}"
    )


def fetch(f: HubFile, key: str) -> Path:
    """The local path of ``f``: from a cache, else downloaded, else a one-line error.

    Args:
        f: the file wanted.
        key: the setting that asked for it (``model.weights=imagenet``), for the message.

    Raises:
        WeightsError: not cached and the network is off or unreachable (or the download failed);
            the message names the file to fetch and where to put it.
    """
    p = cached_path(f)
    if p is not None:
        return p
    why = ""
    for host in _hosts(f):
        why = offline_reason(host) or ""
        if why:
            continue
        _log.info(f"weights: downloading {f.label} from {host}")
        try:
            return _download(f, host)
        except OSError as e:
            why = f"download from {host} failed: {(str(e).splitlines() or [type(e).__name__])[0]}"
    raise WeightsError(
        f"{key}: {f.label}: not in the local caches and cannot be downloaded ({why}); {_where(f)}"
    )
