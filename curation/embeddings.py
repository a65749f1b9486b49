"""Embeddings in pgvector: one HNSW index (cosine) per table and model, and nearest-neighbour search.

An embedding table (``clip_results``, ``dino_results``: the stage's ``result_table``) has an
undimensioned ``embedding vector`` and a ``model`` column, so that models of any width share the table;
pgvector indexes a fixed dimension, so each model gets a partial expression index
``USING hnsw ((embedding::vector(D)) vector_cosine_ops) WHERE model = '<model>'``, created by the
runtime (after the completion that wrote the model's first rows) for a stage that declares
``embedding_model_param``. ``similar`` uses the same expression
and predicate, so the planner picks that index.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, text

_LOCK_KEY = 4242005
_NAME = re.compile(r"^[a-z0-9-]+$")
_TABLE = re.compile(r"^[a-z][a-z0-9_]*_results$")


def index_name(model: str, dim: int, table: str = "clip_results") -> str:
    return f"{table}_hnsw_{model.replace('-', '_')}_{dim}"


def ensure_hnsw_index(engine: Engine, model: str, table: str = "clip_results") -> str | None:
    """Create ``model``'s HNSW cosine index on ``table`` if it does not exist yet (its rows fix the
    dimension). The runtime calls it after a completion committed, never inside one: a first build over
    many rows takes long, and a worker's completion transaction must stay short. Returns the index name."""
    if not _NAME.match(model) or not _TABLE.match(table):
        return None
    with engine.begin() as conn:
        dim = conn.execute(text(f"SELECT vector_dims(embedding) FROM {table} WHERE model = :m LIMIT 1"),
                           {"m": model}).scalar()
        if dim is None:
            return None
        name = index_name(model, int(dim), table)
        if conn.execute(text("SELECT 1 FROM pg_indexes WHERE indexname = :n"), {"n": name}).first():
            return name
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
        # DDL takes no bind parameters: the names matched their patterns above and dim is an int
        conn.execute(text(f"CREATE INDEX IF NOT EXISTS {name} ON {table} USING hnsw "
                          f"((embedding::vector({int(dim)})) vector_cosine_ops) WHERE model = '{model}'"))
    return name


def _literal(vector) -> str:
    """pgvector's text form; a plain ``text()`` query returns it already as text."""
    if isinstance(vector, str):
        return vector
    return "[" + ",".join(repr(float(x)) for x in vector) + "]"


@dataclass(frozen=True)
class Neighbour:
    asset_id: int
    cosine: float
    uri: str


def similar(conn: Connection, asset_id: int, *, k: int = 10, model: str | None = None,
            table: str = "clip_results") -> list[Neighbour]:
    """The ``k`` assets whose embeddings in ``table`` are closest (cosine) to ``asset_id``'s, itself first."""
    if not _TABLE.match(table):
        raise ValueError(f"unexpected embedding table {table!r}")
    row = conn.execute(text(f"SELECT model, vector_dims(embedding) AS dim, embedding FROM {table} "
                            "WHERE asset_id = :a AND (CAST(:m AS text) IS NULL OR model = :m) "
                            "ORDER BY created_at DESC LIMIT 1"), {"a": asset_id, "m": model}).first()
    if row is None:
        raise LookupError(f"asset {asset_id} has no embedding in {table}{' from ' + model if model else ''}")
    if not _NAME.match(row.model):
        raise ValueError(f"unexpected model name {row.model!r}")
    dim = int(row.dim)
    conn.execute(text("SET LOCAL hnsw.ef_search = 100"))
    rows = conn.execute(text(
        f"SELECT r.asset_id, 1 - (r.embedding::vector({dim}) <=> CAST(:q AS vector({dim}))) AS cosine, a.uri "
        f"FROM {table} r JOIN assets a USING (asset_id) WHERE r.model = :m "
        f"ORDER BY r.embedding::vector({dim}) <=> CAST(:q AS vector({dim})) LIMIT :k"),
        {"q": _literal(row.embedding), "m": row.model, "k": k}).all()
    return [Neighbour(r.asset_id, float(r.cosine), r.uri) for r in rows]
