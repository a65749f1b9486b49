"""Job control (``curation.jobs``) against a real database: the typed spec loaded once, unknown ids,
cancel, retry and the funnel of a job that has not run."""

from __future__ import annotations

import pytest
from PIL import Image
from sqlalchemy import text

from curation import jobs
from curation.spec import JobSpec
from tests.helpers import submit_spec


@pytest.fixture
def job(engine, tmp_path):
    for i in range(3):
        Image.new("RGB", (300 + i, 300)).save(tmp_path / f"{i}.png")
    spec = {"name": "j", "modality": "image", "source": {"uri": str(tmp_path)}, "chunk_size": 2,
            "stages": [{"name": "probe"}, {"name": "resolution", "params": {"min_side": 128}}],
            "export": {"where": "bucket IS NOT NULL", "output": str(tmp_path / "out")}}
    return submit_spec(engine, spec)


def test_load_job_parses_the_spec_once_into_a_job_spec(engine, job):
    got = jobs.load_job(engine, job)
    assert (got.id, got.name, got.status, got.finished_at) == (job, "j", "running", None)
    assert isinstance(got.spec, JobSpec) and got.spec.chunk_size == 2 and got.spec.view == "curated_images"
    assert got.spec.stage_params(1).min_side == 128


def test_an_unknown_job_is_a_lookup_error_that_says_where_to_look(engine):
    for call in (jobs.load_job, jobs.cancel, jobs.retry, jobs.status, jobs.funnel):
        with pytest.raises(LookupError, match=r"no job 999 \(`curation status` lists the jobs\)"):
            call(engine, 999)


def test_cancel_then_cancel_again(engine, job):
    assert jobs.cancel(engine, job) == 2  # 3 files in chunks of 2
    assert jobs.load_job(engine, job).status == "cancelled"
    with pytest.raises(jobs.JobNotRunning, match=f"job {job} is cancelled, not running"):
        jobs.cancel(engine, job)


def test_retry_without_failures_enqueues_nothing(engine, job):
    jobs.cancel(engine, job)
    assert jobs.retry(engine, job) == (0, 0)
    assert jobs.load_job(engine, job).status == "cancelled"


def test_listing_status_and_funnel_of_a_queued_job(engine, job):
    (summary,) = jobs.list_jobs(engine)
    assert (summary.id, summary.n_assets, summary.status) == (job, 3, "running")
    st = jobs.status(engine, job)
    assert [s.queued for s in st.stages] == [3, 0]
    assert jobs.funnel(engine, job).listed == 3
    assert jobs.export_finished(engine, job) is None  # not completed yet
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM exports")).scalar_one() == 0


def test_export_needs_a_predicate_and_an_output(engine):
    with pytest.raises(jobs.NoExportTarget):
        jobs.export(engine, None, where="bucket IS NOT NULL")


def test_a_completed_job_is_exported_as_its_spec_says(engine, db_url, job, tmp_path):
    from tests.test_cli import drain

    drain(db_url, "probe")
    drain(db_url, "resolution")
    assert jobs.load_job(engine, job).status == "completed"
    result = jobs.export_finished(engine, job)
    assert result is not None and result.n_rows == 3 and result.output == str(tmp_path / "out")
    assert jobs.funnel(engine, job).rows() == [("listed", 3), ("decoded", 3), ("resolution ok", 3), ("unique", 3),
                                               ("exported", 3)]
    assert jobs.item_errors(engine, job) == []
