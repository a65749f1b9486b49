"""Image pipeline throughput against the physical limit of this machine: decoding.

On the same real photos (the demo set: scikit-image, Debian opencv-doc and mate-backgrounds), in one
process, one core's worth of work (OpenCV held to one thread, as the workers' actors hold it):
  decode-only  read the file + full Pillow decode to RGB, upright (``decode_image``: the decode, library and
               flags of the probe's ``decode_with_header``; what any pipeline must at least do)
  pipeline     probe → resolution → phash → edges a task per stage, as the workers ran them before fused
               passes: the probe's full decode and sha256; resolution from the probe; phash and edges each
               read the file again and decode it in JPEG draft mode at the size they need
  fused        the same stages as one fused pass runs them (``workers.media_fetch.Media``): one read, the
               probe's full decode, one reduced view of it for phash and edges, and one greyscale
               conversion of that view (phash@4 box-reduces it again for its hashes, edges@3 blurs and resizes
               it to 256 px; docs/fused-stages.md)
and prints images/s, the ratios to decode-only, and the share of time spent reading+decoding vs in stage
compute; then the same three in ``--processes`` processes (default 2), each on its share of the files.
``--profile`` prints, instead, the fused pass's CPU milliseconds per image part by part.
(The broker and Ray add little per image at 64 images per task; see bench/broker.py.)

It then times the model stages on the same photos, each on its own: images/s, and the share of time
decoding vs in the model — the offline-real ones (quality = BRISQUE, text = PP-OCRv4 detector, objects =
a real YOLOv8n ONNX export at 320 px) and the tiny random-weight variants of the others (clip, the
watermark classifier, TOPIQ (ResNet-18 CFANet), Q-Align (a 2-layer Qwen2.5-VL), SAM 2 complexity (a 5-block
Hiera at 512 px, 16 points per side, on the first 8 photos); the real weights would be far slower on this CPU).

  python bench/images.py [--runs 3] [--processes 2] [--no-models] [--profile]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from curation import storage  # noqa: E402
from curation.media import MediaError, decode_image  # noqa: E402
from curation.sample_media import build_demo_folder  # noqa: E402
from workers.edges import EdgesStage  # noqa: E402
from workers.phash import PhashStage  # noqa: E402
from workers.probe import ProbeStage  # noqa: E402
from workers.quality import QualityStage  # noqa: E402
from workers.resolution import ResolutionStage  # noqa: E402
from workers.stage import ItemFailure, StageItem  # noqa: E402
from workers.text import TextStage  # noqa: E402


def photos() -> list[str]:
    folder = Path(".media/bench-photos")
    build_demo_folder(folder)
    return sorted(str(p) for p in folder.iterdir() if not p.name.startswith("broken_"))


def decode_only(uris: list[str]) -> int:
    n = 0
    for uri in uris:
        try:
            decode_image(storage.read_bytes(uri))
            n += 1
        except MediaError:
            pass
    return n


def pipeline(uris: list[str], stages, clock: dict) -> int:
    probe, resolution, phash, edges = stages
    n = 0
    for i, uri in enumerate(uris):
        t0 = time.perf_counter()
        data = storage.read_bytes(uri)
        clock["io"] += time.perf_counter() - t0
        (p,) = probe.process([StageItem(i, uri, data=data)])  # full decode inside: counted as decode
        clock["decode"] += p.decode_ms / 1000 if not isinstance(p, ItemFailure) else 0
        if isinstance(p, ItemFailure):
            continue
        (r,) = resolution.process([StageItem(i, uri, prior={"probe": p})])
        if not resolution.keep(r):
            continue
        for stage in (phash, edges):
            t0 = time.perf_counter()
            img = decode_image(storage.read_bytes(uri), max_pixels=p.width * p.height, draft_size=stage.image_draft_size)
            t1 = time.perf_counter()
            stage.process([StageItem(i, uri, image=img, prior={"probe": p})])
            clock["decode"] += t1 - t0
        n += 1
    return n


def fused(uris: list[str], stages, clock: dict) -> int:
    """The same four stages as a fused pass runs them (``workers.media_fetch.Media``): one read, the probe's
    full decode, and a reduced view of it (``workers.stage.reduced_view``) for phash and edges."""
    from workers.media_fetch import Media

    probe, resolution, phash, edges = stages
    n = 0
    for i, uri in enumerate(uris):
        media = Media(uri)
        item = StageItem(i, uri)
        t0 = time.perf_counter()
        media.fill(item, probe, None)
        clock["io"] += time.perf_counter() - t0
        (p,) = probe.process([item])
        if isinstance(p, ItemFailure):
            continue
        clock["decode"] += p.decode_ms / 1000
        media.full = item.image
        (r,) = resolution.process([StageItem(i, uri, prior={"probe": p})])
        if not resolution.keep(r):
            continue
        for stage in (phash, edges):
            item = StageItem(i, uri, prior={"probe": p})
            t0 = time.perf_counter()
            media.fill(item, stage, p)
            clock["decode"] += time.perf_counter() - t0
            stage.process([item])
        n += 1
    return n


def profile(uris: list[str], runs: int) -> None:
    """CPU ms per image of each part of the fused pass (``fused``'s work, step by step), next to decode-only's."""
    import hashlib
    from collections import Counter

    from curation.media import decode_with_header
    from workers.edges import edge_scores
    from workers.media_fetch import grey_of
    from workers.phash import phash_scores
    from workers.stage import reduced_view

    parts: Counter = Counter()

    def timed(name, f, *args):
        t0 = time.process_time()
        out = f(*args)
        parts[name] += time.process_time() - t0
        return out

    for _ in range(runs):
        for uri in uris:
            timed("decode-only (read + decode_image)", lambda: decode_image(storage.read_bytes(uri)))
            data = timed("read", storage.read_bytes, uri)
            _, full = timed("probe: decode_with_header", decode_with_header, data)
            timed("probe: sha256", lambda: hashlib.sha256(data).digest())
            view = timed("reduced_view 256 (phash, edges)", reduced_view, full, 256)
            timed("grey_of (the view's, phash + edges)", grey_of, view)  # converted once, for both
            timed("phash_scores", phash_scores, view)
            timed("edge_scores", edge_scores, view, 256, 0.1)
    n = runs * len(uris)
    for name, seconds in parts.items():
        print(f"{name:<36} {seconds * 1000 / n:6.2f} ms")
    fused_ms = sum(v for k, v in parts.items() if not k.startswith("decode-only")) * 1000 / n
    print(f"{'fused parts, total':<36} {fused_ms:6.2f} ms  (CPU time per image, {runs} runs)")


def _rate_in_processes(kind: str, uris: list[str], procs: int) -> tuple[float, float]:
    """Images/s of ``kind`` (decode-only, pipeline, fused) with ``procs`` processes, each on its share, and
    the CPU seconds per image they spent."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    shares = [uris[i::procs] for i in range(procs)]
    start = ctx.Barrier(procs + 1)
    cpu = ctx.Array("d", procs)
    workers = [ctx.Process(target=_one_process, args=(kind, share, start, cpu, i)) for i, share in enumerate(shares)]
    for w in workers:
        w.start()
    start.wait()
    t0 = time.perf_counter()
    for w in workers:
        w.join()
    return len(uris) / (time.perf_counter() - t0), sum(cpu) / len(uris)


_STAGES = None


def _stages():
    global _STAGES
    if _STAGES is None:
        _STAGES = (ProbeStage(), ResolutionStage(), PhashStage(), EdgesStage())
        _STAGES[3].setup()
    return _STAGES


def _run(kind: str, uris: list[str]) -> None:
    clock = {"io": 0.0, "decode": 0.0}
    if kind == "decode-only":
        decode_only(uris)
    else:
        (pipeline if kind == "pipeline" else fused)(uris, _stages(), clock)


def _one_process(kind: str, uris: list[str], start, cpu, index: int) -> None:
    _run(kind, uris[:3])  # warm-up
    start.wait()
    t0 = time.process_time()
    _run(kind, uris)
    cpu[index] = time.process_time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--processes", type=int, default=2, help="also run each variant in this many processes")
    ap.add_argument("--no-models", action="store_true", help="skip the model stages")
    ap.add_argument("--profile", action="store_true", help="CPU ms per image of each part of the fused pass")
    args = ap.parse_args()
    cv2.setNumThreads(1)  # one core's work, as the workers' actors (workers.runtime.limit_model_threads)
    uris = photos()
    if args.profile:
        profile(uris, args.runs)
        return
    stages = (ProbeStage(), ResolutionStage(), PhashStage(), EdgesStage())
    stages[3].setup()
    pipeline(uris[:5], stages, {"io": 0.0, "decode": 0.0})  # warm-up (imports, torch)
    # interleaved in each run, so that a machine shared with other work loads each variant alike; CPU seconds
    # per image too, which that other work changes less than images/s
    rates: dict[str, list[float]] = {k: [] for k in KINDS}
    cpus: dict[str, list[float]] = {k: [] for k in KINDS}
    shares: dict[str, list[float]] = {k: [] for k in KINDS}
    for _ in range(args.runs):
        for kind in KINDS:
            clock = {"io": 0.0, "decode": 0.0}
            t0, c0 = time.perf_counter(), time.process_time()
            if kind == "decode-only":
                decode_only(uris)
            else:
                (pipeline if kind == "pipeline" else fused)(uris, stages, clock)
            total = time.perf_counter() - t0
            rates[kind].append(len(uris) / total)
            cpus[kind].append((time.process_time() - c0) / len(uris))
            shares[kind].append((clock["io"] + clock["decode"]) / total)
    print(f"{len(uris)} real photos ({sum(Path(u).stat().st_size for u in uris) / 2**20:.0f} MiB), {args.runs} runs, one process")
    _report(rates, cpus, {k: f"; reading + decoding {statistics.median(v) * 100:.0f} %" for k, v in shares.items()})
    if args.processes > 1:
        rates = {k: [] for k in KINDS}
        cpus = {k: [] for k in KINDS}
        for _ in range(args.runs):
            for kind in KINDS:
                rate, cpu = _rate_in_processes(kind, uris, args.processes)
                rates[kind].append(rate)
                cpus[kind].append(cpu)
        print(f"{args.processes} processes, {args.runs} runs")
        _report(rates, cpus, {})
    if not args.no_models:
        model_stages(uris)


KINDS = ("decode-only", "pipeline", "fused")
WHAT = {"decode-only": "", "pipeline": "  (probe → resolution → phash → edges, a task per stage)",
        "fused": "  (the same stages as one fused pass)"}


def _report(rates: dict[str, list[float]], cpus: dict[str, list[float]], notes: dict[str, str]) -> None:
    """Median images/s and CPU ms per image of each variant, and their ratios to decode-only (per run, then
    the median: each run's variants ran back to back)."""
    for kind in KINDS:
        rate, cpu = statistics.median(rates[kind]), statistics.median(cpus[kind])
        line = f"{kind:<12} {rate:8.1f} images/s  {cpu * 1000:6.1f} ms CPU/image"
        if kind != "decode-only":
            wall = statistics.median(r / d for r, d in zip(rates[kind], rates["decode-only"]))
            work = statistics.median(d / c for c, d in zip(cpus[kind], cpus["decode-only"]))
            line += f"  ratio {wall:.2f} (images/s), {work:.2f} (CPU){notes.get(kind, '')}{WHAT[kind]}"
        print(line)


def model_stages(uris: list[str]) -> None:
    import os

    from curation.sample_media import MediaUnavailable, real_yolov8_onnx
    from models.registry import pull
    from workers.clip import ClipParams, ClipStage
    from workers.complexity import ComplexityParams, ComplexityStage
    from workers.qalign import QAlignParams, QAlignStage
    from workers.topiq import TopiqParams, TopiqStage
    from workers.objects import ObjectsParams, ObjectsStage
    from workers.watermark import WatermarkParams, WatermarkStage

    pull("brisque-live")
    os.environ["CURATION_ALLOW_TINY_MODELS"] = "1"  # a benchmark, not a job: the tiny variants are timed too
    stages = [QualityStage(), TextStage(), ClipStage(ClipParams(model="clip-tiny-random")),
              TopiqStage(TopiqParams(technical_model="topiq-tiny-random", aesthetic_model="topiq-tiny-random")),
              QAlignStage(QAlignParams(model="qwen-vl-tiny-random")),
              ComplexityStage(ComplexityParams(model="sam2-tiny-random"))]
    try:
        yolo = str(real_yolov8_onnx())
        stages += [ObjectsStage(ObjectsParams(model=yolo)),
                   WatermarkStage(WatermarkParams(classifier="watermark-tiny-random", detector=yolo))]
    except MediaUnavailable as exc:
        print(f"(objects/watermark skipped: {exc})")
    for stage in stages:
        stage.setup()
        decode_s = model_s = 0.0
        n = 0
        for uri in uris[:8] if stage.name == "complexity" else uris:
            t0 = time.perf_counter()
            try:
                img = decode_image(storage.read_bytes(uri), draft_size=stage.image_draft_size)
            except MediaError:
                continue
            t1 = time.perf_counter()
            stage.process([StageItem(0, uri, image=img)])
            model_s += time.perf_counter() - t1
            decode_s += t1 - t0
            n += 1
        total = decode_s + model_s
        named = [v for k, v in stage.params.model_dump().items() if k.endswith(("model", "classifier", "detector")) and v]
        model = ", ".join(stage.models_for(stage.params)) or ", ".join(dict.fromkeys(Path(m).name for m in named))
        print(f"{stage.name:<10} ({model}): {n / total:6.1f} images/s; decoding {decode_s / total * 100:.0f} %, "
              f"model {model_s / total * 100:.0f} %")


if __name__ == "__main__":
    main()
