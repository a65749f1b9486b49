"""SQLAlchemy models of the database. The Alembic migrations in ``db/migrations/`` create them; the
two must agree (``tests/test_schema.py`` checks that the migrated database matches these models).

Tables, by layer:

- catalogue: ``sources``, ``jobs``, ``assets``, ``job_assets`` (which job listed which asset);
- broker: ``tasks`` (small and hot, LIST-partitioned by stage), ``task_attempts`` (append-only ledger,
  RANGE-partitioned by day; migration 0023, ``curation.broker`` creates the partitions), ``dead_tasks``,
  ``workers`` (heartbeats), ``item_errors`` (one row per failed ``(asset, stage, version)``);
- configurations: ``stage_configs``, ``job_stages`` (resolved params per job), ``job_configs`` (migration 0013);
- stage results, one typed table per stage, primary key ``(asset_id, config_id)`` (migration 0013), its
  columns declared by the stage's result dataclass (``curation/result_tables.py``); the pairs of near
  duplicates in ``near_duplicates``;
- outputs: ``exports``, ``shards`` and ``latents`` (VAE-latent tar shards, migration 0002);
- source metadata and clusters: ``asset_metadata``, ``clusterings``, ``asset_clusters``,
  ``semantic_duplicates`` (migration 0015, ``curation/clusters.py``).

The views users slice on, ``curated_images`` and ``curated_scenes``, are defined in the migrations and
documented in ``docs/curated-view.md``.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, REAL, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


def _created() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())


# --- catalogue -------------------------------------------------------------------------------


class Source(Base):
    __tablename__ = "sources"
    source_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(Text, unique=True, nullable=False)
    uri: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = _created()


JOB_STATES = ("running", "completed", "cancelled", "failed")


class Job(Base):
    __tablename__ = "jobs"
    job_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(Text, nullable=False)
    modality: Mapped[str] = mapped_column(Text, nullable=False)
    spec: Mapped[dict] = mapped_column(JSONB, nullable=False)
    stages: Mapped[list[str]] = mapped_column(ARRAY(Text), nullable=False)
    status: Mapped[str] = mapped_column(Text, nullable=False, server_default="running")
    created_at: Mapped[datetime] = _created()
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    __table_args__ = (CheckConstraint(f"status IN {JOB_STATES}", name="jobs_status_check"),)


class Asset(Base):
    __tablename__ = "assets"
    asset_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    uri: Mapped[str] = mapped_column(Text, nullable=False)
    kind: Mapped[str] = mapped_column(Text, nullable=False)
    source_id: Mapped[int] = mapped_column(ForeignKey("sources.source_id"), nullable=False)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("assets.asset_id"))
    start_frame: Mapped[int | None] = mapped_column(Integer)
    end_frame: Mapped[int | None] = mapped_column(Integer)
    start_s: Mapped[float | None] = mapped_column(Double)  # a scene's time range (migration 0004)
    end_s: Mapped[float | None] = mapped_column(Double)
    created_at: Mapped[datetime] = _created()
    __table_args__ = (
        CheckConstraint("kind IN ('image', 'video', 'scene', 'window')", name="assets_kind_check"),
        # one asset per (uri, time range): scenes of one video share the uri
        Index(
            "assets_uri_range_key", "uri", text("coalesce(start_frame, -1)"), text("coalesce(end_frame, -1)"),
            unique=True,
        ),
    )


class JobAsset(Base):
    __tablename__ = "job_assets"
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.job_id", ondelete="CASCADE"), primary_key=True)
    asset_id: Mapped[int] = mapped_column(ForeignKey("assets.asset_id"), primary_key=True)
    __table_args__ = (Index("job_assets_asset_idx", "asset_id"),)


class StageConfigRow(Base):
    """One configuration of a stage (``workers.stage.StageConfig``): what a result's ``config_id`` means."""

    __tablename__ = "stage_configs"
    config_id: Mapped[str] = mapped_column(Text, primary_key=True)
    stage: Mapped[str] = mapped_column(Text, nullable=False)
    stage_version: Mapped[str] = mapped_column(Text, nullable=False)
    params: Mapped[dict] = mapped_column(JSONB, nullable=False)
    models: Mapped[dict] = mapped_column(JSONB, nullable=False)
    created_at: Mapped[datetime] = _created()


