"""Video latents end to end on real footage: curated scenes → HunyuanVideo VAE (tiny variant of the real
class) → video tar shards recorded in the database → the loader's video batches → a few training steps
→ a text-to-video sample written as an MP4 that decodes to the right frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from sqlalchemy import text

from curation.sample_media import MediaUnavailable
from tests.missing import unavailable
from training.encode import (
    HUNYUAN_SCALING,
    SceneRecord,
    encode_scenes,
    encode_video,
    scene_frame_count,
    tiny_video_vae,
    video_frame_count,
)
from training.sample import latent_frames


def test_the_reports_frame_arithmetic():
    assert (video_frame_count(5.0), video_frame_count(10.0), video_frame_count(2.5)) == (121, 241, 61)
    assert (scene_frame_count(2.0, 5.0), scene_frame_count(2.44, 5.0), scene_frame_count(30.0, 5.0)) == (45, 57, 121)
    assert (latent_frames(5.0), latent_frames(10.0)) == (31, 61)  # seconds·24//4 + 1
    assert HUNYUAN_SCALING == 0.476986


def test_tiny_video_vae_is_the_hunyuan_class_with_its_compression():
    from diffusers import AutoencoderKLHunyuanVideo

    vae, info = tiny_video_vae()
    assert isinstance(vae, AutoencoderKLHunyuanVideo) and info.name.startswith("tiny-random")
    assert (vae.config.temporal_compression_ratio, vae.config.spatial_compression_ratio) == (4, 8)
    frames = np.random.default_rng(0).integers(0, 255, (9, 64, 96, 3), dtype=np.uint8)
    assert encode_video(vae, info, frames).shape == (3, 8, 12, 16)
    with pytest.raises(ValueError, match="4k \\+ 1 frames"):
        encode_video(vae, info, frames[:8])


@pytest.fixture(scope="module")
def bikes(media_cache):
    from curation.sample_media import sample_clips

    try:
        return sample_clips(media_cache)["bikes"]
    except (MediaUnavailable, KeyError) as exc:
        unavailable(f"real clips unavailable: {exc}")


def test_scenes_to_shards_to_batches_to_training_to_mp4(bikes, tmp_path):
    from curation.video import probe_video
    from training.data import LatentLoader
    from training.sample import load_model, sample_video, write_mp4
    from training.train import TrainConfig, Trainer

    vae, info = tiny_video_vae()
    scenes = [SceneRecord("s0", str(bikes), 0.0, 2.0, {"caption": "bikes"}),
              SceneRecord("s1", str(bikes), 3.04, 5.48, {"caption": "more bikes"}),
              SceneRecord("s2", str(bikes), 5.5, 9.0, {"caption": "bikes again"})]
    shards = encode_scenes(scenes, vae, info, tier="low", output=str(tmp_path / "shards"), max_seconds=2.5)
    assert [len(s.keys) for s in shards] == [3] and shards[0].modality == "video"  # up to 16 per low tar
    frames = [scene_frame_count(sc.end_s - sc.start_s, 2.5) for sc in scenes]
    assert frames == [45, 57, 61]
    assert [sh[0] for sh in shards[0].shapes] == [(n - 1) // 4 + 1 for n in frames]
    bucket = shards[0].bucket
    assert all(sh[1:] == (bucket[0] // 8, bucket[1] // 8, 16) for sh in shards[0].shapes)

    loader = LatentLoader([shards[0].uri], t_max=30, image_share=0.0, seed=0)
    batch = next(iter(loader))
    assert batch.modality == "video" and sum(x.shape[0] for x in batch.latents) <= 30

    cfg = TrainConfig(model="tiny", text_encoders="tiny", lr=1e-3, warmup_steps=1, max_steps=2, t_max=30, image_share=0.0,
                      checkpoint_every=0)
    trainer = Trainer(cfg, [shards[0].uri], tmp_path / "run")
    trainer.train(log=None)
    assert trainer.step_num == 2 and all(np.isfinite(r.loss) for r in trainer.history)
    model, config = load_model(trainer.save().parent)
    latent, video = sample_video(model, config, "bikes", vae=vae, vae_info=info, height=64, width=96, seconds=0.5,
                                 steps=2)
    assert latent.shape == (1, latent_frames(0.5), 8, 12, 16) and torch.isfinite(latent).all()
    assert video.shape == (4 * (latent_frames(0.5) - 1) + 1, 64, 96, 3) and video.dtype == np.uint8
    out = tmp_path / "sample.mp4"
    write_mp4(video, out)
    probed = probe_video(out)
    assert (probed.width, probed.height, probed.frames, probed.codec) == (96, 64, video.shape[0], "h264")


def test_encode_a_slice_of_curated_scenes_through_the_cli(engine, db_url, bikes, tmp_path, skimage_dir):
    import shutil

    from tests.helpers import submit_spec
    from tests.test_cli import cli, drain

    d = tmp_path / "videos"
    d.mkdir()
    shutil.copyfile(bikes, d / "bikes.mp4")
    job = submit_spec(engine, {"name": "v", "modality": "video", "source": {"uri": str(d)},
                               "stages": [{"name": "video_probe"}, {"name": "scenes"}]})
    drain(db_url, "video_probe")
    drain(db_url, "scenes")
    out = cli(db_url, "encode", "--view", "curated_scenes", "--where", "true", "--job", str(job), "--vae", "tiny",
              "--seconds", "1", "--allow-uncaptioned", "--output", str(tmp_path / "shards"))
    assert "random-weight test VAE" in out.stderr
    with engine.connect() as conn:
        n_scenes = conn.execute(text("SELECT count(*) FROM curated_scenes")).scalar_one()
        rows = conn.execute(text("SELECT l.shape, s.modality, s.vae, s.scaling_factor, s.shift_factor "
                                 "FROM latents l JOIN shards s USING (shard_id)")).all()
    assert n_scenes >= 1 and len(rows) == n_scenes
    for r in rows:  # 1 s at 24 fps → 25 frames → 7 latent frames
        assert r.shape[0] == 7 and r.shape[3] == 16 and r.modality == "video" and r.vae == "tiny-random-video"
        assert abs(r.scaling_factor - HUNYUAN_SCALING) < 1e-9 and r.shift_factor == 0.0
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({"model": "tiny-i2v", "text_encoders": "tiny", "warmup_steps": 1, "t_max": 12,
                                   "image_share": 0.0,
                                   "checkpoint_every": 0}))
    cli(db_url, "train", str(cfg), "--data", str(tmp_path / "shards"), "--out", str(tmp_path / "run"), "--steps", "1")
    cli(db_url, "sample", str(tmp_path / "run"), "--prompt", "bikes", "--vae", "tiny", "--out",
        str(tmp_path / "s.mp4"), "--height", "64", "--width", "64", "--seconds", "0.25", "--steps", "2",
        "--image", str(skimage_dir / "astronaut.png"))  # image-to-video: the model is tiny-i2v
    from curation.video import probe_video

    assert probe_video(tmp_path / "s.mp4").frames == 4 * (latent_frames(0.25) - 1) + 1


def _random_model(name: str):
    from training.configs import CONFIGS
    from training.model import CrossDiT

    torch.manual_seed(0)
    model = CrossDiT(CONFIGS[name]).eval()
    for p in model.parameters():  # away from the zero init, so the output depends on the inputs
        torch.nn.init.normal_(p, std=0.05)
    return model


def test_image_to_video_keeps_the_first_frame_and_editing_follows_the_image(skimage_dir):
    from PIL import Image

    from training.encode import encode_image, tiny_image_vae
    from training.sample import sample_image, sample_video

    photo = Image.open(skimage_dir / "astronaut.png").convert("RGB").resize((64, 64))
    vae, info = tiny_video_vae()
    latent, frames = sample_video(_random_model("tiny-i2v"), {"text_encoders": "tiny"}, "a walk", vae=vae,
                                  vae_info=info, height=64, width=64, seconds=0.5, steps=3, first_image=photo)
    first = encode_video(vae, info, np.asarray(photo)[None])
    assert torch.allclose(latent[0, 0], torch.from_numpy(first[0]))  # frame 0 is the image, clean
    assert frames.shape == (4 * (latent_frames(0.5) - 1) + 1, 64, 64, 3)
    with pytest.raises(ValueError, match="image-to-video model"):
        sample_video(_random_model("tiny"), {"text_encoders": "tiny"}, "x", vae=vae, vae_info=info, height=64,
                     width=64, seconds=0.25, steps=1, first_image=photo)

    ivae, iinfo = tiny_image_vae()
    editor = _random_model("tiny-edit")
    kw = dict(vae=ivae, vae_info=iinfo, height=64, width=64, steps=3)
    a, _ = sample_image(editor, {"text_encoders": "tiny-hf"}, "make it black and white", edit_image=photo, **kw)
    b, _ = sample_image(editor, {"text_encoders": "tiny-hf"}, "make it black and white",
                        edit_image=photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT), **kw)
    assert a.shape == (1, 1, 8, 8, 16) and not torch.allclose(a, b)  # the result depends on the image edited
    assert encode_image(ivae, iinfo, photo).shape == (1, 8, 8, 16)
    with pytest.raises(ValueError, match="needs an editing model"):
        sample_image(_random_model("tiny"), {"text_encoders": "tiny"}, "x", edit_image=photo, **kw)
