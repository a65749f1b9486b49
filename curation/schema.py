"""SQLAlchemy models of the database. The Alembic migrations in ``db/migrations/`` create them; the
two must agree (``tests/test_schema.py`` checks that the migrated database matches these models).

Tables, by layer:

- catalogue: ``sources``, ``jobs``, ``assets``, ``job_assets`` (which job listed which asset);
- broker: ``tasks`` (small and hot), ``task_attempts`` (append-only ledger), ``dead_tasks``,
  ``workers`` (heartbeats), ``item_errors`` (one row per failed ``(asset, stage, version)``);
- configurations: ``stage_configs``, ``job_stages`` (resolved params per job), ``job_configs`` (migration 0013);
- stage results, one typed table per stage, primary key ``(asset_id, config_id)`` (migration 0013):
  ``probe_results``, ``resolution_results``, ``phash_results`` (+ ``near_duplicates``),
  ``edge_results``, ``quality_results``, ``text_results`` (migration 0003); for video (migration
  0004) ``video_probe_results``, ``scene_split_results`` (the scenes themselves are ``assets`` of kind
  ``scene``), ``video_hash_results`` (+ ``near_duplicates``), ``dynamics_results``, ``video_text_results``;
  ``clip_results`` (images and scenes; pgvector embeddings, migration 0005); ``object_results``
  (migration 0006); ``watermark_results`` (images and scenes, migration 0007); ``motion_results`` (0008); ``topiq_results``,
  ``qalign_results`` (images and scenes) and ``complexity_results`` (0009); ``dover_results`` (scenes, 0011);
- outputs: ``exports``, ``shards`` and ``latents`` (VAE-latent tar shards, migration 0002).

The views users slice on, ``curated_images`` and ``curated_scenes``, are defined in the migrations and
documented in ``docs/curated-view.md``.
"""

from __future__ import annotations

from datetime import datetime

from pgvector.sqlalchemy import BIT, Vector
from sqlalchemy import (
    BigInteger,
    Boolean,
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
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
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
    """A chunk of asset ids for one ``(job, stage, stage_version)``. Finished tasks are deleted."""

    __tablename__ = "tasks"
    task_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    stage: Mapped[str] = mapped_column(Text, nullable=False)
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
        Index("tasks_job_idx", "job_id"),
        {"postgresql_with": {"fillfactor": "80"}},
    )