class JobStage(Base):
    """A job's stage with its resolved params (defaults included): the thresholds the views apply."""

    __tablename__ = "job_stages"
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.job_id", ondelete="CASCADE"), primary_key=True)
    stage: Mapped[str] = mapped_column(Text, primary_key=True)
    position: Mapped[int] = mapped_column(Integer, nullable=False)
    params: Mapped[dict] = mapped_column(JSONB, nullable=False)


class JobConfig(Base):
    """Which configuration(s) a job's stage used (written with the stage's results)."""

    __tablename__ = "job_configs"
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.job_id", ondelete="CASCADE"), primary_key=True)
    stage: Mapped[str] = mapped_column(Text, primary_key=True)
    config_id: Mapped[str] = mapped_column(ForeignKey("stage_configs.config_id"), primary_key=True)


# --- broker ----------------------------------------------------------------------------------

TASK_STATES = ("ready", "scheduled", "leased")
ATTEMPT_OUTCOMES = (
    "ok", "error", "released", "reclaimed_dead_worker", "reclaimed_deadline", "fenced_out", "dead", "bisected",
)


class Task(Base):
    """A chunk of asset ids for one ``(job, stage, stage_version)``. Finished tasks are deleted.

    Partitioned by ``LIST (stage)``: a partition per stage (``curation.broker.stage_partition_name``) and
    a DEFAULT one; the key includes the partition key. Each partition carries the hot-queue storage
    settings (``curation.broker.TASK_STORAGE``)."""

    __tablename__ = "tasks"
    task_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    stage: Mapped[str] = mapped_column(Text, primary_key=True)
    stage_version: Mapped[str] = mapped_column(Text, nullable=False)
    state: Mapped[str] = mapped_column(Text, nullable=False, server_default="ready")
    priority: Mapped[int] = mapped_column(SmallInteger, nullable=False, server_default="100")
    run_after: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    asset_ids: Mapped[list[int]] = mapped_column(ARRAY(BigInteger), nullable=False)
    dedupe_key: Mapped[str] = mapped_column(Text, nullable=False)
    attempt: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    crashes: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    max_attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default="5")
    max_runtime_s: Mapped[float] = mapped_column(Double, nullable=False, server_default="600")
    lease_id: Mapped[str | None] = mapped_column(UUID(as_uuid=False))
    lease_owner: Mapped[int | None] = mapped_column(BigInteger)
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    deadline_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _created()
    __table_args__ = (
        CheckConstraint(f"state IN {TASK_STATES}", name="tasks_state_check"),
        CheckConstraint("cardinality(asset_ids) > 0", name="tasks_asset_ids_check"),
        UniqueConstraint("job_id", "stage", "stage_version", "dedupe_key", name="tasks_dedupe_key"),
        Index("tasks_ready_idx", "stage", "priority", "task_id", postgresql_where=text("state = 'ready'")),
        Index("tasks_leased_idx", "lease_owner", postgresql_where=text("state = 'leased'")),
        Index("tasks_scheduled_idx", "run_after", postgresql_where=text("state = 'scheduled'")),
        Index("tasks_job_idx", "job_id", "task_id"),
        {"postgresql_partition_by": "LIST (stage)"},
    )


class TaskAttempt(Base):
    """Append-only ledger: one row per ended attempt (never updated). Partitioned by ``RANGE (ended_at)``,
    a partition per day (UTC) and a DEFAULT one; retention drops whole days (``curation broker prune``)."""

    __tablename__ = "task_attempts"
    attempt_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    task_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    job_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    stage: Mapped[str] = mapped_column(Text, nullable=False)
    attempt: Mapped[int] = mapped_column(Integer, nullable=False)
    lease_id: Mapped[str | None] = mapped_column(UUID(as_uuid=False))
    worker_id: Mapped[int | None] = mapped_column(BigInteger)
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True, server_default=func.now())
    outcome: Mapped[str] = mapped_column(Text, nullable=False)
    error: Mapped[str | None] = mapped_column(Text)
    n_items: Mapped[int | None] = mapped_column(Integer)
    n_ok: Mapped[int | None] = mapped_column(Integer)
    __table_args__ = (
        CheckConstraint(f"outcome IN {ATTEMPT_OUTCOMES}", name="task_attempts_outcome_check"),
        Index("task_attempts_task_idx", "task_id"),
        Index("task_attempts_job_idx", "job_id", "stage"),
        {"postgresql_partition_by": "RANGE (ended_at)"},
    )


