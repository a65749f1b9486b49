"""The Ray supervisor: runs ``StageWorker`` actors (``workers/runtime.py``), one pool per stage, restarts
the ones that die and stops them on SIGTERM."""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from curation.broker import Broker
from curation.config import REPO_ROOT, BrokerTiming
from curation.db import make_engine, with_reconnect
from workers.runtime import StageWorker
from workers.stage import Stage, get_stage

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
    kwargs: dict[str, Any] = dict(
        runtime_env={"env_vars": env}, logging_level=logging.ERROR, log_to_driver=log_to_driver,
        include_dashboard=False,
    )
    if address:
        ray.init(address=address, **kwargs)
    else:
        needed = math.ceil(sum(get_stage(s).resources.cpus for s in stages or []))
        ray.init(num_cpus=num_cpus or max(os.cpu_count() or 1, 4, needed), **kwargs)


def default_pool_size(stage_cls: type[Stage], n_stages: int, *, gpus: float | None = None) -> int:
    """Actors for a stage when the spec does not say: an equal share of the cluster's CPUs (GPUs
    for GPU stages), divided by what one actor declares (``gpus`` overrides the stage's GPUs);
    at least one."""
    import ray

    resources = ray.cluster_resources()
    per_actor_gpus = stage_cls.resources.gpus if gpus is None else gpus
    if per_actor_gpus > 0:
        share = resources.get("GPU", 0.0) / n_stages
        return max(1, int(share // per_actor_gpus))
    share = resources.get("CPU", 1.0) / n_stages
    return max(1, int(share // max(stage_cls.resources.cpus, 0.01)))


@dataclass
class _Slot:
    stage_ref: str
    actor: Any = None
    run_ref: Any = None
    worker_id: int | None = None
    pid: int | None = None
    restarts: int = 0


@dataclass
class Supervisor:
    """Runs one pool of ``StageWorker`` actors per stage; restarts actors that die (after telling the
    broker, so their leases are reclaimed at once); stops them gracefully."""

    database_url: str
    pools: dict[str, int]
    timing: BrokerTiming = field(default_factory=BrokerTiming.from_env)
    claim_batch: int = 1
    gpus: dict[str, float] = field(default_factory=dict)  # per stage: GPUs per actor, overriding its resources
    slots: list[_Slot] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.broker = Broker(make_engine(self.database_url, pool_size=1, application_name="curation-supervisor"),
                             self.timing)
        self.stopping = False

    def request_stop(self) -> None:
        """Called from a signal handler: the driver's loop sees ``stopping`` and calls ``stop()``."""
        self.stopping = True

    def _start(self, slot: _Slot) -> None:
        import ray

        cls = get_stage(slot.stage_ref)
        actor_cls = ray.remote(StageWorker)
        slot.actor = actor_cls.options(
            num_cpus=cls.resources.cpus, num_gpus=self.gpus.get(slot.stage_ref, cls.resources.gpus),
            memory=int(cls.resources.memory_gb * 2**30) if cls.resources.memory_gb else None,
            max_restarts=0, max_task_retries=0,
        ).remote(self.database_url, slot.stage_ref, timing=self.timing, claim_batch=self.claim_batch)
        info = ray.get(slot.actor.info.remote(), timeout=300)
        slot.worker_id, slot.pid = info["worker_id"], info["pid"]
        slot.run_ref = slot.actor.run.remote()

    def start(self) -> None:
        for ref, n in self.pools.items():
            for _ in range(n):
                self.slots.append(_Slot(ref))
        for slot in self.slots:
            self._start(slot)

    def watch(self, timeout_s: float = 0.5) -> list[str]:
        """Wait a little for actors to end; restart the ones that died. Returns events to show."""
        import ray
        from ray.exceptions import RayActorError, RayError

        events: list[str] = []
        live = [s for s in self.slots if s.run_ref is not None]
        if not live:
            time.sleep(timeout_s)
            return events
        ready, _ = ray.wait([s.run_ref for s in live], num_returns=len(live), timeout=timeout_s)
        for slot in live:
            if slot.run_ref not in ready:
                continue
            try:
                ray.get(slot.run_ref)
                slot.run_ref = None  # stopped on request
            except (RayActorError, RayError) as exc:
                events.append(f"{slot.stage_ref} worker {slot.worker_id} (pid {slot.pid}) died: "
                              f"{exc.__class__.__name__}")
                if slot.worker_id is not None:
                    wid = slot.worker_id
                    with_reconnect(lambda: self.broker.mark_worker_dead(wid), what="mark worker dead")
                    with_reconnect(self.broker.sweep, what="sweep")
                slot.run_ref = None
                if not self.stopping:
                    slot.restarts += 1
                    self._start(slot)
                    events.append(f"{slot.stage_ref}: started worker {slot.worker_id} (pid {slot.pid})")
        return events

    def stop(self, timeout_s: float = 60.0) -> None:
        """Ask every worker to stop (finish the task in hand, release the rest) and wait."""
        import ray

        self.stopping = True
        ids = [s.worker_id for s in self.slots if s.worker_id is not None and s.run_ref is not None]
        if ids:
            with_reconnect(lambda: self.broker.request_stop(ids), what="request stop", give_up_after_s=30)
        deadline = time.monotonic() + timeout_s
        while any(s.run_ref is not None for s in self.slots) and time.monotonic() < deadline:
            self.watch(0.5)
        for slot in self.slots:
            if slot.actor is not None:
                ray.kill(slot.actor)
            slot.actor = None
            slot.run_ref = None


def install_sigterm(handler: Callable[[], None]) -> None:
    """Route SIGTERM (and SIGINT) to a graceful stop in the driver."""

    def _on_signal(signum, frame):
        handler()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
