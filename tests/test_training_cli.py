"""The platform end to end into training, through the CLI: curate real photos → `curation encode`
(latents recorded in the database) → `curation train` → `--resume` → `curation sample` → `curation soup`."""

from __future__ import annotations

import torch
import yaml
from PIL import Image
from sqlalchemy import text

from tests.helpers import submit_spec
from tests.test_cli import cli, drain


def test_encode_train_resume_sample_soup(engine, db_url, photo_dir, tmp_path):
    job = submit_spec(engine, {"name": "t", "modality": "image", "source": {"uri": str(photo_dir)},
                               "stages": [{"name": "probe"}, {"name": "resolution"}]})
    drain(db_url, "probe")
    drain(db_url, "resolution")
    shards_dir = tmp_path / "shards"
    out = cli(db_url, "encode", "--job", str(job), "--where", "short_side >= 256", "--tier", "low", "--allow-uncaptioned",
              "--vae", "tiny", "--output", str(shards_dir))
    assert "random-weight test VAE" in out.stderr  # a tiny model never runs silently
    with engine.connect() as conn:
        n_ok = conn.execute(text("SELECT count(*) FROM curated_images WHERE short_side >= 256")).scalar_one()
        latents = conn.execute(text("SELECT l.asset_id, l.member, l.shape, s.uri, s.vae, s.scaling_factor "
                                    "FROM latents l JOIN shards s USING (shard_id)")).all()
    assert len(latents) == n_ok > 0
    for row in latents:
        assert row.member == f"a{row.asset_id}.latent.npy" and row.vae == "tiny-random"
        assert row.shape[0] == 1 and row.shape[3] == 16 and abs(row.scaling_factor - 0.3611) < 1e-9

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({"model": "tiny", "text_encoders": "tiny", "lr": 1e-3, "warmup_steps": 1, "max_steps": 100, "t_max": 2,
                                   "image_share": 1.0, "checkpoint_every": 0}))
    run = tmp_path / "run"
    cli(db_url, "train", str(cfg), "--data", str(shards_dir), "--out", str(run), "--steps", "2")
    first = torch.load(run / (run / "latest").read_text(), weights_only=False)
    assert first["step"] == 2
    cli(db_url, "train", str(cfg), "--data", str(shards_dir), "--out", str(run), "--resume", "--steps", "1")
    latest = run / (run / "latest").read_text()
    assert torch.load(latest, weights_only=False)["step"] == 3

    png = tmp_path / "s.png"
    cli(db_url, "sample", str(run), "--prompt", "a photo", "--vae", "tiny", "--steps", "2", "--out", str(png),
        "--height", "128", "--width", "128")
    assert Image.open(png).size == (128, 128)

    souped = tmp_path / "soup.pt"
    cli(db_url, "soup", str(latest), str(latest), "--sizes", "4,9", "--out", str(souped))
    merged = torch.load(souped, weights_only=False)
    original = torch.load(latest, weights_only=False)
    assert all(torch.allclose(merged["ema"][k], v) for k, v in original["ema"].items())
    assert "GiB per GPU" in cli(db_url, "estimate", "video-lite", "--gpus", "8").stdout
