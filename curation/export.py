"""Export a slice of ``curated_images`` (or, for video, ``curated_scenes``) to Parquet, grouped as the
report stores it (§4.2, §4.4):
``<output>/<bucket>/<source>/part-<export>-<n>.parquet`` where ``bucket`` is the shortest-side bucket
(256 / 512 / 1024; ``below_256`` if the predicate lets smaller images through) and ``source`` the
source name. Editing pairs (``curated_pairs``, §4.3) go to ``<output>/pairs/job-<mining job>/``: both
images' ids and URIs, every score, the rule that admitted the pair and its instruction. Every score and hash is a column. The export is recorded in the ``exports`` table."""

from __future__ import annotations

import io
import json
from collections import defaultdict
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import Engine, text

from curation import storage
from curation.balance import Balance, BalanceError, balance_params, balanced_sql, check_balance
from curation.user_sql import UnsafeSQL, check_predicate, reader_engine


class ExportError(RuntimeError):
    pass


@dataclass
class ExportResult:
    export_id: int
    output: str
    n_rows: int
    files: list[dict] = field(default_factory=list)  # {"uri", "bucket", "source", "rows"}


def bucket_dir(bucket: int | None) -> str:
    return str(bucket) if bucket is not None else "below_256"


EXPORT_VIEWS = ("curated_images", "curated_scenes", "curated_pairs")
ROW_ID = {"curated_images": "asset_id", "curated_scenes": "asset_id", "curated_pairs": "pair_id"}


def group_key(view: str, record: dict) -> tuple[str, str]:
    """The (folder, subfolder) a row is written under: (bucket, source) of an image or scene; ``pairs`` and
    the mining job of a pair (``pairs/job-<id>``)."""
    if view == "curated_pairs":
        return "pairs", f"job-{record['job_id']}"
    return bucket_dir(record["bucket"]), record["source"]


def export_slice(
    engine: Engine,
    *,
    predicate: str,
    output: str,
    view: str = "curated_images",
    job_id: int | None = None,
    rows_per_file: int = 100_000,
    timeout_s: float = 3600.0,
    overwrite: bool = False,
    balance: Balance | None = None,
) -> ExportResult:
    """Write the slice; ``output`` must hold no Parquet files yet, unless ``overwrite`` (then the
    Parquet files already there are deleted first, so readers never see two exports mixed). With
    ``balance``, at most ``balance.per_group`` rows per value of its column (``curation.balance``)."""
    try:
        check_predicate(predicate, what="the export predicate")
    except UnsafeSQL as exc:
        raise ExportError(str(exc)) from None
    if view not in EXPORT_VIEWS:
        raise ExportError(f"unknown view {view!r}; one of {', '.join(EXPORT_VIEWS)}")
    if storage.is_s3(output) or storage.exists(output):
        stale = [o.uri for o in storage.list_objects(output) if o.uri.endswith(".parquet")]
        if stale and not overwrite:
            raise ExportError(f"{output} already holds {len(stale)} Parquet file(s); choose another output or overwrite")
        for uri in stale:
            storage.delete(uri)
    with engine.begin() as conn:
        export_id = conn.execute(text("SELECT nextval(pg_get_serial_sequence('exports', 'export_id'))")).scalar_one()
    # a view row is one (job, asset): the job's configurations and thresholds; without a job, one row per
    # asset (its most recent job)
    row_id = ROW_ID[view]
    if job_id is not None:
        sql = f"SELECT c.* FROM {view} c WHERE ({predicate}) AND c.job_id = :job ORDER BY c.{row_id}"
    else:
        sql = (f"SELECT DISTINCT ON (c.{row_id}) c.* FROM {view} c WHERE ({predicate}) "
               f"ORDER BY c.{row_id}, c.job_id DESC")
    params = {"job": job_id} if job_id is not None else {}
    if balance is not None:
        sql = balanced_sql(sql, balance, order_by=row_id)
        params.update(balance_params(balance))
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    counters: dict[tuple[str, str], int] = defaultdict(int)
    result = ExportResult(export_id=export_id, output=output, n_rows=0)

    def flush(key: tuple[str, str]) -> None:
        rows = groups.pop(key, [])
        if not rows:
            return
        bucket, source = key
        uri = storage.join(output, bucket, source, f"part-{export_id:06d}-{counters[key]:05d}.parquet")
        counters[key] += 1
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows), buf, compression="zstd")
        storage.write_bytes(uri, buf.getvalue())
        result.files.append({"uri": uri, "bucket": bucket, "source": source, "rows": len(rows)})

    reader = reader_engine(engine, timeout_s=timeout_s)  # the predicate is the user's: read-only role
    try:
        with reader.connect() as conn:
            try:
                if balance is not None:
                    check_balance(conn, view, balance)
                cursor = conn.execution_options(stream_results=True, max_row_buffer=5000).execute(text(sql), params)
            except BalanceError as exc:
                raise ExportError(str(exc)) from None
            except Exception as exc:  # noqa: BLE001 - a bad predicate is the user's
                raise ExportError(f"export predicate failed: {str(getattr(exc, 'orig', exc)).strip()}") from None
            for row in cursor.mappings():
                record = dict(row)
                record.pop("balance_rank", None)
                for name, value in record.items():  # jsonb objects (metadata) as JSON text: one Parquet type
                    if isinstance(value, dict):
                        record[name] = json.dumps(value, sort_keys=True)
                key = group_key(view, record)
                groups[key].append(record)
                result.n_rows += 1
                if len(groups[key]) >= rows_per_file:
                    flush(key)
    finally:
        reader.dispose()
    for key in list(groups):
        flush(key)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO exports (export_id, job_id, predicate, output_uri, n_rows, files) "
                "VALUES (:e, :j, :p, :o, :n, CAST(:f AS jsonb))"
            ),
            {"e": export_id, "j": job_id, "p": predicate, "o": output, "n": result.n_rows,
             "f": json.dumps(result.files)},
        )
    return result
