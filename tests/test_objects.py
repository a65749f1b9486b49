"""The objects stage's YOLOv8 decode and NMS on a real YOLOv8n ONNX export (nudenet's 320n.onnx, fetched
from its wheel as a test asset) and real photos; labels queryable from SQL; the guards."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import text

from curation.sample_media import MediaUnavailable
from curation.spec import SpecError, parse_spec
from models.yolo import load_yolo
from tests.helpers import spy_on_frames
from tests.missing import unavailable


def test_real_yolov8_finds_the_face_and_maps_boxes_back(yolo_onnx, skimage_dir):
    det = load_yolo(str(yolo_onnx))
    assert det.size == (320, 320) and len(det.names) == 18
    astronaut = np.asarray(Image.open(skimage_dir / "astronaut.png").convert("RGB"))  # 512x512
    coffee = np.asarray(Image.open(skimage_dir / "coffee.png").convert("RGB"))
    found, nothing = det.detect([astronaut, coffee])
    assert nothing == []
    face = found[0]
    assert face.label == "FACE_FEMALE" and face.conf > 0.5
    x0, y0, x1, y1 = face.box
    assert 150 < x0 < 200 and 60 < y0 < 110 and 250 < x1 < 300 and 160 < y1 < 210  # her face
    # the same photo at half size, and padded into a wide canvas: the box follows the pixels
    small = np.asarray(Image.fromarray(astronaut).resize((256, 256), Image.Resampling.LANCZOS))
    wide = np.zeros((512, 900, 3), np.uint8)
    wide[:, 300:812] = astronaut
    (s,), (w,) = det.detect([small])[:1], det.detect([wide])[:1]
    assert s[0].label == w[0].label == "FACE_FEMALE"
    assert np.allclose(np.array(s[0].box) * 2, face.box, atol=8)
    assert np.allclose(np.array(w[0].box) - [300, 0, 300, 0], face.box, atol=8)
    # NMS: no two boxes of one class overlap by more than the IoU threshold
    many = det.detect([astronaut], conf=0.05, iou=0.45)[0]

    def iou(a, b):
        ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
        iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = ix * iy
        return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)

    for i, a in enumerate(many):
        for b in many[i + 1:]:
            if a.label == b.label:
                assert iou(a.box, b.box) <= 0.45 + 1e-3


def test_labels_are_queryable_next_to_text(engine, db_url, yolo_onnx, skimage_dir, tmp_path):
    from curation.planner import submit
    from workers.runtime import StageWorker

    d = tmp_path / "in"
    d.mkdir()
    for n in ("astronaut.png", "coffee.png", "page.png", "chelsea.png"):
        shutil.copyfile(skimage_dir / n, d / n)
    job = submit(engine, parse_spec({
        "name": "objects", "modality": "image", "source": {"uri": str(d)},
        "stages": [{"name": "probe"}, {"name": "objects", "params": {"model": str(yolo_onnx)}}, {"name": "text"}],
    })).job_id
    for stage in ("probe", "objects", "text"):
        StageWorker(db_url, stage, sweep=False).run(idle_exit_s=1.0)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT status FROM jobs WHERE job_id=:j"), {"j": job}).scalar_one() == "completed"
        rows = conn.execute(text("SELECT uri, object_labels, n_objects, text_boxes FROM curated_images")).all()
        hits = conn.execute(text("SELECT uri FROM curated_images WHERE 'FACE_FEMALE' = ANY(object_labels) "
                                 "AND text_boxes = 0")).scalars().all()
        provenance = conn.execute(text("SELECT DISTINCT model, weights_sha256 FROM object_results")).all()
    assert len(rows) == 4 and all(r.object_labels is not None for r in rows)
    assert [h.rsplit("/", 1)[1] for h in hits] == ["astronaut.png"]
    page = next(r for r in rows if r.uri.endswith("page.png"))
    assert page.text_boxes > 0
    assert provenance == [("nudenet-320n.onnx", provenance[0][1])] and len(provenance[0][1]) == 64


def test_object_model_guards(engine, photo_dir, tmp_path):
    from curation.planner import submit

    with pytest.raises(SpecError, match="does not exist"):
        parse_spec({"name": "x", "modality": "image", "source": {"uri": str(photo_dir)},
                    "stages": [{"name": "probe"}, {"name": "objects", "params": {"model": str(tmp_path / "no.onnx")}}]})
    spec = parse_spec({"name": "x", "modality": "image", "source": {"uri": str(photo_dir)},
                       "stages": [{"name": "probe"}, {"name": "objects"}]})
    with pytest.raises(SpecError, match="curation models pull yolov8n-oiv7"):
        submit(engine, spec)


def test_scenes_detect_over_five_evenly_spaced_frames(yolo_onnx, media_cache, monkeypatch):
    from curation.sample_media import sample_clips
    from workers.stage import Span, StageItem
    from workers.video_objects import VideoObjectsParams, VideoObjectsStage

    try:
        megamind = sample_clips(media_cache)["Megamind"]
    except (MediaUnavailable, KeyError) as exc:
        unavailable(f"real clips unavailable: {exc}")
    seen = spy_on_frames(monkeypatch)
    stage = VideoObjectsStage(VideoObjectsParams(model=str(yolo_onnx), conf=0.1))
    stage.setup()
    result = stage.process([StageItem(1, str(megamind), path=str(megamind), span=Span(0, 98, 0.0417, 4.129))])[0]
    assert result.frames_sampled == 5 and len(seen) == 5
    assert seen == pytest.approx([0.0417 + (4.129 - 0.0417) * (k + 0.5) / 5 for k in range(5)])
    assert {d["frame"] for d in result.detections} <= set(range(5))
    assert result.labels == sorted({d["label"] for d in result.detections})
    per_frame_max = [max((d["conf"] for d in result.detections if d["frame"] == i), default=0.0) for i in range(5)]
    assert result.max_conf == pytest.approx(sum(per_frame_max) / 5, abs=1e-5)
