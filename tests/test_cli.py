"""The command line against a real database: query (read-only, table/CSV/JSON), status, cancel, retry,
export. Workers run in-process here (the same StageWorker the Ray actors run)."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys

from sqlalchemy import text

from curation.sample_media import write_broken_files
from tests.helpers import submit_spec
from workers.runtime import StageWorker


def cli(db_url, *args, check=True):
    env = dict(os.environ, CURATION_DATABASE_URL=db_url, COLUMNS="200")
    proc = subprocess.run([sys.executable, "-m", "curation.cli", *args], capture_output=True, text=True, env=env)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def probe_job(engine, photo_dir, skimage_dir) -> int:
    write_broken_files(photo_dir, skimage_dir / "rocket.jpg")
    return submit_spec(engine, {"name": "cli", "modality": "image", "source": {"uri": str(photo_dir)},
                                "stages": [{"name": "probe"}], "chunk_size": 8})


def drain(db_url, stage="probe"):
    worker = StageWorker(db_url, stage)
    return worker.run(idle_exit_s=0.5)


def test_help_documents_every_verb(db_url):
    out = cli(db_url, "--help").stdout
    for verb in ("submit", "run", "status", "cancel", "retry", "query", "export", "worker", "demo", "db"):
        assert verb in out
    assert "--wait" in cli(db_url, "submit", "--help").stdout
    assert "--address" in cli(db_url, "worker", "--help").stdout


def test_query_is_read_only_with_formats_and_timeout(engine, db_url, photo_dir, skimage_dir):
    job = probe_job(engine, photo_dir, skimage_dir)
    stats = drain(db_url)
    assert stats["item_errors"] == 4 and stats["items_ok"] == len(list(photo_dir.iterdir())) - 4
    sql = "SELECT asset_id, format, width, height FROM curated_images WHERE decoded ORDER BY asset_id"
    rows = list(csv.DictReader(io.StringIO(cli(db_url, "query", sql, "--format", "csv").stdout)))
    assert len(rows) == stats["items_ok"] and {"asset_id", "format", "width", "height"} == set(rows[0])
    data = json.loads(cli(db_url, "query", sql, "-f", "json").stdout)
    assert data[0]["asset_id"] == int(rows[0]["asset_id"])
    table = cli(db_url, "query", sql, "--limit", "3").stdout
    assert "3 row(s)" in table
    refused = cli(db_url, "query", "DELETE FROM assets", check=False)
    assert refused.returncode != 0 and "read-only" in refused.stderr
    slow = cli(db_url, "query", "SELECT pg_sleep(5)", "--timeout", "0.5", check=False)
    assert slow.returncode != 0 and "statement timeout" in slow.stderr
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM assets")).scalar_one() > 0
    status = cli(db_url, "status", str(job)).stdout
    assert "completed" in status and "decompression_bomb" in status and "listed" in status


def test_retry_reruns_only_failed_items(engine, db_url, photo_dir, skimage_dir):
    job = probe_job(engine, photo_dir, skimage_dir)
    drain(db_url)
    # the user fixes the truncated file, then retries the job
    (photo_dir / "broken_truncated.jpg").write_bytes((skimage_dir / "rocket.jpg").read_bytes())
    out = cli(db_url, "retry", str(job)).stdout
    assert "4 failed item(s) re-enqueued" in out
    with engine.connect() as conn:
        assert conn.execute(text("SELECT status FROM jobs")).scalar_one() == "running"
        (queued,) = conn.execute(text("SELECT asset_ids FROM tasks")).scalars().all()
        assert len(queued) == 4
    stats = drain(db_url)
    assert stats["items_ok"] == 1 and stats["item_errors"] == 3
    with engine.connect() as conn:
        assert conn.execute(text("SELECT status FROM jobs")).scalar_one() == "completed"
        assert conn.execute(text("SELECT count(*) FROM item_errors")).scalar_one() == 3


def test_cancel_removes_queued_work(engine, db_url, photo_dir, skimage_dir):
    job = probe_job(engine, photo_dir, skimage_dir)
    assert "cancelled" in cli(db_url, "cancel", str(job)).stdout
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM tasks")).scalar_one() == 0
        assert conn.execute(text("SELECT status FROM jobs")).scalar_one() == "cancelled"
    assert cli(db_url, "cancel", str(job), check=False).returncode != 0


def test_export_command_writes_buckets(engine, db_url, photo_dir, skimage_dir, tmp_path):
    job = submit_spec(engine, {"name": "x", "modality": "image", "source": {"uri": str(photo_dir)},
                               "stages": [{"name": "probe"}, {"name": "resolution"}]})
    drain(db_url, "probe")
    drain(db_url, "resolution")
    out = cli(db_url, "export", str(job), "--where", "bucket IS NOT NULL", "--output", str(tmp_path / "o")).stdout
    assert "rows in" in out
    buckets = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert buckets == ["1024", "256", "512"]
    first = sorted(p.name for p in (tmp_path / "o").rglob("*.parquet"))
    again = cli(db_url, "export", str(job), "--where", "bucket IS NOT NULL", "--output", str(tmp_path / "o"),
                check=False)
    assert again.returncode != 0 and "already holds" in again.stderr  # never mixes two exports
    cli(db_url, "export", str(job), "--where", "bucket = 512", "--output", str(tmp_path / "o"), "--overwrite")
    second = sorted(p.relative_to(tmp_path / "o").parts[0] for p in (tmp_path / "o").rglob("*.parquet"))
    assert second == ["512"] and len(first) == 3
    bad = cli(db_url, "export", str(job), "--where", "nonsense_column = 1", "--output", str(tmp_path / "p"),
              check=False)
    assert bad.returncode != 0 and "nonsense_column" in bad.stderr
