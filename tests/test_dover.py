"""DOVER: our implementation of the authors' architecture (exact parameter count and checkpoint layout),
the fusion constants, the deterministic view sampling, and the stage on real scenes with the tiny
variant, into curated_scenes."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from sqlalchemy import text

from curation.sample_media import MediaUnavailable
from models.dover import (
    DOVER,
    TINY,
    aesthetic_frame_indices,
    aesthetic_view,
    fragments,
    fuse,
    load_dover,
    model_inputs,
    technical_frame_indices,
)
from models.registry import MissingWeights, weights_dir
from tests.missing import unavailable
from workers.stage import Span, StageItem


def test_the_architecture_is_dovers():
    with torch.device("meta"):
        model = DOVER()
    assert sum(p.numel() for p in model.parameters()) == 56_218_302  # Swin-T 3D + ConvNeXt-T 3D + 2 heads
    sd = model.state_dict()
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    assert shapes["technical_backbone.patch_embed.proj.weight"] == (96, 3, 2, 4, 4)
    assert shapes["technical_backbone.layers.0.blocks.1.attn.fragment_position_bias_table"] == (2535, 3)
    assert shapes["technical_backbone.layers.3.blocks.1.attn.relative_position_bias_table"] == (2535, 24)
    assert "technical_backbone.layers.3.blocks.0.attn.fragment_position_bias_table" not in sd  # stage 4: none
    assert shapes["technical_backbone.layers.2.blocks.5.attn.relative_position_index"] == (392, 392)
    assert shapes["technical_backbone.layers.2.downsample.reduction.weight"] == (768, 1536)
    assert shapes["aesthetic_backbone.stages.0.0.dwconv.weight"] == (96, 1, 1, 7, 7)  # inflation "131"
    assert shapes["aesthetic_backbone.stages.0.1.dwconv.weight"] == (96, 1, 3, 7, 7)
    assert shapes["aesthetic_backbone.downsample_layers.3.1.weight"] == (768, 384, 1, 2, 2)
    assert shapes["technical_head.fc_hid.weight"] == (64, 768, 1, 1, 1) and shapes["aesthetic_head.fc_last.bias"] == (1,)


def test_fusion_is_the_authors_weighted_sum():
    mid = fuse(0.1107, -0.08285)  # each raw score at its training mean
    assert (mid.technical, mid.aesthetic, mid.overall) == pytest.approx((0.5, 0.5, 0.5))
    s = fuse(0.1107 + 0.07355, -0.08285)  # technical one std up
    assert s.technical == pytest.approx(1 / (1 + np.exp(-1))) and s.overall == pytest.approx(1 / (1 + np.exp(-0.6104)))
    s = fuse(0.1107, -0.08285 + 0.03774)
    assert s.overall == pytest.approx(1 / (1 + np.exp(-0.3896)))


def test_views_sample_the_documented_frames_and_native_patches():
    t = technical_frame_indices(300)  # thirds of 100 frames, 64-frame clip centred in each
    assert len(t) == 96 and t[:3] == [18, 20, 22] and t[32] == 118 and t[95] == 218 + 62
    a = aesthetic_frame_indices(320)  # one frame from the middle of each 10-frame segment
    assert len(a) == 32 and a[:3] == [4, 14, 24]
    assert max(technical_frame_indices(40)) < 40 and max(aesthetic_frame_indices(20)) < 20  # short scenes wrap
    frame = np.random.default_rng(0).integers(0, 255, (1, 480, 640, 3), dtype=np.uint8)
    frag = fragments(frame)
    assert frag.shape == (1, 224, 224, 3)
    assert np.array_equal(frag[0, :32, :32], frame[0, 18:50, 29:61])  # native pixels, no resampling
    assert np.array_equal(frag[0, 32:64, 64:96], frame[0, 68 + 18:68 + 50, 2 * 91 + 29:2 * 91 + 61])
    small = fragments(frame[:, :120, :160])  # short side under 224: scaled up first
    assert small.shape == (1, 224, 224, 3)
    tech, aes = model_inputs(fragments(np.repeat(frame, 96, 0)), aesthetic_view(np.repeat(frame, 32, 0)))
    assert tuple(tech.shape) == (3, 3, 32, 224, 224) and tuple(aes.shape) == (1, 3, 32, 224, 224)


def test_a_checkpoint_in_the_authors_layout_loads_strictly():
    dest = weights_dir() / "dover"
    dest.mkdir(parents=True, exist_ok=True)
    try:
        torch.manual_seed(0)
        real = DOVER()
        torch.save(real.state_dict(), dest / "DOVER.pth")
        loaded = load_dover("dover")
        assert len(loaded.weights_sha256) == 64
        assert all(torch.equal(a, b) for a, b in zip(loaded.model.state_dict().values(), real.state_dict().values()))
        torch.save(DOVER(tiny=True).state_dict(), dest / "DOVER.pth")
        with pytest.raises(MissingWeights, match="not a DOVER checkpoint"):
            load_dover("dover")
    finally:
        shutil.rmtree(dest)


@pytest.fixture(scope="module")
def bikes(media_cache):
    from curation.sample_media import sample_clips

    try:
        return sample_clips(media_cache)["bikes"]
    except (MediaUnavailable, KeyError) as exc:
        unavailable(f"real clips unavailable: {exc}")


def test_the_stage_scores_a_real_scene(bikes):
    from workers.dover import DoverParams, DoverStage

    stage = DoverStage(DoverParams(model=TINY))
    stage.setup()
    r = stage.process([StageItem(1, str(bikes), path=str(bikes), span=Span(76, 137, 3.04, 5.48))])[0]
    assert all(0.0 <= v <= 1.0 for v in (r.dover_technical, r.dover_aesthetic, r.dover_overall))
    assert fuse(r.technical_raw, r.aesthetic_raw).overall == pytest.approx(r.dover_overall, abs=1e-6)
    distinct = set(technical_frame_indices(61)) | set(aesthetic_frame_indices(61))  # a 61-frame scene
    assert r.frames_sampled == len(distinct) and (r.model, r.weights_sha256) == (TINY, "tiny-random")
    again = stage.process([StageItem(1, str(bikes), path=str(bikes), span=Span(76, 137, 3.04, 5.48))])[0]
    assert again == r  # no random offsets: the same scene always gets the same score
    assert stage.process([StageItem(2, str(bikes), path=str(bikes))])[0].error_class == "not_a_scene"


def test_a_video_job_writes_dover_into_curated_scenes(engine, db_url, bikes, tmp_path, monkeypatch):
    from curation.planner import submit
    from curation.spec import SpecError, parse_spec
    from tests.helpers import submit_spec
    from workers.runtime import StageWorker

    d = tmp_path / "v"
    d.mkdir()
    shutil.copyfile(bikes, d / "bikes.mp4")
    stages = [{"name": "video_probe"}, {"name": "scenes"}, {"name": "dover", "params": {"model": TINY}}]
    job = submit_spec(engine, {"name": "dover", "modality": "video", "source": {"uri": str(d)}, "stages": stages})
    for s in stages:
        StageWorker(db_url, s["name"], sweep=False).run(idle_exit_s=1.0)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT status FROM jobs WHERE job_id=:j"), {"j": job}).scalar_one() == "completed"
        rows = conn.execute(text("SELECT dover_technical, dover_aesthetic, dover_overall FROM curated_scenes")).all()
    assert rows and all(None not in r for r in rows)
    spec = parse_spec({"name": "x", "modality": "video", "source": {"uri": str(d)},
                       "stages": [{"name": "video_probe"}, {"name": "scenes"}, {"name": "dover"}]})
    with pytest.raises(SpecError, match="curation models pull dover"):
        submit(engine, spec)
    monkeypatch.delenv("CURATION_ALLOW_TINY_MODELS", raising=False)
    with pytest.raises(SpecError, match="random-weight test model"):
        parse_spec({"name": "x", "modality": "video", "source": {"uri": str(d)},
                    "stages": [{"name": "video_probe"}, {"name": "scenes"}, {"name": "dover", "params": {"model": TINY}}]})
