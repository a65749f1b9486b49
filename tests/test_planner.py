"""The next stage's tasks as a pure function (``curation.planner.plan_next_tasks``): by count, by
seconds, and long videos cut into windows — no database."""

from __future__ import annotations

import itertools
import math

import pytest

from curation.planner import (
    NextTasks,
    TaskSizing,
    WindowCut,
    chunk_by_seconds,
    plan_next_tasks,
    window_spans,
)

SIZING = TaskSizing(video_seconds_per_task=600.0, scene_seconds_per_task=120.0, scene_window_s=600.0)


def test_without_seconds_the_survivors_go_on_as_one_task():
    assert plan_next_tasks([3, 1, 2], None, SIZING, next_windowed=False) == NextTasks(chunks=None)
    # one survivor without a duration is enough: durations are all or nothing
    assert plan_next_tasks([3, 1], [10.0, None], SIZING, next_windowed=True) == NextTasks(chunks=None)
    assert plan_next_tasks([], [], SIZING, next_windowed=True) == NextTasks(chunks=None)


def test_with_seconds_tasks_hold_about_video_seconds_per_task_in_order():
    plan = plan_next_tasks([1, 2, 3, 4, 5], [300, 250, 100, 700, 20], SIZING, next_windowed=False)
    assert plan == NextTasks(chunks=[[1, 2, 3], [4], [5]], windows=[])
    # every survivor exactly once, order kept
    assert [a for c in plan.chunks for a in c] == [1, 2, 3, 4, 5]


def test_a_windowed_next_stage_cuts_only_the_long_videos():
    plan = plan_next_tasks([1, 2, 3, 4], [1500.0, 200.0, 600.0, 601.0], SIZING, next_windowed=True)
    assert plan.windows == [WindowCut(1, 3), WindowCut(4, 2)]
    assert plan.chunks == [[2, 3]]  # 600 s is not longer than the window: whole, by duration


@pytest.mark.parametrize("windowed, window_s", [(False, 600.0), (True, 0.0)])
def test_no_windows_when_the_next_stage_is_not_windowed_or_windows_are_off(windowed, window_s):
    sizing = TaskSizing(video_seconds_per_task=600.0, scene_window_s=window_s)
    plan = plan_next_tasks([1, 2], [5000.0, 10.0], sizing, next_windowed=windowed)
    assert plan == NextTasks(chunks=[[1], [2]])


def test_durations_must_match_the_survivors():
    with pytest.raises(ValueError, match="2 durations for 3 survivors"):
        plan_next_tasks([1, 2, 3], [1.0, 2.0], SIZING, next_windowed=False)


def test_chunk_by_seconds_closes_a_group_at_the_threshold():
    assert chunk_by_seconds([(1, 60), (2, 60), (3, 1), (4, 500)], 120) == [[1, 2], [3, 4]]
    assert chunk_by_seconds([], 120) == []


def test_sizing_comes_from_the_job_spec():
    from curation.spec import parse_spec

    spec = parse_spec({"name": "v", "modality": "video", "source": {"uri": "/tmp/v"},
                       "stages": [{"name": "video_probe"}, {"name": "scenes"}],
                       "video_seconds_per_task": 300, "scene_seconds_per_task": 30, "scene_window_s": 240})
    assert TaskSizing.of(spec) == TaskSizing(300.0, 30.0, 240.0)


@pytest.mark.parametrize("n_frames, fps, start_s, windows", [(25 * 1500, 25.0, 0.0, 3), (1001, 29.97, 0.5, 2),
                                                              (7, 1.0, 0.0, 7)])
def test_window_spans_hold_every_frame_exactly_once(n_frames, fps, start_s, windows):
    duration = n_frames / fps
    spans = window_spans(n_frames, fps, start_s, duration, windows)
    assert len(spans) == windows
    assert spans[0].start_frame == 0 and spans[-1].end_frame == n_frames
    assert spans[0].start_s == start_s and math.isclose(spans[-1].end_s, start_s + duration)
    for a, b in itertools.pairwise(spans):
        assert a.end_frame == b.start_frame and a.end_s == b.start_s
    for f in range(n_frames):  # each frame's timestamp falls in exactly one window
        t = start_s + f / fps
        owners = [i for i, s in enumerate(spans) if s.start_s <= t < s.end_s]
        assert len(owners) == 1 and spans[owners[0]].start_frame <= f < spans[owners[0]].end_frame


def test_window_spans_need_a_window():
    with pytest.raises(ValueError, match="at least 1"):
        window_spans(100, 25.0, 0.0, 4.0, 0)
