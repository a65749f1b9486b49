"""Connecting to the database: the external DSN or the embedded server, engines, migrations, and
the reconnect-with-back-off policy every database caller in a worker uses."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import DBAPIError, OperationalError

from curation.config import MIGRATIONS_DIR, Settings
from curation.embedded import EmbeddedPostgres

log = logging.getLogger(__name__)
T = TypeVar("T")


def database_url(settings: Settings | None = None, *, start_embedded: bool = True) -> str:
    """The external DSN if one is configured, else the embedded server's URL (started on demand,
    migrated to the latest schema)."""
    settings = settings or Settings.from_env()
    if settings.database_url:
        url = settings.database_url
        if url.startswith("postgresql://") or url.startswith("postgres://"):
            url = "postgresql+psycopg2://" + url.split("://", 1)[1]
        return url
    server = EmbeddedPostgres(settings.home / "pg")
    if not start_embedded:
        return server.url
    was_running = server.running()
    url = server.start()
    if not was_running:
        upgrade(make_engine(url, pool_size=1))
    return url


def make_engine(url: str, *, pool_size: int = 2, application_name: str = "curation", pre_ping: bool = True) -> Engine:
    """An engine whose pool pings a connection before lending it (``pre_ping``), unless every use of the
    engine is retried on a lost connection anyway (``with_reconnect``: the worker runtime)."""
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=2,
        pool_pre_ping=pre_ping,
        pool_recycle=600,
        connect_args={
            "application_name": application_name,
            "connect_timeout": 10,
            # a half-open socket is detected instead of hanging forever
            "keepalives": 1,
            "keepalives_idle": 30,
            "keepalives_interval": 10,
            "keepalives_count": 3,
        },
    )


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def upgrade(engine: Engine) -> str:
    """Migrate to the latest revision (idempotent); return the revision now in force."""
    cfg = alembic_config()
    with engine.begin() as conn:
        # one migrator at a time, even when several processes start together
        conn.execute(text("SELECT pg_advisory_xact_lock(4242001)"))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    with engine.connect() as conn:
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()


def is_disconnect(exc: BaseException) -> bool:
    """True for errors that a reconnect can cure: the server restarted, the socket died, the
    connection was terminated by an administrator."""
    if isinstance(exc, OperationalError):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        pgcode = getattr(exc.orig, "pgcode", None)
        return pgcode is not None and pgcode.startswith(("08", "57P"))
    return False


def with_reconnect(
    fn: Callable[[], T], *, what: str, give_up_after_s: float = 600.0, first_delay_s: float = 0.2
) -> T:
    """Run ``fn``; on a lost connection retry with exponential back-off and jitter until
    ``give_up_after_s``. Other errors propagate at once."""
    deadline = time.monotonic() + give_up_after_s
    delay = first_delay_s
    while True:
        try:
            return fn()
        except DBAPIError as exc:
            if not is_disconnect(exc) or time.monotonic() > deadline:
                raise
            log.warning("%s: database unreachable (%s); retrying in %.1f s", what, exc.__class__.__name__, delay)
            time.sleep(delay * (0.8 + 0.4 * random.random()))
            delay = min(delay * 2, 10.0)
