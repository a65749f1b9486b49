"""A stage's result table, built from its result dataclass: the dataclass is the one declaration of the
columns (``workers/columns.py`` lists the types; the migration that creates the table holds the same
DDL, and ``tests/test_schema.py`` checks that every stage's migrated table matches its dataclass).

Every result table has the key ``(asset_id, config_id)`` (migration 0013), ``stage_version`` and
``created_at`` beside the dataclass's fields. This module knows dataclasses and type hints, not stages:
the runtime hands it the stage's table name and result type.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from functools import lru_cache

from pgvector.sqlalchemy import BIT, Vector
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Double,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    Table,
    Text,
    func,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.types import TypeEngine

from curation.schema import Base

_MARKED: dict[str, TypeEngine] = {"bigint": BigInteger(), "smallint": SmallInteger(), "bit(64)": BIT(64),
                                  "vector": Vector(), "jsonb": JSONB()}
_PLAIN: dict[type, TypeEngine] = {str: Text(), int: Integer(), float: Double(), bool: Boolean(),
                                  bytes: LargeBinary(), dict: JSONB()}
KEY_COLUMNS = ("asset_id", "config_id", "stage_version", "created_at")


class ColumnTypeError(TypeError):
    """A result dataclass field whose type has no column type."""


def column_type(hint) -> tuple[TypeEngine, bool]:
    """(SQL type, nullable) of one field's type hint."""
    nullable = False
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) != 1:
            raise ColumnTypeError(f"{hint}: only 'X | None' unions map to a column")
        hint, nullable = args[0], True
        origin = typing.get_origin(hint)
    if origin is typing.Annotated:
        base, *marks = typing.get_args(hint)
        for mark in marks:
            if mark in _MARKED:
                return _MARKED[mark], nullable
        hint, origin = base, typing.get_origin(base)
    if origin is list:
        (item,) = typing.get_args(hint)
        if item is dict or typing.get_origin(item) is dict:
            return JSONB(), nullable
        if item in (int, str, float):
            return ARRAY(_PLAIN[item]), nullable
    if origin is dict:
        return JSONB(), nullable
    if hint in _PLAIN:
        return _PLAIN[hint], nullable
    raise ColumnTypeError(f"{hint}: no column type (use workers.columns for bit(64), vectors, bigint, smallint)")


@lru_cache(maxsize=None)
def result_table(name: str, result_type: type, skip: str | None = None) -> Table:
    """The table ``name`` for ``result_type`` (a dataclass), on the schema's metadata (assets is there);
    ``skip`` is a field that is not a column (a stage's children list)."""
    hints = typing.get_type_hints(result_type, include_extras=True)
    columns = [
        Column("asset_id", BigInteger, ForeignKey("assets.asset_id"), primary_key=True),
        Column("config_id", Text, primary_key=True),
        Column("stage_version", Text, nullable=False),
    ]
    for f in dataclasses.fields(result_type):
        if f.name == skip:
            continue
        if f.name in KEY_COLUMNS:
            raise ColumnTypeError(f"{result_type.__name__}.{f.name}: the name is one of the table's key columns")
        sql_type, nullable = column_type(hints[f.name])
        columns.append(Column(f.name, sql_type, nullable=nullable))
    columns.append(Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()))
    metadata: MetaData = Base.metadata
    if name in metadata.tables:
        metadata.remove(metadata.tables[name])
    return Table(name, metadata, *columns)
