"""TOPIQ, Q-Align and SAM 2 + Sobel complexity: the tiny variants of the real classes on real photos,
the report's numbers, the real configurations and checkpoint loaders, the frame sampling for scenes,
and a job that writes all three into curated_images."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
from PIL import Image, ImageFilter
from sqlalchemy import text

from curation.sample_media import MediaUnavailable
from curation.spec import SpecError, parse_spec
from models.registry import MissingWeights, weights_dir
from tests.helpers import spy_on_frames, submit_spec
from tests.missing import unavailable
from workers.stage import Span, StageItem

PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png", "camera.png")


@pytest.fixture(scope="module")
def photos(skimage_dir):
    return {n: Image.open(skimage_dir / n).convert("RGB") for n in PHOTOS}


# --- TOPIQ -------------------------------------------------------------------------------------------

def test_topiq_configurations_are_pyiqas(photos):
    from pyiqa.archs.topiq_arch import CFANet
    from pyiqa.default_model_configs import DEFAULT_CONFIGS

    from models.topiq import _CONFIGS, AESTHETIC, TECHNICAL, TINY, load_topiq

    for head, metric in ((TECHNICAL, "topiq_nr"), (AESTHETIC, "topiq_iaa_res50")):
        opts = {k: v for k, v in DEFAULT_CONFIGS[metric]["metric_opts"].items() if k not in ("type", "use_ref")}
        assert opts == _CONFIGS[head]
        assert type(load_topiq(head, TINY).model) is CFANet


def test_topiq_scores_real_photos_with_provenance(photos):
    from models.topiq import TINY
    from workers.topiq import TopiqParams, TopiqStage

    stage = TopiqStage(TopiqParams(technical_model=TINY, aesthetic_model=TINY, max_side=512))
    stage.setup()
    results = stage.process([StageItem(i, n, image=img) for i, (n, img) in enumerate(photos.items())])
    assert len(results) == len(PHOTOS)
    for r in results:
        assert isinstance(r.topiq_technical, float) and np.isfinite(r.topiq_technical)
        assert 1.0 <= r.topiq_aesthetic <= 10.0  # the mean of a 10-level distribution
        assert (r.technical_model, r.technical_sha256) == (TINY, "tiny-random")
    assert len({r.topiq_technical for r in results}) == len(PHOTOS)  # the score depends on the image


def test_topiq_loader_takes_a_pyiqa_checkpoint_and_refuses_a_wrong_one(tmp_path):
    import torch

    from models.topiq import _CONFIGS, TECHNICAL, TINY, _cfanet, load_topiq

    dest = weights_dir() / TECHNICAL
    dest.mkdir(parents=True, exist_ok=True)
    file = dest / "cfanet_nr_koniq_res50-9a73138b.pth"
    try:
        torch.manual_seed(3)
        real = _cfanet(**_CONFIGS[TECHNICAL])
        torch.save({"params": real.state_dict()}, file)  # pyiqa's checkpoint layout
        loaded = load_topiq(TECHNICAL, TECHNICAL)
        assert len(loaded.weights_sha256) == 64 and (dest / (file.name + ".sha256")).exists()
        x = np.asarray(Image.new("RGB", (96, 64), (90, 120, 150)))
        with torch.no_grad():
            expected = float(real.eval()(torch.from_numpy(x.transpose(2, 0, 1).copy()).float().div(255)[None]))
        assert loaded.score([x]) == pytest.approx([expected], rel=1e-5)
        torch.save({"params": load_topiq(TECHNICAL, TINY).model.state_dict()}, file)  # a ResNet-18 one
        with pytest.raises(MissingWeights, match="not a TOPIQ checkpoint"):
            load_topiq(TECHNICAL, TECHNICAL)
    finally:
        shutil.rmtree(dest)


# --- Q-Align -----------------------------------------------------------------------------------------

def test_qalign_method_prompts_levels_and_expected_score():
    from models.qalign import LEVEL_SCORES, LEVELS, expected_score, prompt_words

    assert LEVELS == ("excellent", "good", "fair", "poor", "bad") and LEVEL_SCORES == (5, 4, 3, 2, 1)
    assert prompt_words("quality", "image") == ("How would you rate the quality of this image?",
                                                "The quality of the image is")
    assert prompt_words("aesthetics", "video")[1] == "The aesthetics of the video is"
    with pytest.raises(ValueError):
        prompt_words("sharpness", "image")
    logits = np.array([[0.0] * 5, [50.0, 0, 0, 0, 0], [0, 0, 0, 0, 50.0], [0, 50.0, 50.0, 0, 0]])
    assert expected_score(logits) == pytest.approx([3.0, 5.0, 1.0, 3.5])


def test_qalign_rates_real_photos_batched_as_one_by_one(photos):
    from models.qalign import QAlignScorer
    from models.qwen_vl import TINY, load_qwen_vl

    scorer = QAlignScorer(load_qwen_vl(TINY))
    assert len(set(scorer.level_ids)) == 5
    images = list(photos.values())
    together = scorer.score([[img] for img in images], "quality")
    alone = [scorer.score([[img]], "quality")[0] for img in images]
    assert together == pytest.approx(alone, abs=1e-5)  # padding does not move the answer position
    assert all(1.0 <= s <= 5.0 for s in together) and len(set(together)) == len(images)


def test_qalign_stage_columns_and_the_reports_sft_rule(photos):
    from models.qwen_vl import TINY
    from workers.qalign import SFT_MIN_AESTHETIC, SFT_MIN_QUALITY, QAlignParams, QAlignStage

    assert (SFT_MIN_QUALITY, SFT_MIN_AESTHETIC) == (4.0, 2.0)  # report §3: Q-Align > 4, aesthetic > 2
    items = [StageItem(i, n, image=img) for i, (n, img) in enumerate(photos.items())]
    stage = QAlignStage(QAlignParams(model=TINY))
    stage.setup()
    strict = stage.process(items)
    for r in strict:
        assert 1 <= r.qalign_quality <= 5 and 1 <= r.qalign_aesthetic <= 5 and r.frames_sampled == 1
        assert r.sft_candidate == (r.qalign_quality > 4 and r.qalign_aesthetic > 2)
        assert (r.model, r.weights_sha256) == (TINY, "tiny-random")
    loose_stage = QAlignStage(QAlignParams(model=TINY, sft_min_quality=1.0, sft_min_aesthetic=1.0))
    loose_stage.setup()
    loose = loose_stage.process(items)
    assert all(r.sft_candidate for r in loose)


def test_video_qalign_rates_eight_evenly_spaced_frames_together(media_cache, monkeypatch):
    from curation.sample_media import sample_clips
    from models.qwen_vl import TINY
    from workers.video_qalign import VideoQAlignParams, VideoQAlignStage

    try:
        bikes = sample_clips(media_cache)["bikes"]
    except (MediaUnavailable, KeyError) as exc:
        unavailable(f"real clips unavailable: {exc}")
    seen = spy_on_frames(monkeypatch)
    stage = VideoQAlignStage(VideoQAlignParams(model=TINY))
    stage.setup()
    prompts, real_prompt = [], stage._scorer._prompt
    monkeypatch.setattr(stage._scorer, "_prompt",
                        lambda n, task, medium: prompts.append((n, medium)) or real_prompt(n, task, medium))
    result = stage.process([StageItem(1, str(bikes), path=str(bikes), span=Span(76, 137, 3.04, 5.48))])[0]
    assert result.frames_sampled == 8 and seen == pytest.approx([3.04 + 2.44 * (k + 0.5) / 8 for k in range(8)])
    assert prompts == [(8, "video"), (8, "video")]  # quality and aesthetics, each one prompt of 8 frames
    not_scene = stage.process([StageItem(2, str(bikes), path=str(bikes))])[0]
    assert not_scene.error_class == "not_a_scene"


# --- complexity -------------------------------------------------------------------------------------

def test_complexity_formula_and_defaults():
    from workers.complexity import ComplexityParams, complexity_score

    p = ComplexityParams()
    assert (p.points_per_side, p.pred_iou_thresh, p.stability_score_thresh) == (16, 0.8, 0.95)
    assert complexity_score(0, 0.0, p) == 0.0
    assert complexity_score(64, 0.2, p) == pytest.approx(1.0)
    assert complexity_score(1000, 5.0, p) == pytest.approx(1.0)  # both terms saturate
    assert complexity_score(7, 0.0, p) == pytest.approx(0.5 * np.log(8) / np.log(65))
    assert complexity_score(0, 0.1, p) == pytest.approx(0.25)


def test_complexity_on_real_photos_and_a_plain_background(photos):
    from models.sam2_masks import TINY
    from workers.complexity import ComplexityParams, ComplexityStage
    from workers.edges import EdgesParams, EdgesStage

    plain = photos["astronaut.png"].filter(ImageFilter.GaussianBlur(30))
    # random weights keep no mask at SAM 2's default thresholds; at 0 they keep some
    stage = ComplexityStage(ComplexityParams(model=TINY, points_per_side=4, max_side=512, pred_iou_thresh=0.0,
                                             stability_score_thresh=0.0))
    stage.setup()
    busy, flat = stage.process([StageItem(0, "a", image=photos["astronaut.png"]), StageItem(1, "p", image=plain)])
    for r in (busy, flat):
        assert r.mask_count >= 1 and 0.0 < r.mask_coverage <= 1.0 and 0.0 <= r.complexity <= 1.0
        assert (r.model, r.weights_sha256) == (TINY, "tiny-random")
    assert busy.complexity > flat.complexity and flat.too_simple and not busy.too_simple
    # the Sobel half is the edges stage's score of the same image
    edges = EdgesStage(EdgesParams()).process([StageItem(0, "a", image=photos["astronaut.png"].resize((512, 512)))])[0]
    assert busy.edge_density == pytest.approx(edges.edge_density, abs=1e-6)


@pytest.fixture(scope="module")
def sam2_release():
    """A SAM 2.1 Hiera-T checkpoint in the Hugging Face layout (``save_pretrained``: config.json +
    model.safetensors), written from the release's configuration with random weights into the weights folder."""
    import torch
    from transformers import Sam2Model

    from models.sam2_masks import released_config

    name = "sam2.1-hiera-tiny"
    dest = weights_dir() / name
    torch.manual_seed(0)
    model = Sam2Model(released_config(name)).eval()
    model.save_pretrained(dest)
    yield name, dest, model
    shutil.rmtree(dest)


