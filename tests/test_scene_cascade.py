"""The scenes stage's cascade (the default detector since scenes@3; scenes@4: the proposer's hysteresis;
scenes@5: TransNetV2 by ONNX Runtime on a CPU; scenes@6: in int8): a cheap
proposer on TransNetV2's 48x27 frames says where a fade or a dissolve may be, and the network runs only
there. Real media: clips built from the registry's sample footage with known transitions
(``curation.transition_clips``) and the sample clips as they are. No wall-clock assertions: the work saved
is counted in frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from curation.sample_media import MediaUnavailable, sample_clips
from curation.transition_clips import build_transition_clips
from curation.video import iter_frames, probe_video
from tests.missing import unavailable
from workers.scenes import (
    ScenesParams,
    ScenesStage,
    cascade_mask,
    fuse,
    gradual_candidates,
    step_differences,
    transnet_frame,
    unclear_cuts,
)
from workers.stage import StageItem


@pytest.fixture(scope="module")
def clips(media_cache):
    try:
        return sample_clips(media_cache)
    except MediaUnavailable as exc:
        unavailable(f"real video clips unavailable: {exc}")


@pytest.fixture(scope="module")
def built(clips, tmp_path_factory):
    """Every plan of ``curation.transition_clips`` at 10 and 50 fps: {name: (path, truth)}."""
    return build_transition_clips(tmp_path_factory.mktemp("cascade"), clips)


def small_frames(path: Path) -> tuple[np.ndarray, float]:
    """The 48x27 RGB frames the stage gives TransNetV2 (decoded at 256 px wide, as the stage does)."""
    probe = probe_video(path)
    width = min(256, probe.width)
    size = (width // 2 * 2, round(probe.height * width / probe.width / 2) * 2)
    return np.stack([transnet_frame(f.pixels) for f in iter_frames(path, size=size, bgr=True)]), probe.fps


def split(path: Path, **params):
    from workers.video_probe import VideoProbeStage

    probe = VideoProbeStage().process([StageItem(0, str(path), path=str(path))])[0]
    return ScenesStage(ScenesParams(**params)).process([StageItem(0, str(path), path=str(path),
                                                                  prior={"video_probe": probe})])[0]


def test_the_proposer_flags_every_built_fade_and_dissolve_and_little_else(built, clips):
    p = ScenesParams()
    flagged = outside = 0
    for name, (path, truth) in built.items():
        small, fps = small_frames(path)
        assert len(small) == truth.frames
        found = gradual_candidates(small, step_differences(small), fps, p)
        for (a, b), kind in zip(truth.gradual, truth.gradual_kinds):
            assert found[a:b].any(), f"{name}: the {kind} at {a}-{b} has no candidate"
        away = np.ones(len(small), bool)  # frames more than the comparison distance from any transition
        k = max(2, round(p.proposal_half_s * fps))
        for a, b in truth.gradual:
            away[max(0, a - k):b + k] = False
        flagged += int(found[away].sum())
        outside += int(away.sum())
    assert flagged / outside < 0.05, (flagged, outside)  # measured 0.7 %: sub-second shots, hand-held motion
    # real footage with no fade: a fixed CCTV camera, a swaying tree and fast motion give no candidate at all
    # (bikes.mp4's 0.2 s of weak candidates, change 11.6, cost a TransNetV2 window before scenes@4)
    for stem in ("vtest", "tree", "bikes"):
        small, fps = small_frames(clips[stem])
        assert not gradual_candidates(small, step_differences(small), fps, p).any(), stem


def test_weak_candidates_stand_only_next_to_a_strong_one():
    """Hysteresis (scenes@4): a slow blend whose change is just above ``proposal_change`` is no proposal alone;
    a clear one is, its weaker edge frames with it."""
    p = ScenesParams()
    fps, n = 10.0, 100
    levels = np.full(n, 20.0)
    levels[10:30] += np.arange(20) * 4.0  # weak: 16 across 2k = 4 frames, 4 the largest step -> change 12
    levels[30:] += 80.0
    levels[60:80] += np.arange(20) * 6.0  # strong: change 24 - 6 = 18
    levels[80:] += 120.0
    small = np.broadcast_to(levels[:, None, None, None], (n, 27, 48, 3)).astype(np.uint8).copy()
    steps = step_differences(small)
    loose = gradual_candidates(small, steps, fps, p.model_copy(update={"proposal_strong_change": 0.0}))
    found = gradual_candidates(small, steps, fps, p)
    assert loose[12:28].all() and loose[62:78].all()
    assert not found[:50].any() and found[62:78].all()
    assert np.array_equal(found[50:], loose[50:])  # the strong run keeps all its frames


def test_the_cascade_runs_the_full_pass_windows_only_where_asked(built):
    from models.transnet import TransNetV2Model

    path, truth = built["transitions_b_10fps"]
    small, fps = small_frames(path)
    model = TransNetV2Model(threads=1)
    dense = model.predict(small)
    mask = cascade_mask(small, truth.cuts, fps, ScenesParams())
    part = model.predict(small, only=mask)
    assert dense.scored is None and part.scored[mask].all() and not part.scored.all()
    # where the cascade runs a window, its probabilities are the full pass's; elsewhere nothing ran
    np.testing.assert_allclose(part.single[part.scored], dense.single[part.scored], atol=1e-5)
    np.testing.assert_allclose(part.many[part.scored], dense.many[part.scored], atol=1e-5)
    assert not part.single[~part.scored].any() and not part.many[~part.scored].any()
    # the windows cover every true gradual transition
    for a, b in truth.gradual:
        assert part.scored[a:b].all()


def test_the_default_cascade_finds_the_built_clips_transitions(built):
    hit = found_cuts = right = true_cuts = covered = true_gradual = 0
    for name, (path, truth) in built.items():
        if not name.endswith("_10fps"):  # the 50 fps copies: the same transitions, 5x the network time
            continue
        result = split(path, min_scene_s=0.5)
        assert result.detector == "cascade" and result.model == "transnetv2"
        spans = list(zip(result.gradual_starts, result.gradual_ends))
        near = [(a - 2, b + 2) for a, b in truth.gradual]  # a cut at a transition's edge is that transition's
        cuts = [c for c in result.cut_frames if not any(a <= c <= b for a, b in near)]
        true_cuts += len(truth.cuts)
        found_cuts += len(cuts)
        hit += sum(any(abs(t - c) <= 2 for c in cuts) for t in truth.cuts)
        right += sum(any(abs(t - c) <= 2 for t in truth.cuts) for c in cuts)
        true_gradual += len(truth.gradual)
        covered += sum(any(x < b and a < y for x, y in spans) for a, b in truth.gradual)
        for s in result.scenes:  # no scene holds a frame of a detected transition
            assert not any(s.start_frame < y and x < s.end_frame for x, y in spans), (name, s, spans)
    precision, recall = right / found_cuts, hit / true_cuts
    assert 2 * precision * recall / (precision + recall) >= 0.9, (hit, right, found_cuts, true_cuts)
    assert covered / true_gradual >= 0.9, (covered, true_gradual)


def test_unclear_cuts_and_the_scored_frames():
    p = ScenesParams()
    steps = np.full(60, 2.0, np.float32)
    steps[10] = 40.0  # a clean cut
    steps[30:36] = 30.0  # a fast pan: the content detector's cut at 33 has big steps around it
    assert unclear_cuts([10, 33], steps, p) == [33]
    assert unclear_cuts([10, 33], steps, p.model_copy(update={"cut_isolation": 0.0})) == [10, 33]
    # a content cut TransNetV2 did not see stands; one it saw and gave nothing to is dropped
    single = np.zeros(60, np.float32)
    scored = np.zeros(60, bool)
    scored[25:45] = True
    assert fuse([10, 33], [], [], single, 10.0, p, scored) == [10]
    assert fuse([10, 33], [], [], single, 10.0, p) == []


def test_the_default_detector_declares_transnetv2():
    assert ScenesParams().detector == "cascade" and ScenesStage.version == "6"
    assert ScenesStage.models_for(ScenesParams()) == ("transnetv2",)


def test_frames_decode_ahead_in_order_and_errors_and_the_time_limit_reach_the_caller():
    import time

    from curation.media import DecodeTimeout, MediaError
    from workers.scenes import prefetched

    assert list(prefetched(iter(range(100)), 10.0, "clip")) == list(range(100))

    def broken():
        yield 1
        raise MediaError("clip: cannot decode video: broken packet")

    with pytest.raises(MediaError, match="broken packet"):
        list(prefetched(broken(), 10.0, "clip"))

    def stuck():
        yield 1
        time.sleep(2.0)
        yield 2

    with pytest.raises(DecodeTimeout, match="longer than 0.2 s"):
        list(prefetched(stuck(), 0.2, "clip"))
