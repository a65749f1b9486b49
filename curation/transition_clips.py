"""Clips with known shot transitions, built from the real sample footage (``curation.sample_media``):
hard cuts, shots under a second, cross-fades (dissolves) and fades to black, at any frame rate. The
ground truth is exact because the transitions are made here: a cut at frame *k* (frame *k* is the first
of the new shot) and each gradual transition's frames ``[start, end)``.

Shots are given in **seconds of their source** and resampled to the clip's rate (a 25 fps source at 10
fps takes every 2.5th frame; at 50 fps each frame shows twice), so a shot stays inside one real shot of
its source whatever the rate. Sources with real cuts of their own (bikes.mp4: frames 30, 76, 137, 187,
242; Megamind.avi: 99, 155, 201) are only used between those cuts (``SOURCE_SHOTS``).

A dissolve of *d* seconds overlaps the end of one shot with the start of the next (alpha blend, linear);
a fade to black fades the shot out over *d/2* s, holds black for ``black_s`` and fades the next in over
*d/2* s. Gradual frames ``[start, end)`` are the frames that are neither shot alone. Written with PyAV
(libx264, no ffmpeg binary)."""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Literal

import numpy as np

# continuous stretches (seconds) of each sample clip: between its real cuts
SOURCE_SHOTS: dict[str, list[tuple[float, float]]] = {
    "bikes": [(1.2, 3.04), (3.04, 5.48), (5.48, 7.48), (7.48, 9.68)],
    "Megamind": [(0.0, 4.12), (4.13, 6.46), (6.47, 8.38), (8.39, 11.25)],
    "bigbuckbunny": [(0.0, 5.28)],
    "carphone_pristine": [(0.0, 4.0)],
    "vtest": [(0.0, 79.5)],
    "tree": [(0.0, 4.53)],
}


@dataclass(frozen=True)
class Shot:
    source: str  # a stem of ``sample_clips()``
    start_s: float
    duration_s: float


@dataclass(frozen=True)
class Transition:
    kind: Literal["cut", "dissolve", "fade"]
    duration_s: float = 0.0  # dissolve: the overlap; fade: out + in (black_s more between them)
    black_s: float = 0.2


@dataclass
class ClipTruth:
    fps: int
    frames: int
    cuts: list[int] = field(default_factory=list)  # first frame of each shot after a hard cut
    gradual: list[tuple[int, int]] = field(default_factory=list)  # [start, end) of each fade or dissolve
    gradual_kinds: list[str] = field(default_factory=list)


def _shot_frames(path: Path, shot: Shot, fps: int, size: tuple[int, int]) -> np.ndarray:
    """The shot's frames resampled to ``fps``: float32 (n, h, w, 3) RGB."""
    import av

    n = max(1, round(shot.duration_s * fps))
    wanted = [shot.start_s + i / fps for i in range(n)]
    frames: list[np.ndarray] = []
    with av.open(str(path)) as src:
        stream = src.streams.video[0]
        rate = float(stream.average_rate or stream.guessed_rate)
        decoded = []
        for i, frame in enumerate(src.decode(stream)):
            t = i / rate  # by position: some AVI files (Megamind.avi) carry timestamps out of order
            if t > wanted[-1] + 1.0:
                break
            decoded.append((t, frame.to_ndarray(format="rgb24", width=size[0], height=size[1])))
    if not decoded:
        raise ValueError(f"{path}: no frames")
    times = np.array([t for t, _ in decoded])
    for t in wanted:  # the last source frame shown at time t
        i = int(np.searchsorted(times, t + 1e-6, side="right")) - 1
        frames.append(decoded[max(0, i)][1])
    return np.stack(frames).astype(np.float32)


def check_plan(plan: list[Shot | Transition]) -> None:
    """Refuse a plan whose shots leave a continuous stretch of their source (they would hold a real cut)."""
    for item in plan:
        if isinstance(item, Shot):
            ok = any(a - 1e-6 <= item.start_s and item.start_s + item.duration_s <= b + 1e-6
                     for a, b in SOURCE_SHOTS[item.source])
            if not ok:
                raise ValueError(f"{item}: not inside one shot of {item.source} ({SOURCE_SHOTS[item.source]})")
    kinds = [isinstance(x, Shot) for x in plan]
    if not kinds or not kinds[0] or not kinds[-1] or any(a == b for a, b in zip(kinds, kinds[1:])):
        raise ValueError("a plan alternates shots and transitions, starting and ending with a shot")


