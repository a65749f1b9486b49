"""The Ray supervisor's demand-driven pools: the sizing function, the queue it reads, a job with more
stages than the cluster has CPUs for, and SIGTERM while an actor can never be scheduled."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.helpers import assert_exactly_one_outcome, job_state, submit_spec
from workers.probe import ProbeStage
from workers.supervisor import StageLoad, read_queue, size_pools

CPU = {"CPU": 1.0}


def load(queued_items: int, *, tasks: int | None = None, running: int = 0) -> StageLoad:
    tasks = queued_items if tasks is None else tasks
    return StageLoad(queued_tasks=tasks, queued_items=queued_items, running_tasks=running, running_items=running)


# --- sizing: a pure function ------------------------------------------------------------------------


def test_every_stage_with_work_gets_one_actor_even_on_a_full_cluster():
    got = size_pools({"probe": load(100), "edges": load(5), "phash": StageLoad()},
                     {}, {s: CPU for s in ("probe", "edges", "phash")}, {"CPU": 1.0}, {"probe": 8, "edges": 8, "phash": 8})
    assert got == {"probe": 1, "edges": 1, "phash": 0}


def test_extra_actors_follow_queued_work_times_seconds_per_item_within_the_cluster():
    # probe: 400 items x 0.1 s = 40 s of work; edges: 100 items x 1 s = 100 s: edges drains slowest
    loads = {"probe": load(400, tasks=50), "edges": load(100, tasks=50)}
    got = size_pools(loads, {"probe": 0.1, "edges": 1.0}, {"probe": CPU, "edges": CPU}, {"CPU": 6.0},
                     {"probe": 8, "edges": 8})
    assert sum(got.values()) == 6
    # water-filling: 100/4 = 25 s per edges actor vs 40/2 = 20 s per probe actor
    assert got == {"probe": 2, "edges": 4}


def test_pool_maximum_task_count_and_short_queues_bound_the_extras():
    loads = {"a": load(1000, tasks=3), "b": load(1000, tasks=100), "c": load(5, tasks=5)}
    got = size_pools(loads, {"a": 1.0, "b": 1.0, "c": 1.0}, {s: CPU for s in "abc"}, {"CPU": 64.0},
                     {"a": 8, "b": 4, "c": 8}, min_drain_s=10.0)
    assert got["a"] == 3  # no more actors than tasks
    assert got["b"] == 4  # the spec's `workers:`
    assert got["c"] == 1  # 5 s of work: another actor would idle before it is warm


def test_unmeasured_stages_use_the_mean_of_the_measured_ones():
    loads = {"fast": load(100), "new": load(100)}
    got = size_pools(loads, {"fast": 0.5}, {"fast": CPU, "new": CPU}, {"CPU": 4.0}, {"fast": 8, "new": 8})
    assert got == {"fast": 2, "new": 2}


def test_gpu_stages_are_sized_by_gpus_and_cpu_stages_keep_the_cpus():
    need = {"clip": {"CPU": 1.0, "GPU": 1.0}, "probe": {"CPU": 1.0}}
    loads = {"clip": load(1000, tasks=100), "probe": load(1000, tasks=100)}
    got = size_pools(loads, {"clip": 1.0, "probe": 1.0}, need, {"CPU": 16.0, "GPU": 2.0}, {"clip": 16, "probe": 16})
    assert got == {"clip": 2, "probe": 14}
    # no GPU at all: the GPU stage still gets its one actor (it waits, and says so), nothing more
    got = size_pools(loads, {"clip": 1.0, "probe": 1.0}, need, {"CPU": 16.0}, {"clip": 16, "probe": 16})
    assert got == {"clip": 1, "probe": 15}


def test_memory_counts_like_any_other_resource():
    need = {"big": {"CPU": 1.0, "memory": 8 * 2.0**30}}
    got = size_pools({"big": load(1000, tasks=100)}, {"big": 1.0}, need, {"CPU": 16.0, "memory": 20 * 2.0**30},
                     {"big": 16})
    assert got == {"big": 2}


# --- the queue it reads -------------------------------------------------------------------------------


def test_read_queue_counts_waiting_and_leased_tasks_per_stage_and_job(engine, photo_dir):
    from curation.broker import Broker

    job = submit_spec(engine, {"name": "q", "modality": "image", "source": {"uri": str(photo_dir)},
                               "stages": [{"name": "probe"}, {"name": "resolution"}], "chunk_size": 4})
    n_items = len(list(photo_dir.iterdir()))
    n_tasks = -(-n_items // 4)
    broker = Broker(engine)
    worker = broker.register_worker("probe", "test", os.getpid())
    [lease] = broker.claim(worker, "probe", 1)
    with engine.connect() as conn:
        got = read_queue(conn, ["probe", "resolution"], [job])
        other_job = read_queue(conn, ["probe"], [job + 1])
        every_job = read_queue(conn, ["probe"])
    assert got["probe"] == StageLoad(n_tasks - 1, n_items - len(lease.asset_ids), 1, len(lease.asset_ids))
    assert got["resolution"] == StageLoad() and not got["resolution"].has_work
    assert other_job["probe"] == StageLoad()
    assert every_job["probe"] == got["probe"]
    # a retry backing off for an hour is not work for now
    with engine.begin() as conn:
        conn.execute(text("UPDATE tasks SET state = 'scheduled', run_after = now() + interval '1 hour' "
                          "WHERE state = 'ready'"))
        later = read_queue(conn, ["probe"], [job])
    assert later["probe"].queued_tasks == 0 and later["probe"].running_tasks == 1


# --- on a real Ray ------------------------------------------------------------------------------------

IMAGE_STAGES = ["probe", "resolution", "phash", "edges"]


def _worker(db_url: str, stages: list[str], log: Path, *, num_cpus: int | None = None) -> subprocess.Popen:
    """`curation worker --stages ...` in a process of its own (output to ``log``), on a local Ray of
    ``num_cpus`` CPUs."""
    argv = ["worker", "--stages", ",".join(stages)]
    code = "from curation.cli import app\n"
    if num_cpus is not None:
        code = f"from workers.supervisor import ray_init\nray_init(None, num_cpus={num_cpus})\n" + code
    code += f"app({argv!r})\n"
    env = dict(os.environ, CURATION_DATABASE_URL=db_url)
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=out, stderr=subprocess.STDOUT)


def _sigterm(proc: subprocess.Popen, log: Path, bound_s: float) -> tuple[str, float]:
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=bound_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"`curation worker` still running {bound_s:.0f} s after SIGTERM:\n{_tail(log)}")
    return log.read_text(), time.monotonic() - t0


def _tail(log: Path) -> str:
    return log.read_text()[-4000:]


@pytest.mark.slow
def test_a_job_with_more_stages_than_cpus_completes(engine, db_url, photo_dir, tmp_path):
    """Four stages (3.5 CPUs of actors) on a 2-CPU Ray: the pools of drained stages give their CPUs
    back, so the later stages get actors and the job completes (issue 14 §6)."""
    job = submit_spec(engine, {"name": "tight", "modality": "image", "source": {"uri": str(photo_dir)},
                               "stages": [{"name": s} for s in IMAGE_STAGES], "chunk_size": 3,
                               "fuse_cpu_stages": False})  # a pool per stage (fused, they are one pool)
    log = tmp_path / "worker.log"
    proc = _worker(db_url, IMAGE_STAGES, log, num_cpus=2)
    try:
        deadline = time.monotonic() + 600  # a guard against a hang, not a measurement
        while job_state(engine, job) == "running":
            if proc.poll() is not None:
                pytest.fail(f"`curation worker` exited:\n{_tail(log)}")
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"job still running after 600 s:\n{_tail(log)}")
            time.sleep(1.0)
        out, _ = _sigterm(proc, log, 60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-4000:]
    assert job_state(engine, job) == "completed"
    probe = assert_exactly_one_outcome(engine, job, "probe", "probe_results", ProbeStage.stage_version())
    assert set(probe.values()) == {"ok"}
    with engine.connect() as conn:
        edges = conn.execute(text("SELECT count(*) FROM edge_results")).scalar_one()
        big = conn.execute(text("SELECT count(*) FROM resolution_results WHERE short_side >= 256")).scalar_one()
        assert edges == big > 0
        assert conn.execute(text("SELECT count(*) FROM workers WHERE stopped_at IS NULL")).scalar_one() == 0
    assert "pool scaled to zero" in out, out[-4000:]


@pytest.mark.slow
def test_sigterm_stops_the_worker_while_an_actor_can_never_be_scheduled(engine, db_url, photo_dir, tmp_path):
    """The second stage's actor asks for more CPUs than the cluster has: it stays pending. The first
    stage still runs (nothing waits on the pending actor), and SIGTERM ends `curation worker` promptly."""
    unplaceable = "tests.stages:UnplaceableEdges"
    job = submit_spec(engine, {"name": "stuck", "modality": "image", "source": {"uri": str(photo_dir)},
                               "stages": [{"name": "probe"}, {"name": unplaceable}], "chunk_size": 4})
    log = tmp_path / "worker.log"
    proc = _worker(db_url, [unplaceable, "probe"], log, num_cpus=2)  # the unschedulable pool first
    try:
        deadline = time.monotonic() + 300
        while True:
            with engine.connect() as conn:
                left = dict(conn.execute(text("SELECT stage, count(*) FROM tasks WHERE job_id = :j GROUP BY stage"),
                                         {"j": job}).all())
            if left and set(left) == {unplaceable}:
                break  # probe drained; the rest waits for an actor that cannot be placed
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"probe did not drain: {left}\n{_tail(log)}")
            time.sleep(0.5)
        time.sleep(3)  # a few supervisor polls with the pending actor
        out, took = _sigterm(proc, log, 60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-4000:]
    assert took < 60
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM tasks WHERE state = 'leased'")).scalar_one() == 0
        assert conn.execute(text("SELECT count(*) FROM workers WHERE stopped_at IS NULL")).scalar_one() == 0
        # its actor never started (so never registered) ...
        assert conn.execute(text("SELECT count(*) FROM workers WHERE stage = :u"), {"u": unplaceable}).scalar_one() == 0
    assert job_state(engine, job) == "running"  # its edges tasks wait for a worker that fits