def test_sam2_release_configuration_loads_strictly_with_identical_outputs(sam2_release, photos):
    import torch
    from transformers import Sam2VideoConfig, Sam2VideoModel

    from models.registry import REGISTRY
    from models.sam2_masks import load_sam2, released_config

    name, dest, real = sam2_release
    assert {p.name for p in dest.iterdir()} == set(REGISTRY[name].files)  # the registry's files are the layout
    with torch.device("meta"):  # with the video tracker's modules: SAM 2.1 Hiera-T's "38.9M"
        tracker = Sam2VideoModel(Sam2VideoConfig(vision_config=released_config(name).vision_config))
    assert 38.9e6 <= sum(p.numel() for p in tracker.parameters()) < 39.0e6
    loaded = load_sam2(name)
    assert loaded.image_size == 1024 and len(loaded.weights_sha256) == 64
    assert loaded.model.state_dict().keys() == real.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(loaded.model.state_dict().values(), real.state_dict().values()))
    image = np.array(photos["coffee.png"].resize((320, 240)))
    prompts = loaded.processor(images=image, input_points=[[[[80, 60]], [[240, 180]]]], input_labels=[[[1], [1]]],
                               return_tensors="pt")
    with torch.inference_mode():
        a, b = (m(pixel_values=prompts["pixel_values"], input_points=prompts["input_points"],
                  input_labels=prompts["input_labels"]) for m in (real, loaded.model))
    assert a.pred_masks.shape == (1, 2, 3, 256, 256)
    assert torch.equal(a.pred_masks, b.pred_masks) and torch.equal(a.iou_scores, b.iou_scores)


