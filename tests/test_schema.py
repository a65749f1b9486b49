"""Migrations: idempotent, and the migrated database matches the SQLAlchemy models."""

from __future__ import annotations

from sqlalchemy import inspect, text

from curation.db import make_engine, upgrade
from curation.schema import Base


def test_upgrade_is_idempotent(db_url):
    from alembic.script import ScriptDirectory

    from curation.db import alembic_config

    engine = make_engine(db_url, pool_size=1)
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None and int(head) >= 17  # one linear chain of numbered revisions
    assert upgrade(engine) == upgrade(engine) == head


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


def test_every_migration_downgrades_and_upgrades_again(pg_server):
    """head → base → head on a database of its own: every downgrade runs, and the schema comes back
    the same (tables, their columns, views)."""
    from alembic import command
    from sqlalchemy.engine import make_url

    from curation.db import alembic_config

    admin = make_engine(pg_server.url, pool_size=1).execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text("DROP DATABASE IF EXISTS roundtrip"))
        conn.execute(text("CREATE DATABASE roundtrip"))
    url = make_url(pg_server.url).set(database="roundtrip").render_as_string(hide_password=False)
    engine = make_engine(url, pool_size=1)

    def shape():
        with engine.connect() as conn:
            return sorted(conn.execute(text(
                "SELECT table_name, table_type, (SELECT array_agg(column_name::text ORDER BY column_name) "
                "FROM information_schema.columns c WHERE c.table_name = t.table_name AND c.table_schema = 'public') "
                "FROM information_schema.tables t WHERE table_schema = 'public'")).all())

    def migrate(target: str) -> None:
        cfg = alembic_config()
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            if target == "base":
                command.downgrade(cfg, "base")
            else:
                command.upgrade(cfg, target)

    try:
        migrate("head")
        at_head = shape()
        migrate("base")
        assert [t for t in shape() if t[0] != "alembic_version"] == []
        migrate("head")
        assert shape() == at_head
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text("DROP DATABASE IF EXISTS roundtrip WITH (FORCE)"))


def test_every_stage_table_matches_its_result_dataclass(db_url):
    """The result dataclass is the one declaration of a stage's columns: the migrated table has exactly
    its fields (+ the key columns), with the same SQL types, nullability and key."""
    from sqlalchemy.dialects import postgresql

    from curation.result_tables import KEY_COLUMNS, result_table
    from workers.stage import builtin_stage_names, get_stage

    engine = make_engine(db_url, pool_size=1)
    dialect = postgresql.dialect()
    with engine.connect() as conn:
        for name in builtin_stage_names():
            cls = get_stage(name)
            table = result_table(cls.result_table, cls.result_type, cls.children_field or cls.pairs_field)
            assert [c for c in table.columns.keys() if c not in KEY_COLUMNS] == cls.result_columns()
            db = {r.attname: r for r in conn.execute(text(
                "SELECT attname, format_type(atttypid, atttypmod) AS type, attnotnull FROM pg_attribute "
                "WHERE attrelid = CAST(:t AS regclass) AND attnum > 0 AND NOT attisdropped"), {"t": cls.result_table})}
            assert set(db) == set(table.columns.keys()), (name, set(db) ^ set(table.columns.keys()))
            for col in table.columns:
                declared = col.type.compile(dialect=dialect).lower()
                stored = db[col.name].type.lower()
                aliases = {"double precision": "double precision", "float": "double precision",
                           "timestamp with time zone": "timestamp with time zone", "vector": "vector",
                           "bytea": "bytea", "bit(64)": "bit(64)"}
                assert aliases.get(declared, declared) == stored, f"{cls.result_table}.{col.name}: {declared} vs {stored}"
                assert db[col.name].attnotnull == (not col.nullable), f"{cls.result_table}.{col.name} nullability"
            pk = inspect(engine).get_pk_constraint(cls.result_table)["constrained_columns"]
            assert set(pk) == {"asset_id", "config_id"}, cls.result_table
