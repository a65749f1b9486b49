"""End to end through the real Ray runtime, on real photos: bad media, duplicates, export, and the
fault cases (kill -9 of a worker, a PostgreSQL restart, a chunk that crashes its worker)."""

from __future__ import annotations

import io
import os
import shutil
import signal
import time

import pyarrow.parquet as pq
import pytest
from sqlalchemy import text

from curation.export import export_slice
from curation.sample_media import resized_copy, write_broken_files
from tests.helpers import assert_exactly_one_outcome, run_until_done, submit_spec
from workers.probe import ProbeStage

pytestmark = pytest.mark.slow

STAGES = [{"name": "probe"}, {"name": "resolution"}, {"name": "phash"}, {"name": "edges"}]


def uri_ids(engine, job_id: int) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT a.uri, a.asset_id FROM assets a JOIN job_assets ja USING (asset_id) "
                                 "WHERE ja.job_id=:j"), {"j": job_id}).all()
    return {os.path.basename(u): i for u, i in rows}


def test_image_job_end_to_end(engine, db_url, ray_local, photo_dir, s3_bucket, skimage_dir, tmp_path):
    # the job's input: real photos, a near and an exact duplicate, broken files, S3 objects, a missing key
    broken = write_broken_files(photo_dir, skimage_dir / "rocket.jpg")
    resized_copy(photo_dir / "astronaut.png", photo_dir / "astronaut_small_copy.jpg", scale=0.7, quality=65)
    shutil.copyfile(photo_dir / "coffee.png", photo_dir / "coffee_exact_copy.png")
    from curation import storage

    storage.write_bytes(f"s3://{s3_bucket}/in/chelsea_s3.png", (skimage_dir / "chelsea.png").read_bytes())
    storage.write_bytes(f"s3://{s3_bucket}/in/moon_s3.png", (skimage_dir / "moon.png").read_bytes())
    local = sorted(str(p) for p in photo_dir.iterdir())
    listing = local + [f"s3://{s3_bucket}/in/chelsea_s3.png", f"s3://{s3_bucket}/in/moon_s3.png",
                       f"s3://{s3_bucket}/in/never_uploaded.jpg"]
    list_file = tmp_path / "uris.txt"
    list_file.write_text("# the job's inputs\n" + "\n".join(listing) + "\n")

    job = submit_spec(engine, {
        "name": "e2e", "modality": "image", "source": {"uri": str(list_file), "name": "mixed"},
        "stages": STAGES, "chunk_size": 4,
        "export": {"where": "is_unique AND bucket IS NOT NULL", "output": f"s3://{s3_bucket}/export"},
    })
    run_until_done(engine, db_url, job, {"probe": 1, "resolution": 1, "phash": 1, "edges": 1})
    ids = uri_ids(engine, job)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT status FROM jobs WHERE job_id=:j"), {"j": job}).scalar_one() == "completed"

    # every listed asset: exactly one probe result or one item error, with the right class
    outcome = assert_exactly_one_outcome(engine, job, "probe", "probe_results", ProbeStage.stage_version())
    assert len(outcome) == len(listing)
    assert outcome[ids[broken.truncated_jpeg.name]] == "corrupt_media"
    assert outcome[ids[broken.zero_byte.name]] == "empty_file"
    assert outcome[ids[broken.text_as_jpeg.name]] == "not_an_image"
    assert outcome[ids[broken.png_bomb.name]] == "decompression_bomb"
    assert outcome[ids["never_uploaded.jpg"]] == "missing_input"
    assert sum(1 for o in outcome.values() if o == "ok") == len(listing) - 5
    with engine.connect() as conn:
        msg = conn.execute(text("SELECT message FROM item_errors WHERE asset_id=:a"),
                           {"a": ids["never_uploaded.jpg"]}).scalar_one()
        assert "never_uploaded.jpg" in msg

    # later stages only ran on the survivors of earlier ones
    with engine.connect() as conn:
        view = {r.asset_id: r for r in conn.execute(text("SELECT * FROM curated_images"))}
    decoded = {a for a, o in outcome.items() if o == "ok"}
    big_enough = {a for a in decoded if view[a].short_side >= 256}
    assert {a for a, r in view.items() if r.phash is not None} == big_enough
    assert {a for a, r in view.items() if r.edge_density is not None} == big_enough
    assert view[ids["coins.png"]].short_side == 303 and view[ids["moon_s3.png"]].short_side == 512

    # dedup: near duplicate, exact duplicate, the three-resolution artwork, nothing else
    assert view[ids["astronaut_small_copy.jpg"]].near_duplicate_of == ids["astronaut.png"]
    assert view[ids["coffee_exact_copy.png"]].exact_duplicate_of == ids["coffee.png"]
    elephants = sorted((n for n in ids if n.startswith("Elephants")), key=lambda n: view[ids[n]].width)
    assert [view[ids[n]].is_unique for n in elephants] == [False, False, True]
    not_unique = {a for a in big_enough if not view[a].is_unique}
    # chelsea_s3.png is byte-identical to the local chelsea.png: duplicates are found across storages
    assert view[ids["chelsea_s3.png"]].exact_duplicate_of == ids["chelsea.png"]
    expected = {ids["astronaut_small_copy.jpg"], ids["coffee_exact_copy.png"], ids["chelsea_s3.png"],
                ids[elephants[0]], ids[elephants[1]]}
    assert not_unique == expected

    # export: to S3 (what the spec says) and to a local folder; read back, check buckets
    spec_export = export_slice(engine, predicate="is_unique AND bucket IS NOT NULL",
                               output=f"s3://{s3_bucket}/export", job_id=job)
    local_export = export_slice(engine, predicate="is_unique AND bucket IS NOT NULL",
                                output=str(tmp_path / "export"), job_id=job)
    assert spec_export.n_rows == local_export.n_rows == len(big_enough) - len(expected)
    for exp in (spec_export, local_export):
        seen = 0
        for f in exp.files:
            table = pq.read_table(io.BytesIO(storage.read_bytes(f["uri"])))
            rows = table.to_pylist()
            seen += len(rows)
            assert f["source"] == "mixed"
            for row in rows:
                expected_bucket = 1024 if row["short_side"] >= 1024 else 512 if row["short_side"] >= 512 else 256
                assert f["bucket"] == str(row["bucket"]) == str(expected_bucket)
                assert len(row["phash"]) == 64 and len(row["sha256"]) == 64
                assert row["edge_density"] is not None and row["is_unique"]
        assert seen == exp.n_rows
    assert {f["bucket"] for f in local_export.files} == {"256", "512", "1024"}
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM exports WHERE job_id=:j"), {"j": job}).scalar_one() == 2

    # a second job listing the same photos from another folder: exact duplicates across jobs
    again = tmp_path / "again"
    again.mkdir()
    shutil.copyfile(photo_dir / "rocket.jpg", again / "rocket_again.jpg")
    job2 = submit_spec(engine, {"name": "again", "modality": "image", "source": {"uri": str(again)},
                                "stages": STAGES[:3]})
    run_until_done(engine, db_url, job2, {"probe": 1, "resolution": 1, "phash": 1})
    with engine.connect() as conn:
        r = conn.execute(text("SELECT exact_duplicate_of, near_duplicate_of FROM curated_images c "
                              "JOIN job_assets ja USING (asset_id) WHERE ja.job_id=:j"), {"j": job2}).one()
    assert r.exact_duplicate_of == ids["rocket.jpg"] and r.near_duplicate_of == ids["rocket.jpg"]


