"""Embeddings in pgvector: one HNSW index (cosine) per model, and nearest-neighbour search.

``clip_results.embedding`` is an undimensioned ``vector`` so that models of any width share the table;
pgvector indexes a fixed dimension, so each model gets a partial expression index
``USING hnsw ((embedding::vector(D)) vector_cosine_ops) WHERE model = '<model>'``, created by the
runtime (after the completion that wrote the model's first rows) for a stage that declares
``embedding_index``. ``similar`` uses the same expression
and predicate, so the planner picks that index.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, text

_LOCK_KEY = 4242005
_NAME = re.compile(r"^[a-z0-9-]+$")


def index_name(model: str, dim: int) -> str:
    return f"clip_results_hnsw_{model.replace('-', '_')}_{dim}"


def ensure_hnsw_index(engine: Engine, model: str) -> str | None:
    """Create ``model``'s HNSW cosine index on ``clip_results`` if it does not exist yet (its rows fix the
    dimension). The runtime calls it after a completion committed, never inside one: a first build over
    many rows takes long, and a worker's completion transaction must stay short. Returns the index name."""
    if not _NAME.match(model):
        return None
    with engine.begin() as conn:
        dim = conn.execute(text("SELECT vector_dims(embedding) FROM clip_results WHERE model = :m LIMIT 1"),
                           {"m": model}).scalar()
        if dim is None:
            return None
        name = index_name(model, int(dim))
        if conn.execute(text("SELECT 1 FROM pg_indexes WHERE indexname = :n"), {"n": name}).first():
            return name
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
        # DDL takes no bind parameters: the model name matched ^[a-z0-9-]+$ and dim is an int
        conn.execute(text(f"CREATE INDEX IF NOT EXISTS {name} ON clip_results USING hnsw "
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


def similar(conn: Connection, asset_id: int, *, k: int = 10, model: str | None = None) -> list[Neighbour]:
    """The ``k`` assets whose embeddings are closest (cosine) to ``asset_id``'s, itself first."""
    row = conn.execute(text("SELECT model, vector_dims(embedding) AS dim, embedding FROM clip_results "
                            "WHERE asset_id = :a AND (CAST(:m AS text) IS NULL OR model = :m) "
                            "ORDER BY created_at DESC LIMIT 1"), {"a": asset_id, "m": model}).first()
    if row is None:
        raise LookupError(f"asset {asset_id} has no CLIP embedding{' from ' + model if model else ''}")
    if not _NAME.match(row.model):
        raise ValueError(f"unexpected model name {row.model!r}")
    dim = int(row.dim)
    conn.execute(text("SET LOCAL hnsw.ef_search = 100"))
    rows = conn.execute(text(
        f"SELECT r.asset_id, 1 - (r.embedding::vector({dim}) <=> CAST(:q AS vector({dim}))) AS cosine, a.uri "
        f"FROM clip_results r JOIN assets a USING (asset_id) WHERE r.model = :m "
        f"ORDER BY r.embedding::vector({dim}) <=> CAST(:q AS vector({dim})) LIMIT :k"),
        {"q": _literal(row.embedding), "m": row.model, "k": k}).all()
    return [Neighbour(r.asset_id, float(r.cosine), r.uri) for r in rows]
