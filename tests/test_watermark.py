"""The watermark pair: the tiny ResNeXt classifier (the same timm class as resnext101_32x8d), the real
loader on a checkpoint of the real architecture, the YOLO detector on a real YOLOv8n ONNX export, the
flag rule, the 5-frame average for scenes, and the guards."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from curation.sample_media import MediaUnavailable
from curation.spec import SpecError, parse_spec
from models.watermark import TINY, load_classifier
from tests.helpers import spy_on_frames
from tests.missing import unavailable
from workers.stage import Span, StageItem
from workers.watermark import WatermarkParams, WatermarkStage


def test_scores_flag_and_provenance_on_real_photos(skimage_dir, yolo_onnx):
    photos = [Image.open(skimage_dir / n).convert("RGB") for n in ("astronaut.png", "coffee.png", "chelsea.png")]
    # the classifier cannot flag (threshold 1), so the flag must come from the detector alone
    stage = WatermarkStage(WatermarkParams(classifier=TINY, detector=str(yolo_onnx), classifier_threshold=1.0,
                                           detector_threshold=0.5))
    stage.setup()
    results = stage.process([StageItem(i, "x", image=img) for i, img in enumerate(photos)])
    for r in results:
        assert 0.0 <= r.classifier_p <= 1.0 and 0.0 <= r.detector_conf <= 1.0 and r.frames_sampled == 1
        assert r.classifier_model == TINY and r.detector_model == "nudenet-320n.onnx" and len(r.detector_sha256) == 64
    astronaut, coffee, _ = results
    assert astronaut.detector_conf > 0.5 and astronaut.watermark  # the detector sees a box at 0.81
    assert coffee.detector_conf < 0.5 and not coffee.watermark
    # and without a detector, the classifier alone decides
    only = WatermarkStage(WatermarkParams(classifier=TINY, detector=None, classifier_threshold=0.01))
    only.setup()
    r = only.process([StageItem(0, "x", image=photos[1])])[0]
    assert r.detector_conf is None and r.detector_model is None and r.watermark


def test_the_real_architecture_loads_a_checkpoint(tmp_path, monkeypatch):
    import timm
    import torch

    from models.registry import weights_dir
    from models.watermark import _build

    tiny = load_classifier(TINY).model
    assert type(tiny) is type(timm.create_model("resnext101_32x8d", pretrained=False))
    real = _build(False)
    assert sum(p.numel() for p in real.parameters()) == 86_746_434  # resnext101_32x8d with 2 classes
    # a checkpoint with a Linear-ReLU-Linear head, as fine-tuned classifiers often are
    real.fc = torch.nn.Sequential(torch.nn.Linear(2048, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))
    dest = weights_dir() / "watermark-resnext101-32x8d"
    dest.mkdir(parents=True, exist_ok=True)
    torch.save(real.half().state_dict(), dest / "watermark_resnext101_32x8d-large.pt")
    try:
        loaded = load_classifier("watermark-resnext101-32x8d")
        assert loaded.model.fc[0].out_features == 64 and len(loaded.weights_sha256) == 64
        p = loaded.probabilities([Image.new("RGB", (300, 200), (120, 130, 140))])
        assert p.shape == (1,) and 0.0 <= float(p[0]) <= 1.0
    finally:
        (dest / "watermark_resnext101_32x8d-large.pt").unlink()


def test_scenes_average_five_evenly_spaced_frames(media_cache, monkeypatch):
    from curation.sample_media import sample_clips
    from curation.video import frames_at
    from workers.video_watermark import VideoWatermarkParams, VideoWatermarkStage

    try:
        bikes = sample_clips(media_cache)["bikes"]
    except (MediaUnavailable, KeyError) as exc:
        unavailable(f"real clips unavailable: {exc}")
    seen = spy_on_frames(monkeypatch)
    stage = VideoWatermarkStage(VideoWatermarkParams(classifier=TINY, detector=None))
    stage.setup()
    result = stage.process([StageItem(1, str(bikes), path=str(bikes), span=Span(76, 137, 3.04, 5.48))])[0]
    assert result.frames_sampled == 5 and seen == pytest.approx([3.04 + 2.44 * (k + 0.5) / 5 for k in range(5)])
    frames = [Image.fromarray(f.pixels) for f in frames_at(bikes, seen, end_s=5.48, short_side=512)]
    assert result.classifier_p == pytest.approx(float(np.mean(stage._classifier.probabilities(frames))), abs=1e-5)


def test_guards(engine, photo_dir, monkeypatch):
    from curation.planner import submit

    spec = parse_spec({"name": "x", "modality": "image", "source": {"uri": str(photo_dir)},
                       "stages": [{"name": "probe"}, {"name": "watermark"}]})
    with pytest.raises(SpecError) as info:
        submit(engine, spec)
    assert "curation models pull watermark-resnext101-32x8d" in str(info.value)
    assert "curation models pull watermark-yolo" in str(info.value)
    monkeypatch.delenv("CURATION_ALLOW_TINY_MODELS", raising=False)
    with pytest.raises(SpecError, match="random-weight test model"):
        parse_spec({"name": "x", "modality": "image", "source": {"uri": str(photo_dir)},
                    "stages": [{"name": "probe"}, {"name": "watermark", "params": {"classifier": TINY}}]})