def _slow_job(engine, photo_dir, *, chunk=2, sleep_s=0.4, stage="tests.stages:SlowProbe"):
    return submit_spec(engine, {
        "name": "slow", "modality": "image", "source": {"uri": str(photo_dir)},
        "stages": [{"name": stage, "params": {"sleep_s": sleep_s}}, {"name": "resolution"}],
        "chunk_size": chunk, "max_attempts": 5,
    })


def test_kill_9_worker_mid_task(engine, db_url, ray_local, photo_dir):
    # 2 photos per task, 1 s each: a task claimed 0.2-0.8 s ago is certainly still in the worker's hands
    job = _slow_job(engine, photo_dir, chunk=2, sleep_s=1.0)
    killed: list[int] = []

    def kill_a_busy_worker():
        if killed:
            return
        with engine.connect() as conn:
            row = conn.execute(text(
                "SELECT w.pid, t.task_id FROM tasks t JOIN workers w ON w.worker_id = t.lease_owner "
                "WHERE t.state='leased' AND t.claimed_at BETWEEN now() - interval '0.8 s' "
                "AND now() - interval '0.2 s' LIMIT 1")).first()
        if row is not None:
            os.kill(row.pid, signal.SIGKILL)
            killed.append(row.task_id)

    supervisor = run_until_done(engine, db_url, job, {"tests.stages:SlowProbe": 2, "resolution": 1},
                                on_tick=kill_a_busy_worker)
    assert killed, "no worker was caught mid-task"
    assert supervisor.restarts >= 1
    outcome = assert_exactly_one_outcome(engine, job, "tests.stages:SlowProbe", "probe_results", ProbeStage.stage_version())
    assert set(outcome.values()) == {"ok"}
    with engine.connect() as conn:
        attempts = conn.execute(text("SELECT outcome FROM task_attempts WHERE task_id=:t ORDER BY attempt_id"),
                                {"t": killed[0]}).scalars().all()
        assert attempts[0] == "reclaimed_dead_worker" and attempts[-1] == "ok"
        # nothing doubled downstream either
        dup = conn.execute(text("SELECT count(*) - count(DISTINCT asset_id) FROM resolution_results")).scalar_one()
        assert dup == 0
    assert_exactly_one_outcome(engine, job, "resolution", "resolution_results", "resolution@1")


