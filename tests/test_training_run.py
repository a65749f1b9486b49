"""A short end-to-end run on CPU: real photos → tiny VAE latents in shards → train the tiny CrossDiT a
few steps → checkpoint → resume (exactly) → sample a PNG."""

from __future__ import annotations

import torch
from PIL import Image

from training.encode import ImageRecord, encode_images, safe_key, tiny_image_vae
from training.sample import load_model, sample_image
from training.train import TrainConfig, Trainer


def shards_of_photos(tmp_path, skimage_dir):
    names = ["astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "camera.png", "motorcycle_left.png"]
    records = [ImageRecord(safe_key(n), str(skimage_dir / n), {"caption": f"a photo: {n.split('.')[0]}"})
               for n in names]
    vae, info = tiny_image_vae()
    shards = encode_images(records, vae, info, tier="low", output=str(tmp_path / "shards"),
                           samples_per_tar={"low": 2, "medium": 2, "high": 2})
    return [s.uri for s in shards], vae, info


def config(**kw) -> TrainConfig:
    return TrainConfig(**{"model": "tiny", "text_encoders": "tiny", "lr": 2e-3, "warmup_steps": 2, "max_steps": 6, "t_max": 2,
                          "image_share": 1.0, "checkpoint_every": 0, "log_every": 1, **kw})


def test_train_checkpoint_resume_sample(tmp_path, skimage_dir):
    uris, vae, info = shards_of_photos(tmp_path, skimage_dir)

    straight = Trainer(config(), uris, tmp_path / "a")
    straight.train(log=None)
    assert straight.step_num == 6 and all(torch.isfinite(torch.tensor(r.loss)) for r in straight.history)

    first = Trainer(config(), uris, tmp_path / "b")
    first.train(3, log=None)
    ckpt = first.save()
    resumed = Trainer.resume(ckpt, uris)
    assert resumed.step_num == 3
    resumed.train(log=None)
    assert [r.loss for r in first.history + resumed.history] == [r.loss for r in straight.history]
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    for a, b in zip(straight.ema.state_dict().values(), resumed.ema.state_dict().values()):
        assert torch.equal(a, b)

    final = resumed.save()
    model, cfg = load_model(final.parent)
    latent, image = sample_image(model, cfg, "a photo: astronaut", vae=vae, vae_info=info, height=256, width=256,
                                 steps=4)
    assert latent.shape == (1, 1, 32, 32, 16) and torch.isfinite(latent).all()
    out = tmp_path / "sample.png"
    image.save(out)
    assert Image.open(out).size == (256, 256)


def test_training_reduces_the_loss_on_real_latents(tmp_path, skimage_dir):
    uris, _, _ = shards_of_photos(tmp_path, skimage_dir)
    trainer = Trainer(config(max_steps=60, lr=3e-3, uncond_prob=0.0), uris, tmp_path / "c")
    trainer.train(log=None)
    early = sum(r.loss for r in trainer.history[:10]) / 10
    late = sum(r.loss for r in trainer.history[-10:]) / 10
    assert late < 0.8 * early, (early, late)
