"""Beyond one machine (issue 13 §5): a real three-node Ray cluster on this host — `ray start --head`
plus two `ray start --address` nodes, each its own process tree — `curation worker --address` on it,
the demo's image stages on ~40 real photos across the nodes, and a worker node lost mid-job (SIGKILL of
its raylet and every process it started). The job completes, every asset has exactly one outcome per
stage, no result is doubled, and the lost task is redone on another node."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from curation.sample_media import write_broken_files
from tests.helpers import assert_exactly_one_outcome, job_state, submit_spec
from tests.ray_nodes import RayNodes
from workers.edges import EdgesStage
from workers.phash import PhashStage
from workers.probe import ProbeStage
from workers.resolution import ResolutionStage

pytestmark = pytest.mark.slow

STAGES = (ProbeStage, ResolutionStage, PhashStage, EdgesStage)


@pytest.fixture
def ray_nodes():
    nodes = RayNodes(workers=2, num_cpus=1)
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.shutdown()


@pytest.fixture
def forty_photos(tmp_path, skimage_dir, debian_photos) -> Path:
    """The scikit-image photos, twelve 1.3–4 Mpx mate-backgrounds wallpapers and four broken files."""
    d = tmp_path / "photos"
    d.mkdir()
    for p in sorted(skimage_dir.iterdir()):
        if p.suffix in (".png", ".jpg"):
            shutil.copyfile(p, d / f"skimage_{p.name}")
    for p in [p for p in debian_photos["mate"] if not p.name.startswith("Elephants")][:12]:
        shutil.copyfile(p, d / f"mate_{p.name}")
    write_broken_files(d, skimage_dir / "rocket.jpg")
    return d


def _outcomes(conn, job: int, stage) -> dict[int, int]:
    """Result rows + item-error rows per asset of ``job`` at ``stage`` (assets with neither are absent)."""
    rows = conn.execute(text(f"""
        SELECT o.asset_id, count(*) FROM (
            SELECT asset_id FROM {stage.result_table} WHERE stage_version = :v
            UNION ALL SELECT asset_id FROM item_errors WHERE stage = :s AND stage_version = :v) o
        JOIN job_assets ja ON ja.asset_id = o.asset_id AND ja.job_id = :j
        GROUP BY o.asset_id"""), {"v": stage.stage_version(), "s": stage.name, "j": job}).all()
    return dict(rows)


def _tail(log: Path) -> str:
    return log.read_text()[-4000:]


def test_a_job_survives_losing_a_ray_worker_node(engine, db_url, ray_nodes, forty_photos, tmp_path):
    n_assets = len(list(forty_photos.iterdir()))
    job = submit_spec(engine, {"name": "multinode", "modality": "image", "source": {"uri": str(forty_photos)},
                               "stages": [{"name": s.name} for s in STAGES], "chunk_size": 1, "max_attempts": 5,
                               # a pool per stage: the stages' actors spread over the three 1-CPU nodes and
                               # several tasks are in flight at once (fused, the group's one pool drains 40
                               # photos before a second actor would pay off, so it never gets one)
                               "fuse_cpu_stages": False})
    log = tmp_path / "worker.log"
    env = dict(os.environ, **ray_nodes.env, CURATION_DATABASE_URL=db_url)
    t_start = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "curation.cli", "worker", "--address", ray_nodes.address,
                                 "--stages", ",".join(s.name for s in STAGES)],
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    node_of_worker: dict[int, str] = {}  # worker_id -> node name, read while its process lives
    killed: dict = {}
    try:
        deadline = time.monotonic() + 600  # a guard against a hang, not a measurement
        while job_state(engine, job) == "running":
            if proc.poll() is not None:
                pytest.fail(f"`curation worker` exited:\n{_tail(log)}")
            if time.monotonic() > deadline:
                pytest.fail(f"job still running after 600 s:\n{_tail(log)}")
            with engine.connect() as conn:
                for worker_id, pid in conn.execute(text("SELECT worker_id, pid FROM workers WHERE stopped_at IS NULL")):
                    if worker_id not in node_of_worker and (node := ray_nodes.node_of(pid)):
                        node_of_worker[worker_id] = node
                done = conn.execute(text("SELECT count(*) FROM task_attempts WHERE job_id = :j AND outcome = 'ok'"),
                                    {"j": job}).scalar_one()
                left = conn.execute(text("SELECT count(*) FROM tasks WHERE job_id = :j"), {"j": job}).scalar_one()
                leased = conn.execute(text("SELECT task_id, lease_owner FROM tasks WHERE job_id = :j "
                                           "AND state = 'leased'"), {"j": job}).all()
            victim = next(((t, w) for t, w in leased if node_of_worker.get(w, "head") != "head"), None)
            if not killed and done >= 2 and left >= 4 and victim is not None:
                # some tasks done, some left, one in a worker node's hands: lose that node
                task_id, worker_id = victim
                with engine.connect() as conn:
                    killed["at"] = conn.execute(text("SELECT clock_timestamp()")).scalar_one()
                killed.update(task=task_id, worker=worker_id, node=node_of_worker[worker_id], done=done, left=left,
                              processes=ray_nodes.kill_node(node_of_worker[worker_id]), t=time.monotonic())
                # the victim may have been completed between the look-up and the kill: follow a task that the
                # dead node's workers still hold after it, if there is one (the checks below are about it)
                with engine.connect() as conn:
                    held = [(t, w) for t, w in conn.execute(text(
                        "SELECT task_id, lease_owner FROM tasks WHERE job_id = :j AND state = 'leased' "
                        "ORDER BY task_id"), {"j": job}) if node_of_worker.get(w) == killed["node"]]
                if held and (task_id, worker_id) not in held:
                    killed.update(task=held[0][0], worker=held[0][1])
            time.sleep(0.2)
        t_end = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail(f"`curation worker` still running 120 s after SIGTERM:\n{_tail(log)}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = log.read_text()
    assert proc.returncode == 0, out[-4000:]
    assert killed, f"no worker node was caught holding a task (workers seen: {node_of_worker}):\n{out[-4000:]}"
    assert job_state(engine, job) == "completed"

    # 0 lost, 0 doubled: every asset has exactly one outcome at every stage it reached
    probe = assert_exactly_one_outcome(engine, job, "probe", "probe_results", ProbeStage.stage_version())
    assert len(probe) == n_assets
    assert sorted(v for v in probe.values() if v != "ok") == sorted(
        ["corrupt_media", "empty_file", "not_an_image", "decompression_bomb"])
    with engine.connect() as conn:
        for stage in STAGES:
            dup = conn.execute(text(f"SELECT count(*) - count(DISTINCT asset_id) FROM {stage.result_table}")).scalar_one()
            assert dup == 0, f"{stage.result_table}: {dup} doubled rows"
        big = conn.execute(text("SELECT count(*) FROM resolution_results WHERE short_side >= 256")).scalar_one()
        assert conn.execute(text("SELECT count(*) FROM edge_results")).scalar_one() == big > 0
        # the lost task: reclaimed from the dead worker, then done once by a worker on another node
        attempts = conn.execute(text("SELECT outcome, worker_id, ended_at FROM task_attempts WHERE task_id = :t "
                                     "ORDER BY attempt_id"), {"t": killed["task"]}).all()
        assert attempts[0].outcome == "reclaimed_dead_worker" and attempts[0].worker_id == killed["worker"], attempts
        assert attempts[-1].outcome == "ok" and [a.outcome for a in attempts].count("ok") == 1, attempts
        assert node_of_worker.get(attempts[-1].worker_id) != killed["node"]
        # the work really was spread: tasks completed by workers on at least two nodes, one on a worker node
        ok_workers = conn.execute(text("SELECT DISTINCT worker_id FROM task_attempts WHERE job_id = :j "
                                       "AND outcome = 'ok'"), {"j": job}).scalars().all()
        ok_nodes = {node_of_worker.get(w) for w in ok_workers}
        assert len(ok_nodes) >= 2 and ok_nodes - {"head"}, (ok_nodes, node_of_worker)
        ray_node_ids = conn.execute(text("SELECT count(DISTINCT ray_node_id) FROM workers "
                                         "WHERE worker_id = ANY(:w)"), {"w": list(ok_workers)}).scalar_one()
        assert ray_node_ids == len(ok_nodes)
        assert conn.execute(text("SELECT count(*) FROM workers WHERE stopped_at IS NULL")).scalar_one() == 0
        # the later stages: exactly one outcome for each asset that reached them, none for the others
        decoded = {a for a, o in probe.items() if o == "ok"}
        big_ids = set(conn.execute(text("SELECT asset_id FROM resolution_results WHERE short_side >= 256")).scalars())
        for stage, reached in ((ResolutionStage, decoded), (PhashStage, big_ids), (EdgesStage, big_ids)):
            assert _outcomes(conn, job, stage) == {a: 1 for a in reached}, stage.name

    reclaim_s = (attempts[0].ended_at - killed["at"]).total_seconds()
    redone_s = (attempts[-1].ended_at - killed["at"]).total_seconds()
    with engine.connect() as conn:
        per_node: dict[str, int] = {}
        for worker_id, n in conn.execute(text("SELECT worker_id, count(*) FROM task_attempts WHERE job_id = :j "
                                              "AND outcome = 'ok' GROUP BY worker_id"), {"j": job}):
            node = node_of_worker.get(worker_id, "?")
            per_node[node] = per_node.get(node, 0) + n
    print(f"\nmultinode: tasks done per node {per_node}")
    print(f"multinode: {n_assets} assets, job wall {t_end - t_start:.1f} s; killed {killed['node']} "
          f"({killed['processes']} processes) with {killed['done']} tasks done, {killed['left']} left; "
          f"lease reclaimed {reclaim_s:.1f} s after the kill, task redone {redone_s:.1f} s after; "
          f"job finished {t_end - killed['t']:.1f} s after")
