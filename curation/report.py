"""What a job is doing and what it produced: per-stage progress and the filter funnel."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import Connection, text

if TYPE_CHECKING:
    from curation.spec import JobSpec


@dataclass(frozen=True)
class StageProgress:
    stage: str
    scored: int  # assets with a result row
    errors: int  # assets with an item error
    queued: int  # assets in ready/scheduled tasks
    running: int  # assets in leased tasks


@dataclass(frozen=True)
class JobStatus:
    job_id: int
    name: str
    status: str
    n_assets: int
    stages: list[StageProgress]
    dead_tasks: int


@dataclass(frozen=True)
class Funnel:
    listed: int
    decoded: int
    resolution_ok: int
    unique: int
    exported: int | None

    def rows(self) -> list[tuple[str, int | None]]:
        return [
            ("listed", self.listed), ("decoded", self.decoded), ("resolution ok", self.resolution_ok),
            ("unique", self.unique), ("exported", self.exported),
        ]


def job_status(conn: Connection, job_id: int) -> JobStatus:
    from workers.stage import get_stage

    job = conn.execute(
        text("SELECT job_id, name, status, stages FROM jobs WHERE job_id = :j"), {"j": job_id}
    ).first()
    if job is None:
        raise LookupError(f"no job {job_id}")
    n_assets = conn.execute(text("SELECT count(*) FROM job_assets WHERE job_id = :j"), {"j": job_id}).scalar_one()
    task_counts = {
        (r.stage, r.state): r.n
        for r in conn.execute(
            text("SELECT stage, state, sum(cardinality(asset_ids))::bigint AS n FROM tasks WHERE job_id = :j "
                 "GROUP BY stage, state"),
            {"j": job_id},
        )
    }
    stages = []
    for ref in job.stages:
        cls = get_stage(ref)
        scored = conn.execute(
            text(f"SELECT count(DISTINCT r.asset_id) FROM {cls.result_table} r "
                 "JOIN job_assets ja ON ja.asset_id = r.asset_id "
                 "WHERE ja.job_id = :j AND r.config_id IN (SELECT config_id FROM job_configs "
                 "WHERE job_id = :j AND stage = :s)"),
            {"j": job_id, "s": ref},
        ).scalar_one()
        errors = conn.execute(
            text("SELECT count(*) FROM item_errors e JOIN job_assets ja ON ja.asset_id = e.asset_id "
                 "WHERE ja.job_id = :j AND e.stage = :s AND e.stage_version = :v"),
            {"j": job_id, "s": ref, "v": cls.stage_version()},
        ).scalar_one()
        stages.append(StageProgress(
            stage=ref, scored=scored, errors=errors,
            queued=int(task_counts.get((ref, "ready"), 0) + task_counts.get((ref, "scheduled"), 0)),
            running=int(task_counts.get((ref, "leased"), 0)),
        ))
    dead = conn.execute(text("SELECT count(*) FROM dead_tasks WHERE job_id = :j"), {"j": job_id}).scalar_one()
    return JobStatus(job.job_id, job.name, job.status, n_assets, stages, dead)


@dataclass(frozen=True)
class VideoFunnel:
    listed: int  # video files
    probed: int
    scenes: int  # scenes of 2-60 s cut from them
    resolution_ok: int  # scenes whose short side is >= 256 (report §4.4)
    unique: int
    exported: int | None

    def rows(self) -> list[tuple[str, int | None]]:
        return [
            ("videos listed", self.listed), ("videos probed", self.probed), ("scenes (2-60 s)", self.scenes),
            ("resolution ok", self.resolution_ok), ("unique", self.unique), ("exported", self.exported),
        ]


def _last_export(conn: Connection, job_id: int) -> int | None:
    return conn.execute(
        text("SELECT n_rows FROM exports WHERE job_id = :j ORDER BY export_id DESC LIMIT 1"), {"j": job_id}
    ).scalar()


def video_funnel(conn: Connection, job_id: int) -> VideoFunnel:
    row = conn.execute(
        text(
            """
            SELECT count(*) FILTER (WHERE a.kind = 'video') AS listed,
                   count(p.asset_id) AS probed
            FROM job_assets ja JOIN assets a ON a.asset_id = ja.asset_id
            LEFT JOIN (SELECT DISTINCT asset_id FROM video_probe_results) p ON p.asset_id = a.asset_id
            WHERE ja.job_id = :j
            """
        ),
        {"j": job_id},
    ).one()
    scenes = conn.execute(
        text(
            """
            SELECT count(*) AS scenes,
                   count(*) FILTER (WHERE c.short_side >= 256) AS resolution_ok,
                   count(*) FILTER (WHERE c.short_side >= 256 AND c.is_unique) AS unique_
            FROM curated_scenes c WHERE c.job_id = :j
            """
        ),
        {"j": job_id},
    ).one()
    return VideoFunnel(row.listed, row.probed, scenes.scenes, scenes.resolution_ok, scenes.unique_,
                       _last_export(conn, job_id))


@dataclass(frozen=True)
class PairFunnel:
    images: int  # the mined slice
    pairs: int  # candidate pairs (image_pairs)
    verified: int  # with a pair_verify result
    admitted: int  # a Table 1 rule admits them
    kept: int  # admitted and not excluded
    sft: int  # kept, and the target passes the SFT Q-Align rule

    def rows(self) -> list[tuple[str, int | None]]:
        return [("images", self.images), ("candidate pairs", self.pairs), ("verified", self.verified),
                ("admitted (Table 1)", self.admitted), ("kept", self.kept), ("SFT", self.sft)]


def pair_funnel(conn: Connection, job_id: int) -> PairFunnel:
    """A pair-mining job's funnel, from ``curated_pairs`` (Table 1 with the job's current thresholds)."""
    images = conn.execute(text("SELECT count(*) FROM job_assets ja JOIN assets a USING (asset_id) "
                               "WHERE ja.job_id = :j AND a.kind = 'image'"), {"j": job_id}).scalar_one()
    row = conn.execute(text(
        "SELECT count(*) AS pairs, count(pair_verify_version) AS verified, count(admitted_by) AS admitted, "
        "count(*) FILTER (WHERE is_kept) AS kept, count(*) FILTER (WHERE is_sft) AS sft "
        "FROM curated_pairs WHERE job_id = :j"), {"j": job_id}).one()
    return PairFunnel(images, row.pairs, row.verified, row.admitted, row.kept, row.sft)


def funnel(conn: Connection, job_id: int, spec: JobSpec) -> Funnel | VideoFunnel | PairFunnel:
    """The job's filter funnel; ``spec`` is its spec (``curation.jobs.load_job``), for the modality and
    the resolution stage's ``min_side``."""
    if spec.modality == "video":
        return video_funnel(conn, job_id)
    if spec.modality == "pair":
        return pair_funnel(conn, job_id)
    min_side = 256
    for i, stage in enumerate(spec.stages):
        if stage.name == "resolution":
            min_side = spec.stage_params(i).min_side
    row = conn.execute(
        text(
            """
            SELECT count(*) AS listed,
                   count(*) FILTER (WHERE c.decoded) AS decoded,
                   count(*) FILTER (WHERE c.decoded AND c.short_side >= :min_side) AS resolution_ok,
                   count(*) FILTER (WHERE c.decoded AND c.short_side >= :min_side AND c.is_unique) AS unique_
            FROM curated_images c WHERE c.job_id = :j
            """
        ),
        {"j": job_id, "min_side": min_side},
    ).one()
    return Funnel(row.listed, row.decoded, row.resolution_ok, row.unique_, _last_export(conn, job_id))


def error_summary(conn: Connection, job_id: int, limit: int = 20) -> list[tuple[str, str, int, str]]:
    """(stage, error class, count, one example message) for a job's item errors."""
    return [
        (r.stage, r.error_class, r.n, r.example)
        for r in conn.execute(
            text(
                "SELECT e.stage, e.error_class, count(*) AS n, min(e.message) AS example FROM item_errors e "
                "JOIN job_assets ja ON ja.asset_id = e.asset_id WHERE ja.job_id = :j "
                "GROUP BY e.stage, e.error_class ORDER BY count(*) DESC LIMIT :l"
            ),
            {"j": job_id, "l": limit},
        )
    ]
