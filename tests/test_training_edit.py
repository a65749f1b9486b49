"""Instruct-editing pairs (report §6.3): real photo pairs → target latent + source reference in the shards
→ the loader's batches → an editing model trained on editing 80 % / text-to-image 20 % of the time."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from training.encode import EditPair, encode_edit_pairs, tiny_image_vae
from training.shards import ShardError, read_shard


@pytest.fixture
def pair_shards(tmp_path, skimage_dir):
    pairs = []
    for n in ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg"):
        target = tmp_path / f"{n.split('.')[0]}-gray.png"
        ImageOps.grayscale(Image.open(skimage_dir / n).convert("RGB")).convert("RGB").save(target)
        pairs.append(EditPair(n.split(".")[0], str(skimage_dir / n), str(target), "make it black and white", {}))
    vae, info = tiny_image_vae()
    return encode_edit_pairs(pairs, vae, info, tier="low", output=str(tmp_path / "shards"),
                             samples_per_tar={"low": 4, "medium": 4, "high": 4})


def test_pairs_carry_a_reference_latent_of_the_same_bucket(pair_shards):
    samples = [s for shard in pair_shards for s in read_shard(shard.uri)]
    assert len(samples) == 4
    for s in samples:
        assert s.reference is not None and s.reference.shape == (1, *s.latent.shape[1:])
        half = Image.open(io.BytesIO(s.source_image))  # what the text encoder sees: the source, halved
        assert half.size == (s.meta["bucket"][1] // 2, s.meta["bucket"][0] // 2)
        assert s.meta["caption"] == "make it black and white" and not np.array_equal(s.reference, s.latent)


def test_a_reference_of_the_wrong_shape_names_the_file(pair_shards, tmp_path):
    uri = pair_shards[0].uri
    with tarfile.open(uri) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    bad = tmp_path / "shards" / "bad.tar"
    with tarfile.open(bad, "w") as tar:
        for m, data in members:
            if m.name.endswith(".reference.npy"):
                buf = io.BytesIO()
                np.save(buf, np.zeros((1, 2, 2, 16), dtype=np.float16))
                data = buf.getvalue()
                m.size = len(data)
            tar.addfile(m, io.BytesIO(data))
    (tmp_path / "shards" / "bad.index.json").write_text(
        (tmp_path / "shards" / (uri.rsplit("/", 1)[1][:-4] + ".index.json")).read_text())
    with pytest.raises(ShardError, match="bad.tar: sample .* has reference shape"):
        list(read_shard(str(bad)))


def test_an_editing_model_edits_eighty_percent_of_the_time(pair_shards, tmp_path):
    from tests.test_training_run import config
    from training.train import Trainer

    trainer = Trainer(config(model="tiny-edit", max_steps=20, t_max=1, text_encoders="tiny-hf"),
                      [s.uri for s in pair_shards], tmp_path / "r")
    seen, given = [], []
    real_encode = trainer.text.encode

    def spy(prompts, content="image", images=None):
        seen.append(content)
        given.append(images is not None and len(images) == len(prompts))
        return real_encode(prompts, content, images)

    trainer.text.encode = spy
    batch = next(iter(trainer.loader))
    assert all(r is not None and r.shape == (1, *batch.latents[0].shape[1:]) for r in batch.references)
    trainer.train(log=None)
    assert len(seen) == 20 and set(seen) == {"image_edit", "image"}
    assert 0.6 <= seen.count("image_edit") / 20 <= 0.95  # edit_share 0.8 (report: 80 % editing)
    assert [g for c, g in zip(seen, given) if c == "image_edit"] == [True] * seen.count("image_edit")
    assert not any(g for c, g in zip(seen, given) if c == "image")
    assert all(np.isfinite(r.loss) for r in trainer.history)
    assert trainer.cfg.edit_share == 0.8