def test_sam2_loader_refuses_a_checkpoint_with_missing_foreign_or_reshaped_keys(sam2_release):
    import json

    import torch
    from safetensors.torch import load_file, save_file
    from transformers import Sam2VideoConfig

    from models.sam2_masks import CONFIGS, load_sam2, released_config

    name, dest, _ = sam2_release
    path = dest / "model.safetensors"
    state, config = load_file(str(path)), (dest / "config.json").read_text()
    key = "mask_decoder.iou_prediction_head.proj_out.weight"
    bad = [({k: v for k, v in state.items() if k != key}, f"parameters missing: 1 (e.g. {key})"),
           ({**state, "extra_head.weight": torch.zeros(2)}, "unexpected keys: 1 (e.g. extra_head.weight)"),
           ({**state, key: torch.zeros(2, 2)}, f"shapes differ: 1 (e.g. {key} (2, 2) ")]
    try:
        for weights, message in bad:
            save_file(weights, str(path), metadata={"format": "pt"})
            with pytest.raises(MissingWeights, match=re.escape(message)):
                load_sam2(name)
        # the published folder also serves Sam2VideoModel: a sam2_video config.json, and the tracker's modules
        # are the only keys left unused
        Sam2VideoConfig(vision_config=released_config(name).vision_config).to_json_file(dest / "config.json")
        save_file({**state, "memory_encoder.projection.bias": torch.zeros(64)}, str(path), metadata={"format": "pt"})
        assert load_sam2(name).name == name
        large = json.loads(config)
        large["vision_config"]["backbone_config"].update(CONFIGS["sam2.1-hiera-large"])
        (dest / "config.json").write_text(json.dumps(large))
        with pytest.raises(MissingWeights, match="is not sam2.1-hiera-tiny's"):
            load_sam2(name)
    finally:
        save_file(state, str(path), metadata={"format": "pt"})
        (dest / "config.json").write_text(config)


