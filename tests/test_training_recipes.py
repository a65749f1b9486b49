"""Issue 11 §3: the report's Table 4 as recipe files, the loader's bucket draw by the recipe's resolution
probabilities, the task mix drawn per sample, and the training-time shift."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
import torch
import yaml

from tests.test_training_data import make_shards
from training.buckets import TIERS
from training.data import Batch, LatentLoader
from training.flow import auto_t_shift, resolve_t_shift, shift_t
from training.recipes import UnknownRecipe, load_recipe, recipe_names
from training.train import TrainConfig, Trainer

LR_IMG = {"256x256": 0.224, "192x320": 0.11, "320x192": 0.332, "160x352": 0.005, "352x160": 0.012,
          "224x288": 0.144, "288x224": 0.173}
LR_VID = {"256x256": 0.25, "256x384": 0.22, "384x256": 0.53}
MR_VID = {"512x512": 0.28, "512x768": 0.25, "768x512": 0.47}
HR = {"1024x1024": 0.183, "1408x640": 0.017, "640x1408": 0.010, "1280x768": 0.315, "768x1280": 0.115,
      "1152x896": 0.175, "896x1152": 0.185}
LITE = {"t2i": 0.01, "t2v": 0.79, "i2v": 0.20}
PRO = {"t2i": 0.02, "t2v": 0.77, "i2v": 0.21}
T2I = {"t2i": 1.0}

# Table 4, row by row: recipe → (model, steps, batch, lr, weight decay, resolution probabilities, mix, NABLA)
TABLE_4 = {
    "image-lite-lr": ("image-lite", 400_000, 8000, 1e-4, 0.0, LR_IMG, T2I, False),
    "image-lite-mr": ("image-lite", 200_000, 4000, 4e-5, 0.0, {"512x512": 0.3152, "640x384": 0.5301, "384x640": 0.1547},
                      T2I, False),
    "image-lite-hr": ("image-lite", 200_000, 2000, 3e-5, 0.0, HR, T2I, False),
    "image-edit-mr": ("image-lite-edit", 200_000, 4000, 4e-5, 0.001, {"512x512": 0.479, "384x640": 0.4, "640x384": 0.121},
                      T2I, False),
    "image-edit-hr": ("image-lite-edit", 110_000, 2000, 2e-5, 0.001,
                      {"1024x1024": 0.297, "640x1408": 0.012, "1408x640": 0.005, "768x1280": 0.258, "1280x768": 0.093,
                       "896x1152": 0.136, "1152x896": 0.199}, T2I, False),
    "video-lite-t2i-lr": ("video-lite", 220_000, 8192, 1e-4, 0.0, LR_VID, T2I, False),
    "video-lite-lr": ("video-lite", 10_000, 2662, 6e-5, 0.001, LR_VID, LITE, False),
    "video-lite-mr-5s": ("video-lite", 50_000, 1331, 3e-5, 0.001, MR_VID, LITE, False),
    "video-lite-mr-10s": ("video-lite", 10_000, 665, 3e-5, 0.001, MR_VID, LITE, True),
    "video-pro-t2i-lr": ("video-pro", 200_000, 16384, 1e-4, 0.0, LR_VID, T2I, False),
    "video-pro-lr": ("video-pro", 200_000, 2662, 1e-4, 0.0, LR_VID, PRO, False),
    "video-pro-mr": ("video-pro", 45_000, 1331, 3e-5, 0.001, MR_VID, PRO, False),
    "video-pro-hr-5s": ("video-pro", 22_500, 665, 2e-5, 0.001, HR, PRO, True),
    "video-pro-hr-10s": ("video-pro", 10_000, 333, 2e-5, 0.001, HR, PRO, True),
}


def test_every_recipe_loads_and_matches_table_4():
    assert recipe_names() == sorted(TABLE_4)
    all_buckets = {f"{h}x{w}" for tier in TIERS.values() for h, w in tier}
    for name, (model, steps, batch, lr, wd, probs, mix, nabla) in TABLE_4.items():
        cfg = TrainConfig.load(recipe=name)
        assert (cfg.recipe, cfg.model, cfg.max_steps, cfg.batch_size) == (name, model, steps, batch), name
        assert cfg.lr == pytest.approx(lr) and cfg.weight_decay == pytest.approx(wd), name
        assert cfg.resolution_probs == pytest.approx(probs) and set(cfg.resolution_probs) <= all_buckets, name
        assert sum(cfg.resolution_probs.values()) == pytest.approx(1.0, abs=1e-3), name
        assert cfg.tasks() == pytest.approx({"t2i": 0, "t2v": 0, "i2v": 0, **mix}), name
        assert (cfg.nabla_when != "never") == nabla, name
    assert TrainConfig.load(recipe="video-pro-hr-10s").nabla["P"] == 0.7  # the official Pro HD 10 s setting
    assert TrainConfig.load(recipe="video-lite-mr-10s").t_max == 61  # 10 s at 24 fps through the 4x VAE


def test_a_config_file_and_overrides_overlay_the_recipe(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"recipe": "video-lite-mr-5s", "lr": 1e-5, "text_encoders": "tiny"}))
    cfg = TrainConfig.load(path)
    assert (cfg.recipe, cfg.lr, cfg.max_steps, cfg.text_encoders) == ("video-lite-mr-5s", 1e-5, 50_000, "tiny")
    cfg = TrainConfig.load(path, recipe="video-lite-mr-10s", overrides={"max_steps": 7})
    assert (cfg.recipe, cfg.lr, cfg.max_steps, cfg.batch_size) == ("video-lite-mr-10s", 1e-5, 7, 665)
    with pytest.raises(UnknownRecipe, match="video-lite-mr-5s"):
        load_recipe("video-lite-mr-7s")
    path.write_text(yaml.safe_dump({"recipe": "video-lite-mr-5s", "learning_rate": 1}))
    with pytest.raises(ValueError, match="learning_rate"):
        TrainConfig.load(path)


def test_task_mix_defaults():
    assert TrainConfig(model="video-lite").tasks() == pytest.approx(LITE)
    assert TrainConfig(model="video-pro").tasks() == pytest.approx(PRO)
    assert TrainConfig(model="image-lite").image_fraction() == 1.0
    lite = TrainConfig(model="video-lite")
    assert lite.image_fraction() == pytest.approx(0.01) and lite.i2v_fraction() == pytest.approx(20 / 99)
    assert TrainConfig(model="video-pro").i2v_fraction() == pytest.approx(21 / 98)
    assert TrainConfig(model="video-lite", i2v_share=0.5, image_share=0.0).i2v_fraction() == 0.5


def test_the_loader_draws_buckets_with_the_recipe_probabilities(tmp_path):
    probs = {"256x256": 0.25, "256x384": 0.22, "384x256": 0.53}
    n = 1200  # images per bucket: every bucket can fill a batch for the whole run below
    uris = make_shards(tmp_path, [("image", (256, 256), [1] * n), ("image", (256, 384), [1] * n),
                                  ("image", (384, 256), [1] * n), ("image", (512, 512), [1] * 50)], per_tar=100)
    loader = LatentLoader(uris, t_max=2, image_share=1.0, seed=4, bucket_probs=probs)
    drawn = Counter()
    for _, batch in zip(range(1000), loader):
        drawn[f"{batch.bucket[0]}x{batch.bucket[1]}"] += 1
    assert "512x512" not in drawn  # probability 0: never drawn
    for bucket, p in probs.items():  # binomial sd at p = 0.5, 1000 draws: 0.016
        assert drawn[bucket] / 1000 == pytest.approx(p, abs=0.04), (bucket, drawn)
    again = LatentLoader(uris, t_max=2, image_share=1.0, seed=4, bucket_probs=probs)
    assert [b.keys for _, b in zip(range(50), again)] == [b.keys for _, b in zip(range(50), LatentLoader(
        uris, t_max=2, image_share=1.0, seed=4, bucket_probs=probs))]  # seeded
    with pytest.raises(ValueError, match="sum to"):
        LatentLoader(uris, t_max=2, bucket_probs={"256x256": 0.5})
    with pytest.raises(ValueError, match="no shard holds"):
        LatentLoader(uris, t_max=2, bucket_probs={"1024x1024": 1.0})


def test_bucket_draws_resume_exactly(tmp_path):
    import json

    uris = make_shards(tmp_path, [("image", (256, 256), [1] * 30), ("image", (256, 384), [1] * 30),
                                  ("video", (384, 256), [3, 5, 2, 6, 1, 4, 4, 2])], per_tar=5)
    kw = {"t_max": 4, "image_share": 0.5, "seed": 2, "bucket_probs": LR_VID}
    full = [b.keys for b in LatentLoader(uris, **kw)]
    assert sorted(k for keys in full for k in keys) == sorted(f"k{i:04d}" for i in range(68))  # every sample once
    loader = LatentLoader(uris, **kw)
    it = iter(loader)
    head = [b.keys for _, b in zip(range(5), it)]
    resumed = LatentLoader(uris, **kw)
    resumed.load_state_dict(json.loads(json.dumps(loader.state_dict())))
    assert head + [b.keys for b in resumed] == full


class _Stub:
    """The fields ``Trainer.sample_tasks`` reads, without building a model."""

    def __init__(self, model: str, seed: int = 0):
        from training.configs import CONFIGS

        self.cfg = TrainConfig(model=model)
        self.model_config = CONFIGS[model]
        self.rng = random.Random(seed)
        self.i2v_share = self.cfg.i2v_fraction()


def test_t2v_or_i2v_is_drawn_per_sample():
    lat = [torch.zeros(31, 1, 1, 1)] * 4 + [torch.zeros(5, 1, 1, 1)] * 4  # two length groups
    batch = Batch("video", (512, 512), [f"k{i}" for i in range(8)], lat)
    stub = _Stub("video-lite")
    draws = [Trainer.sample_tasks(stub, batch) for _ in range(2000)]
    flat = [t for d in draws for t in d]
    assert set(flat) == {"t2v", "i2v"}
    assert flat.count("i2v") / len(flat) == pytest.approx(20 / 99, abs=0.015)
    mixed = sum(len(set(d[:4])) > 1 or len(set(d[4:])) > 1 for d in draws)  # within one length group
    assert mixed / len(draws) > 0.5
    assert all(t == "t2v" for t in Trainer.sample_tasks(_Stub("tiny"), batch))  # no I2V channels: never I2V
    images = Batch("image", (256, 256), ["a"], [torch.zeros(1, 1, 1, 1)])
    assert Trainer.sample_tasks(stub, images) == ["t2i"]


def test_training_t_shift():
    assert auto_t_shift(4096) == pytest.approx(3.0)  # 1024² image: the official image sampling shift
    assert auto_t_shift(31 * 32 * 48) == pytest.approx(10.23, abs=0.01)  # 5 s 512x768: ≈ the video shift 10
    assert auto_t_shift(256) == 1.0  # 256² images train unshifted
    assert resolve_t_shift(2.5, 10**6) == 2.5
    with pytest.raises(ValueError):
        resolve_t_shift("big", 1)
    t = torch.linspace(0, 1, 11)
    assert torch.equal(shift_t(t, 1.0), t)
    s = shift_t(t, 3.0)
    assert s[0] == 0 and s[-1] == 1 and bool((s[1:-1] > t[1:-1]).all()) and bool((s.diff() > 0).all())
    assert np.isclose(float(shift_t(torch.tensor(0.5), 3.0)), 0.75)


def test_curation_train_takes_a_recipe(tmp_path):
    from typer.testing import CliRunner

    from curation.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["train", "--recipe", "video-lite-mr-7s", "--data", str(tmp_path)])
    assert result.exit_code == 2 and "video-lite-mr-5s" in result.output  # the choices are named
    result = runner.invoke(app, ["train", "--data", str(tmp_path)])
    assert result.exit_code == 2 and "--recipe" in result.output
    result = runner.invoke(app, ["train", "--recipe", "video-lite-mr-5s", "--data", str(tmp_path)])
    assert result.exit_code == 1 and "no .tar shards" in result.output  # the recipe loaded; no data here
