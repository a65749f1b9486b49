"""Turning a validated job spec into work.

- ``submit``: check that the source and the export are usable, list the source, record the job and its
  assets, and enqueue chunks for the first stage — all in one transaction, so a failed submission leaves
  nothing behind.
- ``plan_next_tasks``: what a finished task hands the next stage — its survivors as one task, in tasks
  of about so many seconds of video, or long videos cut into windows first. Pure: no database, no I/O;
  the runtime turns the plan into rows in the completion transaction.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
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


CAPTION_COLUMNS = ("caption", "alt_text", "alt", "text", "TEXT")  # LAION: TEXT, COYO: text


@dataclass(frozen=True)
class SourceMetadata:
    """What a Parquet list says about one URI besides the URI (stored in ``asset_metadata``)."""

    caption: str | None
    metadata: dict


def list_source(spec: JobSpec, base: Path = Path(".")) -> Iterator[str]:
    """URIs of the source, in a stable order. A list file yields its URIs as written (relative local
    paths are taken relative to the list file's folder)."""
    for uri, _ in list_source_rows(spec, base):
        yield uri


def _parquet_rows(spec: JobSpec, table) -> Iterator[tuple[str, SourceMetadata | None]]:
    src = spec.source
    names = table.column_names
    if "uri" not in names:
        raise SpecError(f"source.uri: {src.uri} has no 'uri' column (columns: {', '.join(names)})")
    caption_col = src.caption_column or next((c for c in CAPTION_COLUMNS if c in names), None)
    missing = [c for c in [*src.metadata_columns, *([src.caption_column] if src.caption_column else [])]
               if c not in names]
    if missing:
        raise SpecError(f"source.metadata_columns: {src.uri} has no column(s) {', '.join(missing)} "
                        f"(columns: {', '.join(names)})")
    uris = table.column("uri").to_pylist()
    captions = table.column(caption_col).to_pylist() if caption_col else [None] * len(uris)
    extra = {c: table.column(c).to_pylist() for c in src.metadata_columns}
    for i, u in enumerate(uris):
        if not u:
            continue
        caption = str(captions[i]).strip() if captions[i] is not None else None
        meta = {c: _json_safe(values[i]) for c, values in extra.items()}
        yield u, (SourceMetadata(caption or None, meta) if caption or meta else None)


def _json_safe(value):
    """A Parquet cell as JSON: numbers, strings, lists and dicts as they are; anything else as text."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return None if isinstance(value, float) and math.isnan(value) else value
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return str(value)


def list_source_rows(spec: JobSpec, base: Path = Path(".")) -> Iterator[tuple[str, SourceMetadata | None]]:
    """(URI, what the list says about it) of the source, in a stable order; the metadata is None except
    for a Parquet list with a caption column or ``source.metadata_columns``."""
    src = spec.source
    uri = _resolve_local(src.uri, base)
    if src.is_list:
        data = storage.read_bytes(uri)
        list_base = Path(uri).parent if not storage.is_s3(uri) else None
        if uri.lower().endswith(".parquet"):
            import pyarrow.parquet as pq

            rows = list(_parquet_rows(spec, pq.read_table(io.BytesIO(data))))
        else:
            if src.metadata_columns or src.caption_column:
                raise SpecError("source.metadata_columns: only a .parquet list has columns")
            lines = [ln.strip() for ln in data.decode("utf-8").splitlines()]
            rows = [(ln, None) for ln in lines if ln and not ln.startswith("#")]
        for line, meta in rows:
            yield (_resolve_local(line, list_base) if list_base is not None else line), meta
        return
    suffixes = spec.suffixes()
    for obj in storage.list_objects(uri):
        if obj.uri.lower().endswith(suffixes):
            yield obj.uri, None


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


def _upsert_metadata(conn: Connection, ids: list[int], metas: list[SourceMetadata | None], source_id: int) -> None:
    """The list's caption and metadata columns of these assets (the newest listing wins)."""
    rows = [(a, m) for a, m in zip(ids, metas) if m is not None]
    if not rows:
        return
    conn.execute(
        text(
            "INSERT INTO asset_metadata (asset_id, source_id, caption, metadata) "
            "SELECT a, :src, c, CAST(m AS jsonb) FROM unnest(CAST(:ids AS bigint[]), CAST(:caps AS text[]), "
            "CAST(:metas AS text[])) AS u(a, c, m) "
            "ON CONFLICT (asset_id) DO UPDATE SET source_id = excluded.source_id, caption = excluded.caption, "
            "metadata = excluded.metadata, updated_at = now()"
        ),
        {"src": source_id, "ids": [a for a, _ in rows], "caps": [m.caption for _, m in rows],
         "metas": [json.dumps(m.metadata) for _, m in rows]},
    )


def submit(engine: Engine, spec: JobSpec, *, base: Path = Path(".")) -> Submission:
    """Validate what needs the outside world, then record and enqueue the job atomically."""
    if spec.source is None:
        raise SpecError("a pair-mining job is submitted with `curation pairs mine --job J`, not from a spec file")
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
    listed: dict[str, SourceMetadata | None] = {}
    for uri, meta in list_source_rows(spec, base):  # de-duplicated, order kept, the first row's metadata
        listed.setdefault(uri, meta)
    uris = list(listed)
    if not uris:
        raise SpecError(f"source.uri: {spec.source.uri} lists no files with the expected suffixes")
    from workers.groups import task_runtime_s  # the stages a task runs: the worker's rule

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
            _upsert_metadata(conn, ids, [listed[u] for u in batch], source_id)
            asset_ids.extend(ids)
        chunks = [(f"c{i}", ids) for i, ids in enumerate(chunked(asset_ids, spec.chunk_size))]
        n_tasks = enqueue(
            conn, job_id=job_id, stage=spec.stages[0].name, stage_version=first.stage_version(), chunks=chunks,
            max_attempts=spec.max_attempts, max_runtime_s=task_runtime_s(spec, 0),
        )
    return Submission(job_id=job_id, n_assets=len(asset_ids), n_tasks=n_tasks)


# --- the next stage's tasks (pure) ----------------------------------------------------------------


@dataclass(frozen=True)
class TaskSizing:
    """How a job sizes the tasks its video stages hand on (the job spec's fields of the same names)."""

    video_seconds_per_task: float = 600.0
    scene_seconds_per_task: float = 120.0
    scene_window_s: float = 600.0  # 0: never cut a video into windows

    @classmethod
    def of(cls, spec: JobSpec) -> TaskSizing:
        return cls(spec.video_seconds_per_task, spec.scene_seconds_per_task, spec.scene_window_s)


@dataclass(frozen=True)
class WindowCut:
    """A video to cut into ``n_windows`` equal windows before the next stage; each window is a task."""

    video: int
    n_windows: int


@dataclass(frozen=True)
class NextTasks:
    """What a finished task enqueues for the next stage.

    ``chunks is None``: the survivors go on as one task, under the finished task's own dedupe key (a
    count-sized chunk stays one). Otherwise, in this order, one task per window of each ``windows`` cut
    (created in the completion transaction), then one task per chunk, keyed ``<key>/<n>``."""

    chunks: list[list[int]] | None
    windows: list[WindowCut] = field(default_factory=list)


@dataclass(frozen=True)
class WindowSpan:
    start_frame: int  # first frame in the window
    end_frame: int  # first frame after it
    start_s: float
    end_s: float


def chunk_by_seconds(pairs: Iterable[tuple[int, float]], seconds_per_task: float) -> list[list[int]]:
    """Consecutive assets grouped until each group holds about ``seconds_per_task`` seconds of video
    (a longer video is a group of its own)."""
    out: list[list[int]] = []
    current: list[int] = []
    total = 0.0
    for asset_id, seconds in pairs:
        current.append(asset_id)
        total += seconds
        if total >= seconds_per_task:
            out.append(current)
            current, total = [], 0.0
    if current:
        out.append(current)
    return out


def plan_next_tasks(
    survivors: Sequence[int],
    seconds: Sequence[float | None] | None,
    sizing: TaskSizing,
    *,
    next_windowed: bool,
) -> NextTasks:
    """The next stage's tasks for a finished task's ``survivors`` (in order).

    ``seconds`` holds each survivor's seconds of video (``Stage.task_seconds``), or None. When every
    survivor has its seconds, the survivors go on in tasks of about ``video_seconds_per_task``; and if the
    next stage is windowed (the scene split) and some video is longer than ``scene_window_s`` (> 0), each
    such video is cut into ``ceil(seconds / scene_window_s)`` windows, a task each, while the shorter ones
    go on whole in duration-sized tasks. Otherwise the survivors go on as one task."""
    if seconds is not None and len(seconds) != len(survivors):
        raise ValueError(f"{len(seconds)} durations for {len(survivors)} survivors")
    if not survivors or seconds is None or any(s is None for s in seconds):
        return NextTasks(chunks=None)
    pairs = [(a, float(s)) for a, s in zip(survivors, seconds)]
    window_s = sizing.scene_window_s
    if not (next_windowed and window_s > 0 and max(s for _, s in pairs) > window_s):
        return NextTasks(chunks=chunk_by_seconds(pairs, sizing.video_seconds_per_task))
    windows = [WindowCut(a, math.ceil(s / window_s)) for a, s in pairs if s > window_s]
    whole = [(a, s) for a, s in pairs if s <= window_s]
    return NextTasks(chunks=chunk_by_seconds(whole, sizing.video_seconds_per_task), windows=windows)


def window_spans(n_frames: int, fps: float, start_s: float, duration_s: float, n_windows: int) -> list[WindowSpan]:
    """``n_windows`` windows of (about) equal frame counts covering a video of ``n_frames`` frames. Each
    inner edge is half a frame before the window's first frame, so every frame's timestamp falls in
    exactly one window; the first starts at ``start_s``, the last ends at ``start_s + duration_s``."""
    if n_windows < 1:
        raise ValueError(f"n_windows must be at least 1, not {n_windows}")
    frames = [round(n_frames * i / n_windows) for i in range(n_windows + 1)]
    edges = [start_s] + [start_s + (f - 0.5) / fps for f in frames[1:-1]] + [start_s + duration_s]
    return [WindowSpan(frames[i], frames[i + 1], edges[i], edges[i + 1]) for i in range(n_windows)]
