"""The drained-job check's index (issue 14 §4, claim latency): ``tasks_job_idx`` becomes ``(job_id, task_id)``
instead of ``(job_id)``.

Every completion asks, right after its commit, whether its job has any task left (the broker's drained-job
check). With ``(job_id)`` alone the planner answered it for a job of many tasks with the first row of a
sequential scan of the stage's partition, and the head of a hot queue's heap is the tasks already completed
(deleted, not yet vacuumed): the scan read every page of them before the first live row (0.5 ms and 470
pages after 4,000 completions, growing until the next vacuum). With ``task_id`` in the key the check asks
for the job's newest task (``ORDER BY task_id DESC LIMIT 1``): a backward index-only probe per partition
that finds a live tail row at once (0.04 ms, 5 pages). The index still serves every ``job_id = ...``
lookup (its leading column), so it replaces the old one rather than joining it: a claim (an UPDATE that
changes ``state``, never HOT) still inserts into as many indexes as before.

``CREATE INDEX`` on the partitioned ``tasks`` builds it on every partition and blocks writes to ``tasks``
while it runs (the hot queue is small: seconds); partitions attached later get it from the parent.

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-01
"""

from alembic import op

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("DROP INDEX tasks_job_idx")
    op.execute("CREATE INDEX tasks_job_idx ON tasks (job_id, task_id)")


def downgrade() -> None:
    op.execute("DROP INDEX tasks_job_idx")
    op.execute("CREATE INDEX tasks_job_idx ON tasks (job_id)")
