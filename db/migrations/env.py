"""Alembic environment. ``curation db upgrade`` passes a live connection in ``config.attributes``;
plain ``alembic -c db/alembic.ini upgrade head`` uses ``CURATION_DATABASE_URL``."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine

config = context.config


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=None)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = os.environ.get("CURATION_DATABASE_URL")
    if not url:
        raise SystemExit("set CURATION_DATABASE_URL, or run `curation db upgrade` for the embedded database")
    engine = create_engine(url)
    with engine.connect() as conn:
        context.configure(connection=conn, target_metadata=None)
        with context.begin_transaction():
            context.run_migrations()


run_migrations_online()
