"""Settings read from the environment, with the embedded defaults.

| variable                         | default            | meaning                                               |
|----------------------------------|--------------------|-------------------------------------------------------|
| ``CURATION_DATABASE_URL``        | (embedded)         | DSN of an external PostgreSQL >= 15 with pgvector >= 0.8 |
| ``CURATION_HOME``                | see ``find_home``  | state folder: embedded database, logs                 |
| ``CURATION_RAY_ADDRESS``         | (local Ray)        | same as ``--address``                                 |
| ``CURATION_WEIGHTS_DIR``         | HOME/weights       | model weights (``models.registry.weights_dir``)       |
| ``CURATION_CACHE_DIR``           | ~/.cache/curation  | derived model files where the weights folder is read-only |
| ``CURATION_HEARTBEAT_S``         | 10                 | worker heartbeat period                               |
| ``CURATION_WORKER_TIMEOUT_S``    | 60                 | a worker whose heartbeat is older is dead             |
| ``CURATION_SWEEP_S``             | 15                 | reclaim sweep period                                  |
| ``CURATION_BACKOFF_BASE_S``      | 10                 | retry back-off: base * 2**attempt, +-10 % jitter, <= 1 h |
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
MIGRATIONS_DIR = REPO_ROOT / "db" / "migrations"


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"{name}={raw!r} is not a number") from exc


@dataclass(frozen=True)
class BrokerTiming:
    """Lease timing. All arithmetic on these happens on the database's clock."""

    heartbeat_s: float = 10.0
    worker_timeout_s: float = 60.0
    sweep_s: float = 15.0
    backoff_base_s: float = 10.0
    backoff_max_s: float = 3600.0
    # completion batching in the worker loop (workers/runtime.py, Broker.complete_many): the completions
    # of up to flush_max_tasks consecutive tasks share one transaction, and a finished task's completion
    # waits about flush_max_s at most; flush_max_tasks = 1 completes every task on its own
    flush_max_tasks: int = 16
    flush_max_s: float = 0.5

    @classmethod
    def from_env(cls) -> "BrokerTiming":
        return cls(
            heartbeat_s=_float("CURATION_HEARTBEAT_S", cls.heartbeat_s),
            worker_timeout_s=_float("CURATION_WORKER_TIMEOUT_S", cls.worker_timeout_s),
            sweep_s=_float("CURATION_SWEEP_S", cls.sweep_s),
            backoff_base_s=_float("CURATION_BACKOFF_BASE_S", cls.backoff_base_s),
            flush_max_tasks=max(1, int(_float("CURATION_FLUSH_MAX_TASKS", cls.flush_max_tasks))),
            flush_max_s=_float("CURATION_FLUSH_MAX_S", cls.flush_max_s),
        )


def find_home(start: Path | None = None) -> Path:
    """The state folder when ``CURATION_HOME`` is not set: the nearest ``.curation`` holding an embedded
    database in the working folder or a folder above it (as git finds ``.git``), so ``status`` and
    ``query`` from a subfolder reach the database ``run`` started; else ``./.curation``."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / ".curation" / "pg").is_dir():
            return folder / ".curation"
    return here / ".curation"


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str | None
    ray_address: str | None
    timing: BrokerTiming

    @classmethod
    def from_env(cls) -> "Settings":
        home = Path(os.environ["CURATION_HOME"]).resolve() if os.environ.get("CURATION_HOME") else find_home()
        return cls(
            home=home,
            database_url=os.environ.get("CURATION_DATABASE_URL") or None,
            ray_address=os.environ.get("CURATION_RAY_ADDRESS") or None,
            timing=BrokerTiming.from_env(),
        )
