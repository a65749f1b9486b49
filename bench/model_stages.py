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

and prints images/s of each and the ratios platform / direct and platform / model.

  python bench/model_stages.py [--photos 48] [--stages quality,text]
"""

from __future__ import annotations

import argparse
import os
import shutil
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


def direct(stage, uris: list[str], batch: int, *, decoded: list | None = None) -> float:
    """Seconds for read + decode + process of ``uris`` in batches (or process only, on ``decoded``)."""
    start = time.perf_counter()
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
    return time.perf_counter() - start


def platform(db_url: str, engine, folder: Path, ref: str, params: dict, batch: int) -> tuple[float, dict]:
    from sqlalchemy import text

    from tests.helpers import submit_spec
    from workers.runtime import StageWorker

    with engine.begin() as conn:
        conn.execute(text("DELETE FROM tasks"))
    submit_spec(engine, {"name": f"bench-{ref}", "modality": "image",
                         "source": {"uri": str(folder), "name": "bench"},
                         "stages": [{"name": "probe"}, {"name": ref, "params": params, "batch_size": batch}],
                         "chunk_size": 64})
    StageWorker(db_url, "probe").run(idle_exit_s=0.3)
    worker = StageWorker(db_url, ref)
    worker._stage_instance(worker._plan(_last_job(engine)), ref)  # models load before the clock starts
    start = time.perf_counter()
    stats = worker.run(idle_exit_s=0.01)
    return time.perf_counter() - start, stats


def _last_job(engine) -> int:
    from sqlalchemy import text

    with engine.connect() as conn:
        return conn.execute(text("SELECT max(job_id) FROM jobs")).scalar_one()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=int, default=48)
    ap.add_argument("--stages", default="", help="comma-separated names (default: all)")
    args = ap.parse_args()
    os.environ["CURATION_ALLOW_TINY_MODELS"] = "1"  # a benchmark, not a job: the tiny variants are timed too
    from curation.db import make_engine, upgrade
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
        engine = make_engine(server.url, pool_size=2)
        upgrade(engine)
        wanted = {s.strip() for s in args.stages.split(",") if s.strip()}
        print(f"{len(uris)} real photos, one process; images/s (ratio platform / direct, platform / model)")
        for name, (ref, params) in candidates().items():
            if wanted and ref not in wanted:
                continue
            cls = get_stage(ref)
            stage = cls(cls.Params.model_validate(params))
            stage.setup()
            threads = limit_model_threads(cls.resources.cpus)  # what the runtime gives one actor
            batch = cls.batch_size
            direct(stage, uris[:2], batch)  # warm-up
            t_direct = direct(stage, uris, batch)
            decoded = [decode_image(storage.read_bytes(u), draft_size=stage.image_draft_size) for u in uris]
            t_model = direct(stage, uris, batch, decoded=decoded)
            stage.teardown()
            t_platform, stats = platform(server.url, engine, folder, ref, params, batch)
            n = len(uris)
            print(f"{name:<17} threads {threads}, batch {batch:>3}: direct {n / t_direct:6.1f}, model {n / t_model:6.1f}, "
                  f"platform {n / t_platform:6.1f}  ({t_direct / t_platform:.2f}×, {t_model / t_platform:.2f}×)"
                  f"  [{stats['items_ok']} ok, {stats['item_errors']} errors]")
        engine.dispose()
    finally:
        server.stop("immediate")
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
