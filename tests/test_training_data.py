"""Latent shards and the streaming loader, on real photos encoded by the tiny VAE; souping, EMA and
the report's estimators."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest
import torch

from training.buckets import SAMPLES_PER_TAR, TIERS, nearest_bucket, resize_to_bucket
from training.data import LatentLoader
from training.encode import ImageRecord, encode_images, safe_key, tiny_image_vae
from training.estimate import memory_bytes, sequence_length, step_time
from training.shards import Sample, ShardError, ShardWriter, VaeInfo, read_shard
from training.soup import soup, soup_tree, soup_weights, update_ema

VAE = VaeInfo("test", 4, 1.0)


def test_report_tar_sizes_and_buckets():
    assert SAMPLES_PER_TAR == {"image": {"low": 1024, "medium": 256, "high": 64},
                               "video": {"low": 16, "medium": 4, "high": 1}}
    assert (512, 768) in TIERS["medium"] and (1024, 1024) in TIERS["high"] and (640, 1408) in TIERS["high"]
    assert nearest_bucket(1080, 1920, "high") == (768, 1280)
    assert nearest_bucket(1000, 1000, "medium") == (512, 512)
    assert nearest_bucket(300, 1000, "low") == (160, 352)


@pytest.fixture(scope="module")
def photo_shards(tmp_path_factory, skimage_dir):
    """Real photos → tiny FLUX-layout VAE → shards (4 per tar so a handful of photos makes several)."""
    out = tmp_path_factory.mktemp("shards")
    names = ["astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "camera.png", "motorcycle_left.png",
             "hubble_deep_field.jpg", "immunohistochemistry.png"]
    records = [ImageRecord(safe_key(n), str(skimage_dir / n), {"caption": n}) for n in names
               if (skimage_dir / n).exists()]
    vae, info = tiny_image_vae()
    shards = encode_images(records, vae, info, tier="low", output=str(out),
                           samples_per_tar={"low": 4, "medium": 4, "high": 4})
    return out, shards, records


def test_shard_round_trip_on_real_photos(photo_shards, skimage_dir):
    out, shards, records = photo_shards
    assert sum(len(s.keys) for s in shards) == len(records)
    seen = {}
    for info in shards:
        with tarfile.open(info.uri) as tar:
            names = tar.getnames()
        assert all(n.count(".") in (1, 2) and "." not in n.split(".")[0] for n in names)  # dot-free keys
        index = json.loads(open(info.uri[:-4] + ".index.json").read())
        assert index["vae"]["scaling_factor"] == pytest.approx(0.3611) and index["vae"]["shift_factor"] == pytest.approx(0.1159)
        for s in read_shard(info.uri):
            h, w = info.bucket
            assert s.latent.shape == (1, h // 8, w // 8, 16) and s.latent.dtype == np.float16
            assert np.isfinite(s.latent).all() and s.latent.std() > 0
            seen[s.key] = s
    assert set(seen) == {r.key for r in records}
    # the astronaut (square) lands in the square bucket; the latent is deterministic
    assert tuple(seen["astronaut_png"].meta["bucket"]) == (256, 256)
    vae, info = tiny_image_vae()
    from PIL import Image

    from training.encode import encode_image

    again = encode_image(vae, info, resize_to_bucket(Image.open(skimage_dir / "astronaut.png"), (256, 256)))
    assert np.allclose(again.astype(np.float16), seen["astronaut_png"].latent, atol=1e-3)


def make_shards(tmp_path, spec: list[tuple[str, tuple[int, int], list[int]]], per_tar: int = 3) -> list[str]:
    """spec: (modality, bucket, frame counts). Latent values encode the key for checking."""
    uris = []
    n = 0
    for modality, bucket, frames in spec:
        writer = ShardWriter(str(tmp_path), modality=modality, vae=VAE, prefix=f"s{n}",
                             samples_per_tar={"low": per_tar, "medium": per_tar, "high": per_tar})
        for t in frames:
            writer.add(Sample(f"k{n:04d}", np.full((t, 2, 3, 4), n, dtype=np.float32)), tier="low", bucket=bucket)
            n += 1
        uris += [s.uri for s in writer.close()]
    return uris


def test_batches_never_mix_and_respect_t_max(tmp_path):
    uris = make_shards(tmp_path, [("image", (256, 256), [1] * 20), ("image", (256, 384), [1] * 9),
                                  ("video", (256, 256), [5, 3, 8, 2, 4, 6, 1, 7]), ("video", (384, 256), [4, 4, 4])])
    loader = LatentLoader(uris, t_max=8, image_share=0.3, seed=1)
    batches = list(loader)
    keys = [k for b in batches for k in b.keys]
    assert len(keys) == len(set(keys)) == 40  # every sample exactly once
    for b in batches:
        assert len({m["modality"] for m in b.metas}) == 1 and b.modality == b.metas[0]["modality"]
        assert len({tuple(m["bucket"]) for m in b.metas}) == 1
        assert b.total_frames <= 8 or len(b.keys) == 1
        if b.modality == "image":
            assert b.stacked().shape[1] == 1
    assert {b.modality for b in batches} == {"image", "video"}


def test_order_is_seeded_and_ranks_are_disjoint(tmp_path):
    uris = make_shards(tmp_path, [("image", (256, 256), [1] * 30)], per_tar=3)
    a = [b.keys for b in LatentLoader(uris, t_max=4, seed=5)]
    assert a == [b.keys for b in LatentLoader(uris, t_max=4, seed=5)]
    assert a != [b.keys for b in LatentLoader(uris, t_max=4, seed=6)]
    ranks = [{k for b in LatentLoader(uris, t_max=4, seed=5, rank=r, world=3) for k in b.keys} for r in range(3)]
    assert not (ranks[0] & ranks[1]) and not (ranks[1] & ranks[2]) and len(set().union(*ranks)) == 30


def test_resume_reproduces_the_rest_of_the_epoch(tmp_path):
    uris = make_shards(tmp_path, [("image", (256, 256), [1] * 14), ("video", (256, 256), [3, 5, 2, 6, 1, 4, 4, 2])])
    full = [(b.modality, b.keys) for b in LatentLoader(uris, t_max=6, image_share=0.5, seed=3)]
    loader = LatentLoader(uris, t_max=6, image_share=0.5, seed=3)
    it = iter(loader)
    head = [(b.modality, b.keys) for _, b in zip(range(4), it)]  # range first: no batch pulled and lost
    state = json.loads(json.dumps(loader.state_dict()))  # survives serialisation
    resumed = LatentLoader(uris, t_max=6, image_share=0.5, seed=3)
    resumed.load_state_dict(state)
    tail = [(b.modality, b.keys) for b in resumed]
    assert head + tail == full


def test_bad_shards_name_the_file(tmp_path):
    uris = make_shards(tmp_path, [("image", (256, 256), [1] * 3)])
    tar_path = uris[0]
    data = open(tar_path, "rb").read()
    open(tar_path, "wb").write(data[:700])  # truncated
    with pytest.raises(ShardError, match=tar_path.split("/")[-1]):
        list(read_shard(tar_path))
    with pytest.raises(ShardError, match="missing"):
        LatentLoader([str(tmp_path / "nope.tar")], t_max=2)
    # a latent whose shape disagrees with the index
    uris = make_shards(tmp_path / "b", [("image", (256, 256), [1] * 2)])
    idx_path = uris[0][:-4] + ".index.json"
    index = json.loads(open(idx_path).read())
    index["samples"][0]["shape"] = [1, 9, 9, 4]
    open(idx_path, "w").write(json.dumps(index))
    with pytest.raises(ShardError, match="latent shape"):
        list(read_shard(uris[0]))
    with pytest.raises(ShardError, match="no dots|must match"):
        ShardWriter(str(tmp_path), modality="image", vae=VAE).add(Sample("a.b", np.zeros((1, 2, 2, 4))), tier="low",
                                                                  bucket=(256, 256))


def test_soup_and_ema():
    torch.manual_seed(0)
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    same = soup([a.state_dict(), a.state_dict()], [10, 1000], "sqrt_size")
    assert all(torch.equal(same[k], v) for k, v in a.state_dict().items())
    w = soup_weights([1, 4, 16], "sqrt_size")
    assert w == pytest.approx([1 / 7, 2 / 7, 4 / 7])
    assert soup_weights([1, 3], "size") == pytest.approx([0.25, 0.75]) and soup_weights([5, 9], "equal") == [0.5, 0.5]
    mixed = soup([a.state_dict(), b.state_dict()], [1, 9], "size")
    assert torch.allclose(mixed["weight"], 0.1 * a.weight + 0.9 * b.weight)
    tree, total = soup_tree([[(a.state_dict(), 1), (b.state_dict(), 3)], (b.state_dict(), 4)], "size")
    assert total == 8 and torch.allclose(tree["weight"], (a.weight + 3 * b.weight) / 8 + 0.5 * b.weight, atol=1e-6)
    ema = torch.nn.Linear(3, 2)
    update_ema(ema, a, decay=0.0)
    assert torch.equal(ema.weight, a.weight)
    update_ema(ema, b, decay=0.9999)
    assert torch.allclose(ema.weight, 0.9999 * a.weight + 0.0001 * b.weight)


def test_estimators_follow_the_report():
    # eq. (1) at the reference point: d = d0, S = S0, L = B = 1 -> 9 + 14 + 6
    assert step_time(1792, 256 * 384 * 31, 1, 1) == pytest.approx(29.0)
    ratio = step_time(4096, 2 * 256 * 384 * 31, 60, 1) / step_time(1792, 256 * 384 * 31, 32, 1)
    assert ratio == pytest.approx((4096 / 1792) * 2 * (9 + 28 + 6 * 4096 / 1792) / 29 * 60 / 32)
    # eq. (2): offloading activations never costs memory; more GPUs never cost memory
    args = dict(L=32, d=1792, dt=512, df=7168, S=sequence_length(512, 768, 121))
    assert memory_bytes(**args, N=8, offload=True) <= memory_bytes(**args, N=8)
    assert memory_bytes(**args, N=64) < memory_bytes(**args, N=8)
    assert sequence_length(512, 768, 121) == 31 * 32 * 48