def write_transition_clip(plan: list[Shot | Transition], dest: Path, clips: dict[str, Path], *, fps: int = 25,
                          size: tuple[int, int] = (320, 240), crf: int = 20) -> ClipTruth:
    """Encode ``plan`` (shot, transition, shot, ...) into an H.264 MP4 at ``fps``; its ground truth."""
    import av

    check_plan(plan)
    shots = [_shot_frames(clips[x.source], x, fps, size) for x in plan if isinstance(x, Shot)]
    transitions = [x for x in plan if isinstance(x, Transition)]
    out: list[np.ndarray] = [shots[0]]
    truth = ClipTruth(fps=fps, frames=0)
    written = len(shots[0])
    for tr, nxt in zip(transitions, shots[1:]):
        prev = out[-1]
        if tr.kind == "cut":
            truth.cuts.append(written)
            out.append(nxt)
            written += len(nxt)
            continue
        if tr.kind == "dissolve":
            n = max(2, round(tr.duration_s * fps))
            n = min(n, len(prev) - 1, len(nxt) - 1)
            alpha = (np.arange(1, n + 1, dtype=np.float32) / (n + 1))[:, None, None, None]
            blend = (1 - alpha) * prev[-n:] + alpha * nxt[:n]
            out[-1] = prev[:-n]
            start = written - n
            out += [blend, nxt[n:]]
            truth.gradual.append((start, start + n))
            written += len(nxt) - n
        else:  # fade to black and in again, over the last and first frames of the two shots
            half = max(2, round(tr.duration_s * fps / 2))
            half = min(half, len(prev) - 1, len(nxt) - 1)
            black = round(tr.black_s * fps)
            down = (1 - np.arange(1, half + 1, dtype=np.float32) / (half + 1))[:, None, None, None]
            up = (np.arange(1, half + 1, dtype=np.float32) / (half + 1))[:, None, None, None]
            faded_out = prev[-half:] * down
            faded_in = nxt[:half] * up
            out[-1] = prev[:-half]
            start = written - half
            out += [faded_out, np.zeros((black, *prev.shape[1:]), np.float32), faded_in, nxt[half:]]
            truth.gradual.append((start, start + half + black + half))
            written += black + len(nxt)
        truth.gradual_kinds.append(tr.kind)
    frames = np.concatenate(out)
    truth.frames = len(frames)
    with av.open(str(dest), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, fps)
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        for i, arr in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), format="rgb24")
            vf.pts = i
            for packet in stream.encode(vf):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return truth


def _plans() -> dict[str, list[Shot | Transition]]:
    S, T = Shot, Transition
    return {
        "transitions_a": [S("bikes", 3.1, 2.3), T("cut"), S("vtest", 10, 3.0), T("dissolve", 1.0),
                          S("carphone_pristine", 0, 3.5), T("cut"), S("tree", 0, 0.8), T("cut"),
                          S("Megamind", 0.2, 3.8), T("fade", 1.0), S("bigbuckbunny", 0, 4.0), T("cut"),
                          S("bikes", 5.5, 1.9)],
        "transitions_b": [S("Megamind", 4.2, 2.2), T("dissolve", 0.6), S("bikes", 7.5, 2.1), T("cut"),
                          S("vtest", 30, 1.7), T("cut"), S("carphone_pristine", 0.3, 0.7), T("cut"),
                          S("bigbuckbunny", 1.0, 3.5), T("dissolve", 1.2), S("tree", 0, 4.4), T("fade", 0.8),
                          S("vtest", 50, 4.0)],
        "transitions_c": [S("tree", 0, 3.0), T("cut"), S("Megamind", 6.5, 1.85), T("fade", 1.2, 0.0),
                          S("bikes", 1.25, 1.75), T("dissolve", 0.8), S("carphone_pristine", 0, 3.9), T("cut"),
                          S("vtest", 60, 0.9), T("cut"), S("bigbuckbunny", 0, 2.0), T("cut"),
                          S("Megamind", 8.4, 2.8)],
        # not looked at while the detector's thresholds were chosen (bench/scenes.py reports it apart)
        "heldout_d": [S("vtest", 40, 2.5), T("dissolve", 0.8), S("Megamind", 8.4, 2.5), T("cut"), S("bikes", 3.1, 0.9),
                      T("cut"), S("carphone_pristine", 0.5, 3.0), T("fade", 1.5, 0.3), S("bikes", 5.5, 1.95),
                      T("cut"), S("tree", 0.5, 3.5), T("dissolve", 0.5), S("bigbuckbunny", 0.5, 4.0), T("cut"),
                      S("Megamind", 0.1, 2.0)],
    }


PLANS = _plans()
FRAME_RATES = (10, 50)  # a low and a high rate


def build_transition_clips(dest: Path, clips: dict[str, Path], *, rates: tuple[int, ...] = FRAME_RATES,
                           size: tuple[int, int] = (320, 240)) -> dict[str, tuple[Path, ClipTruth]]:
    """Every plan at every rate: ``{name_<fps>fps: (path, truth)}``. A clip already in ``dest`` with its
    truth beside it (``<clip>.json``) is reused."""
    import json
    from dataclasses import asdict

    dest.mkdir(parents=True, exist_ok=True)
    built = {}
    for name, plan in PLANS.items():
        for fps in rates:
            path = dest / f"{name}_{fps}fps.mp4"
            saved = path.with_suffix(".json")
            if path.exists() and saved.exists():
                raw = json.loads(saved.read_text())
                truth = ClipTruth(**{**raw, "gradual": [tuple(g) for g in raw["gradual"]]})
            else:
                truth = write_transition_clip(plan, path, clips, fps=fps, size=size)
                saved.write_text(json.dumps(asdict(truth)))
            built[path.stem] = (path, truth)
    return built