def test_postgres_restart_mid_job(engine, db_url, ray_local, photo_dir, pg_server):
    job = _slow_job(engine, photo_dir, sleep_s=0.3)
    restarted: list[bool] = []

    def restart_when_half_done():
        if restarted:
            return
        with engine.connect() as conn:
            done = conn.execute(text("SELECT count(*) FROM probe_results")).scalar_one()
        if done >= 3:
            pg_server.stop("immediate")
            time.sleep(3)
            pg_server.start()
            restarted.append(True)

    run_until_done(engine, db_url, job, {"tests.stages:SlowProbe": 2, "resolution": 1},
                   on_tick=restart_when_half_done)
    assert restarted
    outcome = assert_exactly_one_outcome(engine, job, "tests.stages:SlowProbe", "probe_results", ProbeStage.stage_version())
    assert set(outcome.values()) == {"ok"}
    assert_exactly_one_outcome(engine, job, "resolution", "resolution_results", "resolution@1")


def test_crashing_chunk_is_bisected_to_the_bad_asset(engine, db_url, ray_local, photo_dir, skimage_dir):
    shutil.copyfile(skimage_dir / "camera.png", photo_dir / "poison.png")
    for extra in sorted(photo_dir.iterdir())[: 16 - len(list(photo_dir.iterdir()))]:
        shutil.copyfile(extra, photo_dir / f"more_{extra.name}")
    assert len(list(photo_dir.iterdir())) == 16
    job = submit_spec(engine, {
        "name": "poison", "modality": "image", "source": {"uri": str(photo_dir)},
        "stages": [{"name": "tests.stages:CrashingProbe"}], "chunk_size": 16, "max_attempts": 2,
    })
    run_until_done(engine, db_url, job, {"tests.stages:CrashingProbe": 1}, timeout_s=300)
    ids = uri_ids(engine, job)
    outcome = assert_exactly_one_outcome(engine, job, "tests.stages:CrashingProbe", "probe_results", ProbeStage.stage_version())
    assert outcome.pop(ids["poison.png"]) == "worker_crash"
    assert set(outcome.values()) == {"ok"}
    with engine.connect() as conn:
        dead = conn.execute(text("SELECT asset_ids, dedupe_key FROM dead_tasks WHERE job_id=:j"), {"j": job}).all()
        assert [list(d.asset_ids) for d in dead] == [[ids["poison.png"]]]
        # one chunk of 16 reached one asset by halving: c0/x/x/x/x
        assert dead[0].dedupe_key.count("/") == 4, dead[0].dedupe_key
        crashes = conn.execute(text("SELECT count(*) FROM task_attempts WHERE job_id=:j "
                                    "AND outcome='reclaimed_dead_worker'"), {"j": job}).scalar_one()
        assert crashes >= 5


