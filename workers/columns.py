"""Declarations of a stage's columns: types for its result dataclass, and what it shows in the curated
views (``ViewColumns``).

Column types a stage's result dataclass may use where a plain Python type is not precise enough. The
dataclass is the one declaration of its table's columns (``curation.result_tables`` turns it into a
table; migrations hold the same DDL, and ``tests/test_schema.py`` checks the two agree).

Plain types map as: ``str`` → text, ``int`` → integer, ``float`` → double precision, ``bool`` → boolean,
``bytes`` → bytea, ``list[int]`` / ``list[str]`` → integer[] / text[], ``list[dict]`` / ``dict`` → jsonb;
``X | None`` is nullable, anything else NOT NULL. This module imports no SQL library: the names are
plain ``typing.Annotated`` markers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

BigInt = Annotated[int, "bigint"]  # byte counts and other values past 2^31
SmallInt = Annotated[int, "smallint"]
Bits64 = Annotated[str, "bit(64)"]  # 64 characters of '0'/'1' (pgvector's bit type: Hamming search)
Embedding = Annotated[Any, "vector"]  # a float32 vector of any width (pgvector)


@dataclass(frozen=True)
class ViewColumns:
    """What a stage shows in a curated view (``workers/views.py`` renders the views from these):
    ``columns`` are select-list expressions over ``alias``, the stage's result row for the asset (or,
    with ``of="a.parent_id"``, for a scene's video) under the configuration the row's job used. A stage
    with ``thresholds`` gets its job's resolved params joined as that alias (``<alias>.params->>'…'``),
    so a flag is computed from the raw score when the slice is read. ``<stage>_version`` is added."""

    view: str  # curated_images | curated_scenes
    alias: str
    columns: tuple[str, ...]
    of: str = "a.asset_id"
    thresholds: str | None = None
