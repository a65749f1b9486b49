"""The Ray supervisor: runs ``StageWorker`` actors (``workers/runtime.py``), one pool per stage, sized by
the broker's queue, restarts the ones that die and stops them on SIGTERM.

Pools are demand-driven (so a cluster with fewer CPUs or GPUs than stages still finishes every job):

- Every ``poll_s`` the supervisor reads the queue of the stages (and jobs) it serves: queued and
  running tasks and items per stage (``read_queue``), and the seconds per item of the attempts that
  ended since the last poll (``read_throughput``, kept as a moving average per stage).
- ``size_pools`` turns that into actors per stage: one for every stage with work, then extra actors,
  one at a time, to the stage whose queue would take longest to drain (queued items × seconds per
  item ÷ actors), while they fit the cluster's resources (``ray.cluster_resources()``), stay within the
  pool's maximum (``workers:`` in the spec, ``--workers``) and the stage's task count, and the queue
  would keep the new actor busy for longer than ``min_drain_s``.
- Actors start asynchronously: the supervisor keeps the pending ``info()`` ref and checks it with
  ``ray.wait(timeout=0)``; it never blocks on an actor that cannot be scheduled. A stage's first actor
  is asked for even when the cluster is full (it waits in Ray's queue); extra actors only when they fit
  ``ray.available_resources()`` now.
- A pool whose stage has had no queued or running task for ``idle_s`` scales to zero, and actors above
  the sized count are stopped after ``idle_s`` too — at once when another stage with work has no running
  actor. Stopping is graceful (the actor finishes its task in hand, releases the rest) and then the
  actor is killed, which gives its CPUs / GPUs / memory back to Ray; its models load again when work
  returns.
- Fused CPU stages (``fuse_cpu_stages``, ``workers/runtime.py``): the tasks of a job's fused group (e.g. probe →
  resolution → phash → edges) are all the group's first stage's, so only that pool gets work; the others
  scale to zero. Its seconds per item, measured from its attempts, cover the whole group, so the drain
  time above sizes it for the group's work; its maximum is the largest of the group's pools
  (``fused_pool_maxima``, for the jobs the supervisor serves), its actors ask for the most memory and
  CPUs any stage of the group declares (``fused_memory``, ``fused_cpus``; an image group's CPUs are never
  more than its first stage's, a video group's frame-sampled stages may differ).
- ``stop()`` (SIGTERM, Ctrl-C) kills actors that never started at once, asks running ones to stop
  (they see it within ``CURATION_HEARTBEAT_S``) and kills whatever is left after ``grace_s`` or at the
  deadline of the task in hand, whichever is later; leases of killed workers are reclaimed at once. A
  second signal kills everything at once.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

from curation.broker import Broker
from curation.config import REPO_ROOT, BrokerTiming
from curation.db import make_engine, with_reconnect
from workers.runtime import StageWorker
from workers.stage import Stage, get_stage

log = logging.getLogger(__name__)


def ray_init(address: str | None = None, *, num_cpus: int | None = None, log_to_driver: bool = False,
             stages: list[str] | None = None) -> None:
    """Join ``address`` or start a local Ray. Workers inherit our import path (custom stages) and the
    CURATION_* / AWS_* settings. A local Ray gets at least enough logical CPUs for one actor of each of
    ``stages`` (they mostly wait on I/O and the database between tasks)."""
    import ray

    if ray.is_initialized():
        return
    env = {k: v for k, v in os.environ.items() if k.startswith(("CURATION_", "AWS_"))}
    paths = [str(REPO_ROOT), os.getcwd()] + [p for p in sys.path if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    kwargs: dict[str, Any] = {
        "runtime_env": {"env_vars": env}, "logging_level": logging.ERROR, "log_to_driver": log_to_driver,
        "include_dashboard": False,
    }
    if address:
        ray.init(address=address, **kwargs)
    else:
        needed = math.ceil(sum(get_stage(s).resources.cpus for s in stages or []))
        ray.init(num_cpus=num_cpus or max(os.cpu_count() or 1, 4, needed), **kwargs)


# --- what an actor needs, what the cluster has -------------------------------------------------------


def actor_resources(stage_cls: type[Stage], *, gpus: float | None = None) -> dict[str, float]:
    """One actor's Ray resources (``CPU``, ``GPU``, ``memory`` in bytes, as ``ray.cluster_resources()``
    names them); ``gpus`` overrides the stage's GPUs."""
    r = stage_cls.resources
    need = {"CPU": r.cpus, "GPU": r.gpus if gpus is None else gpus,
            "memory": float(int(r.memory_gb * 2**30)) if r.memory_gb else 0.0}
    return {k: v for k, v in need.items() if v > 0}


