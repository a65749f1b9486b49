"""Stages used only by the tests, loaded by import path (``tests.stages:SlowProbe``) like any custom
stage. They are the real probe with a delay, or with a real process crash on one asset."""

from __future__ import annotations

import os
import time

from pydantic import Field

from workers.edges import EdgesStage
from workers.probe import ProbeParams, ProbeStage
from workers.stage import Resources


class SlowProbeParams(ProbeParams):
    sleep_s: float = Field(0.2, ge=0)


class SlowProbe(ProbeStage):
    """The probe, sleeping ``sleep_s`` per item so a test can act while tasks are in flight."""

    Params = SlowProbeParams
    batch_size = 1

    def process(self, items):
        out = []
        for item in items:
            time.sleep(self.params.sleep_s)
            out.append(self._probe_one(item))
        return out


class CrashingProbe(ProbeStage):
    """The probe, but the worker process dies (``os._exit``, like a segfaulting decoder) whenever a
    batch contains an asset whose URI contains ``poison``."""

    def process(self, items):
        if any("poison" in item.uri for item in items):
            os._exit(17)
        return super().process(items)


class RaisingEdges(EdgesStage):
    """The edges stage, raising on images whose URI contains ``raise`` (a stage bug on one input)."""

    def process(self, items):
        if any("raise" in item.uri for item in items):
            raise ValueError("this stage cannot handle " + ", ".join(i.uri for i in items if "raise" in i.uri))
        return super().process(items)


class UnplaceableEdges(EdgesStage):
    """The edges stage asking for more CPUs than a test's Ray has: Ray cannot place its actors (Ray
    does not hold actors to their ``memory``, so that would not do)."""

    resources = Resources(cpus=64.0, memory_gb=1.5)
