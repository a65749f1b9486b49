"""workers/allocator.py: a worker process keeps the blocks a model allocates and frees per image, so that
their pages are not faulted in again for every image. Counted in minor page faults (the kernel's own
count, not a time), in fresh interpreters so that this process's allocator is left as it is."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# 40 rounds of what a model stage does per image: three 12 MiB buffers allocated, written, freed (numpy's
# allocations go through malloc); prints the minor faults of those rounds
_ROUNDS = """
import resource, sys
import numpy as np
sys.path.insert(0, {root!r})
from workers.allocator import keep_large_blocks
print("tuned" if keep_large_blocks() else "default")
def one_image():
    buffers = [np.ones(3 << 20, dtype=np.float32) for _ in range(3)]
    sum(b.sum() for b in buffers)
one_image()  # the heap grows once either way
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(40):
    one_image()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(tuning: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", _ROUNDS.format(root=str(ROOT))], capture_output=True, text=True,
                         check=True, env={"CURATION_MALLOC_TUNING": tuning, "PATH": "/usr/bin:/bin",
                                          "OMP_NUM_THREADS": "1"}, cwd="/")
    state, faults = out.stdout.split()
    return state, int(faults)


def test_a_worker_keeps_large_blocks_instead_of_faulting_them_in_per_image():
    state, untuned = _faults("0")
    assert state == "default"
    state, tuned = _faults("1")
    assert state == "tuned"
    # glibc's defaults: the first freed 12 MiB block raises the mmap threshold to 12 MiB and the trim
    # threshold to 24 MiB; the three blocks freed leave 36 MiB free at the heap's top, which goes back to the
    # kernel, so every image faults pages in again (measured: ~1,000 pages, 4 MiB, per image)
    assert untuned > 40 * 256, untuned  # over 1 MiB per image
    # tuned: the blocks stay in the heap and are reused
    assert tuned < 100, tuned


def test_turned_off_or_on_by_the_environment():
    assert _faults("off")[0] == "default"
    assert _faults("yes")[0] == "tuned"
