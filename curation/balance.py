"""Balanced slices for export and encode: at most ``per_group`` rows per value of one view column
(``--balance cluster --per-cluster N``: the job's newest clustering; ``--balance domain``; or any column of
the view), the same rows for the same seed.

Which rows a group keeps is decided by ``md5(asset_id || '/' || seed)``: a stable pseudo-random order
that does not depend on the order the database returns rows in, so a seed names one slice. Rows where the
column is NULL (an asset with no cluster, say) are one group of their own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import Connection, text

ALIASES = {"cluster": "cluster_id"}  # --balance cluster → the view's cluster_id column
_IDENT = re.compile(r"^[a-z_][a-z0-9_]*$")


class BalanceError(ValueError):
    """The balance column is not a column of the view, or the group size is not positive."""


@dataclass(frozen=True)
class Balance:
    column: str  # a column of the view (``cluster`` stands for ``cluster_id``)
    per_group: int
    seed: int = 0

    @property
    def view_column(self) -> str:
        return ALIASES.get(self.column, self.column)


def check_balance(conn: Connection, view: str, balance: Balance) -> None:
    """Refuse a column the view does not have (the name is then safe to splice into SQL)."""
    if balance.per_group < 1:
        raise BalanceError(f"--per-cluster must be at least 1, not {balance.per_group}")
    column = balance.view_column
    columns = set(conn.execute(text("SELECT column_name FROM information_schema.columns WHERE table_name = :v"),
                               {"v": view}).scalars())
    if not _IDENT.match(column) or column not in columns:
        raise BalanceError(f"--balance {balance.column!r}: {view} has no column {column!r}"
                           + (" (run `curation cluster --job J` first?)" if column == "cluster_id" else ""))


def balanced_sql(sql: str, balance: Balance | None, order_by: str = "asset_id") -> str:
    """Wrap a query whose rows carry the id column ``order_by`` (``asset_id``; a pair's ``pair_id``) and the
    balance column: keep ``per_group`` rows per value, drawn by a seeded hash of the id (binds
    ``:balance_n`` and ``:balance_seed``; see ``balance_params``). Without a balance, the query ordered by
    ``order_by``."""
    if balance is None:
        return f"SELECT * FROM ({sql}) q ORDER BY q.{order_by}"
    col = balance.view_column
    if not _IDENT.match(col):
        raise BalanceError(f"--balance {balance.column!r}: not a column name")
    return (f"SELECT * FROM (SELECT q.*, row_number() OVER (PARTITION BY q.{col} ORDER BY "
            f"md5(q.{order_by}::text || '/' || CAST(:balance_seed AS text)), q.{order_by}) AS balance_rank "
            f"FROM ({sql}) q) b WHERE b.balance_rank <= :balance_n ORDER BY b.{order_by}")


def balance_params(balance: Balance | None) -> dict:
    return {} if balance is None else {"balance_n": balance.per_group, "balance_seed": balance.seed}
