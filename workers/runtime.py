"""The worker runtime: long-lived workers that loop claim -> fetch -> process -> commit (run as Ray
actors by ``workers/supervisor.py``, one pool per stage).

- A ``StageWorker`` loads its stage (and its models) once, registers itself in ``workers``, heartbeats
  from a background thread (which also runs the reclaim sweep), and processes tasks until asked to
  stop. Tasks carry asset ids only; the worker fetches the media from storage itself.
- Consecutive light CPU stages of an image job (probe → resolution → phash → edges) run as one fused
  pass per task of the group's first stage: one read and one full decode per file, each stage's rows
  written in the one completion (``fused_refs``, ``_run_fused``; docs/fused-stages.md). Consecutive
  frame-sampled CPU stages of a video job (video_hash → dynamics → video_text) run the same way on one
  decode of each scene's frames (docs/video.md, "One decode per scene").
- Per-item failures (missing object, corrupt file, an exception from the stage on one item) become
  ``item_errors`` rows; the rest of the chunk completes.
- A lost database connection is retried with back-off (``with_reconnect``), so a restarted PostgreSQL
  only pauses the work.
- Stopping (SIGTERM to ``curation worker``/``run``, or ``stop_requested`` in the database): the task in
  hand is finished, leases not yet started are released without using an attempt.
- Completions of consecutive tasks are flushed together in one transaction (``Broker.complete_many``;
  ``BrokerTiming.flush_max_tasks`` / ``flush_max_s``), and the next tasks are claimed before the flush.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
import random
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.dialects.postgresql import insert as pg_insert

from curation import storage
from curation.broker import Broker, Completion, Lease, NextStage
from curation.config import BrokerTiming
from curation.db import make_engine, with_reconnect
from curation.dedup import record_near_duplicates
from curation.embeddings import ensure_hnsw_index
from curation.jobs import load_job
from curation.media import MediaError
from curation.planner import NextTasks, TaskSizing, chunk_by_seconds, plan_next_tasks, window_spans
from curation.result_tables import result_table
from curation.schema import Base
from curation.spec import JobSpec
from curation.storage import StorageError
from workers.allocator import keep_large_blocks
from workers.groups import fused_refs, task_runtime_s
from workers.media_fetch import Media, decode_upright, read_media
from workers.scene_frames import SceneDecode, shared_decodes
from workers.stage import (
    ItemFailure,
    Span,
    Stage,
    StageConfig,
    StageItem,
    get_stage,
    reduced_view,
)

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    completion: Completion
    after: Callable[[], None]  # counters and follow-ups once committed
    finished: float  # time.monotonic() when the task's work ended


@dataclass
class _JobPlan:
    spec: JobSpec
    stage_refs: list[str]


@dataclass
class WorkerStats:
    tasks: int = 0
    items_ok: int = 0
    item_errors: int = 0
    fenced_out: int = 0
    task_failures: int = 0
    released: int = 0
    reused: int = 0  # results taken from a byte-identical copy scored under the same config


def _result_table(stage_cls: type[Stage]):
    return result_table(stage_cls.result_table, stage_cls.result_type,
                        stage_cls.children_field or stage_cls.pairs_field)


def load_results(conn: Connection, stage_cls: type[Stage], asset_ids: Sequence[int],
                 config_ids: Sequence[str]) -> dict[int, Any]:
    """Stored results of ``stage_cls`` under any of ``config_ids`` for the given assets, as result
    objects (the newest where an asset has several)."""
    if not asset_ids or not config_ids:
        return {}
    table = _result_table(stage_cls)
    cols = stage_cls.result_columns()
    rows = conn.execute(
        table.select().where(table.c.asset_id.in_(list(asset_ids)), table.c.config_id.in_(list(config_ids)))
        .order_by(table.c.created_at)
    ).mappings().all()
    return {r["asset_id"]: stage_cls.result_type(**{c: r[c] for c in cols}) for r in rows}


def job_config_ids(conn: Connection, job_id: int, stage_ref: str) -> list[str]:
    """The configurations a job's stage used (``job_configs``, written with the stage's results)."""
    return list(conn.execute(text("SELECT config_id FROM job_configs WHERE job_id = :j AND stage = :s"),
                             {"j": job_id, "s": stage_ref}).scalars())


def failed_items(conn: Connection, asset_ids: Sequence[int], stage_ref: str, stage_version: str) -> set[int]:
    """The assets with an item error at this stage version (skipped until ``curation retry``)."""
    return set(conn.execute(
        text("SELECT asset_id FROM item_errors WHERE asset_id = ANY(:ids) AND stage = :s AND stage_version = :v"),
        {"ids": list(asset_ids), "s": stage_ref, "v": stage_version},
    ).scalars())


def actor_cpus(default: float) -> float:
    """The CPUs Ray gave this actor (``default``, the stage's declared CPUs, outside Ray)."""
    try:
        import ray

        if ray.is_initialized():
            return float(ray.get_runtime_context().get_assigned_resources().get("CPU", default))
    except Exception:  # noqa: BLE001 - running outside Ray
        pass
    return default


def limit_model_threads(cpus: float) -> int:
    """Intra-op threads of torch, OpenCV and the BLAS/OpenMP pools = the actor's CPUs (at least 1): a model
    stage with more threads than CPUs thrashes when the other actors are busy (on 2 cores, torch with 2
    threads under load ran ~50× slower than with 1). Set before the models load (environment) and again
    after each ``setup()`` (model loaders set their own counts). ONNX Runtime sessions (PP-OCRv4, YOLO) read
    it through ``models.device.cpu_threads`` when they are made."""
    n = max(1, int(cpus))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != n:
        torch.set_num_threads(n)
    cv2 = sys.modules.get("cv2")
    if cv2 is not None:
        cv2.setNumThreads(n)
    return n


def next_stage_of(spec: JobSpec, index: int) -> NextStage | None:
    """The stage the survivors of the job's stage ``index - 1`` are enqueued for, with the run time its
    tasks get: that of every stage its task runs (``fused_refs``)."""
    if index >= len(spec.stages):
        return None
    ref = spec.stages[index].name
    return NextStage(ref, get_stage(ref).stage_version(), task_runtime_s(spec, index))


_CONTENT_TWINS = (  # {table}: the stage's result table (a name from the stage class, not user input)
    """
    -- for each asset, another asset with the same content that has a result under the config:
    -- an image by the sha256 of its bytes; a scene by its video's sha256 and its frames
    WITH me AS (
        SELECT a.asset_id, a.kind, a.start_frame, a.end_frame,
               (SELECT p.sha256 FROM probe_results p WHERE p.asset_id = a.asset_id LIMIT 1) AS image_sha,
               (SELECT v.sha256 FROM video_probe_results v
                 WHERE v.asset_id = coalesce(a.parent_id, a.asset_id) LIMIT 1) AS video_sha
        FROM assets a WHERE a.asset_id = ANY(:ids))
    SELECT me.asset_id, donor.asset_id AS donor
    FROM me
    CROSS JOIN LATERAL (
        SELECT o.asset_id FROM probe_results op JOIN assets o ON o.asset_id = op.asset_id
        WHERE me.kind = 'image' AND op.sha256 = me.image_sha AND o.asset_id <> me.asset_id
          AND EXISTS (SELECT 1 FROM {table} r WHERE r.asset_id = o.asset_id AND r.config_id = :c)
        UNION ALL
        SELECT o.asset_id FROM video_probe_results vp JOIN assets o
          ON o.parent_id = vp.asset_id AND o.start_frame = me.start_frame AND o.end_frame = me.end_frame
         AND o.kind = me.kind
        WHERE me.kind IN ('scene', 'window') AND vp.sha256 = me.video_sha AND o.asset_id <> me.asset_id
          AND EXISTS (SELECT 1 FROM {table} r WHERE r.asset_id = o.asset_id AND r.config_id = :c)
        UNION ALL
        SELECT o.asset_id FROM video_probe_results vp JOIN assets o ON o.asset_id = vp.asset_id
        WHERE me.kind = 'video' AND vp.sha256 = me.video_sha AND o.asset_id <> me.asset_id
          AND EXISTS (SELECT 1 FROM {table} r WHERE r.asset_id = o.asset_id AND r.config_id = :c)
        LIMIT 1) donor
    """
)


_TWINS_BY_SHA = (  # {table}: the stage's result table (a name from the stage class, not user input)
    """
    SELECT DISTINCT ON (op.sha256) op.sha256, op.asset_id AS donor
    FROM probe_results op
    WHERE op.sha256 = ANY(:shas) AND op.asset_id <> ALL(:ids)
      AND EXISTS (SELECT 1 FROM {table} r WHERE r.asset_id = op.asset_id AND r.config_id = :c)
    ORDER BY op.sha256, op.asset_id
    """
)


@dataclass
class _Step:
    """One stage of a fused pass and what it has read and computed for the task."""

    ref: str
    stage: Stage
    config: StageConfig
    index: int
    done: dict[int, Any] = dataclasses.field(default_factory=dict)
    failed: set[int] = dataclasses.field(default_factory=set)
    twins: dict[int, Any] = dataclasses.field(default_factory=dict)
    outside: dict[str, dict[int, Any]] = dataclasses.field(default_factory=dict)
    results: dict[int, Any] = dataclasses.field(default_factory=dict)  # what the completion writes


class StageWorker:
    """One worker process for one stage. Used as a Ray actor by the supervisor, or directly.

    It makes one stage instance per distinct params (jobs may differ, e.g. in their CLIP model), calls its
    ``setup()`` once when it makes it and its ``teardown()`` once when it drops it: evicted, beyond
    ``max_stage_instances`` (least recently used first), or when the worker stops."""

    max_stage_instances = 2

    def __init__(
        self,
        database_url: str,
        stage_ref: str,
        *,
        timing: BrokerTiming | None = None,
        claim_batch: int = 1,
        sweep: bool = True,
    ):
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
        self.stage_ref = stage_ref
        self.stage_cls = get_stage(stage_ref)
        self.timing = timing or BrokerTiming.from_env()
        # no pre-ping: every use of this engine (broker calls, task reads) is retried on a lost connection
        # (with_reconnect), so a ping round trip before each claim and completion buys nothing
        self.engine = make_engine(database_url, pool_size=2, application_name=f"curation-{self.stage_cls.name}",
                                  pre_ping=False)
        self.broker = Broker(self.engine, self.timing)
        self.claim_batch = claim_batch
        self._stages: dict[str, tuple[Stage, StageConfig]] = {}
        self._indexed_models: set[tuple[str, str]] = set()  # (table, model)
        self._jobs: dict[int, _JobPlan] = {}
        self._stop = threading.Event()
        self._pending: list[_Pending] = []  # finished tasks whose completion awaits the next flush
        self._last_task_s = 0.0
        self._io_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="fetch")
        self.stats = WorkerStats()
        self._scratch: Path | None = None
        node_id = None
        try:
            import ray

            if ray.is_initialized():
                node_id = ray.get_runtime_context().get_node_id()
        except Exception:  # noqa: BLE001 - running outside Ray
            node_id = None
        self.worker_id = with_reconnect(
            lambda: self.broker.register_worker(stage_ref, socket.gethostname(), os.getpid(), node_id),
            what="register worker",
        )
        self.threads = limit_model_threads(actor_cpus(self.stage_cls.resources.cpus))
        keep_large_blocks()  # no page faults per image for blocks a model allocates and frees (workers/allocator.py)
        self._heartbeat = threading.Thread(target=self._heartbeat_loop, args=(sweep,), daemon=True)
        self._heartbeat.start()

    # --- small accessors used by the supervisor and the tests ------------------------------------

    def info(self) -> dict:
        return {"worker_id": self.worker_id, "pid": os.getpid(), "stage": self.stage_ref}

    def request_stop(self) -> None:
        self._stop.set()

    # --- background: heartbeat + sweep --------------------------------------------------------------

    def _heartbeat_loop(self, sweep: bool) -> None:
        last_sweep = 0.0
        while not self._stop.is_set():
            try:
                if self.broker.heartbeat(self.worker_id):
                    self._stop.set()
                    break
                if sweep and time.monotonic() - last_sweep >= self.timing.sweep_s:
                    last_sweep = time.monotonic()
                    self.broker.sweep()
            except Exception as exc:  # noqa: BLE001 - the database may be restarting; keep trying
                log.warning("heartbeat of worker %s failed: %s", self.worker_id, exc.__class__.__name__)
            self._stop.wait(self.timing.heartbeat_s)

    # --- the loop ---------------------------------------------------------------------------------

    def run(self, *, idle_exit_s: float | None = None) -> dict:
        """Claim and process tasks until stopped (or idle for ``idle_exit_s``). Returns counters.

        Completions are batched: a finished task's completion (results, survivors' enqueue, attempt) is
        held for the next flush, which commits up to ``timing.flush_max_tasks`` of them in one
        transaction (``Broker.complete_many``, each still fenced by its own lease), and the next tasks
        are claimed before it. A completion waits about ``timing.flush_max_s`` at most: the held ones
        are flushed before a task that would take them past that bound (judged by the last task's
        time), when the queue is empty and when the worker stops. If the worker dies first, the held
        tasks are reclaimed and rerun (at-least-once execution; exactly-once effect, as ever). A crash
        charges an attempt to every task the worker held, so a retried task (attempt > 1) runs alone:
        the held completions are flushed and the other claimed tasks given back first — an innocent
        task is charged at most once by a neighbour's crash, and a poison task is charged on its own."""
        idle_since = time.monotonic()
        delay = 0.05
        leases: list[Lease] = []
        try:
            while not self._stop.is_set():
                if not leases:  # claimed before the flush of the tasks just finished
                    leases = with_reconnect(
                        lambda: self.broker.claim(self.worker_id, self.stage_ref, self.claim_batch), what="claim"
                    )
                if not leases:
                    self._flush()
                    if idle_exit_s is not None and time.monotonic() - idle_since > idle_exit_s:
                        break
                    self._stop.wait(delay * (0.5 + random.random()))
                    delay = min(delay * 2, 1.0)
                    continue
                delay = 0.05
                lease = leases.pop(0)
                if lease.attempt > 1 and (self._pending or leases):
                    # a retried task may be the one that killed a worker: it runs alone (held completions
                    # committed, claimed tasks given back), so that a crash charges its attempt only
                    self._flush()
                    self._release(leases)
                    leases = []
                if self._pending and (time.monotonic() - self._pending[0].finished + self._last_task_s
                                      >= self.timing.flush_max_s):
                    self._flush()
                started = time.monotonic()
                self.process_task(lease)
                self._last_task_s = time.monotonic() - started
                idle_since = time.monotonic()
        finally:
            self._stop.set()
            try:
                self._flush()  # finished work first
                self._release(leases, reconnect=False)
            except Exception:  # noqa: BLE001 - the sweep reclaims what is left
                log.warning("worker %s: could not flush or release its tasks on stop", self.worker_id)
            try:
                self.broker.worker_stopped(self.worker_id)
            except Exception:  # noqa: BLE001
                log.warning("could not record the stop of worker %s", self.worker_id)
            while self._stages:
                self._teardown(self._stages.popitem()[1][0])
        return dataclasses.asdict(self.stats)

    def _release(self, leases: list[Lease], *, reconnect: bool = True) -> None:
        """Give claimed, unstarted tasks back (their attempts refunded); ``reconnect`` False on the way
        out: what cannot be released then is left to the reclaim sweep."""
        for rest in leases:
            give_back = lambda rest=rest: self.broker.release(rest, self.worker_id)  # noqa: E731
            if with_reconnect(give_back, what="release") if reconnect else give_back():
                self.stats.released += 1

    def _complete(self, lease: Lease, write: Callable[[Connection], int], after: Callable[[], None],
                  **kw: Any) -> None:
        """Hold the task's completion for the next flush; ``after`` runs once it has committed."""
        self._pending.append(_Pending(Completion(lease, write, **kw), after, time.monotonic()))
        if len(self._pending) >= self.timing.flush_max_tasks:
            self._flush()

    def _flush(self) -> None:
        """Commit the held completions in one transaction. A fenced-out one is counted; one whose
        result write raised is failed (retried with back-off) like any task-level failure."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        outcomes = with_reconnect(
            lambda: self.broker.complete_many([p.completion for p in pending], self.worker_id), what="complete"
        )
        for p, outcome in zip(pending, outcomes):
            lease = p.completion.lease
            if isinstance(outcome, Exception):
                log.error("task %s (%s) failed writing its results: %r", lease.task_id, lease.stage, outcome)
                self.stats.task_failures += 1
                error = f"{outcome.__class__.__name__}: {outcome}"
                with_reconnect(lambda lease=lease, error=error: self.broker.fail(lease, self.worker_id, error),
                               what="fail")
            elif outcome is False:
                self.stats.fenced_out += 1
            else:
                try:
                    p.after()
                except Exception:  # noqa: BLE001 - the task is committed; what follows is best effort
                    log.exception("task %s: after its completion", lease.task_id)

    def _plan(self, job_id: int) -> _JobPlan:
        plan = self._jobs.get(job_id)
        if plan is None:
            spec = load_job(self.engine, job_id).spec
            plan = _JobPlan(spec=spec, stage_refs=[s.name for s in spec.stages])
            self._jobs[job_id] = plan
        return plan

    def _stage_instance(self, plan: _JobPlan, ref: str, capacity: int = 0) -> tuple[Stage, StageConfig, int]:
        """The stage set up for the job's params (once per actor and params) and its configuration;
        ``capacity``: instances to keep at least (a fused pass keeps every stage of its group)."""
        index = plan.stage_refs.index(ref)
        params = plan.spec.stage_params(index)
        key = f"{ref}|{json.dumps(params.model_dump(mode='json'), sort_keys=True)}"
        got = self._stages.pop(key, None)
        if got is None:
            while self._stages and len(self._stages) >= max(self.max_stage_instances, capacity):  # free the old models before loading new ones
                self._teardown(self._stages.pop(next(iter(self._stages)))[0])
            stage = get_stage(ref)(params)
            config = stage.config()
            stage.setup()
            limit_model_threads(self.threads)  # the model loader may have set its own count
            got = (stage, config)
        self._stages[key] = got  # the most recently used last
        return got[0], got[1], index

    @staticmethod
    def _teardown(stage: Stage) -> None:
        """Free what the instance's ``setup()`` loaded; a failing teardown is logged, never fatal (the
        instance is dropped either way)."""
        try:
            stage.teardown()
        except Exception:  # noqa: BLE001 - stage code; the worker goes on
            log.exception("teardown of stage %s failed", stage.name)
        torch = sys.modules.get("torch")  # a stage that ran on a GPU: hand its cached memory back
        if torch is not None and torch.cuda.is_initialized():
            gc.collect()
            torch.cuda.empty_cache()

    def process_task(self, lease: Lease) -> None:
        try:
            plan = with_reconnect(lambda: self._plan(lease.job_id), what="load job")
            group = fused_refs(plan.spec, plan.stage_refs.index(lease.stage))
            if len(group) > 1:
                self._run_fused(lease, plan, group)
            else:
                stage, config, index = self._stage_instance(plan, lease.stage)
                config = with_reconnect(lambda: self._with_inputs(config, stage, plan, lease.job_id),
                                        what="read inputs")
                self._run_stage(lease, plan, stage, config, index)
        except Exception as exc:  # noqa: BLE001 - a task-level failure: retried with back-off
            log.exception("task %s (%s) failed", lease.task_id, lease.stage)
            self.stats.task_failures += 1
            error = f"{exc.__class__.__name__}: {exc}"
            with_reconnect(lambda: self.broker.fail(lease, self.worker_id, error), what="fail")
            return
        self.stats.tasks += 1  # its completion is held for the next flush, which counts a fenced-out one

    def _with_inputs(self, config: StageConfig, stage: Stage, plan: _JobPlan, job_id: int,
                     in_pass: dict[str, str] | None = None) -> StageConfig:
        """``config`` with the job's configurations of the stages it reads (``Stage.requires``) folded in;
        ``in_pass``: stage name -> config id of the stages before it in a fused pass (their
        ``job_configs`` rows are written in the same transaction, as the unfused run would have them)."""
        if not stage.requires:
            return config
        in_pass = in_pass or {}
        with self.engine.connect() as conn:
            inputs = {required: job_config_ids(conn, job_id, self._required_ref(plan, required))
                      for required in stage.requires}
        for required, config_id in in_pass.items():
            if required in inputs and config_id not in inputs[required]:
                inputs[required].append(config_id)
        return dataclasses.replace(config, inputs=inputs)

    @staticmethod
    def _required_ref(plan: _JobPlan, required: str) -> str:
        return next(r for r in plan.stage_refs if get_stage(r).name == required)

    def _inputs(self, conn: Connection, stage: Stage, plan: _JobPlan, job_id: int, asset_ids: Sequence[int]):
        """Each asset's row (uri, parent, span) and the earlier results the stage requires, under the
        configurations the job used for them. A scene's prior comes from the scene itself, else from
        its parent video (e.g. ``video_probe``)."""
        rows = {r.asset_id: r for r in conn.execute(
            text("SELECT asset_id, uri, parent_id, start_frame, end_frame, start_s, end_s FROM assets "
                 "WHERE asset_id = ANY(:ids)"), {"ids": list(asset_ids)}
        )}
        parents = {a: r.parent_id for a, r in rows.items() if r.parent_id is not None}
        lookup = list(asset_ids) + sorted(set(parents.values()))
        priors: dict[str, dict[int, Any]] = {}
        for required in stage.requires:
            ref = self._required_ref(plan, required)
            got = load_results(conn, get_stage(ref), lookup, job_config_ids(conn, job_id, ref))
            priors[required] = {a: got.get(a, got.get(parents.get(a, -1))) for a in asset_ids
                                if a in got or parents.get(a) in got}
        return rows, priors

    def _run_stage(self, lease: Lease, plan: _JobPlan, stage: Stage, config: StageConfig, index: int) -> None:
        ids = list(lease.asset_ids)
        version = stage.stage_version()

        def read_state():
            with self.engine.connect() as conn:
                done = load_results(conn, type(stage), ids, [config.config_id])
                failed = failed_items(conn, ids, lease.stage, version)
                rows, priors = self._inputs(conn, stage, plan, lease.job_id, ids)
                fresh = [a for a in ids if a not in done and a not in failed]
                twins = self._content_twins(conn, stage, config, fresh)
                paired = self._pair_inputs(conn, stage, plan, lease.job_id, fresh)
            return done, failed, rows, priors, twins, paired

        done, failed, rows, priors, twins, paired = with_reconnect(read_state, what="read task inputs")
        todo = [a for a in ids if a not in done and a not in failed]
        # a byte-identical copy of an asset scored under this config: its stored result, no stage work
        results: dict[int, Any] = dict(twins)
        self.stats.reused += len(twins)
        items: list[StageItem] = []
        for asset_id in todo:
            if asset_id in results:
                continue
            missing = [name for name, got in priors.items() if asset_id not in got]
            if missing:
                results[asset_id] = ItemFailure("missing_prior", f"no {', '.join(missing)} result for this asset")
                continue
            row = rows[asset_id]
            span = (Span(row.start_frame, row.end_frame, row.start_s, row.end_s)
                    if row.start_frame is not None and row.start_s is not None else None)
            item = StageItem(asset_id=asset_id, uri=row.uri, span=span,
                             prior={name: got[asset_id] for name, got in priors.items()})
            extra = paired.get(asset_id)
            if isinstance(extra, ItemFailure):
                results[asset_id] = extra
                continue
            if stage.pair_input:
                item.pair = extra
            elif stage.neighbour_input:
                item.neighbours = extra
            items.append(item)
        # media is fetched one batch at a time (bounded memory), the bytes of a batch concurrently
        # (I/O releases the GIL); decoding stays on this thread, where its time limit works
        batch_size = plan.spec.stages[index].batch_size or stage.batch_size
        for batch_start in range(0, len(items), batch_size):
            batch = items[batch_start : batch_start + batch_size]
            ready: list[StageItem] = []
            for item, failure in zip(batch, self._fetch_batch(stage, batch)):
                if failure is None:
                    ready.append(item)
                else:
                    results[item.asset_id] = failure
            for item, result in zip(ready, self._process_batch(stage, ready) if ready else []):
                results[item.asset_id] = result
            for item in batch:  # free the pixels (and downloaded videos) before the next batch
                item.data = None
                item.image = None
                if item.pair is not None:
                    for member in (item.pair.source, item.pair.target):
                        member.data = member.image = None
            self._drop_scratch()

        survivors = [a for a in ids if a in done and stage.keep(done[a])]
        survivors += [a for a in todo if not isinstance(results[a], ItemFailure) and stage.keep(results[a])]
        survivors.sort(key=ids.index)
        next_stage = next_stage_of(plan.spec, index + 1)

        write = self._writer(lease, stage, config, results)
        chunks = None
        if stage.pairs_field is not None:
            # the pairs go on, never the images; pairs of an asset done before were handed on then
            write, chunks = self._pairs_writer(write, stage, config, results, lease.job_id)
        elif stage.children_field is not None:
            kept = {a for a in survivors}
            reused = [a for a in survivors if a in done]  # split by an earlier job: its scenes join this one
            write, chunks = self._children_writer(write, stage, results, kept, reused, lease.job_id,
                                                  plan.spec.scene_seconds_per_task)
        elif next_stage is not None and survivors:
            outputs = {a: results[a] if a in results else done[a] for a in survivors}
            nxt = plan_next_tasks(survivors, [stage.task_seconds(outputs[a]) for a in survivors],
                                  TaskSizing.of(plan.spec), next_windowed=get_stage(next_stage.stage).windowed)
            if nxt.windows:
                write, chunks = self._windows_writer(write, nxt, outputs)
            elif nxt.chunks is not None:
                chunks = lambda: nxt.chunks  # noqa: E731
        def after() -> None:
            if stage.embedding_model_param is not None and results:
                self._ensure_embedding_index(stage.result_table, str(getattr(stage.params, stage.embedding_model_param)))
            self.stats.items_ok += sum(1 for r in results.values() if not isinstance(r, ItemFailure))
            self.stats.item_errors += sum(1 for r in results.values() if isinstance(r, ItemFailure))

        self._complete(lease, write, after, survivors=survivors, next_stage=next_stage, survivor_chunks=chunks)

    # --- fused CPU stages: one read and one full decode per file ------------------------------------

    fused_batch = 16  # files of a fused pass held at once (their full decodes are shared by its stages)

    def _run_fused(self, lease: Lease, plan: _JobPlan, refs: list[str]) -> None:
        """Run the consecutive CPU stages ``refs`` of the job on the task's assets in one pass: each file
        is read once and fully decoded once (by the probe when it is in the pass; see ``Media``), and
        each stage sees exactly the items, priors, reuse and image it would see in a task of its own.
        Every stage's results, item errors and configuration are written, and the last stage's survivors
        enqueued for the stage after the pass, in the one completion transaction of the task."""
        ids = list(lease.asset_ids)
        video = plan.spec.modality == "video"
        steps: list[_Step] = []
        in_pass: dict[str, str] = {}
        for ref in refs:
            stage, config, index = self._stage_instance(plan, ref, capacity=len(refs))
            config = with_reconnect(lambda: self._with_inputs(config, stage, plan, lease.job_id, in_pass),
                                    what="read inputs")
            in_pass[stage.name] = config.config_id
            steps.append(_Step(ref, stage, config, index))

        def read_state():
            with self.engine.connect() as conn:
                rows = {r.asset_id: r for r in conn.execute(
                    text("SELECT asset_id, uri, parent_id, start_frame, end_frame, start_s, end_s FROM assets "
                         "WHERE asset_id = ANY(:ids)"), {"ids": ids})}
                parents = {a: r.parent_id for a, r in rows.items() if r.parent_id is not None}
                lookup = ids + sorted(set(parents.values()))
                for step in steps:
                    step.done = load_results(conn, type(step.stage), ids, [step.config.config_id])
                    step.failed = failed_items(conn, ids, step.ref, step.stage.stage_version())
                    step.twins = self._content_twins(conn, step.stage, step.config,
                                                     [a for a in ids if a not in step.done and a not in step.failed])
                    step.outside = {}  # inputs from stages before the pass, under the job's configurations
                    for required in step.stage.requires:  # a scene's: its own, else its video's (as _inputs)
                        if required not in in_pass:
                            ref = self._required_ref(plan, required)
                            got = load_results(conn, get_stage(ref), lookup, job_config_ids(conn, lease.job_id, ref))
                            step.outside[required] = {a: got.get(a, got.get(parents.get(a, -1))) for a in ids
                                                      if a in got or parents.get(a) in got}
            return rows

        rows = with_reconnect(read_state, what="read task inputs")
        batch_size = min([self.fused_batch] + [plan.spec.stages[s.index].batch_size or s.stage.batch_size
                                               for s in steps])
        outputs: dict[str, dict[int, Any]] = {s.stage.name: {} for s in steps}  # done or new, by stage name
        last: list[int] = []
        for start in range(0, len(ids), batch_size):
            reaching = ids[start : start + batch_size]
            if video:
                scenes = self._scene_decodes(reaching, rows, steps, outputs)
                with shared_decodes(scenes):
                    for step in steps:
                        reaching = self._fused_step(step, reaching, scenes, outputs)
                scenes.clear()  # free the frames (and downloaded videos) before the next batch
                self._drop_scratch()
            else:
                media = {a: Media(rows[a].uri) for a in reaching if a in rows}
                for step in steps:
                    reaching = self._fused_step(step, reaching, media, outputs)
                media.clear()  # free the pixels before the next batch
            last.extend(reaching)

        tail = steps[-1]
        end = plan.stage_refs.index(refs[-1]) + 1
        next_stage = next_stage_of(plan.spec, end)
        chunks = None
        if next_stage is not None:
            nxt = get_stage(next_stage.stage)
            if last:
                out = outputs[tail.stage.name]
                planned = plan_next_tasks(last, [tail.stage.task_seconds(out[a]) for a in last],
                                          TaskSizing.of(plan.spec), next_windowed=nxt.windowed)
                if planned.windows:
                    raise RuntimeError(f"a fused pass cannot hand windows to {nxt.name}")
                if planned.chunks is not None:
                    chunks = lambda: planned.chunks  # noqa: E731
        writers = [self._writer(lease, s.stage, s.config, s.results, s.ref) for s in steps]

        def write(conn: Connection) -> int:
            counts = [w(conn) for w in writers]  # every stage's rows are written
            return counts[0]  # the attempt ledger's n_ok: the task's own items, those the first stage scored

        def after() -> None:
            for s in steps:
                if s.stage.embedding_model_param is not None and s.results:
                    self._ensure_embedding_index(s.stage.result_table,
                                                 str(getattr(s.stage.params, s.stage.embedding_model_param)))
                self.stats.items_ok += sum(1 for r in s.results.values() if not isinstance(r, ItemFailure))
                self.stats.item_errors += sum(1 for r in s.results.values() if isinstance(r, ItemFailure))

        self._complete(lease, write, after, survivors=last, next_stage=next_stage, survivor_chunks=chunks)

    def _scene_decodes(self, reaching: list[int], rows: dict[int, Any], steps: list["_Step"],
                       outputs: dict[str, dict[int, Any]]) -> dict[int, SceneDecode]:
        """The batch's scenes for a video pass: each one's file fetched once (``_fetch_paths``), and on it the
        frame request of every stage of the pass that will score it (not stored, failed before or reused
        from a twin), so that the first stage to ask decodes the frames of all of them at once. A request
        that cannot be known yet (it needs a result of this pass) is left to its stage's own decode."""
        items = []
        for a in reaching:
            if a in rows:
                r = rows[a]
                span = (Span(r.start_frame, r.end_frame, r.start_s, r.end_s)
                        if r.start_frame is not None and r.start_s is not None else None)
                items.append(StageItem(asset_id=a, uri=r.uri, span=span))
        scenes = {item.asset_id: SceneDecode(item.asset_id, item.uri, item.span, item.path if failure is None else failure)
                  for item, failure in zip(items, self._fetch_paths(items))}
        for step in steps:
            for a, scene in scenes.items():
                if a in step.done or a in step.failed or a in step.twins or scene.span is None:
                    continue
                prior = {r: got[a] for r in step.stage.requires
                         for got in [outputs.get(r, step.outside.get(r, {}))] if a in got}
                item = StageItem(asset_id=a, uri=scene.uri, prior=prior, span=scene.span,
                                 path=scene.path if isinstance(scene.path, str) else None)
                try:
                    request = step.stage.frame_request(item)
                except Exception:  # noqa: BLE001 - e.g. a prior this pass computes: the stage decodes alone
                    request = None
                if request is not None:
                    scene.plan(request, float(getattr(step.stage.params, "timeout_s", 0) or 0))
        return scenes

    def _fused_step(self, step: "_Step", reaching: list[int], media: dict[int, Any],
                    outputs: dict[str, dict[int, Any]]) -> list[int]:
        """One stage of a fused pass on the assets that reached it: as ``_run_stage`` does it (stored
        results kept, earlier failures skipped, content twins reused, missing priors are errors, stage
        errors isolated per item); returns the assets that go on (kept), in order."""
        stage = step.stage
        done = {a: step.done[a] for a in reaching if a in step.done}
        todo = [a for a in reaching if a not in done and a not in step.failed]
        results: dict[int, Any] = {a: step.twins[a] for a in todo if a in step.twins}
        fresh_probe = {a: r for a, r in outputs.get("probe", {}).items() if a in todo and a not in results}
        if stage.reuse_by_content and fresh_probe:  # twins by the sha256 the probe of this pass computed
            results.update(with_reconnect(lambda: self._twins_by_sha(stage, step.config, fresh_probe),
                                          what="read content twins"))
        self.stats.reused += len(results)
        items: list[StageItem] = []
        for a in todo:
            if a in results:
                continue
            prior = {}
            for required in stage.requires:
                got = outputs[required] if required in outputs else step.outside[required]
                if a in got:
                    prior[required] = got[a]
            missing = [r for r in stage.requires if r not in prior]
            if missing or a not in media:
                results[a] = ItemFailure("missing_prior", f"no {', '.join(missing or ['asset'])} result for this asset")
                continue
            items.append(StageItem(asset_id=a, uri=media[a].uri, prior=prior))  # media: a Media or a SceneDecode
        ready: list[StageItem] = []
        for item in items:
            failure = media[item.asset_id].fill(item, stage, self._probe_of(item.asset_id, outputs, step))
            if failure is None:
                ready.append(item)
            else:
                results[item.asset_id] = failure
        for item, result in zip(ready, self._process_batch(stage, ready) if ready else []):
            results[item.asset_id] = result
            if item.keep_image and item.image is not None:
                media[item.asset_id].full = item.image
        for item in items:
            item.data = item.image = None
        step.results.update(results)
        mine = outputs[stage.name]
        mine.update(done)
        mine.update({a: r for a, r in results.items() if not isinstance(r, ItemFailure)})
        return [a for a in reaching if a in mine and stage.keep(mine[a])]

    @staticmethod
    def _probe_of(asset_id: int, outputs: dict[str, dict[int, Any]], step: "_Step") -> Any:
        got = outputs.get("probe", {}).get(asset_id)
        return got if got is not None else step.outside.get("probe", {}).get(asset_id)

    def _twins_by_sha(self, stage: Stage, config: StageConfig, probes: dict[int, Any]) -> dict[int, Any]:
        """``_content_twins`` for assets probed in this pass (their sha256 is not stored yet)."""
        by_sha: dict[bytes, list[int]] = {}
        for a, p in probes.items():
            by_sha.setdefault(bytes(p.sha256), []).append(a)
        table = _result_table(type(stage))
        with self.engine.connect() as conn:
            donors = conn.execute(text(_TWINS_BY_SHA.format(table=table.name)),
                                  {"shas": list(by_sha), "c": config.config_id, "ids": list(probes)}).all()
            if not donors:
                return {}
            stored = load_results(conn, type(stage), [d.donor for d in donors], [config.config_id])
        return {a: stored[d.donor] for d in donors if d.donor in stored for a in by_sha[bytes(d.sha256)]}

    def _ensure_embedding_index(self, table: str, model: str) -> None:
        """Once per actor and model, outside any completion transaction (see ``curation.embeddings``)."""
        if (table, model) in self._indexed_models:
            return
        try:
            if with_reconnect(lambda: ensure_hnsw_index(self.engine, model, table), what="embedding index"):
                self._indexed_models.add((table, model))
        except Exception as exc:  # noqa: BLE001 - the results are stored; the next completion tries again
            log.warning("HNSW index of %s not created yet: %s", model, exc)

    def _content_twins(self, conn: Connection, stage: Stage, config: StageConfig,
                       asset_ids: Sequence[int]) -> dict[int, Any]:
        """Results under ``config`` of other assets with the same content as ``asset_ids`` (see
        ``Stage.reuse_by_content``), keyed by the asset that gets them."""
        if not asset_ids or not stage.reuse_by_content or stage.children_field is not None:
            return {}
        table = _result_table(type(stage))
        pairs = conn.execute(text(_CONTENT_TWINS.format(table=table.name)),
                             {"ids": list(asset_ids), "c": config.config_id}).all()
        if not pairs:
            return {}
        stored = load_results(conn, type(stage), [p.donor for p in pairs], [config.config_id])
        return {p.asset_id: stored[p.donor] for p in pairs if p.donor in stored}

    # --- pair mining (docs/pairs.md): neighbours of an image, the two images of a pair ---------------

    def _pair_inputs(self, conn: Connection, stage: Stage, plan: _JobPlan, job_id: int,
                     asset_ids: Sequence[int]) -> dict[int, Any]:
        """For a ``neighbour_input`` stage each image's ``Neighbourhood`` (the kNN queries run here, on the
        runtime's connection); for a ``pair_input`` stage each pair's ``PairMembers`` (pixels come with the
        fetch). An ItemFailure for an asset that has neither."""
        if not asset_ids or not (stage.pair_input or stage.neighbour_input):
            return {}
        from curation import pairs

        mining = plan.spec.pairs
        if mining is None:
            raise RuntimeError(f"stage {stage.name} runs in pair-mining jobs only (`curation pairs mine`); "
                               f"job {job_id} is a {plan.spec.modality} job")
        if stage.pair_input:
            return pairs.pair_members(conn, mining, asset_ids, stage.member_requires)
        return pairs.neighbourhoods(conn, mining, job_id, stage.params, asset_ids, stage.member_requires)

    def _fetch_pairs(self, stage: Stage, batch: list[StageItem]) -> list[ItemFailure | None]:
        """Both images of each pair (``Stage.pair_input``), read once per batch and decoded once (upright,
        pixel-capped; a JPEG at the stage's ``image_draft_size``) however many pairs share them, the bytes
        too for a stage that ``needs_bytes``; a member that cannot be read or decoded fails its pair only."""
        members = [m for item in batch for m in (item.pair.source, item.pair.target)]
        uris = list(dict.fromkeys(m.uri for m in members))
        data = dict(zip(uris, self._io_pool.map(read_media, uris)))
        decoded: dict[str, Any] = {}
        out: list[ItemFailure | None] = []
        for item in batch:
            failure = None
            for role, member in (("source", item.pair.source), ("target", item.pair.target)):
                got = data[member.uri]
                if not isinstance(got, ItemFailure):  # a pair stage always gets both images decoded
                    if member.uri not in decoded:
                        try:
                            decoded[member.uri] = decode_upright(got, member.prior.get("probe"), stage.image_draft_size,
                                                                 member.asset_id, member.uri)
                        except MediaError as exc:
                            decoded[member.uri] = ItemFailure(exc.error_class, str(exc))
                    image = decoded[member.uri]
                    if isinstance(image, ItemFailure):
                        got = image
                    else:
                        member.image = image  # shared by the pairs of the batch: stages never change it in place
                if isinstance(got, ItemFailure):
                    failure = ItemFailure(got.error_class, f"pair {item.asset_id}: {role} asset {member.asset_id}: "
                                                           f"{got.message}")
                    break
                if stage.needs_bytes:
                    member.data = got
            out.append(failure)
        return out

    @staticmethod
    def _pairs_writer(write: Callable[[Connection], int], stage: Stage, config: StageConfig,
                      results: dict[int, Any], job_id: int
                      ) -> tuple[Callable[[Connection], int], Callable[[], list[list[int]]]]:
        """Wrap ``write``: also store the pairs the stage found (``Stage.pairs_field``) as assets of kind
        ``pair`` with their ``image_pairs`` rows, in the job (``curation.pairs.insert_pairs``), and hand the
        next stage the pairs this transaction scored first, ``pairs_per_task`` to a task. A pair found
        from both of its images (a→b and b→a) is one pair, handed on once."""
        from curation.pairs import insert_pairs

        per_task = int(getattr(stage.params, "pairs_per_task", 32))
        found: dict[tuple[int, int], Any] = {}
        for result in results.values():
            if not isinstance(result, ItemFailure):
                for pair in getattr(result, stage.pairs_field) or []:
                    found.setdefault((pair.source, pair.target), pair)
        ordered = [found[key] for key in sorted(found)]  # one lock order for concurrent tasks
        created: list[int] = []

        def write_all(conn: Connection) -> int:
            created.clear()  # a retried transaction (lost connection) starts again
            n = write(conn)
            if ordered:
                created.extend(insert_pairs(conn, job_id, config.config_id, ordered))
            return n

        return write_all, lambda: [created[i:i + per_task] for i in range(0, len(created), per_task)]

    def _drop_scratch(self) -> None:
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def _fetch_paths(self, batch: list[StageItem]) -> list[ItemFailure | None]:
        """A local file per item; an S3 object is downloaded once per batch (scenes share their video)."""
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="curation-media-"))
        paths: dict[str, str | ItemFailure] = {}
        for uri in dict.fromkeys(item.uri for item in batch):
            try:
                paths[uri] = str(storage.local_file(uri, self._scratch))
            except StorageError as exc:
                paths[uri] = ItemFailure(exc.error_class, str(exc))
        out: list[ItemFailure | None] = []
        for item in batch:
            got = paths[item.uri]
            if isinstance(got, ItemFailure):
                out.append(got)
            else:
                item.path = got
                out.append(None)
        return out

    def _fetch_batch(self, stage: Stage, batch: list[StageItem]) -> list[ItemFailure | None]:
        """Fill ``data`` (and ``image``) of each item as the stage declares; an ItemFailure per item
        that cannot be read or decoded."""
        if stage.pair_input:
            return self._fetch_pairs(stage, batch)
        if stage.needs_path:
            return self._fetch_paths(batch)
        if not (stage.needs_bytes or stage.needs_image):
            return [None] * len(batch)

        out: list[ItemFailure | None] = []
        for item, data in zip(batch, self._io_pool.map(read_media, [item.uri for item in batch])):
            if isinstance(data, ItemFailure):
                out.append(data)
                continue
            item.data = data
            if stage.needs_image:
                view = stage.takes_reduced_view()
                try:
                    item.image = decode_upright(data, item.prior.get("probe"),
                                                None if view else stage.image_draft_size, item.asset_id, item.uri)
                    if view:
                        item.image = reduced_view(item.image, stage.image_draft_size)
                except MediaError as exc:
                    out.append(ItemFailure(exc.error_class, str(exc)))
                    continue
            out.append(None)
        return out

    @staticmethod
    def _process_batch(stage: Stage, batch: list[StageItem]) -> list[Any]:
        """The whole batch at once; if the stage raises, item by item so that only the items that
        raise get an error."""
        try:
            out = stage.process(batch)
            if len(out) != len(batch):
                raise RuntimeError(f"stage {stage.name} returned {len(out)} results for {len(batch)} items")
            return out
        except Exception:  # noqa: BLE001 - isolate the failing items below
            pass
        out = []
        for item in batch:
            try:
                out.append(stage.process([item])[0])
            except Exception as exc:  # noqa: BLE001 - recorded as an item error
                out.append(ItemFailure(f"stage_error:{exc.__class__.__name__}", f"{exc}"[:2000]))
        return out

    def _writer(self, lease: Lease, stage: Stage, config: StageConfig,
                results: dict[int, Any], ref: str | None = None) -> Callable[[Connection], int]:
        """Writes the stage's results, item errors and configuration (``stage_configs``, ``job_configs``);
        ``ref``: the job's stage (default: the leased one; a fused pass writes for each of its stages)."""
        ref = ref or lease.stage
        version = stage.stage_version()
        table = _result_table(type(stage))
        columns = type(stage).result_columns()
        rows = [
            {"asset_id": a, "config_id": config.config_id, "stage_version": version,
             **{c: getattr(r, c) for c in columns}}
            for a, r in results.items() if not isinstance(r, ItemFailure)
        ]
        errors = [
            {"asset_id": a, "stage": ref, "stage_version": version, "job_id": lease.job_id,
             "error_class": r.error_class[:200], "message": r.message.replace("\x00", "")[:4000],
             "attempt": lease.attempt}
            for a, r in results.items() if isinstance(r, ItemFailure)
        ]

        def write(conn: Connection) -> int:
            record = {"c": config.config_id, "st": config.stage, "v": config.stage_version,
                      "p": json.dumps({**config.params, **({"_inputs": config.inputs} if config.inputs else {})},
                                      sort_keys=True, default=str),
                      "m": json.dumps(config.models, sort_keys=True), "j": lease.job_id, "ref": ref}
            for statement in _RECORD_CONFIG:
                conn.execute(statement, record)
            if rows:
                conn.execute(pg_insert(table).values(rows).on_conflict_do_nothing())
                if stage.near_duplicate_column is not None:
                    record_near_duplicates(conn, table.name, stage.near_duplicate_column, config.config_id,
                                           config.stage_version, [r["asset_id"] for r in rows])
            if errors:
                conn.execute(pg_insert(Base.metadata.tables["item_errors"]).values(errors).on_conflict_do_nothing())
            return len(rows)

        return write

    @staticmethod
    def _windows_writer(
        write: Callable[[Connection], int], nxt: NextTasks, probes: dict[int, Any],
    ) -> tuple[Callable[[Connection], int], Callable[[], list[list[int]]]]:
        """Wrap ``write``: also create the windows the plan cuts (assets of kind ``window``, idempotent;
        ``curation.planner.window_spans``) and hand each to the next stage as a task of its own, before
        the plan's duration-sized chunks of the shorter videos."""
        windows: list[int] = []

        def write_all(conn: Connection) -> int:
            windows.clear()  # a retried transaction (lost connection) starts again
            n = write(conn)
            for cut in nxt.windows:
                p = probes[cut.video]
                spans = window_spans(p.frames, p.fps, p.start_s, p.duration_s, cut.n_windows)
                windows.extend(conn.execute(_INSERT_SPANS, {
                    "parent": cut.video, "job": None, "kind": "window", "member": False,
                    "starts": [w.start_frame for w in spans], "ends": [w.end_frame for w in spans],
                    "t0": [w.start_s for w in spans], "t1": [w.end_s for w in spans],
                }).scalars().all())
            return n

        return write_all, lambda: [[w] for w in windows] + (nxt.chunks or [])

    @staticmethod
    def _children_writer(
        write: Callable[[Connection], int], stage: Stage, results: dict[int, Any], kept: set[int],
        reused: list[int], job_id: int, seconds_per_task: float,
    ) -> tuple[Callable[[Connection], int], Callable[[], list[list[int]]]]:
        """Wrap ``write``: also store the spans of each kept parent as ``scene`` assets (idempotent on
        ``(uri, start_frame, end_frame)``; a window's scenes belong to its video) in the job — for a
        parent split by an earlier job (``reused``), its existing scenes — and hand the next stage
        chunks of scenes whose total duration is about ``seconds_per_task``."""
        created: list[tuple[int, float]] = []

        def write_all(conn: Connection) -> int:
            created.clear()  # a retried transaction (lost connection) starts again
            n = write(conn)
            for parent, result in results.items():
                if isinstance(result, ItemFailure) or parent not in kept:
                    continue
                spans = list(getattr(result, stage.children_field) or [])
                if not spans:
                    continue
                ids = conn.execute(_INSERT_SPANS, {
                    "parent": parent, "job": job_id, "kind": "scene", "member": True,
                    "starts": [s.start_frame for s in spans], "ends": [s.end_frame for s in spans],
                    "t0": [s.start_s for s in spans], "t1": [s.end_s for s in spans],
                }).scalars().all()
                created.extend(zip(ids, (s.duration_s for s in spans)))
            for parent in reused:
                created.extend((r.asset_id, r.seconds) for r in conn.execute(_ADOPT_SCENES, {"parent": parent,
                                                                                             "job": job_id}))
            return n

        return write_all, lambda: chunk_by_seconds(created, seconds_per_task)


