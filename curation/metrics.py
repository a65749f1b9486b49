"""Prometheus metrics of the broker and the workers, computed from SQL at scrape time (issue 13 §4):
``curation metrics`` prints them, ``curation metrics --listen HOST:PORT`` serves ``/metrics``. Every value
is a query over the tables the broker and the workers already write (``tasks``, ``task_attempts``,
``dead_tasks``, ``item_errors``, ``workers``) and PostgreSQL's statistics views, so a scrape needs no agent
in the workers and always agrees with the database. ``deploy/grafana-dashboard.json`` plots them.

Rates (``*_per_second``) are over the last ``window_s`` seconds (default 60) of ``task_attempts``.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy import Engine, text

HOT_TABLES = ("tasks", "task_attempts", "workers", "dead_tasks", "item_errors", "job_assets", "near_duplicates")
PREFIX = "curation"


class SqlCollector(Collector):
    """One scrape = one read-only transaction of a few aggregate queries."""

    def __init__(self, engine: Engine, *, window_s: float = 60.0, stale_after_s: float = 60.0):
        self.engine = engine
        self.window_s = window_s
        self.stale_after_s = stale_after_s

    def collect(self) -> Iterator:
        w = {"w": self.window_s}
        with self.engine.connect() as conn:
            q = lambda sql, **p: conn.execute(text(sql), p).all()  # noqa: E731

            tasks = GaugeMetricFamily(f"{PREFIX}_queue_tasks", "tasks in the queue", labels=["stage", "state"])
            items = GaugeMetricFamily(f"{PREFIX}_queue_items", "assets in queued tasks", labels=["stage", "state"])
            for r in q("SELECT stage, state, count(*) AS n, coalesce(sum(cardinality(asset_ids)), 0) AS items "
                       "FROM tasks GROUP BY stage, state"):
                tasks.add_metric([r.stage, r.state], r.n)
                items.add_metric([r.stage, r.state], r.items)
            yield tasks
            yield items

            oldest = GaugeMetricFamily(f"{PREFIX}_oldest_ready_age_seconds",
                                       "age of the oldest task ready to claim", labels=["stage"])
            for r in q("SELECT stage, extract(epoch FROM now() - min(run_after)) AS age FROM tasks "
                       "WHERE state = 'ready' AND run_after <= now() GROUP BY stage"):
                oldest.add_metric([r.stage], max(0.0, float(r.age)))
            yield oldest

            done = CounterMetricFamily(f"{PREFIX}_items", "items finished, by outcome (ok: a stored result "
                                       "row; error: an item error)", labels=["stage", "outcome"])
            attempts = CounterMetricFamily(f"{PREFIX}_task_attempts", "task attempts by outcome",
                                           labels=["stage", "outcome"])
            rate = GaugeMetricFamily(f"{PREFIX}_items_per_second", "items finished per second over the window",
                                     labels=["stage", "outcome"])
            claims = GaugeMetricFamily(f"{PREFIX}_claims_per_second", "tasks claimed per second over the window",
                                       labels=["stage"])
            per_item = GaugeMetricFamily(f"{PREFIX}_stage_seconds_per_item",
                                         "wall seconds of a successful attempt per item", labels=["stage"])
            # results are counted in the result tables (a config id starts with its stage's name), errors in
            # item_errors: task_attempts.n_ok is not an item count for every stage
            for table in result_tables():
                for r in q(f"SELECT split_part(config_id, ':', 1) AS stage, count(*) AS n, count(*) FILTER "
                           f"(WHERE created_at > now() - make_interval(secs => :w)) AS n_w FROM {table} GROUP BY 1", **w):
                    done.add_metric([r.stage, "ok"], r.n)
                    rate.add_metric([r.stage, "ok"], r.n_w / self.window_s)
            for r in q("SELECT stage, count(*) AS n, count(*) FILTER (WHERE created_at > now() - "
                       "make_interval(secs => :w)) AS n_w FROM item_errors GROUP BY stage", **w):
                done.add_metric([r.stage, "error"], r.n)
                rate.add_metric([r.stage, "error"], r.n_w / self.window_s)
            for r in q("""
                SELECT stage,
                       count(*) FILTER (WHERE claimed_at > now() - make_interval(secs => :w)) AS claims_w,
                       sum(extract(epoch FROM ended_at - claimed_at)) FILTER (WHERE outcome = 'ok') AS busy,
                       sum(n_items) FILTER (WHERE outcome = 'ok') AS n
                FROM task_attempts GROUP BY stage""", **w):
                claims.add_metric([r.stage], r.claims_w / self.window_s)
                if r.n and r.busy is not None:
                    per_item.add_metric([r.stage], float(r.busy) / r.n)
            for r in q("SELECT stage, outcome, count(*) AS n FROM task_attempts GROUP BY stage, outcome"):
                attempts.add_metric([r.stage, r.outcome], r.n)
            yield from (done, attempts, rate, claims, per_item)

            dead = GaugeMetricFamily(f"{PREFIX}_dead_tasks", "dead-lettered tasks", labels=["stage"])
            dead_items = GaugeMetricFamily(f"{PREFIX}_dead_items", "assets in dead-lettered tasks", labels=["stage"])
            dead_rate = GaugeMetricFamily(f"{PREFIX}_dead_tasks_per_second", "tasks dead-lettered per second "
                                          "over the window", labels=["stage"])
            for r in q("SELECT stage, count(*) AS n, sum(cardinality(asset_ids)) AS items, count(*) FILTER "
                       "(WHERE died_at > now() - make_interval(secs => :w)) AS n_w FROM dead_tasks GROUP BY stage", **w):
                dead.add_metric([r.stage], r.n)
                dead_items.add_metric([r.stage], r.items)
                dead_rate.add_metric([r.stage], r.n_w / self.window_s)
            yield from (dead, dead_items, dead_rate)

            errors = GaugeMetricFamily(f"{PREFIX}_item_errors", "stored item errors", labels=["stage", "error_class"])
            for r in q("SELECT stage, error_class, count(*) AS n FROM item_errors GROUP BY stage, error_class"):
                errors.add_metric([r.stage, r.error_class], r.n)
            yield errors

            alive = GaugeMetricFamily(f"{PREFIX}_workers_alive", "workers not stopped whose heartbeat is fresh",
                                      labels=["stage"])
            lag = GaugeMetricFamily(f"{PREFIX}_heartbeat_lag_seconds", "oldest heartbeat of a running worker",
                                    labels=["stage"])
            for r in q("SELECT stage, count(*) FILTER (WHERE last_heartbeat > now() - make_interval(secs => :s)) "
                       "AS alive, extract(epoch FROM now() - min(last_heartbeat)) AS lag FROM workers "
                       "WHERE stopped_at IS NULL GROUP BY stage", s=self.stale_after_s):
                alive.add_metric([r.stage], r.alive)
                lag.add_metric([r.stage], max(0.0, float(r.lag)))
            yield from (alive, lag)

            jobs = GaugeMetricFamily(f"{PREFIX}_jobs", "jobs by status", labels=["status"])
            for r in q("SELECT status, count(*) AS n FROM jobs GROUP BY status"):
                jobs.add_metric([r.status], r.n)
            yield jobs

            dead_tup = GaugeMetricFamily(f"{PREFIX}_table_dead_tuples",
                                         "n_dead_tup of the hot tables (a partitioned one: summed over its partitions)",
                                         labels=["table"])
            for r in q(_DEAD_TUPLES, t=list(HOT_TABLES)):
                dead_tup.add_metric([r.relname], r.n_dead_tup)
            yield dead_tup

            oldest_xact = GaugeMetricFamily(f"{PREFIX}_oldest_transaction_age_seconds",
                                            "the oldest open transaction of another session on this database")
            age = conn.execute(text(
                "SELECT coalesce(max(extract(epoch FROM now() - xact_start)), 0) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() AND xact_start IS NOT NULL"
            )).scalar_one()
            oldest_xact.add_metric([], max(0.0, float(age)))
            yield oldest_xact


_DEAD_TUPLES = """
    SELECT t.relname, sum(s.n_dead_tup)::bigint AS n_dead_tup
    FROM pg_class t
    JOIN pg_namespace n ON n.oid = t.relnamespace AND n.nspname = current_schema()
    JOIN LATERAL (SELECT relid FROM pg_partition_tree(t.oid) WHERE isleaf) leaf ON true
    JOIN pg_stat_user_tables s ON s.relid = leaf.relid
    WHERE t.relname = ANY(:t)
    GROUP BY t.relname
"""  # tasks and task_attempts are partitioned (migration 0023): their parents hold no rows of their own


def result_tables() -> list[str]:
    """Every built-in stage's result table, once."""
    from workers.stage import builtin_stage_names, get_stage

    return sorted({get_stage(n).result_table for n in builtin_stage_names()})


def registry(engine: Engine, **kwargs) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(SqlCollector(engine, **kwargs))
    return reg


def exposition(engine: Engine, **kwargs) -> bytes:
    """The metrics in Prometheus' text format."""
    from prometheus_client import generate_latest

    return generate_latest(registry(engine, **kwargs))