# --- a job, and the guards ---------------------------------------------------------------------------

def test_a_job_writes_all_three_into_curated_images(engine, db_url, skimage_dir, tmp_path):
    from models.qwen_vl import TINY as QWEN
    from models.sam2_masks import TINY as SAM
    from models.topiq import TINY as TOPIQ
    from workers.runtime import StageWorker

    d = tmp_path / "in"
    d.mkdir()
    for n in ("astronaut.png", "coffee.png"):
        shutil.copyfile(skimage_dir / n, d / n)
    stages = [{"name": "probe"},
              {"name": "topiq", "params": {"technical_model": TOPIQ, "aesthetic_model": TOPIQ}},
              {"name": "qalign", "params": {"model": QWEN}},
              {"name": "complexity", "params": {"model": SAM, "points_per_side": 2, "max_side": 256}}]
    job = submit_spec(engine, {"name": "iqa", "modality": "image", "source": {"uri": str(d)}, "stages": stages})
    for s in stages:
        StageWorker(db_url, s["name"], sweep=False).run(idle_exit_s=1.0)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT status FROM jobs WHERE job_id=:j"), {"j": job}).scalar_one() == "completed"
        rows = conn.execute(text(
            "SELECT topiq_technical, topiq_aesthetic, qalign_quality, qalign_aesthetic, qalign_sft_candidate, "
            "complexity, mask_count, too_simple FROM curated_images")).all()
        types = dict(conn.execute(text(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'curated_images' "
            "AND column_name IN ('topiq_technical', 'qalign_quality', 'qalign_sft_candidate', 'mask_count')")).all())
    assert len(rows) == 2 and all(None not in r for r in rows)
    assert types == {"topiq_technical": "double precision", "qalign_quality": "double precision",
                     "qalign_sft_candidate": "boolean", "mask_count": "integer"}


def test_absent_weights_and_tiny_models_are_refused(engine, photo_dir, monkeypatch, tmp_path):
    from curation.planner import submit

    monkeypatch.setenv("CURATION_WEIGHTS_DIR", str(tmp_path / "no-weights"))  # other tests pull into the shared one

    spec = parse_spec({"name": "x", "modality": "image", "source": {"uri": str(photo_dir)},
                       "stages": [{"name": "probe"}, {"name": "topiq"}, {"name": "qalign"}, {"name": "complexity"}]})
    with pytest.raises(SpecError) as info:
        submit(engine, spec)
    for model in ("topiq-nr-koniq", "topiq-iaa-ava", "qwen2.5-vl-7b-instruct", "sam2.1-hiera-tiny"):
        assert f"curation models pull {model}" in str(info.value)
    with pytest.raises(SpecError, match="unknown SAM 2 model"):
        parse_spec({"name": "x", "modality": "image", "source": {"uri": str(photo_dir)},
                    "stages": [{"name": "probe"}, {"name": "complexity", "params": {"model": "sam9"}}]})
    monkeypatch.delenv("CURATION_ALLOW_TINY_MODELS", raising=False)
    for stage, params in (("topiq", {"technical_model": "topiq-tiny-random"}), ("qalign", {"model": "qwen-vl-tiny-random"}),
                          ("complexity", {"model": "sam2-tiny-random"})):
        with pytest.raises(SpecError, match="random-weight test model"):
            parse_spec({"name": "x", "modality": "image", "source": {"uri": str(photo_dir)},
                        "stages": [{"name": "probe"}, {"name": stage, "params": params}]})
