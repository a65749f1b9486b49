"""Turning a validated job spec into work: check that the source and the export are usable, list the
source, record the job and its assets, and enqueue chunks for the first stage — all in one
transaction, so a failed submission leaves nothing behind."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Connection, Engine, text

from curation import storage
from curation.broker import chunked, enqueue
from curation.spec import JobSpec, SpecError
from curation.user_sql import UnsafeSQL, check_predicate, reader_engine

INSERT_BATCH = 10_000


@dataclass(frozen=True)
class Submission:
    job_id: int
    n_assets: int
    n_tasks: int


def _resolve_local(uri: str, base: Path) -> str:
    if storage.is_s3(uri) or Path(uri).is_absolute():
        return uri
    return str((base / uri).resolve())


def list_source(spec: JobSpec, base: Path = Path(".")) -> Iterator[str]:
    """URIs of the source, in a stable order. A list file yields its URIs as written (relative local
    paths are taken relative to the list file's folder)."""
    src = spec.source
    uri = _resolve_local(src.uri, base)
    if src.is_list:
        data = storage.read_bytes(uri)
        list_base = Path(uri).parent if not storage.is_s3(uri) else None
        if uri.lower().endswith(".parquet"):
            import pyarrow.parquet as pq

            table = pq.read_table(io.BytesIO(data))
            if "uri" not in table.column_names:
                raise SpecError(f"source.uri: {src.uri} has no 'uri' column (columns: {', '.join(table.column_names)})")
            lines = [u for u in table.column("uri").to_pylist() if u]
        else:
            lines = [ln.strip() for ln in data.decode("utf-8").splitlines()]
            lines = [ln for ln in lines if ln and not ln.startswith("#")]
        for line in lines:
            yield _resolve_local(line, list_base) if list_base is not None else line
        return
    suffixes = spec.suffixes()
    for obj in storage.list_objects(uri):
        if obj.uri.lower().endswith(suffixes):
            yield obj.uri


def check_export_predicate(engine: Engine, predicate: str, view: str = "curated_images") -> None:
    """Check the predicate's shape, then plan (not run) the export query as the read-only role, so a bad
    predicate fails at submission, naming the field."""
    try:
        check_predicate(predicate, what="export.where")
    except UnsafeSQL as exc:
        raise SpecError(str(exc)) from None
    reader = reader_engine(engine, timeout_s=30.0)
    try:
        with reader.connect() as conn:
            conn.execute(text(f"EXPLAIN SELECT * FROM {view} WHERE ({predicate})"))
    except Exception as exc:  # noqa: BLE001 - any planner error is the user's predicate
        msg = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        raise SpecError(f"export.where: not a valid predicate over {view}: {msg}") from None
    finally:
        reader.dispose()


def check_weights(spec: JobSpec) -> None:
    """Every model a stage of the job loads must have verified weights, or the job is refused."""
    from models.registry import status

    problems = []
    for i, (stage, cls) in enumerate(zip(spec.stages, spec.stage_classes())):
        for model in cls.models_for(spec.stage_params(i)):
            st = status(model)
            if not st.present:
                problems.append(f"stages[{i}] ({stage.name}): weights of model {model!r} not present ({st.reason}) "
                                f"— run `{st.spec.pull_command}`")
    if problems:
        raise SpecError("\n".join(problems))


def _upsert_assets(conn: Connection, uris: list[str], source_id: int, kind: str) -> list[int]:
    rows = conn.execute(
        text(
            """
            WITH input AS (SELECT u AS uri, ord FROM unnest(CAST(:uris AS text[])) WITH ORDINALITY AS t(u, ord)),
            ins AS (
                INSERT INTO assets (uri, kind, source_id)
                SELECT uri, :kind, :src FROM input
                ON CONFLICT (uri, coalesce(start_frame, -1), coalesce(end_frame, -1)) DO NOTHING
                RETURNING asset_id, uri),
            found AS (
                SELECT asset_id, uri FROM ins
                UNION ALL
                SELECT a.asset_id, a.uri FROM assets a JOIN input i ON i.uri = a.uri
                WHERE a.start_frame IS NULL AND a.end_frame IS NULL)
            SELECT f.asset_id FROM found f JOIN input i ON i.uri = f.uri ORDER BY i.ord
            """
        ),
        {"uris": uris, "kind": kind, "src": source_id},
    ).scalars().all()
    return list(rows)


def submit(engine: Engine, spec: JobSpec, *, base: Path = Path(".")) -> Submission:
    """Validate what needs the outside world, then record and enqueue the job atomically."""
    src_uri = _resolve_local(spec.source.uri, base)
    if spec.source.is_list:
        if not storage.exists(src_uri):
            raise SpecError(f"source.uri: list file {spec.source.uri} does not exist")
    elif (problem := storage.prefix_problem(src_uri)) is not None:
        raise SpecError(f"source.uri: cannot list {spec.source.uri}: {problem}")
    if spec.export is not None:
        out = spec.export.output
        if storage.is_s3(out) and (problem := storage.prefix_problem(out)) is not None:
            raise SpecError(f"export.output: cannot reach {out}: {problem}")
        check_export_predicate(engine, spec.export.where, spec.view)

    check_weights(spec)
    uris = list(dict.fromkeys(list_source(spec, base)))  # de-duplicated, order kept
    if not uris:
        raise SpecError(f"source.uri: {spec.source.uri} lists no files with the expected suffixes")
    first = spec.stage_classes()[0]
    spec_json = spec.model_dump(mode="json")
    with engine.begin() as conn:
        source_id = conn.execute(
            text(
                "INSERT INTO sources (name, uri) VALUES (:n, :u) "
                "ON CONFLICT (name) DO UPDATE SET uri = excluded.uri RETURNING source_id"
            ),
            {"n": spec.source.source_name(), "u": src_uri},
        ).scalar_one()
        job_id = conn.execute(
            text(
                "INSERT INTO jobs (name, modality, spec, stages) VALUES (:n, :m, CAST(:s AS jsonb), :st) "
                "RETURNING job_id"
            ),
            {"n": spec.name, "m": spec.modality, "s": json.dumps(spec_json), "st": [s.name for s in spec.stages]},
        ).scalar_one()
        # resolved params (defaults included): the thresholds the curated views apply for this job
        conn.execute(
            text("INSERT INTO job_stages (job_id, stage, position, params) VALUES (:j, :s, :i, CAST(:p AS jsonb))"),
            [{"j": job_id, "s": st.name, "i": i, "p": json.dumps(spec.stage_params(i).model_dump(mode="json"))}
             for i, st in enumerate(spec.stages)],
        )
        asset_ids: list[int] = []
        for batch in chunked(uris, INSERT_BATCH):
            ids = _upsert_assets(conn, batch, source_id, spec.modality)
            conn.execute(
                text("INSERT INTO job_assets (job_id, asset_id) SELECT :j, unnest(CAST(:ids AS bigint[])) "
                     "ON CONFLICT DO NOTHING"),
                {"j": job_id, "ids": ids},
            )
            asset_ids.extend(ids)
        chunks = [(f"c{i}", ids) for i, ids in enumerate(chunked(asset_ids, spec.chunk_size))]
        n_tasks = enqueue(
            conn, job_id=job_id, stage=spec.stages[0].name, stage_version=first.stage_version(), chunks=chunks,
            max_attempts=spec.max_attempts, max_runtime_s=first.max_runtime_s,
        )
    return Submission(job_id=job_id, n_assets=len(asset_ids), n_tasks=n_tasks)
