"""``curation metrics``: the Prometheus exposition agrees with SQL counts while a small job waits in the
queue and after its stages ran."""

from __future__ import annotations

import shutil
import time

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from curation.metrics import exposition
from tests.helpers import submit_spec

PHOTOS = ("astronaut.png", "rocket.jpg", "coffee.png", "chelsea.png")


def scrape(engine) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(exposition(engine).decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_agree_with_sql(engine, db_url, skimage_dir, tmp_path):
    from workers.runtime import StageWorker

    folder = tmp_path / "photos"
    folder.mkdir()
    for name in PHOTOS:
        shutil.copyfile(skimage_dir / name, folder / name)
    (folder / "broken.png").write_bytes(b"\x89PNG not an image")
    job_id = submit_spec(engine, {"name": "metrics", "modality": "image", "source": {"uri": str(folder)},
                                  "stages": [{"name": "probe"}, {"name": "resolution"}], "chunk_size": 2})
    m = scrape(engine)
    with engine.connect() as conn:
        queued = conn.execute(text("SELECT sum(cardinality(asset_ids)) FROM tasks WHERE stage = 'probe' "
                                   "AND state = 'ready'")).scalar_one()
    assert queued == len(PHOTOS) + 1
    assert m[("curation_queue_items", (("stage", "probe"), ("state", "ready")))] == queued
    assert m[("curation_oldest_ready_age_seconds", (("stage", "probe"),))] >= 0
    assert m[("curation_jobs", (("status", "running"),))] == 1
    assert ("curation_table_dead_tuples", (("table", "tasks"),)) in m
    assert m[("curation_oldest_transaction_age_seconds", ())] >= 0

    for stage in ("probe", "resolution"):
        StageWorker(db_url, stage, sweep=False).run(idle_exit_s=0.5)
    m = scrape(engine)
    with engine.connect() as conn:
        probed = conn.execute(text("SELECT count(*) FROM probe_results")).scalar_one()
        errors = conn.execute(text("SELECT count(*) FROM item_errors WHERE stage = 'probe'")).scalar_one()
        left = conn.execute(text("SELECT count(*) FROM tasks WHERE job_id = :j"), {"j": job_id}).scalar_one()
        resolved = conn.execute(text("SELECT count(*) FROM resolution_results")).scalar_one()
    assert (probed, errors, left) == (len(PHOTOS), 1, 0)
    assert m[("curation_items_total", (("outcome", "ok"), ("stage", "probe")))] == probed
    assert m[("curation_items_total", (("outcome", "error"), ("stage", "probe")))] == errors
    assert m[("curation_items_total", (("outcome", "ok"), ("stage", "resolution")))] == resolved
    assert m[("curation_items_per_second", (("outcome", "ok"), ("stage", "probe")))] == probed / 60.0
    assert m[("curation_stage_seconds_per_item", (("stage", "probe"),))] > 0
    assert sum(v for (n, lab), v in m.items() if n == "curation_item_errors" and ("stage", "probe") in lab) == errors

    # tasks is partitioned by stage (migration 0023): the finished tasks' deleted rows are dead tuples of its
    # partitions, and the metric adds them up (the parent itself never has any)
    def partitions_dead() -> int:
        with engine.connect() as conn:
            return conn.execute(text(
                "SELECT coalesce(sum(s.n_dead_tup), 0) FROM pg_partition_tree('tasks') p "
                "JOIN pg_stat_user_tables s ON s.relid = p.relid WHERE p.isleaf")).scalar_one()

    for _ in range(50):  # other backends' statistics reach the views within about a second
        if partitions_dead() > 0:
            break
        time.sleep(0.2)
    dead = partitions_dead()
    assert dead > 0
    assert scrape(engine)[("curation_table_dead_tuples", (("table", "tasks"),))] == dead
    assert not any(n == "curation_queue_items" for n, _ in m)  # the queue is empty


def test_metrics_cli_prints_the_exposition(engine, db_url, monkeypatch):
    from typer.testing import CliRunner

    from curation.cli import app

    monkeypatch.setenv("CURATION_DATABASE_URL", db_url)
    result = CliRunner().invoke(app, ["metrics"])
    assert result.exit_code == 0, result.output
    assert "# TYPE curation_oldest_transaction_age_seconds gauge" in result.output
