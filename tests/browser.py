"""Headless Chromium for the browser tests (Debian's ``chromium`` + ``chromium-driver``; scripts/bootstrap.sh
installs them when missing): the flags that keep it offline and quiet, a fresh profile per run."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.missing import unavailable

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage")


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    unavailable("chromium not installed (apt-get install chromium chromium-driver; scripts/bootstrap.sh does it as root)")


def screenshot(url: str, out: Path, size: tuple[int, int] = (1280, 2400), timeout_s: float = 120) -> Path:
    """A PNG of ``url`` as headless Chromium renders it."""
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        subprocess.run([chromium(), *FLAGS, f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}",
                        "--hide-scrollbars", f"--screenshot={out}", url],
                       check=True, timeout=timeout_s, capture_output=True)
    return out


def is_blank(png: Path) -> bool:
    """One colour (or nearly): nothing was drawn."""
    from PIL import Image, ImageStat

    with Image.open(png) as im:
        stat = ImageStat.Stat(im.convert("L"))
        return stat.stddev[0] < 2.0 or len(im.convert("L").getcolors(1 << 16) or []) < 8