class TaskAttempt(Base):
    """Append-only ledger: one row per ended attempt (never updated)."""

    __tablename__ = "task_attempts"
    attempt_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    task_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    job_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    stage: Mapped[str] = mapped_column(Text, nullable=False)
    attempt: Mapped[int] = mapped_column(Integer, nullable=False)
    lease_id: Mapped[str | None] = mapped_column(UUID(as_uuid=False))
    worker_id: Mapped[int | None] = mapped_column(BigInteger)
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    outcome: Mapped[str] = mapped_column(Text, nullable=False)
    error: Mapped[str | None] = mapped_column(Text)
    n_items: Mapped[int | None] = mapped_column(Integer)
    n_ok: Mapped[int | None] = mapped_column(Integer)
    __table_args__ = (
        CheckConstraint(f"outcome IN {ATTEMPT_OUTCOMES}", name="task_attempts_outcome_check"),
        Index("task_attempts_task_idx", "task_id"),
        Index("task_attempts_job_idx", "job_id", "stage"),
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


class ProbeResult(Base):
    __tablename__ = "probe_results"
    asset_id: Mapped[int] = mapped_column(ForeignKey("assets.asset_id"), primary_key=True)
    config_id: Mapped[str] = mapped_column(Text, primary_key=True)  # workers.stage.StageConfig (migration 0013)
    stage_version: Mapped[str] = mapped_column(Text, nullable=False)
    format: Mapped[str] = mapped_column(Text, nullable=False)
    width: Mapped[int] = mapped_column(Integer, nullable=False)
    height: Mapped[int] = mapped_column(Integer, nullable=False)
    mode: Mapped[str] = mapped_column(Text, nullable=False)
    bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    sha256: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    decode_ms: Mapped[float] = mapped_column(Double, nullable=False)
    created_at: Mapped[datetime] = _created()
    __table_args__ = (Index("probe_results_sha256_idx", "sha256"),)


class ResolutionResult(Base):
    __tablename__ = "resolution_results"
    asset_id: Mapped[int] = mapped_column(ForeignKey("assets.asset_id"), primary_key=True)
    config_id: Mapped[str] = mapped_column(Text, primary_key=True)  # workers.stage.StageConfig (migration 0013)
    stage_version: Mapped[str] = mapped_column(Text, nullable=False)
    short_side: Mapped[int] = mapped_column(Integer, nullable=False)
    long_side: Mapped[int] = mapped_column(Integer, nullable=False)
    aspect_ratio: Mapped[float] = mapped_column(Double, nullable=False)
    created_at: Mapped[datetime] = _created()


class PhashResult(Base):
    __tablename__ = "phash_results"
    asset_id: Mapped[int] = mapped_column(ForeignKey("assets.asset_id"), primary_key=True)
    config_id: Mapped[str] = mapped_column(Text, primary_key=True)  # workers.stage.StageConfig (migration 0013)
    stage_version: Mapped[str] = mapped_column(Text, nullable=False)
    phash: Mapped[str] = mapped_column(BIT(64), nullable=False)
    created_at: Mapped[datetime] = _created()
    __table_args__ = (
        Index(
            "phash_results_hnsw_idx", "phash", postgresql_using="hnsw",
            postgresql_ops={"phash": "bit_hamming_ops"},
        ),
    )


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
    created_at: Mapped[datetime] = _created()


class EdgeResult(Base):
    __tablename__ = "edge_results"
    asset_id: Mapped[int] = mapped_column(ForeignKey("assets.asset_id"), primary_key=True)
    config_id: Mapped[str] = mapped_column(Text, primary_key=True)  # workers.stage.StageConfig (migration 0013)
    stage_version: Mapped[str] = mapped_column(Text, nullable=False)
    edge_density: Mapped[float] = mapped_column(Double, nullable=False)
    edge_mean: Mapped[float] = mapped_column(Double, nullable=False)
    created_at: Mapped[datetime] = _created()


class QualityResult(Base):
    __tablename__ = "quality_results"
    asset_id: Mapped[int] = mapped_column(ForeignKey("assets.asset_id"), primary_key=True)
    config_id: Mapped[str] = mapped_column(Text, primary_key=True)  # workers.stage.StageConfig (migration 0013)
    stage_version: Mapped[str] = mapped_column(Text, nullable=False)
    brisque: Mapped[float] = mapped_column(Double, nullable=False)
    model: Mapped[str] = mapped_column(Text, nullable=False)
    weights_sha256: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = _created()


class TextResult(Base):
    __tablename__ = "text_results"
    asset_id: Mapped[int] = mapped_column(ForeignKey("assets.asset_id"), primary_key=True)
    config_id: Mapped[str] = mapped_column(Text, primary_key=True)  # workers.stage.StageConfig (migration 0013)
    stage_version: Mapped[str] = mapped_column(Text, nullable=False)
    text_boxes: Mapped[int] = mapped_column(Integer, nullable=False)
    text_area: Mapped[float] = mapped_column(Double, nullable=False)
    model: Mapped[str] = mapped_column(Text, nullable=False)
    weights_sha256: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = _created()


# --- video stage results (migration 0004) -----------------------------------------------------


class VideoProbeResult(Base):
    __tablename__ = "video_probe_results"
    asset_id: Mapped[int] = mapped_column(ForeignKey("assets.asset_id"), primary_key=True)
    config_id: Mapped[str] = mapped_column(Text, primary_key=True)  # workers.stage.StageConfig (migration 0013)
    stage_version: Mapped[str] = mapped_column(Text, nullable=False)
    container: Mapped[str] = mapped_column(Text, nullable=False)
    codec: Mapped[str] = mapped_column(Text, nullable=False)
    width: Mapped[int] = mapped_column(Integer, nullable=False)
    height: Mapped[int] = mapped_column(Integer, nullable=False)
    fps: Mapped[float] = mapped_column(Double, nullable=False)
    variable_frame_rate: Mapped[bool] = mapped_column(Boolean, nullable=False)
    frames: Mapped[int] = mapped_column(Integer, nullable=False)
    duration_s: Mapped[float] = mapped_column(Double, nullable=False)
    rotation: Mapped[int] = mapped_column(SmallInteger, nullable=False)
    has_audio: Mapped[bool] = mapped_column(Boolean, nullable=False)
    bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    sha256: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    probe_ms: Mapped[float] = mapped_column(Double, nullable=False)
    start_s: Mapped[float] = mapped_column(Double, nullable=False, server_default="0")
    created_at: Mapped[datetime] = _created()
    __table_args__ = (Index("video_probe_results_sha256_idx", "sha256"),)


class SceneSplitResult(Base):
    """Per video: the cuts found and what the 2-60 s rule did. The scenes are rows of ``assets``."""

    __tablename__ = "scene_split_results"
    asset_id: Mapped[int] = mapped_column(ForeignKey("assets.asset_id"), primary_key=True)
    config_id: Mapped[str] = mapped_column(Text, primary_key=True)  # workers.stage.StageConfig (migration 0013)
    stage_version: Mapped[str] = mapped_column(Text, nullable=False)
    detector: Mapped[str] = mapped_column(Text, nullable=False)
    cut_frames: Mapped[list[int]] = mapped_column(ARRAY(Integer), nullable=False)
    n_scenes: Mapped[int] = mapped_column(Integer, nullable=False)
    n_dropped_short: Mapped[int] = mapped_column(Integer, nullable=False)
    n_split_long: Mapped[int] = mapped_column(Integer, nullable=False)
    frames: Mapped[int] = mapped_column(Integer, nullable=False)
    analysis_ms: Mapped[float] = mapped_column(Double, nullable=False)
    created_at: Mapped[datetime] = _created()


class VideoHashResult(Base):
    __tablename__ = "video_hash_results"
    asset_id: Mapped[int] = mapped_column(ForeignKey("assets.asset_id"), primary_key=True)
    config_id: Mapped[str] = mapped_column(Text, primary_key=True)  # workers.stage.StageConfig (migration 0013)
    stage_version: Mapped[str] = mapped_column(Text, nullable=False)
    vhash: Mapped[str] = mapped_column(BIT(64), nullable=False)
    frames_hashed: Mapped[int] = mapped_column(Integer, nullable=False)
    created_at: Mapped[datetime] = _created()
    __table_args__ = (
        Index(
            "video_hash_results_hnsw_idx", "vhash", postgresql_using="hnsw",
            postgresql_ops={"vhash": "bit_hamming_ops"},
        ),
    )


class DynamicsResult(Base):
    __tablename__ = "dynamics_results"
    asset_id: Mapped[int] = mapped_column(ForeignKey("assets.asset_id"), primary_key=True)
    config_id: Mapped[str] = mapped_column(Text, primary_key=True)  # workers.stage.StageConfig (migration 0013)
    stage_version: Mapped[str] = mapped_column(Text, nullable=False)
    ms_ssim_mean: Mapped[float | None] = mapped_column(Double)
    ms_ssim_min: Mapped[float | None] = mapped_column(Double)
    ms_ssim_max: Mapped[float | None] = mapped_column(Double)
    pairs: Mapped[int] = mapped_column(Integer, nullable=False)
    too_static: Mapped[bool] = mapped_column(Boolean, nullable=False)
    too_dynamic: Mapped[bool] = mapped_column(Boolean, nullable=False)
    created_at: Mapped[datetime] = _created()


class VideoTextResult(Base):
    __tablename__ = "video_text_results"
    asset_id: Mapped[int] = mapped_column(ForeignKey("assets.asset_id"), primary_key=True)
    config_id: Mapped[str] = mapped_column(Text, primary_key=True)  # workers.stage.StageConfig (migration 0013)
    stage_version: Mapped[str] = mapped_column(Text, nullable=False)
    text_boxes_mean: Mapped[float] = mapped_column(Double, nullable=False)
    text_area_mean: Mapped[float] = mapped_column(Double, nullable=False)
    frames_sampled: Mapped[int] = mapped_column(Integer, nullable=False)
    model: Mapped[str] = mapped_column(Text, nullable=False)
    weights_sha256: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = _created()


class ClipResult(Base):
    """CLIP embedding + zero-shot classes of an image (stage ``clip``) or a scene (``video_clip``)."""

    __tablename__ = "clip_results"
    asset_id: Mapped[int] = mapped_column(ForeignKey("assets.asset_id"), primary_key=True)
    config_id: Mapped[str] = mapped_column(Text, primary_key=True)  # workers.stage.StageConfig (migration 0013)
    stage_version: Mapped[str] = mapped_column(Text, nullable=False)
    embedding: Mapped[list[float]] = mapped_column(Vector(), nullable=False)
    location: Mapped[str] = mapped_column(Text, nullable=False)
    location_p: Mapped[float] = mapped_column(Double, nullable=False)
    style: Mapped[str] = mapped_column(Text, nullable=False)
    style_p: Mapped[float] = mapped_column(Double, nullable=False)
    main_subject: Mapped[str] = mapped_column(Text, nullable=False)
    main_subject_p: Mapped[float] = mapped_column(Double, nullable=False)
    place_type: Mapped[str] = mapped_column(Text, nullable=False)
    place_type_p: Mapped[float] = mapped_column(Double, nullable=False)
    model: Mapped[str] = mapped_column(Text, nullable=False)
    weights_sha256: Mapped[str] = mapped_column(Text, nullable=False)
    taxonomy_sha256: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = _created()


class ObjectResult(Base):
    __tablename__ = "object_results"
    asset_id: Mapped[int] = mapped_column(ForeignKey("assets.asset_id"), primary_key=True)
    config_id: Mapped[str] = mapped_column(Text, primary_key=True)  # workers.stage.StageConfig (migration 0013)
    stage_version: Mapped[str] = mapped_column(Text, nullable=False)
    detections: Mapped[list] = mapped_column(JSONB, nullable=False)
    labels: Mapped[list[str]] = mapped_column(ARRAY(Text), nullable=False)
    n_detections: Mapped[int] = mapped_column(Integer, nullable=False)
    max_conf: Mapped[float] = mapped_column(Double, nullable=False)
    frames_sampled: Mapped[int] = mapped_column(Integer, nullable=False)
    model: Mapped[str] = mapped_column(Text, nullable=False)
    weights_sha256: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = _created()
    __table_args__ = (Index("object_results_labels_idx", "labels", postgresql_using="gin"),)


class WatermarkResult(Base):
    """The watermark pair's scores for an image (``watermark``) or a scene (``video_watermark``)."""

    __tablename__ = "watermark_results"
    asset_id: Mapped[int] = mapped_column(ForeignKey("assets.asset_id"), primary_key=True)
    config_id: Mapped[str] = mapped_column(Text, primary_key=True)  # workers.stage.StageConfig (migration 0013)
    stage_version: Mapped[str] = mapped_column(Text, nullable=False)
    classifier_p: Mapped[float] = mapped_column(Double, nullable=False)
    detector_conf: Mapped[float | None] = mapped_column(Double)
    watermark: Mapped[bool] = mapped_column(Boolean, nullable=False)
    frames_sampled: Mapped[int] = mapped_column(Integer, nullable=False)
    classifier_model: Mapped[str] = mapped_column(Text, nullable=False)
    classifier_sha256: Mapped[str] = mapped_column(Text, nullable=False)
    detector_model: Mapped[str | None] = mapped_column(Text)
    detector_sha256: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _created()


class MotionResult(Base):
    __tablename__ = "motion_results"
    asset_id: Mapped[int] = mapped_column(ForeignKey("assets.asset_id"), primary_key=True)
    config_id: Mapped[str] = mapped_column(Text, primary_key=True)  # workers.stage.StageConfig (migration 0013)
    stage_version: Mapped[str] = mapped_column(Text, nullable=False)
    camera_motion: Mapped[float] = mapped_column(Double, nullable=False)
    object_motion: Mapped[float] = mapped_column(Double, nullable=False)
    light_dynamics: Mapped[float] = mapped_column(Double, nullable=False)
    frames_sampled: Mapped[int] = mapped_column(Integer, nullable=False)
    model: Mapped[str] = mapped_column(Text, nullable=False)
    weights_sha256: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = _created()


class TopiqResult(Base):
    __tablename__ = "topiq_results"
    asset_id: Mapped[int] = mapped_column(ForeignKey("assets.asset_id"), primary_key=True)
    config_id: Mapped[str] = mapped_column(Text, primary_key=True)  # workers.stage.StageConfig (migration 0013)
    stage_version: Mapped[str] = mapped_column(Text, nullable=False)
    topiq_technical: Mapped[float] = mapped_column(Double, nullable=False)
    topiq_aesthetic: Mapped[float] = mapped_column(Double, nullable=False)
    technical_model: Mapped[str] = mapped_column(Text, nullable=False)
    technical_sha256: Mapped[str] = mapped_column(Text, nullable=False)
    aesthetic_model: Mapped[str] = mapped_column(Text, nullable=False)
    aesthetic_sha256: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = _created()


class QAlignResult(Base):
    """Q-Align ratings (1..5) of an image (``qalign``) or a scene (``video_qalign``)."""

    __tablename__ = "qalign_results"
    asset_id: Mapped[int] = mapped_column(ForeignKey("assets.asset_id"), primary_key=True)
    config_id: Mapped[str] = mapped_column(Text, primary_key=True)  # workers.stage.StageConfig (migration 0013)
    stage_version: Mapped[str] = mapped_column(Text, nullable=False)
    qalign_quality: Mapped[float] = mapped_column(Double, nullable=False)
    qalign_aesthetic: Mapped[float] = mapped_column(Double, nullable=False)
    sft_candidate: Mapped[bool] = mapped_column(Boolean, nullable=False)
    frames_sampled: Mapped[int] = mapped_column(Integer, nullable=False)
    model: Mapped[str] = mapped_column(Text, nullable=False)
    weights_sha256: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = _created()
    __table_args__ = (
        CheckConstraint("qalign_quality BETWEEN 1 AND 5", name="qalign_results_qalign_quality_check"),
        CheckConstraint("qalign_aesthetic BETWEEN 1 AND 5", name="qalign_results_qalign_aesthetic_check"),
    )


class DoverResult(Base):
    __tablename__ = "dover_results"
    asset_id: Mapped[int] = mapped_column(ForeignKey("assets.asset_id"), primary_key=True)
    config_id: Mapped[str] = mapped_column(Text, primary_key=True)  # workers.stage.StageConfig (migration 0013)
    stage_version: Mapped[str] = mapped_column(Text, nullable=False)
    dover_technical: Mapped[float] = mapped_column(Double, nullable=False)
    dover_aesthetic: Mapped[float] = mapped_column(Double, nullable=False)
    dover_overall: Mapped[float] = mapped_column(Double, nullable=False)
    technical_raw: Mapped[float] = mapped_column(Double, nullable=False)
    aesthetic_raw: Mapped[float] = mapped_column(Double, nullable=False)
    frames_sampled: Mapped[int] = mapped_column(Integer, nullable=False)
    model: Mapped[str] = mapped_column(Text, nullable=False)
    weights_sha256: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = _created()


class ComplexityResult(Base):
    __tablename__ = "complexity_results"
    asset_id: Mapped[int] = mapped_column(ForeignKey("assets.asset_id"), primary_key=True)
    config_id: Mapped[str] = mapped_column(Text, primary_key=True)  # workers.stage.StageConfig (migration 0013)
    stage_version: Mapped[str] = mapped_column(Text, nullable=False)
    mask_count: Mapped[int] = mapped_column(Integer, nullable=False)
    mask_coverage: Mapped[float] = mapped_column(Double, nullable=False)
    edge_density: Mapped[float] = mapped_column(Double, nullable=False)
    edge_mean: Mapped[float] = mapped_column(Double, nullable=False)
    complexity: Mapped[float] = mapped_column(Double, nullable=False)
    too_simple: Mapped[bool] = mapped_column(Boolean, nullable=False)
    model: Mapped[str] = mapped_column(Text, nullable=False)
    weights_sha256: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = _created()
    __table_args__ = (CheckConstraint("mask_count >= 0", name="complexity_results_mask_count_check"),)


# --- outputs ---------------------------------------------------------------------------------


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
