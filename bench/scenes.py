"""Scene splitting throughput against PySceneDetect itself, and the whole video pipeline in hours of video
per hour, on this machine, in one run.

Clips: real footage from registry packages (``curation.sample_media``): the six sample clips, two
clips joined from them, and two long clips made of real footage (vtest.avi at 640x480, 3 minutes;
joined parts of every clip at 1280x720, 1 minute). Every system reads the same files.

Scene splitting, frames/s = decoded frames / wall seconds, same detector (ContentDetector, threshold
27, min_scene_len 15):

  ours          ``workers.scenes``: PyAV with frame threading; each YUV 4:2:0 frame's planes shrunk to
                256 px wide with OpenCV (box filter by a whole factor, then bilinear) before the colour
                conversion (which then touches ~1/25 of the pixels), fed to PySceneDetect's
                ContentDetector (in process)
  scenedetect   ``scenedetect.detect(path, ContentDetector())`` — the library's own pipeline (OpenCV
                decode, its automatic downscale), in process
  scenedetect CLI  ``scenedetect -i CLIP -q detect-content list-scenes -n`` as a subprocess; its
                wall time includes the interpreter start, so the clip set is dominated by long clips

Each system's cut lists are compared (they should agree within a frame).

The throughput part also times the stage's default ``cascade`` detector (ContentDetector + TransNetV2
where a cheap signal proposes a transition) on the same clips, in the same interleaved runs, and how
many frames (100-frame windows) TransNetV2 scored in one cascade run (both parts).

Transitions (``--part transitions``): clips built from the same real footage with known hard cuts, shots
under a second, cross-fades and fades to black, at 10 and 50 fps (``curation.transition_clips``). For the
scenes stage's ``content``, ``cascade`` (the default), ``transnetv2`` and ``fused`` detectors and the
scenedetect CLI's detect-content: hard-cut precision / recall / F1 (a cut within 2 frames of a true one;
cuts within 2 frames of a true gradual transition are that transition's, counted for neither),
gradual-transition recall (a true fade or dissolve overlapped by a detected gradual span; ``any
boundary``: a span or a cut within it) and throughput in frames/s over the same clips, the CLI's wall
time as a subprocess included: ``content``, ``cascade`` and the CLI in each of ``--runs`` interleaved
runs (median and range; ``vs CLI`` is the median of each run's own ratio), the dense ``fused`` in the
first ``--fused-runs`` of them (it is slow on a CPU). ``transnetv2``'s transitions come from the fused
run's own TransNetV2 probabilities (one inference). ``uptime`` is printed before and after: the machine
is shared.

Whole pipeline: the
``video_probe``, ``scenes``, ``video_hash``, ``dynamics`` and ``video_text`` stages called in process
on every clip (no database, no Ray), with the time spent decoding measured by a decode-only pass that
reads exactly the frames each stage reads.

    python bench/scenes.py [--runs 3] [--fused-runs 1] [--part throughput|transitions|all] [--skip-pipeline]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from curation.sample_media import ClipPart, build_demo_videos, sample_clips, write_clip  # noqa: E402
from curation.transition_clips import ClipTruth, build_transition_clips  # noqa: E402
from curation.video import VIDEO_SUFFIXES, frames_at, iter_frames, probe_video  # noqa: E402
from workers.scenes import (ScenesParams, ScenesStage, min_gap_frames, spaced,  # noqa: E402
                            transitions_from_probabilities)
from workers.stage import StageItem  # noqa: E402


def build_clips(dest: Path) -> list[Path]:
    clips = sample_clips()
    build_demo_videos(dest)
    vt = clips["vtest"]
    long_a = dest / "long_vtest_640x480_3min.mp4"
    if not long_a.exists():
        write_clip([ClipPart(vt, 0, 795), ClipPart(vt, 0, 795, reverse=True), ClipPart(vt, 0, 210)], long_a,
                   size=(640, 480), fps=10)
    long_b = dest / "long_joined_1280x720_1min.mp4"
    if not long_b.exists():
        parts = [ClipPart(clips[n], 0, 10_000) for n in ("bikes", "Megamind", "bigbuckbunny", "carphone_pristine",
                                                         "tree")]
        parts += [ClipPart(vt, 0, 1500 - 250 - 270 - 132 - 120 - 68)]
        write_clip(parts, long_b, size=(1280, 720), fps=25)
    return sorted(p for p in dest.iterdir() if p.suffix in VIDEO_SUFFIXES and not p.name.startswith("broken_"))


_STAGES: dict[str, ScenesStage] = {}


class CountingModel:
    """The stage's TransNetV2, counting the frames it scored, the 100-frame windows that took and the time."""

    def __init__(self, model):
        self.model, self.weights_sha256 = model, model.weights_sha256
        self.frames = self.windows = 0
        self.seconds = 0.0
        self.last = None

    def predict(self, frames, only=None):
        from models.transnet import CONTEXT, WINDOW

        started = time.perf_counter()
        self.last = self.model.predict(frames, only=only)
        self.seconds += time.perf_counter() - started
        scored = self.last.scored if self.last.scored is not None else np.ones(len(frames), bool)
        self.frames += int(scored.sum())
        self.windows += int(scored[::WINDOW - 2 * CONTEXT].sum())
        return self.last


