"""Column types a stage's result dataclass may use where a plain Python type is not precise enough. The
dataclass is the one declaration of its table's columns (``curation.result_tables`` turns it into a
table; migrations hold the same DDL, and ``tests/test_schema.py`` checks the two agree).

Plain types map as: ``str`` → text, ``int`` → integer, ``float`` → double precision, ``bool`` → boolean,
``bytes`` → bytea, ``list[int]`` / ``list[str]`` → integer[] / text[], ``list[dict]`` / ``dict`` → jsonb;
``X | None`` is nullable, anything else NOT NULL. This module imports no SQL library: the names are
plain ``typing.Annotated`` markers."""

from __future__ import annotations

from typing import Annotated, Any

BigInt = Annotated[int, "bigint"]  # byte counts and other values past 2^31
SmallInt = Annotated[int, "smallint"]
Bits64 = Annotated[str, "bit(64)"]  # 64 characters of '0'/'1' (pgvector's bit type: Hamming search)
Embedding = Annotated[Any, "vector"]  # a float32 vector of any width (pgvector)
