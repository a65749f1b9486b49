"""Device placement and precision (issue 11 §2), proven without a GPU: on the ``meta`` device any CPU
tensor mixed into a computation raises, so whole training steps and a sampling call that run there put
the model, the EMA, the text encoders and every batch tensor on the trainer's device."""

from __future__ import annotations

import pytest
import torch

from training.data import Batch
from training.train import TrainConfig, Trainer, autocast_context, check_tiny_allowed

torch.set_num_threads(1)


def video_batch(T=3, n=2):
    g = torch.Generator().manual_seed(0)
    return Batch("video", (64, 64), [f"k{i}" for i in range(n)], [torch.randn(T, 4, 4, 16, generator=g) for _ in range(n)],
                 metas=[{"caption": f"clip {i}"} for i in range(n)])


def test_meta_device_proves_placement_of_training_steps():
    cfg = TrainConfig(model="tiny-i2v", text_encoders="tiny", device="meta", max_steps=4, warmup_steps=1, checkpoint_every=0,
                      i2v_share=0.5, allow_tiny=True)
    trainer = Trainer(cfg, [], "unused")
    assert all(p.device.type == "meta" for p in trainer.model.parameters())
    assert all(p.device.type == "meta" for p in trainer.ema.parameters())
    assert all(p.device.type == "meta" for p in trainer.text.parameters())
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # fp32 master weights
    for _ in range(3):  # T2V and I2V samples, the uncond branch: every path runs on meta
        trainer.train_step(video_batch())
    image = Batch("image", (64, 64), ["a"], [torch.randn(1, 4, 4, 16)], metas=[{"caption": "a photo"}])
    trainer.train_step(image)
    assert trainer.step_num == 4
    # the check has teeth: a CPU tensor given to the model raises there
    with pytest.raises(RuntimeError):
        from training.model import ModelInputs
        text = trainer.text.encode(["x"]).to("meta")
        trainer.model(ModelInputs(torch.zeros(1, 1, 4, 4, 33), torch.zeros(1, device="meta"), text.hidden,
                                  text.mask, text.pooled))


def test_meta_device_proves_placement_of_sampling():
    from training.configs import CONFIGS
    from training.model import CrossDiT
    from training.sample import image_latent, video_latent

    config = {"text_encoders": "tiny"}
    video = CrossDiT(CONFIGS["tiny-i2v"]).to("meta").eval()
    latent = video_latent(video, config, "waves", height=64, width=64, seconds=0.5, steps=2,
                          first=torch.zeros(1, 1, 8, 8, 16))
    assert latent.device.type == "meta" and latent.shape == (1, 4, 8, 8, 16)
    image = CrossDiT(CONFIGS["tiny"]).to("meta").eval()
    assert image_latent(image, config, "a fox", height=64, width=64, steps=2).device.type == "meta"


def test_precision_settings():
    assert autocast_context(torch.device("cpu"), "auto")().__class__.__name__ == "nullcontext"
    with autocast_context(torch.device("cpu"), "bf16")():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="precision"):
        Trainer(TrainConfig(text_encoders="tiny", precision="fp8", allow_tiny=True), [], "unused")


def test_real_training_refuses_tiny_text_encoders(monkeypatch):
    monkeypatch.delenv("CURATION_ALLOW_TINY_MODELS", raising=False)
    with pytest.raises(ValueError, match="allow_tiny"):
        check_tiny_allowed("tiny", False)
    with pytest.raises(ValueError, match="allow_tiny"):
        check_tiny_allowed("tiny-hf", False)
    check_tiny_allowed("tiny", True)
    check_tiny_allowed("qwen2.5-vl+clip", False)
    assert TrainConfig().text_encoders == "qwen2.5-vl+clip"  # the default is the report's pair


def test_weight_decay_skips_norms_biases_and_modulation():
    from training.configs import TINY
    from training.model import CrossDiT
    from training.train import param_groups

    model = CrossDiT(TINY)
    decay, keep = param_groups(model, 0.001)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.001 and keep["weight_decay"] == 0.0
    assert all(p.ndim == 2 and "modulation" not in names[id(p)] for p in decay["params"])
    kept = {names[id(p)] for p in keep["params"]}
    assert any("modulation" in n and n.endswith("weight") for n in kept)
    assert any("norm" in n for n in kept) and any(n.endswith("bias") for n in kept)
    assert len(decay["params"]) + len(keep["params"]) == len(list(model.parameters()))


def test_estimate_defaults_to_one_frame_for_image_models(capsys):
    from training.estimate import main

    main(["image-lite", "--height", "1024", "--width", "1024"])
    assert "4096 visual tokens" in capsys.readouterr().out
    main(["video-lite"])
    assert "47616 visual tokens" in capsys.readouterr().out