def window_ms(counted: CountingModel) -> str:
    backend = getattr(counted.model, "backend", "torch")  # a model before scenes@5 has no backend: torch
    backend += f" ({getattr(counted.model, 'precision', 'fp32')})"  # before scenes@6: fp32
    if not counted.windows:
        return f"none run, by {backend}"
    return f"{1000 * counted.seconds / counted.windows:,.0f} ms a window by {backend}"


def ours(path: Path, detector: str = "content") -> tuple[list[int], int]:
    from workers.video_probe import VideoProbeStage

    if detector not in _STAGES:  # an actor sets its stage (and model) up once: not timed past the first clip
        _STAGES[detector] = ScenesStage(ScenesParams(detector=detector))
        _STAGES[detector].setup()
        if _STAGES[detector].model is not None:
            _STAGES[detector].model = CountingModel(_STAGES[detector].model)
    probe = VideoProbeStage().process([StageItem(0, str(path), path=str(path))])[0]
    result = _STAGES[detector].process([StageItem(0, str(path), path=str(path), prior={"video_probe": probe})])[0]
    return result.cut_frames, result.frames


def ours_cascade(path: Path) -> tuple[list[int], int]:
    return ours(path, "cascade")


def library(path: Path) -> tuple[list[int], int]:
    from scenedetect import detect
    from scenedetect.detectors import ContentDetector

    scenes = detect(str(path), ContentDetector(threshold=27.0, min_scene_len=15))
    cuts = [int(s[0].frame_num) for s in scenes[1:]]
    return cuts, probe_video(path).frames


def cli(path: Path) -> tuple[list[int], int]:
    exe = shutil.which("scenedetect") or str(Path(sys.executable).parent / "scenedetect")
    out = subprocess.run([exe, "-i", str(path), "-q", "detect-content", "list-scenes", "-n"], capture_output=True,
                         text=True, check=True)
    del out
    return [], probe_video(path).frames


def timed(fn, clips: list[Path]) -> tuple[float, int, dict[str, list[int]]]:
    started = time.perf_counter()
    frames = 0
    cuts = {}
    for clip in clips:
        c, n = fn(clip)
        cuts[clip.name] = c
        frames += n
    return time.perf_counter() - started, frames, cuts


