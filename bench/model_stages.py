"""Model stages at their ceiling: each model stage through the platform vs the same model called directly.

On the same real photos (the demo set) and the same batch size, for the offline-real model stages
(quality = BRISQUE, text = PP-OCRv4 detector, objects = a real YOLOv8n ONNX export) and tiny random-weight
variants of the others (clip, TOPIQ, Q-Align, watermark):

  direct     the stage's model called directly in a plain loop: read the file, decode it at the size the
             stage asks for (``decode_image(draft_size=...)``), ``stage.process`` on batches — what a
             hand-written script does, with the thread count the runtime gives an actor of the stage
  model      the same without the read and decode (images decoded beforehand): the model alone
  platform   the stage's ``StageWorker`` draining a submitted job (tasks claimed from an embedded
             PostgreSQL, media read and decoded by the runtime, results, provenance and the next task
             written in one transaction per task); the probe ran beforehand, not timed

and prints images/s of each and the ratios platform / direct and platform / model, and CPU ms per image of
this process (the worker's threads included, not the database server's): under load the CPU ratio is the steadier one.

  python bench/model_stages.py [--photos 48] [--stages quality,text] [--runs 3]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from curation import storage  # noqa: E402
from curation.media import MediaError, decode_image  # noqa: E402
from workers.runtime import limit_model_threads  # noqa: E402
from workers.stage import StageItem  # noqa: E402


def candidates() -> dict[str, tuple[str, dict]]:
    """name -> (stage ref, params) of each model stage benched."""
    from curation.sample_media import MediaUnavailable, real_yolov8_onnx

    out = {
        "quality": ("quality", {}),
        "text": ("text", {}),
        "clip (tiny)": ("clip", {"model": "clip-tiny-random"}),
        "topiq (tiny)": ("topiq", {"technical_model": "topiq-tiny-random", "aesthetic_model": "topiq-tiny-random"}),
        "qalign (tiny)": ("qalign", {"model": "qwen-vl-tiny-random"}),
    }
    try:
        yolo = str(real_yolov8_onnx())
        out["objects"] = ("objects", {"model": yolo})
        out["watermark (tiny)"] = ("watermark", {"classifier": "watermark-tiny-random", "detector": yolo})
    except MediaUnavailable as exc:
        print(f"(objects/watermark skipped: {exc})")
    return out


def direct(stage, uris: list[str], batch: int, *, decoded: list | None = None) -> tuple[float, float]:
    """(wall s, CPU s of this process) for read + decode + process of ``uris`` in batches (or process
    only, on ``decoded``)."""
    start, cpu = time.perf_counter(), time.process_time()
    images = decoded
    if images is None:
        images = []
        for uri in uris:
            try:
                images.append(decode_image(storage.read_bytes(uri), draft_size=stage.image_draft_size))
            except MediaError:
                pass
    items = [StageItem(i, f"photo-{i}", image=img) for i, img in enumerate(images)]
    for i in range(0, len(items), batch):
        stage.process(items[i:i + batch])
    return time.perf_counter() - start, time.process_time() - cpu


def platform(server, run: int, folder: Path, ref: str, params: dict, batch: int,
             warm: list) -> tuple[float, float, dict]:
    """(wall s, CPU s of this process — the worker's threads included, not the database server's, counters)
    of a ``StageWorker`` draining a job of the photos in ``folder``, on a database of its own (results are
    keyed by configuration: a second job on the same photos in one database would reuse them)."""
    from sqlalchemy import text

    from curation.db import make_engine, upgrade
    from tests.helpers import submit_spec
    from workers.runtime import StageWorker

    logging.getLogger("alembic").setLevel(logging.WARNING)  # the worker configured logging; keep the migrations quiet
    name = f"bench_{ref}_{run}"
    admin = make_engine(server.url, pool_size=1)
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    db_url = server.url.rsplit("/", 1)[0] + f"/{name}"
    engine = make_engine(db_url, pool_size=2)
    upgrade(engine)
    job_id = submit_spec(engine, {"name": f"bench-{ref}", "modality": "image",
                                  "source": {"uri": str(folder), "name": "bench"},
                                  "stages": [{"name": "probe"}, {"name": ref, "params": params, "batch_size": batch}],
                                  "chunk_size": 64})
    StageWorker(db_url, "probe").run(idle_exit_s=0.3)
    worker = StageWorker(db_url, ref)
    # models load before the clock starts, and run once on ``warm`` (as the direct stage did: a session's
    # first runs plan its memory; a worker pays that once in its life, not per job)
    stage = worker._stage_instance(worker._plan(job_id), ref)[0]
    stage.process([StageItem(i, f"warm-{i}", image=image) for i, image in enumerate(warm)])
    start, cpu = time.perf_counter(), time.process_time()
    stats = worker.run(idle_exit_s=0.01)
    elapsed = time.perf_counter() - start, time.process_time() - cpu
    engine.dispose()
    return *elapsed, stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=int, default=48)
    ap.add_argument("--stages", default="", help="comma-separated names (default: all)")
    ap.add_argument("--runs", type=int, default=1, help="interleaved runs of direct, model and platform; medians")
    args = ap.parse_args()
    os.environ["CURATION_ALLOW_TINY_MODELS"] = "1"  # a benchmark, not a job: the tiny variants are timed too
    from workers.allocator import keep_large_blocks

    # the allocator setting every worker process makes (workers/allocator.py), made here at the start so that
    # direct, model and platform all run under it (it is process-wide); CURATION_MALLOC_TUNING=0: none of them
    print(f"allocator thresholds (workers/allocator.py): {'set' if keep_large_blocks() else 'glibc defaults'}")
    from curation.embedded import EmbeddedPostgres
    from curation.sample_media import build_demo_folder
    from models.registry import pull
    from workers.stage import get_stage

    pull("brisque-live")
    src = Path(".media/bench-photos")
    build_demo_folder(src)
    uris = sorted(str(p) for p in src.iterdir() if not p.name.startswith("broken_"))[: args.photos]
    scratch = Path(tempfile.mkdtemp(prefix="bench-model-stages-"))
    folder = scratch / "photos"
    folder.mkdir()
    for u in uris:
        shutil.copyfile(u, folder / Path(u).name)
    server = EmbeddedPostgres(scratch / "pg")
    server.start()
    try:
        wanted = {s.strip() for s in args.stages.split(",") if s.strip()}
        print(f"{len(uris)} real photos, one process; images/s (ratio platform / direct, platform / model)")
        for name, (ref, params) in candidates().items():
            if wanted and ref not in wanted:
                continue
            cls = get_stage(ref)
            threads = limit_model_threads(cls.resources.cpus)  # what the runtime gives one actor, before loading
            stage = cls(cls.Params.model_validate(params))
            stage.setup()
            limit_model_threads(cls.resources.cpus)  # model loaders set their own counts (as the runtime does)
            batch = cls.batch_size
            direct(stage, uris[:2], batch)  # warm-up
            decoded = [decode_image(storage.read_bytes(u), draft_size=stage.image_draft_size) for u in uris]
            warm = decoded[:2]  # the platform's stage instance warms up on the same two photos
            runs: dict[str, list[tuple[float, float]]] = {"direct": [], "model": [], "platform": []}
            stats: dict = {}
            for _ in range(args.runs):  # interleaved, so that a change of load hits all three alike
                runs["direct"].append(direct(stage, uris, batch))
                runs["model"].append(direct(stage, uris, batch, decoded=decoded))
                wall, cpu, stats = platform(server, len(runs["platform"]), folder, ref, params, batch, warm)
                runs["platform"].append((wall, cpu))
                if stats["items_ok"] + stats["item_errors"] != len(uris):
                    raise SystemExit(f"{name}: the platform run scored {stats['items_ok']} of {len(uris)} photos")
            stage.teardown()
            (t_direct, c_direct), (t_model, c_model), (t_platform, c_platform) = (
                (statistics.median(w for w, _ in runs[k]), statistics.median(c for _, c in runs[k]))
                for k in ("direct", "model", "platform"))
            n = len(uris)
            print(f"{name:<17} threads {threads}, batch {batch:>3}: direct {n / t_direct:6.1f}, model {n / t_model:6.1f}, "
                  f"platform {n / t_platform:6.1f}  ({t_direct / t_platform:.2f}×, {t_model / t_platform:.2f}×)"
                  f"  [{stats['items_ok']} ok, {stats['item_errors']} errors]")
            print(f"{'':<17} CPU ms/image: direct {1000 * c_direct / n:7.1f}, model {1000 * c_model / n:7.1f}, "
                  f"platform {1000 * c_platform / n:7.1f}  (direct / platform {c_direct / c_platform:.2f}×)  "
                  f"load {os.getloadavg()[0]:.1f}")
    finally:
        server.stop("immediate")
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
