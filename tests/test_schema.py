"""Migrations: idempotent, and the migrated database matches the SQLAlchemy models."""

from __future__ import annotations

from sqlalchemy import inspect, text

from curation.db import make_engine, upgrade
from curation.schema import Base


def test_upgrade_is_idempotent(db_url):
    engine = make_engine(db_url, pool_size=1)
    assert upgrade(engine) == upgrade(engine) == "0013"


def test_migrated_tables_match_the_models(db_url):
    engine = make_engine(db_url, pool_size=1)
    insp = inspect(engine)
    for table in Base.metadata.sorted_tables:
        db_cols = {c["name"]: c for c in insp.get_columns(table.name)}
        assert set(db_cols) == set(table.columns.keys()), table.name
        for col in table.columns:
            assert db_cols[col.name]["nullable"] == col.nullable, f"{table.name}.{col.name}"
        pk = insp.get_pk_constraint(table.name)["constrained_columns"]
        assert set(pk) == {c.name for c in table.primary_key.columns}, table.name


def test_phash_column_is_bit64_with_an_hnsw_hamming_index(db_url):
    engine = make_engine(db_url, pool_size=1)
    with engine.connect() as conn:
        typ = conn.execute(text("SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                                "WHERE attrelid='phash_results'::regclass AND attname='phash'")).scalar_one()
        idx = conn.execute(text("SELECT indexdef FROM pg_indexes WHERE indexname='phash_results_hnsw_idx'")).scalar_one()
        ver = conn.execute(text("SELECT extversion FROM pg_extension WHERE extname='vector'")).scalar_one()
    assert typ == "bit(64)"
    assert "hnsw" in idx and "bit_hamming_ops" in idx
    assert tuple(int(x) for x in ver.split(".")[:2]) >= (0, 8)