def fits(need: Mapping[str, float], have: Mapping[str, float]) -> bool:
    return all(have.get(k, 0.0) >= v - 1e-9 for k, v in need.items())


def _take(have: dict[str, float], need: Mapping[str, float]) -> None:
    for k, v in need.items():
        have[k] = have.get(k, 0.0) - v


def default_pool_size(stage_cls: type[Stage], *, gpus: float | None = None) -> int:
    """A pool's maximum when the spec does not say: as many actors as the whole cluster holds (the
    supervisor shares the cluster between the stages that have work); at least one."""
    import ray

    have = ray.cluster_resources()
    need = actor_resources(stage_cls, gpus=gpus)
    return max(1, min((int(have.get(k, 0.0) // v) for k, v in need.items()), default=1))


# --- the queue, read-only -----------------------------------------------------------------------------


@dataclass(frozen=True)
class StageLoad:
    """A stage's share of the queue: tasks and items waiting (ready, or a retry due soon) and leased."""

    queued_tasks: int = 0
    queued_items: int = 0
    running_tasks: int = 0
    running_items: int = 0

    @property
    def has_work(self) -> bool:
        return self.queued_tasks + self.running_tasks > 0


_QUEUE = text(
    """
    SELECT stage,
           count(*) FILTER (WHERE state <> 'leased') AS queued_tasks,
           coalesce(sum(cardinality(asset_ids)) FILTER (WHERE state <> 'leased'), 0) AS queued_items,
           count(*) FILTER (WHERE state = 'leased') AS running_tasks,
           coalesce(sum(cardinality(asset_ids)) FILTER (WHERE state = 'leased'), 0) AS running_items
    FROM tasks
    WHERE stage = ANY(:stages)
      AND (CAST(:jobs AS bigint[]) IS NULL OR job_id = ANY(CAST(:jobs AS bigint[])))
      AND (state <> 'scheduled' OR run_after <= now() + :soon * interval '1 second')
    GROUP BY stage
    """
)

_THROUGHPUT = text(
    """
    SELECT stage, sum(extract(epoch FROM ended_at - claimed_at)) AS seconds, sum(n_items) AS items
    FROM task_attempts
    WHERE attempt_id > :after AND attempt_id <= :upto AND stage = ANY(:stages) AND outcome = 'ok'
      AND n_items > 0 AND claimed_at IS NOT NULL
    GROUP BY stage
    """
)


def read_queue(conn: Connection, stages: Sequence[str], job_ids: Sequence[int] | None = None, *,
               soon_s: float = 30.0) -> dict[str, StageLoad]:
    """Queued and running tasks (and their items) per stage, for ``job_ids`` (None: every job). A
    retry backing off counts as queued when it is due within ``soon_s``."""
    rows = conn.execute(_QUEUE, {"stages": list(stages), "jobs": list(job_ids) if job_ids is not None else None,
                                 "soon": soon_s}).all()
    out = {s: StageLoad() for s in stages}
    for r in rows:
        out[r.stage] = StageLoad(r.queued_tasks, int(r.queued_items), r.running_tasks, int(r.running_items))
    return out


def read_throughput(conn: Connection, stages: Sequence[str], after: int | None) -> tuple[dict[str, tuple[float, int]], int]:
    """Seconds and items of the successful attempts logged since attempt ``after`` (None: only the
    cursor, for a fresh start), per stage, and the new cursor. A range scan of the ledger's key."""
    upto = conn.execute(text("SELECT coalesce(max(attempt_id), 0) FROM task_attempts")).scalar_one()
    if after is None or upto <= after:
        return {}, upto
    rows = conn.execute(_THROUGHPUT, {"after": after, "upto": upto, "stages": list(stages)}).all()
    return {r.stage: (float(r.seconds), int(r.items)) for r in rows}, upto


# --- sizing: a pure function ---------------------------------------------------------------------------


def _fused_most(pools: Mapping[str, int], specs: Sequence[Any], need: Callable[[type[Stage]], float]
                ) -> dict[str, float]:
    from workers.groups import fused_refs

    out: dict[str, float] = {}
    for spec in specs:
        for index in range(len(spec.stages)):
            group = fused_refs(spec, index)
            if len(group) > 1 and group[0] in pools:
                out[group[0]] = max(out.get(group[0], 0.0), *(need(get_stage(s)) for s in group))
    return out


def fused_memory(pools: Mapping[str, int], specs: Sequence[Any]) -> dict[str, float]:
    """Bytes of memory an actor of each fused group's first stage asks for: the most any stage of the
    group declares (``workers.groups.fused_refs``)."""
    return _fused_most(pools, specs, lambda cls: float(int(cls.resources.memory_gb * 2**30)))


def fused_cpus(pools: Mapping[str, int], specs: Sequence[Any]) -> dict[str, float]:
    """CPUs an actor of each fused group's first stage asks for: the most any stage of the group declares
    (an image group's are never more than its first stage's; a video group's may be; the actor's model
    threads follow them, ``workers.runtime.limit_model_threads``)."""
    return _fused_most(pools, specs, lambda cls: float(cls.resources.cpus))


def fused_pool_maxima(pools: Mapping[str, int], specs: Sequence[Any]) -> dict[str, int]:
    """``pools`` with the first stage of each fused group of the jobs ``specs`` raised to the largest
    maximum of its group: that pool runs the whole group's work (``workers.groups.fused_refs``)."""
    from workers.groups import fused_refs

    out = dict(pools)
    for spec in specs:
        for index in range(len(spec.stages)):
            group = fused_refs(spec, index)
            if len(group) > 1 and group[0] in out:
                out[group[0]] = max(out[group[0]], *(pools.get(s, 0) for s in group))
    return out



def size_pools(
    load: Mapping[str, StageLoad],
    seconds_per_item: Mapping[str, float],
    need: Mapping[str, Mapping[str, float]],
    capacity: Mapping[str, float],
    maxima: Mapping[str, int],
    *,
    min_drain_s: float = 10.0,
) -> dict[str, int]:
    """Actors per stage. Every stage with work gets one (even when the cluster cannot hold them all at
    once: those wait for resources, and the stages ahead of them free theirs when they drain). Then,
    one actor at a time, the stage whose queue would take longest to drain — queued + running items ×
    measured seconds per item (the mean of the measured stages where a stage has none yet, else 1 s)
    ÷ its actors — gets another, while the actor fits what is left of ``capacity``, the stage stays
    within its maximum and its task count, and that drain time exceeds ``min_drain_s`` (an actor that
    would idle soon is not worth starting)."""
    known = [v for v in seconds_per_item.values() if v > 0]
    fallback = sum(known) / len(known) if known else 1.0
    work = {s: (l.queued_items + l.running_items) * (seconds_per_item.get(s) or fallback)
            for s, l in load.items() if l.has_work}
    desired = {s: 0 for s in load}
    left = dict(capacity)
    for s in sorted(work, key=lambda s: -work[s]):
        desired[s] = 1
        _take(left, need[s])
    while True:
        grow = [s for s in work
                if desired[s] < min(maxima.get(s, 1), load[s].queued_tasks + load[s].running_tasks)
                and work[s] / desired[s] > min_drain_s and fits(need[s], left)]
        if not grow:
            return desired
        s = max(grow, key=lambda s: work[s] / desired[s])
        desired[s] += 1
        _take(left, need[s])


# --- the supervisor ------------------------------------------------------------------------------------


@dataclass
class _Slot:
    """One actor: pending (``info_ref`` set, not answered yet), running (``run_ref``) or stopping."""

    stage_ref: str
    actor: Any = None
    info_ref: Any = None
    run_ref: Any = None
    worker_id: int | None = None
    pid: int | None = None
    restarts: int = 0
    asked_at: float = 0.0  # monotonic: when the actor was created
    stopping_since: float | None = None
    warned: bool = False

    @property
    def pending(self) -> bool:
        return self.info_ref is not None

    @property
    def running(self) -> bool:
        return self.run_ref is not None and self.stopping_since is None


@dataclass
class Supervisor:
    """Runs a demand-driven pool of ``StageWorker`` actors per stage (see the module docstring);
    ``pools`` gives each stage's maximum. Restarts actors that die (after telling the broker, so their
    leases are reclaimed at once); stops them gracefully."""

    database_url: str
    pools: dict[str, int]
    timing: BrokerTiming = field(default_factory=BrokerTiming.from_env)
    claim_batch: int = 1
    gpus: dict[str, float] = field(default_factory=dict)  # per stage: GPUs per actor, overriding its resources
    job_ids: list[int] | None = None  # serve only these jobs' queues (None: every job)
    poll_s: float = 2.0
    idle_s: float = 10.0
    min_drain_s: float = 10.0
    starved_after_s: float = 5.0
    pending_warn_s: float = 60.0
    stop_grace_s: float = 30.0
    slots: list[_Slot] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.broker = Broker(make_engine(self.database_url, pool_size=1, application_name="curation-supervisor"),
                             self.timing)
        self._fused_memory: dict[str, float] = {}
        self._fused_cpus: dict[str, float] = {}
        if self.job_ids:
            from curation.jobs import UnknownJob, load_job

            def specs():
                out = []
                for job_id in self.job_ids:
                    try:
                        out.append(load_job(self.broker.engine, job_id).spec)
                    except UnknownJob:
                        log.warning("job %s not found: its pools keep their maxima", job_id)
                return out

            jobs = with_reconnect(specs, what="read the jobs")
            self.pools = fused_pool_maxima(self.pools, jobs)
            self._fused_memory = fused_memory(self.pools, jobs)
            self._fused_cpus = fused_cpus(self.pools, jobs)
        self.stopping = False
        self.hurry = False
        self.load: dict[str, StageLoad] = {s: StageLoad() for s in self.pools}
        self.seconds_per_item: dict[str, float] = {}
        self.desired: dict[str, int] = {s: 0 for s in self.pools}
        self._need = {s: actor_resources(get_stage(s), gpus=self.gpus.get(s)) for s in self.pools}
        for s, memory in self._fused_memory.items():  # a fused group's actor holds all its stages
            self._need[s]["memory"] = max(self._need[s].get("memory", 0.0), memory)
        for s, cpus in self._fused_cpus.items():
            self._need[s]["CPU"] = max(self._need[s].get("CPU", 0.0), cpus)
        self._idle_since: dict[str, float] = {}
        self._surplus_since: dict[str, float] = {}
        self._cursor: int | None = None
        self._last_poll = -math.inf
        self._last_sweep = time.monotonic()
        self._events: list[str] = []
        self._actor_cls = None
        self.restarts = 0  # actors that died and were started again
        self._failed_starts: dict[str, int] = {}  # per stage, since its last good start: back off
        self._not_before: dict[str, float] = {}

    def request_stop(self) -> None:
        """Called from a signal handler: the driver's loop sees ``stopping`` and calls ``stop()``; a
        second call makes ``stop()`` kill everything at once."""
        if self.stopping:
            self.hurry = True
        self.stopping = True

    # --- actors ----------------------------------------------------------------------------------

    def _start(self, slot: _Slot) -> None:
        """Create the actor and ask for its ``info()``; never wait for it here."""
        import ray

        if self._actor_cls is None:
            self._actor_cls = ray.remote(StageWorker)
        need = self._need[slot.stage_ref]
        slot.actor = self._actor_cls.options(
            num_cpus=need.get("CPU", 0.0), num_gpus=need.get("GPU", 0.0),
            memory=int(need["memory"]) if "memory" in need else None, max_restarts=0, max_task_retries=0,
        ).remote(self.database_url, slot.stage_ref, timing=self.timing, claim_batch=self.claim_batch)
        slot.info_ref = slot.actor.info.remote()
        slot.run_ref = slot.worker_id = slot.pid = None
        slot.asked_at = time.monotonic()
        slot.stopping_since = None
        slot.warned = False

    def _kill(self, slot: _Slot) -> None:
        """Kill the actor (frees its resources); a worker killed mid-task is declared dead so its lease
        is reclaimed now."""
        import ray

        if slot.actor is not None:
            ray.kill(slot.actor, no_restart=True)
        if slot.run_ref is not None and slot.worker_id is not None:
            self._declare_dead(slot.worker_id)
        slot.actor = slot.info_ref = slot.run_ref = None

    def _declare_dead(self, worker_id: int) -> None:
        try:
            with_reconnect(lambda: self.broker.mark_worker_dead(worker_id), what="mark worker dead", give_up_after_s=10)
            with_reconnect(self.broker.sweep, what="sweep", give_up_after_s=10)
        except Exception as exc:  # noqa: BLE001 - the heartbeat timeout reclaims the lease anyway
            log.warning("could not declare worker %s dead: %s", worker_id, exc)

    def _ask_to_stop(self, slots: Sequence[_Slot]) -> None:
        """Pending actors are killed; running ones are asked (through ``workers.stop_requested``, which
        their heartbeat reads) to finish the task in hand and release the rest."""
        ids = []
        for slot in slots:
            if slot.pending:
                self._kill(slot)
                self.slots.remove(slot)
                self._events.append(f"{slot.stage_ref}: cancelled an actor that had not started")
            elif slot.running:
                slot.stopping_since = time.monotonic()
                if slot.worker_id is not None:
                    ids.append(slot.worker_id)
        if ids:
            try:
                with_reconnect(lambda: self.broker.request_stop(ids), what="request stop", give_up_after_s=10)
            except Exception as exc:  # noqa: BLE001 - they are killed at the stop deadline instead
                log.warning("could not ask workers %s to stop: %s", ids, exc)

    def _collect(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for actors to start or end; handle those that did."""
        import ray
        from ray.exceptions import RayError

        refs = [s.info_ref for s in self.slots if s.info_ref is not None]
        refs += [s.run_ref for s in self.slots if s.run_ref is not None]
        if not refs:
            time.sleep(timeout_s)
            return
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s, fetch_local=True)
        done = set(ready)
        for slot in list(self.slots):
            if slot.info_ref is not None and slot.info_ref in done:
                try:
                    info = ray.get(slot.info_ref)
                except RayError as exc:
                    n = self._failed_starts[slot.stage_ref] = self._failed_starts.get(slot.stage_ref, 0) + 1
                    self._not_before[slot.stage_ref] = time.monotonic() + min(60.0, 2.0**n)
                    self._events.append(f"{slot.stage_ref}: an actor failed to start: {exc.__class__.__name__}: "
                                        f"{str(exc)[:300]}")
                    slot.actor = slot.info_ref = None
                    self.slots.remove(slot)
                    continue
                self._failed_starts.pop(slot.stage_ref, None)
                slot.info_ref = None
                slot.worker_id, slot.pid = info["worker_id"], info["pid"]
                slot.run_ref = slot.actor.run.remote()
                waited = time.monotonic() - slot.asked_at
                self._events.append(f"{slot.stage_ref}: started worker {slot.worker_id} (pid {slot.pid})"
                                    + (f" after waiting {waited:.0f} s for resources" if slot.warned else ""))
            elif slot.run_ref is not None and slot.run_ref in done:
                try:
                    ray.get(slot.run_ref)
                except RayError as exc:
                    self._events.append(f"{slot.stage_ref} worker {slot.worker_id} (pid {slot.pid}) died: "
                                        f"{exc.__class__.__name__}")
                    slot.run_ref = None
                    if slot.worker_id is not None:
                        self._declare_dead(slot.worker_id)
                    self._kill(slot)
                    if self.stopping or slot.stopping_since is not None:
                        self.slots.remove(slot)
                    else:
                        slot.restarts += 1
                        self.restarts += 1
                        self._start(slot)
                    continue
                # stopped on request (ours, or ``stop_requested`` set by someone else): free its resources
                slot.run_ref = None
                self._kill(slot)
                self.slots.remove(slot)
                if not self.stopping:
                    self._events.append(f"{slot.stage_ref}: stopped worker {slot.worker_id} (pool scaled down)")

    # --- sizing ----------------------------------------------------------------------------------

    def poll(self) -> None:
        """Read the queue and the throughput, size the pools, start and stop actors accordingly."""
        import ray

        stages = list(self.pools)

        def read():
            with self.broker.engine.connect() as conn:
                load = read_queue(conn, stages, self.job_ids, soon_s=self.idle_s)
                measured, cursor = read_throughput(conn, stages, self._cursor)
            return load, measured, cursor

        self.load, measured, self._cursor = with_reconnect(read, what="read the queue", give_up_after_s=30)
        for s, (seconds, items) in measured.items():
            rate = seconds / items
            old = self.seconds_per_item.get(s)
            self.seconds_per_item[s] = rate if old is None else 0.7 * old + 0.3 * rate
        self.desired = size_pools(self.load, self.seconds_per_item, self._need, ray.cluster_resources(),
                                  self.pools, min_drain_s=self.min_drain_s)
        now = time.monotonic()
        mine = {s: [x for x in self.slots if x.stage_ref == s and x.stopping_since is None] for s in stages}
        # a stage with work whose actors are all still waiting for resources: others should make room now
        starved = any(self.load[s].has_work and mine[s] and not any(x.running for x in mine[s])
                      and min(now - x.asked_at for x in mine[s]) > self.starved_after_s for s in stages)

        for s in stages:
            live, want = mine[s], self.desired[s]
            if self.load[s].has_work:
                self._idle_since.pop(s, None)
            else:
                self._idle_since.setdefault(s, now)
            if len(live) > want:
                since = self._surplus_since.setdefault(s, now)
                idle_long = s in self._idle_since and now - self._idle_since[s] >= self.idle_s
                if want == 0 and (idle_long or starved) or want > 0 and (now - since >= self.idle_s or starved):
                    surplus = sorted(live, key=lambda x: (not x.pending, -x.asked_at))[: len(live) - want]
                    self._ask_to_stop(surplus)
                    if want == 0:
                        self._events.append(f"{s}: no work; pool scaled to zero")
            else:
                self._surplus_since.pop(s, None)

        avail = dict(ray.available_resources())
        for s in sorted(stages, key=lambda s: -self.desired[s]):
            live = mine[s]
            if now < self._not_before.get(s, 0.0):
                continue
            for _ in range(self.desired[s] - len(live)):
                # the first actor of a stage with work is always asked for (it may wait in Ray's queue);
                # extra ones only when they fit now, so no extra actor queues ahead of another stage's first
                first = not live
                if not first and (any(x.pending for x in live) or not fits(self._need[s], avail)):
                    break
                slot = _Slot(s)
                self._start(slot)
                self.slots.append(slot)
                live.append(slot)
                _take(avail, self._need[s])

        for slot in list(self.slots):
            # a worker that does not stop (its heartbeat cannot reach the database?) is killed once
            # its task in hand would have timed out anyway
            limit = get_stage(slot.stage_ref).max_runtime_s + self.stop_grace_s
            if slot.stopping_since is not None and now - slot.stopping_since > limit:
                self._events.append(f"{slot.stage_ref}: worker {slot.worker_id} did not stop in {limit:.0f} s; killed")
                self._kill(slot)
                self.slots.remove(slot)
            elif slot.pending and not slot.warned and now - slot.asked_at > self.pending_warn_s:
                slot.warned = True
                self._events.append(
                    f"{slot.stage_ref}: an actor has waited {now - slot.asked_at:.0f} s for resources "
                    f"({_fmt(self._need[slot.stage_ref])}; cluster: {_fmt(ray.cluster_resources())}, "
                    f"free: {_fmt(ray.available_resources())})")

    def describe(self) -> str:
        """Per stage: running / wanted actors, and pending ones."""
        parts = []
        for s in self.pools:
            mine = [x for x in self.slots if x.stage_ref == s]
            pending = sum(x.pending for x in mine)
            parts.append(f"{s} {sum(x.running for x in mine)}/{self.desired.get(s, 0)}"
                         + (f" (+{pending} waiting)" if pending else ""))
        return "actors: " + ", ".join(parts)

    # --- the driver's loop -------------------------------------------------------------------------

    def start(self) -> None:
        """Size the pools once and ask for the first actors (returns at once)."""
        self.poll()
        self._last_poll = time.monotonic()

    def watch(self, timeout_s: float = 0.5) -> list[str]:
        """Wait a little for actors to start or end, restart the ones that died, resize the pools every
        ``poll_s``, sweep every ``CURATION_SWEEP_S`` (nobody else may: every pool can be at zero).
        Returns events to show."""
        self._collect(timeout_s)
        now = time.monotonic()
        if not self.stopping and now - self._last_poll >= self.poll_s:
            self._last_poll = now
            try:
                self.poll()
            except DBAPIError as exc:  # the database is away for a while: keep the actors, poll again later
                log.warning("could not read the queue: %s", exc.__class__.__name__)
        if now - self._last_sweep >= self.timing.sweep_s:
            self._last_sweep = now
            try:
                with_reconnect(self.broker.sweep, what="sweep", give_up_after_s=10)
            except Exception as exc:  # noqa: BLE001 - the next one will do
                log.warning("sweep failed: %s", exc)
        events, self._events = self._events, []
        return events

    def stop(self, grace_s: float | None = None) -> None:
        """Kill actors that never started; ask the others to finish the task in hand and release the
        rest; kill whatever is left after ``grace_s`` or at the deadline of the tasks in hand, whichever
        is later (at once after a second signal). Never blocks on an actor that cannot be scheduled."""
        self.stopping = True
        grace_s = self.stop_grace_s if grace_s is None else grace_s
        self._ask_to_stop([s for s in self.slots if s.pending or s.running])
        ids = [s.worker_id for s in self.slots if s.run_ref is not None and s.worker_id is not None]
        in_hand = 0.0
        if ids:
            try:
                with self.broker.engine.connect() as conn:
                    in_hand = float(conn.execute(text(
                        "SELECT coalesce(extract(epoch FROM max(deadline_at) - now()), 0) FROM tasks "
                        "WHERE state = 'leased' AND lease_owner = ANY(:ids)"), {"ids": ids}).scalar_one())
            except Exception as exc:  # noqa: BLE001 - fall back to grace_s
                log.warning("could not read the deadlines of the tasks in hand: %s", exc)
        deadline = time.monotonic() + max(grace_s, in_hand)
        while any(s.run_ref is not None for s in self.slots) and time.monotonic() < deadline and not self.hurry:
            self._collect(0.5)
        for slot in list(self.slots):
            self._kill(slot)
        self.slots.clear()


def _fmt(resources: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {v / 2**30:.1f} GiB" if k == "memory" else f"{k} {v:g}"
                     for k, v in sorted(resources.items()) if k in ("CPU", "GPU", "memory"))


def install_sigterm(handler: Callable[[], None]) -> None:
    """Route SIGTERM (and SIGINT) to a graceful stop in the driver."""

    def _on_signal(signum, frame):
        handler()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