_RECORD_CONFIG = (
    text("INSERT INTO stage_configs (config_id, stage, stage_version, params, models) "
         "VALUES (:c, :st, :v, CAST(:p AS jsonb), CAST(:m AS jsonb)) ON CONFLICT DO NOTHING"),
    text("INSERT INTO job_configs (job_id, stage, config_id) VALUES (:j, :ref, :c) ON CONFLICT DO NOTHING"),
)

_ADOPT_SCENES = text(
    """
    WITH w AS (SELECT asset_id, kind, parent_id, start_s, end_s FROM assets WHERE asset_id = :parent),
    scene AS (SELECT a.asset_id, a.start_frame, a.end_s - a.start_s AS seconds FROM assets a, w
              WHERE a.kind = 'scene' AND a.parent_id = CASE WHEN w.kind = 'window' THEN w.parent_id ELSE w.asset_id END
                AND (w.kind <> 'window' OR (a.start_s >= w.start_s AND a.start_s < w.end_s))),
    member AS (INSERT INTO job_assets (job_id, asset_id) SELECT :job, asset_id FROM scene ON CONFLICT DO NOTHING)
    SELECT asset_id, seconds FROM scene ORDER BY start_frame
    """
)


_INSERT_SPANS = text(  # scenes of a video or of a window of it (kind 'scene'), or windows of a video
    """
    WITH parent AS (SELECT v.asset_id, v.uri, v.source_id FROM assets w JOIN assets v
                    ON v.asset_id = CASE WHEN w.kind = 'window' THEN w.parent_id ELSE w.asset_id END
                    WHERE w.asset_id = :parent),
    spans AS (
        SELECT * FROM unnest(CAST(:starts AS int[]), CAST(:ends AS int[]), CAST(:t0 AS float8[]),
                             CAST(:t1 AS float8[])) WITH ORDINALITY AS s(start_frame, end_frame, start_s, end_s, ord)),
    ins AS (
        INSERT INTO assets (uri, kind, source_id, parent_id, start_frame, end_frame, start_s, end_s)
        SELECT p.uri, :kind, p.source_id, p.asset_id, s.start_frame, s.end_frame, s.start_s, s.end_s
        FROM spans s CROSS JOIN parent p
        ON CONFLICT (uri, coalesce(start_frame, -1), coalesce(end_frame, -1)) DO NOTHING
        RETURNING asset_id, start_frame, end_frame),
    scene AS (
        SELECT i.asset_id, s.ord FROM ins i JOIN spans s USING (start_frame, end_frame)
        UNION
        SELECT a.asset_id, s.ord FROM spans s JOIN assets a
          ON a.uri = (SELECT uri FROM parent) AND a.start_frame = s.start_frame AND a.end_frame = s.end_frame
          AND a.kind = :kind),
    member AS (
        INSERT INTO job_assets (job_id, asset_id) SELECT :job, asset_id FROM scene WHERE :member
        ON CONFLICT DO NOTHING)
    SELECT asset_id FROM scene ORDER BY ord
    """
)