def pipeline(clips: list[Path]) -> dict[str, tuple[float, float]]:
    """Per stage: (seconds in the stage, seconds of the same frame reads alone)."""
    from models.registry import pull
    from workers.dynamics import DynamicsStage
    from workers.video_hash import HASH_SIDE, VideoHashStage
    from workers.video_probe import VideoProbeStage
    from workers.video_text import ANALYSIS_SHORT_SIDE, VideoTextStage

    pull("ppocrv4-det")
    text_stage = VideoTextStage()
    text_stage.setup()
    out: dict[str, list[float]] = {k: [0.0, 0.0] for k in ("video_probe", "scenes", "video_hash", "dynamics",
                                                           "video_text")}

    def clock(key: str, fn, decode_fn) -> object:
        t = time.perf_counter()
        result = fn()
        out[key][0] += time.perf_counter() - t
        t = time.perf_counter()
        decode_fn()
        out[key][1] += time.perf_counter() - t
        return result

    from curation.video import scaled_size

    for clip in clips:
        item = StageItem(0, str(clip), path=str(clip))
        probe = clock("video_probe", lambda: VideoProbeStage().process([item])[0],
                      lambda: probe_video(clip))
        item.prior = {"video_probe": probe}
        coded = (probe.height, probe.width) if probe.rotation in (90, 270) else (probe.width, probe.height)
        w = min(256, coded[0])
        size = (w // 2 * 2, round(coded[1] * w / coded[0] / 2) * 2)
        split = clock("scenes", lambda: ScenesStage(ScenesParams(detector="content")).process([item])[0],
                      lambda: sum(1 for _ in iter_frames(clip, size=size, bgr=True)))
        for span in split.scenes:
            scene = StageItem(0, str(clip), path=str(clip), prior={"video_probe": probe}, span=span)
            hs = VideoHashStage()
            clock("video_hash", lambda: hs.process([scene])[0],
                  lambda: frames_at(clip, __import__("curation.video", fromlist=["x"]).evenly_spaced_times(
                      span.start_s, span.end_s, 16), end_s=span.end_s, size=(HASH_SIDE, HASH_SIDE), gray=True))
            dyn = DynamicsStage()
            clock("dynamics", lambda: dyn.process([scene])[0],
                  lambda: frames_at(clip, dyn.sample_times(scene), end_s=span.end_s,
                                    size=scaled_size(*coded, 256, upscale=True), gray=True))
            clock("video_text", lambda: text_stage.process([scene])[0],
                  lambda: frames_at(clip, text_stage.sample_times(scene), end_s=span.end_s,
                                    short_side=ANALYSIS_SHORT_SIDE))
    return {k: (v[0], v[1]) for k, v in out.items()}


TOLERANCE = 2  # frames
SAMPLE_CUTS = {"bikes": [30, 76, 137, 187, 242], "Megamind": [99, 155, 201]}  # the others are one shot each


def cli_cuts(path: Path) -> list[int]:
    """The scenedetect CLI's detect-content cuts (its scene list's start frames are 1-based)."""
    exe = shutil.which("scenedetect") or str(Path(sys.executable).parent / "scenedetect")
    out = subprocess.run([exe, "-i", str(path), "detect-content", "list-scenes", "-n"], capture_output=True,
                         text=True, check=True).stdout
    starts = [int(line.split("|")[2]) for line in out.splitlines()
              if line.strip().startswith("|") and line.split("|")[1].strip().isdigit()]
    return [s - 1 for s in starts[1:]]


def score(truth: ClipTruth, cuts: list[int], gradual: list[tuple[int, int]]) -> dict[str, int]:
    near_gradual = [(a - TOLERANCE, b + TOLERANCE) for a, b in truth.gradual]
    touched = sum(1 for (a, b), (x0, y0) in zip(truth.gradual, near_gradual)
                  if any(x < b and a < y for x, y in gradual) or any(x0 <= c <= y0 for c in cuts))
    cuts = [c for c in cuts if not any(a <= c <= b for a, b in near_gradual)]
    return {"true_cuts": len(truth.cuts), "found_cuts": len(cuts),
            "hit": sum(1 for t in truth.cuts if any(abs(t - c) <= TOLERANCE for c in cuts)),
            "right": sum(1 for c in cuts if any(abs(t - c) <= TOLERANCE for t in truth.cuts)),
            "true_gradual": len(truth.gradual), "touched": touched,
            "gradual_found": sum(1 for a, b in truth.gradual if any(x < b and a < y for x, y in gradual)),
            "gradual_spans": len(gradual),
            "gradual_spans_right": sum(1 for x, y in gradual if any(x < b and a < y for a, b in truth.gradual))}


DETECTORS = ("content", "cascade", "cascade fp32", "transnetv2", "fused", "scenedetect CLI")


def table(title: str, clips: list[str], built, results, seconds: dict[str, list[float]]) -> None:
    total = sum(built[c][1].frames for c in clips)
    print(f"\n{title}: {len(clips)} clips, {total:,} frames")
    print(f"{'detector':<18}{'cut P':>7}{'cut R':>7}{'cut F1':>8}{'gradual R':>11}{'any boundary':>14}"
          f"{'spans right':>13}{'frames/s (range)':>20}{'vs CLI':>8}")
    timed = title == "all clips"  # the timings are of every clip
    cli = seconds["scenedetect CLI"]
    for name in (d for d in DETECTORS if d in results):
        agg: dict[str, int] = {}
        for c in clips:
            for k, v in score(built[c][1], *results[name][c]).items():
                agg[k] = agg.get(k, 0) + v
        prec = agg["right"] / agg["found_cuts"] if agg["found_cuts"] else 1.0
        rec = agg["hit"] / agg["true_cuts"]
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        if timed and name in seconds:
            rates = sorted(total / t for t in seconds[name])
            ratio = statistics.median(c / t for t, c in zip(seconds[name], cli))  # each run's own ratio
            span = f"{statistics.median(rates):,.0f} ({rates[0]:,.0f}-{rates[-1]:,.0f})"
            rate = f"{span:>20}{ratio:>7.2f}x"
        else:
            rate = f"{'(in fused)' if timed else '':>20}{'':>8}"
        spans = f"{agg['gradual_spans_right']}/{agg['gradual_spans']}"
        grec = f"{agg['gradual_found'] / agg['true_gradual']:>11.2f}" if agg["true_gradual"] else f"{'-':>11}"
        touched = f"{agg['touched'] / agg['true_gradual']:>14.2f}" if agg["true_gradual"] else f"{'-':>14}"
        print(f"{name:<18}{prec:>7.3f}{rec:>7.3f}{f1:>8.3f}{grec}{touched}{spans:>13}{rate}")


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def transitions(folder: Path, runs: int, fused_runs: int) -> None:
    from workers.video_probe import VideoProbeStage

    built = build_transition_clips(folder / "transitions", sample_clips())
    for name, path in sample_clips().items():  # the real clips as they are: their own cuts, or none
        built[f"sample_{name}"] = (path, ClipTruth(fps=round(probe_video(path).fps), frames=probe_video(path).frames,
                                                   cuts=SAMPLE_CUTS.get(name, [])))
    clips = sorted(built)
    total = sum(built[c][1].frames for c in clips)
    print(f"{len(clips)} clips (built at 10 and 50 fps, and the six sample clips), {total:,} frames: "
          f"{sum(len(built[c][1].cuts) for c in clips)} hard cuts, "
          f"{sum(len(built[c][1].gradual) for c in clips)} gradual transitions "
          f"({sum(k == 'dissolve' for c in clips for k in built[c][1].gradual_kinds)} cross-fades, "
          f"{sum(k == 'fade' for c in clips for k in built[c][1].gradual_kinds)} fades to black)")
    probes = {c: VideoProbeStage().process([StageItem(0, str(built[c][0]), path=str(built[c][0]))])[0] for c in clips}
    results: dict[str, dict[str, tuple[list[int], list[tuple[int, int]]]]] = {}
    seconds: dict[str, list[float]] = {}
    stages = {d: ScenesStage(ScenesParams(detector=d)) for d in ("content", "cascade", "fused")}
    # the default cascade (TransNetV2 in int8 by ONNX Runtime, scenes@6) and the same with scenes@5's fp32 model
    stages["cascade fp32"] = ScenesStage(ScenesParams(detector="cascade", transnet_precision="fp32"))
    for name in ("cascade", "cascade fp32"):
        stages[name].setup()  # the model loads once per actor: not timed
    # fused's TransNetV2 keeps its last probabilities for the transnetv2 row; the cascades count their windows
    stages["fused"].model = CountingModel(stages["cascade"].model)
    for name in ("cascade", "cascade fp32"):
        stages[name].model = CountingModel(stages[name].model)
    print(f"uptime before: {uptime()}", flush=True)
    for run in range(runs):  # interleaved: the machine is shared, so each run's ratios are of the same moment
        for detector in ("content", "cascade", "cascade fp32", "fused"):
            if detector == "fused" and run >= fused_runs:
                continue
            stage = stages[detector]
            out, learned = {}, {}
            started = time.perf_counter()
            for c in clips:
                path = built[c][0]
                r = stage.process([StageItem(0, str(path), path=str(path), prior={"video_probe": probes[c]})])[0]
                out[c] = (r.cut_frames, list(zip(r.gradual_starts or [], r.gradual_ends or [])))
                if detector == "fused":
                    pr = stage.model.last
                    cuts, gradual = transitions_from_probabilities(pr.single, pr.many, probes[c].fps, stage.params)
                    learned[c] = (spaced(cuts, min_gap_frames(stage.params.min_cut_gap_s, probes[c].fps)), gradual)
            seconds.setdefault(detector, []).append(time.perf_counter() - started)
            results.setdefault(detector, out)
            if learned:
                results.setdefault("transnetv2", learned)
            print(f"  run {run + 1} ours {detector}: {seconds[detector][-1]:.1f} s", flush=True)
        # one CLI pass a run (until 2026-12-02 every run after the first timed two: setdefault's argument is
        # evaluated every time, and a second pass followed it)
        started = time.perf_counter()
        cli = {c: (cli_cuts(built[c][0]), []) for c in clips}
        results.setdefault("scenedetect CLI", cli)
        seconds.setdefault("scenedetect CLI", []).append(time.perf_counter() - started)
        print(f"  run {run + 1} scenedetect CLI: {seconds['scenedetect CLI'][-1]:.1f} s", flush=True)
    print(f"uptime after: {uptime()}", flush=True)
    for name in ("cascade", "cascade fp32"):
        counted = stages[name].model
        print(f"{name}: TransNetV2 scored {counted.frames // runs:,} of {total:,} frames a run "
              f"({counted.windows // runs} windows of 100 frames, {window_ms(counted)})")

    for title, subset in (("all clips", clips),
                          ("built, tuned on (a-c)", [c for c in clips if c.startswith("transitions")]),
                          ("built, held out (d)", [c for c in clips if c.startswith("heldout")]),
                          ("the six sample clips as they are", [c for c in clips if c.startswith("sample")])):
        if subset:
            table(title, subset, built, results, seconds)
    for c in clips:
        t = built[c][1]
        print(f"  {c}: truth cuts {t.cuts} gradual {t.gradual}")
        for name in (d for d in DETECTORS if d in results):
            cuts, gradual = results[name][c]
            print(f"    {name:<16} cuts {cuts} gradual {gradual}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--folder", type=Path, default=Path(tempfile.gettempdir()) / "curation-bench-videos")
    ap.add_argument("--fused-runs", type=int, default=1, help="transitions: runs that also time the dense fused")
    ap.add_argument("--part", choices=("throughput", "transitions", "all"), default="all")
    ap.add_argument("--skip-pipeline", action="store_true", help="throughput: scene splitting only, not the whole "
                    "video pipeline")
    args = ap.parse_args()
    if args.part in ("transitions", "all"):
        transitions(args.folder, args.runs, args.fused_runs)
        if args.part == "transitions":
            return
        print()
    clips = build_clips(args.folder)
    total_s = sum(probe_video(c).duration_s for c in clips)
    print(f"{len(clips)} clips, {total_s:.0f} s of video, {sum(probe_video(c).frames for c in clips):,} frames")

    systems = {"ours (PyAV + ContentDetector)": ours, "ours cascade (default detector)": ours_cascade,
               "scenedetect.detect (library)": library, "scenedetect CLI (subprocess)": cli}
    print(f"uptime before: {uptime()}", flush=True)
    rates: dict[str, list[float]] = {k: [] for k in systems}
    cut_lists: dict[str, dict[str, list[int]]] = {}
    for run in range(args.runs):
        for name, fn in systems.items():  # interleaved, to spread the noise of a shared machine
            secs, frames, cuts = timed(fn, clips)
            rates[name].append(frames / secs)
            cut_lists.setdefault(name, cuts)
            print(f"run {run + 1}: {name:<32} {frames / secs:>8,.0f} frames/s  ({secs:.1f} s)", flush=True)
    agree = [c.name for c in clips
             if len(cut_lists["ours (PyAV + ContentDetector)"][c.name]) == len(cut_lists["scenedetect.detect (library)"][c.name])
             and all(abs(a - b) <= 1 for a, b in zip(cut_lists["ours (PyAV + ContentDetector)"][c.name],
                                                    cut_lists["scenedetect.detect (library)"][c.name]))]
    print(f"uptime after: {uptime()}")
    print()
    cli_rates = rates["scenedetect CLI (subprocess)"]
    print(f"{'scene splitting':<34}{'frames/s (range)':>22}{'vs CLI (median of runs, range)':>33}")
    for name, r in rates.items():
        ratios = sorted(a / b for a, b in zip(r, cli_rates))  # each run against the CLI of the same run
        span = f"{statistics.median(r):,.0f} ({min(r):,.0f}-{max(r):,.0f})"
        print(f"{name:<34}{span:>22}{statistics.median(ratios):>14.2f}x ({ratios[0]:.2f}-{ratios[-1]:.2f})")
    counted = _STAGES["cascade"].model
    print(f"cascade: TransNetV2 scored {counted.frames // args.runs:,} of {sum(probe_video(c).frames for c in clips):,} "
          f"frames a run ({counted.windows // args.runs} windows of 100 frames, {window_ms(counted)})")
    print(f"cut lists of ours and the library agree within 1 frame on {len(agree)} of {len(clips)} clips")
    for c in clips:
        a, b = cut_lists["ours (PyAV + ContentDetector)"][c.name], cut_lists["scenedetect.detect (library)"][c.name]
        if c.name not in agree:
            print(f"  {c.name}: ours {a} / library {b}")

    if args.skip_pipeline:
        return
    print()
    started = time.perf_counter()
    per_stage = pipeline(clips)
    wall = sum(v[0] for v in per_stage.values())
    print(f"whole video pipeline in process (video_probe, scenes, video_hash, dynamics, video_text): "
          f"{total_s:.0f} s of video in {wall:.1f} s = {total_s / wall:.1f} hours of video per hour "
          f"on this machine (bench wall {time.perf_counter() - started:.0f} s with the decode-only passes)")
    print(f"{'stage':<14}{'seconds':>9}{'share':>8}{'decoding':>10}")
    for k, (secs, dec) in per_stage.items():
        print(f"{k:<14}{secs:>9.1f}{secs / wall:>8.0%}{min(dec / secs, 1.0) if secs else 0:>10.0%}")
    decode = sum(min(d, s) for s, d in per_stage.values())
    print(f"{'all':<14}{wall:>9.1f}{1:>8.0%}{decode / wall:>10.0%}")


if __name__ == "__main__":
    main()