class DeadTask(Base):
    """Dead letter: a task that exhausted its attempts (after bisection down to one asset)."""

    __tablename__ = "dead_tasks"
    task_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    job_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    stage: Mapped[str] = mapped_column(Text, nullable=False)
    stage_version: Mapped[str] = mapped_column(Text, nullable=False)
    asset_ids: Mapped[list[int]] = mapped_column(ARRAY(BigInteger), nullable=False)
    dedupe_key: Mapped[str] = mapped_column(Text, nullable=False)
    attempt: Mapped[int] = mapped_column(Integer, nullable=False)
    reason: Mapped[str] = mapped_column(Text, nullable=False)
    died_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    __table_args__ = (Index("dead_tasks_job_idx", "job_id"),)


class Worker(Base):
    """One row per worker process. ``last_heartbeat`` is deliberately not indexed (HOT updates)."""

    __tablename__ = "workers"
    worker_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    stage: Mapped[str] = mapped_column(Text, nullable=False)
    host: Mapped[str] = mapped_column(Text, nullable=False)
    pid: Mapped[int] = mapped_column(Integer, nullable=False)
    ray_node_id: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = _created()
    last_heartbeat: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    stop_requested: Mapped[bool] = mapped_column(nullable=False, server_default=text("false"))
    stopped_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    __table_args__ = ({"postgresql_with": {"fillfactor": "50"}},)


class ItemError(Base):
    """Why one asset has no result for one stage version. At most one row per key."""

    __tablename__ = "item_errors"
    asset_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    stage: Mapped[str] = mapped_column(Text, primary_key=True)
    stage_version: Mapped[str] = mapped_column(Text, primary_key=True)
    job_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    error_class: Mapped[str] = mapped_column(Text, nullable=False)
    message: Mapped[str] = mapped_column(Text, nullable=False)
    attempt: Mapped[int] = mapped_column(Integer, nullable=False)
    created_at: Mapped[datetime] = _created()
    __table_args__ = (Index("item_errors_job_idx", "job_id", "stage"),)


# --- stage results ---------------------------------------------------------------------------
# Each stage's result table is declared once, by the stage's result dataclass, and built from it by
# ``curation.result_tables.result_table`` (key (asset_id, config_id)). Here only the pairs table the
# near-duplicate search writes.


class NearDuplicate(Base):
    """A pair of assets whose perceptual hashes are within ``curation.dedup.PAIR_SEARCH_BITS`` (the job's
    ``max_distance`` is applied by the curated views).
    Stored in both directions so that "does a better-ranked neighbour exist" is one index probe."""

    __tablename__ = "near_duplicates"
    asset_id: Mapped[int] = mapped_column(ForeignKey("assets.asset_id"), primary_key=True)
    other_id: Mapped[int] = mapped_column(ForeignKey("assets.asset_id"), primary_key=True)
    config_id: Mapped[str] = mapped_column(Text, primary_key=True)  # of the hashes compared
    distance: Mapped[int] = mapped_column(SmallInteger, nullable=False)
    stage_version: Mapped[str] = mapped_column(Text, nullable=False)
    kind: Mapped[str] = mapped_column(Text, nullable=False, server_default="full")  # full | mirror | center
    created_at: Mapped[datetime] = _created()


class Export(Base):
    __tablename__ = "exports"
    export_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.job_id"))
    predicate: Mapped[str] = mapped_column(Text, nullable=False)
    output_uri: Mapped[str] = mapped_column(Text, nullable=False)
    n_rows: Mapped[int] = mapped_column(BigInteger, nullable=False)
    files: Mapped[list] = mapped_column(JSONB, nullable=False)
    created_at: Mapped[datetime] = _created()


