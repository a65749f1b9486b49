"""CRAFT: the score-map post-processing on maps with known answers, the published architecture and its
checkpoint layout, the tiny variant through the text stage on real photos, and the guards."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from curation.spec import SpecError, parse_spec
from models.craft import TINY, boxes_from_maps, build_craft, load_craft
from workers.stage import StageItem
from workers.text import TextParams, TextStage


def _blob(shape, cx, cy, rx, ry, peak):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return peak * np.exp(-(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2))


def test_boxes_from_score_maps():
    shape = (120, 200)
    region = _blob(shape, 40, 40, 8, 6, 0.95) + _blob(shape, 150, 90, 10, 6, 0.9)
    affinity = np.zeros(shape)
    boxes = boxes_from_maps(region, affinity)
    assert len(boxes) == 2
    centres = sorted(tuple(np.round(b.mean(axis=0))) for b in boxes)
    assert np.allclose(centres[0], (40, 40), atol=2) and np.allclose(centres[1], (150, 90), atol=2)
    # two characters joined by an affinity bridge are one word
    region = _blob(shape, 60, 60, 6, 6, 0.95) + _blob(shape, 90, 60, 6, 6, 0.95)
    affinity = _blob(shape, 75, 60, 10, 4, 0.9)
    (word,) = boxes_from_maps(region, affinity)
    xs = word[:, 0]
    assert xs.min() < 58 and xs.max() > 92
    # a faint blob (peak below the text threshold) and specks of a few pixels are not text
    assert boxes_from_maps(_blob(shape, 50, 50, 8, 8, 0.6), np.zeros(shape)) == []
    specks = np.zeros(shape)
    specks[10, 10] = specks[30, 30] = 0.99
    assert boxes_from_maps(specks, np.zeros(shape)) == []


def test_the_published_architecture_and_checkpoint_layout(tmp_path):
    import torch

    from models.registry import weights_dir

    real = build_craft(1)
    assert sum(p.numel() for p in real.parameters()) == 20_770_466
    dest = weights_dir() / "craft-mlt-25k"
    dest.mkdir(parents=True, exist_ok=True)
    # the authors saved a DataParallel model: every key starts with "module."
    torch.save({f"module.{k}": v for k, v in real.state_dict().items()}, dest / "craft_mlt_25k.pth")
    try:
        det = load_craft("craft-mlt-25k")
        maps = det.model(torch.zeros(1, 3, 64, 96))
        assert maps.shape == (1, 32, 48, 2)  # region + affinity at half resolution
        assert len(det.weights_sha256) == 64
    finally:
        (dest / "craft_mlt_25k.pth").unlink()


def test_tiny_craft_through_the_text_stage_on_real_photos(skimage_dir):
    stage = TextStage(TextParams(backend="craft", craft_model=TINY))
    stage.setup()
    photos = [Image.open(skimage_dir / n).convert("RGB") for n in ("page.png", "astronaut.png", "coffee.png")]
    results = stage.process([StageItem(i, "x", image=img) for i, img in enumerate(photos)])
    for r in results:
        assert isinstance(r.text_boxes, int) and r.text_boxes >= 0 and 0.0 <= r.text_area <= 1.0
        assert r.model == TINY and r.weights_sha256 == "tiny-random"


def test_craft_guards(engine, photo_dir, monkeypatch):
    from curation.planner import submit

    spec = parse_spec({"name": "x", "modality": "image", "source": {"uri": str(photo_dir)},
                       "stages": [{"name": "probe"}, {"name": "text", "params": {"backend": "craft"}}]})
    with pytest.raises(SpecError, match="curation models pull craft-mlt-25k"):
        submit(engine, spec)
    monkeypatch.delenv("CURATION_ALLOW_TINY_MODELS", raising=False)
    with pytest.raises(SpecError, match="random-weight test model"):
        parse_spec({"name": "x", "modality": "image", "source": {"uri": str(photo_dir)},
                    "stages": [{"name": "probe"}, {"name": "text", "params": {"backend": "craft", "craft_model": TINY}}]})
    with pytest.raises(Exception, match="random-weight test model"):
        load_craft(TINY)