def test_sigterm_finishes_the_task_in_hand_and_releases_the_rest(engine, db_url, photo_dir):
    """`curation worker` gets SIGTERM while a worker holds three leases: the one it is processing
    completes, the two it has not started go back to ready with their attempt refunded."""
    import subprocess
    import sys

    job = _slow_job(engine, photo_dir, chunk=1, sleep_s=5.0)  # margin for the stop to arrive under load
    env = dict(os.environ, CURATION_DATABASE_URL=db_url)
    proc = subprocess.Popen(
        [sys.executable, "-m", "curation.cli", "worker", "--stages", "tests.stages:SlowProbe", "--workers", "1",
         "--claim-batch", "3"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            with engine.connect() as conn:
                leased = conn.execute(text("SELECT count(*) FROM tasks WHERE state='leased'")).scalar_one()
            if leased == 3:
                break
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() else "timeout"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    with engine.connect() as conn:
        outcomes = sorted(conn.execute(text("SELECT outcome FROM task_attempts WHERE job_id=:j"), {"j": job}).scalars())
        assert outcomes == ["ok", "released", "released"], outcomes
        assert conn.execute(text("SELECT count(*) FROM tasks WHERE state='leased'")).scalar_one() == 0
        assert conn.execute(text("SELECT count(*) FROM tasks WHERE attempt > 0")).scalar_one() == 0
        assert conn.execute(text("SELECT count(*) FROM probe_results")).scalar_one() == 1
        assert conn.execute(text("SELECT count(*) FROM workers WHERE stopped_at IS NULL")).scalar_one() == 0


def test_terminated_connections_are_survived(engine, db_url, ray_local, photo_dir):
    """`pg_terminate_backend` on every worker connection, five times during the job (broker design
    test B7): workers reconnect with back-off, nothing is lost or doubled."""
    job = _slow_job(engine, photo_dir, sleep_s=1.0)  # ~8 s of work: room for several rounds
    kills: list[int] = []
    last = [0.0]

    def terminate_worker_connections():
        if len(kills) >= 5 or time.monotonic() - last[0] < 0.8:
            return
        last[0] = time.monotonic()
        with engine.connect() as conn:
            n = conn.execute(text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                  "WHERE application_name LIKE 'curation-%' AND pid <> pg_backend_pid()")).scalar_one()
        kills.append(n)

    run_until_done(engine, db_url, job, {"tests.stages:SlowProbe": 2, "resolution": 1},
                   on_tick=terminate_worker_connections)
    assert len(kills) >= 3 and sum(kills) > 0, kills
    outcome = assert_exactly_one_outcome(engine, job, "tests.stages:SlowProbe", "probe_results", ProbeStage.stage_version())
    assert set(outcome.values()) == {"ok"}
    assert_exactly_one_outcome(engine, job, "resolution", "resolution_results", "resolution@1")