class Shard(Base):
    """A latent tar shard written by ``curation encode``."""

    __tablename__ = "shards"
    shard_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    uri: Mapped[str] = mapped_column(Text, unique=True, nullable=False)
    modality: Mapped[str] = mapped_column(Text, nullable=False)
    tier: Mapped[str] = mapped_column(Text, nullable=False)
    bucket_height: Mapped[int] = mapped_column(Integer, nullable=False)
    bucket_width: Mapped[int] = mapped_column(Integer, nullable=False)
    n_samples: Mapped[int] = mapped_column(Integer, nullable=False)
    bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    vae: Mapped[str] = mapped_column(Text, nullable=False)
    scaling_factor: Mapped[float] = mapped_column(Double, nullable=False)
    shift_factor: Mapped[float] = mapped_column(Double, nullable=False)
    created_at: Mapped[datetime] = _created()


class Latent(Base):
    """Where an asset's latent lives: shard, tar member, shape, VAE."""

    __tablename__ = "latents"
    asset_id: Mapped[int] = mapped_column(ForeignKey("assets.asset_id"), primary_key=True)
    shard_id: Mapped[int] = mapped_column(ForeignKey("shards.shard_id"), primary_key=True)
    member: Mapped[str] = mapped_column(Text, nullable=False)
    shape: Mapped[list[int]] = mapped_column(ARRAY(Integer), nullable=False)
    vae: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = _created()


# --- source metadata and clusters (migration 0015) -------------------------------------------------


class AssetMetadata(Base):
    """A Parquet source list's caption / alt-text and the columns the spec names (``source.metadata_columns``)."""

    __tablename__ = "asset_metadata"
    asset_id: Mapped[int] = mapped_column(ForeignKey("assets.asset_id", ondelete="CASCADE"), primary_key=True)
    source_id: Mapped[int] = mapped_column(ForeignKey("sources.source_id"), nullable=False)
    caption: Mapped[str | None] = mapped_column(Text)
    metadata_: Mapped[dict] = mapped_column("metadata", JSONB, nullable=False, server_default=text("'{}'::jsonb"))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())


class Clustering(Base):
    """One ``curation cluster`` run (``curation.clusters``): K-means centroids over a job's embeddings."""

    __tablename__ = "clusterings"
    clustering_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.job_id", ondelete="CASCADE"), nullable=False)
    kind: Mapped[str] = mapped_column(Text, nullable=False)
    embedding_stage: Mapped[str] = mapped_column(Text, nullable=False)
    embedding_configs: Mapped[list[str]] = mapped_column(ARRAY(Text), nullable=False)
    model: Mapped[str] = mapped_column(Text, nullable=False)
    dim: Mapped[int] = mapped_column(Integer, nullable=False)
    k: Mapped[int] = mapped_column(Integer, nullable=False)
    seed: Mapped[int] = mapped_column(BigInteger, nullable=False)
    sample_size: Mapped[int] = mapped_column(Integer, nullable=False)
    n_assets: Mapped[int] = mapped_column(Integer, nullable=False)
    library: Mapped[str] = mapped_column(Text, nullable=False)
    epsilon: Mapped[float] = mapped_column(Double, nullable=False)
    centroids: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)  # float32 k × dim, little-endian
    fit_seconds: Mapped[float] = mapped_column(Double, nullable=False)
    assign_seconds: Mapped[float | None] = mapped_column(Double)
    created_at: Mapped[datetime] = _created()
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AssetCluster(Base):
    __tablename__ = "asset_clusters"
    clustering_id: Mapped[int] = mapped_column(ForeignKey("clusterings.clustering_id", ondelete="CASCADE"),
                                               primary_key=True)
    asset_id: Mapped[int] = mapped_column(ForeignKey("assets.asset_id", ondelete="CASCADE"), primary_key=True)
    cluster_id: Mapped[int] = mapped_column(Integer, nullable=False)
    distance: Mapped[float] = mapped_column(REAL, nullable=False)  # 1 − cosine to the centroid


class SemanticDuplicate(Base):
    """A pair within one cluster with cosine ≥ 1 − ε, stored in both directions."""

    __tablename__ = "semantic_duplicates"
    clustering_id: Mapped[int] = mapped_column(ForeignKey("clusterings.clustering_id", ondelete="CASCADE"),
                                               primary_key=True)
    asset_id: Mapped[int] = mapped_column(ForeignKey("assets.asset_id", ondelete="CASCADE"), primary_key=True)
    other_id: Mapped[int] = mapped_column(ForeignKey("assets.asset_id", ondelete="CASCADE"), primary_key=True)
    cosine: Mapped[float] = mapped_column(REAL, nullable=False)
