"""Files taken from Debian packages: ``apt-get download`` once, ``dpkg-deb -x`` into a git-ignored cache.

The model registry fetches BRISQUE's LIVE model from ``opencv-doc`` this way, and the demo media
(``curation.sample_media``) its photos and clips; both import this module, so the registry needs none of
the demo code.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

DEFAULT_CACHE = Path(__file__).resolve().parent.parent / ".media"


class PackageUnavailable(RuntimeError):
    """A Debian package cannot be downloaded or unpacked on this machine (the message says why)."""


def _apt_download(package: str, debs: Path) -> Path:
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{package}_*.deb"))
    if found:
        return found[-1]
    cmd = ["apt-get", "download", "-q", package]
    try:
        proc = subprocess.run(cmd, cwd=debs, capture_output=True, text=True, check=False)
        if proc.returncode != 0:  # a stale package list: refresh it once
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True, check=False)
            proc = subprocess.run(cmd, cwd=debs, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise PackageUnavailable(f"apt-get is not available to download {package}") from None
    found = sorted(debs.glob(f"{package}_*.deb"))
    if proc.returncode != 0 or not found:
        raise PackageUnavailable(f"apt-get download {package} failed: {proc.stderr.strip()[-300:]}")
    return found[-1]


def debian_package(package: str, cache: Path = DEFAULT_CACHE) -> Path:
    """Unpacked root of a Debian package (downloaded and extracted once into ``cache``)."""
    root = cache / package
    marker = root / ".unpacked"
    if marker.exists():
        return root
    deb = _apt_download(package, cache / "debs")
    if shutil.which("dpkg-deb") is None:
        raise PackageUnavailable("dpkg-deb is not available to unpack .deb files")
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    marker.touch()
    return root


def opencv_doc(cache: Path = DEFAULT_CACHE) -> Path:
    """``usr/share/doc/opencv-doc/examples`` of Debian ``opencv-doc``: sample photos and clips, and the
    BRISQUE model files under ``quality/``."""
    return debian_package("opencv-doc", cache) / "usr/share/doc/opencv-doc/examples"
