"""Latent tar loader vs webdataset, reading the same shards on the same machine.

Writes N image shards with training.shards.ShardWriter (random float16 latents of a low-resolution
image, 1x32x32x16 = 32 KiB each — the loader's speed does not depend on their values), then reads every
sample once with
  ours        training.data.LatentLoader (background thread, per-bucket queues, t_max batching)
  webdataset  wds.WebDataset(urls).decode() — tar streaming + npy decoding, no batching
and prints samples/s and the ratio (median of --runs).

  python bench/loader.py [--shards 16 --per-tar 256 --runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from training.data import LatentLoader  # noqa: E402
from training.shards import Sample, ShardWriter, VaeInfo  # noqa: E402


def write_shards(folder: Path, n_shards: int, per_tar: int) -> list[str]:
    rng = np.random.default_rng(0)
    writer = ShardWriter(str(folder), modality="image", vae=VaeInfo("bench", 16, 1.0),
                         samples_per_tar={"low": per_tar, "medium": per_tar, "high": per_tar})
    for i in range(n_shards * per_tar):
        latent = rng.standard_normal((1, 32, 32, 16), dtype=np.float32).astype(np.float16)
        writer.add(Sample(f"s{i:07d}", latent, {"caption": f"sample {i}"}), tier="low", bucket=(256, 256))
    return [s.uri for s in writer.close()]


def ours(uris: list[str]) -> int:
    n = 0
    for batch in LatentLoader(uris, t_max=64, seed=0):
        n += len(batch.keys)
    return n


def webdataset_read(uris: list[str]) -> int:
    import webdataset as wds

    n = 0
    for sample in wds.WebDataset(uris, shardshuffle=False, empty_check=False).decode():
        assert sample["latent.npy"].shape == (1, 32, 32, 16)
        n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shards", type=int, default=16)
    ap.add_argument("--per-tar", type=int, default=256)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        uris = write_shards(Path(tmp), args.shards, args.per_tar)
        total = args.shards * args.per_tar
        rates: dict[str, list[float]] = {"ours": [], "webdataset": []}
        for _ in range(args.runs):
            for name, fn in (("ours", ours), ("webdataset", webdataset_read)):
                t0 = time.perf_counter()
                n = fn(uris)
                rates[name].append(n / (time.perf_counter() - t0))
                assert n == total, (name, n, total)
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"{total} samples in {args.shards} shards of {args.per_tar} (1x32x32x16 float16 latents), {args.runs} runs")
    for name, r in med.items():
        print(f"{name:<12}{r:>12.0f} samples/s   (runs: {', '.join(f'{x:.0f}' for x in rates[name])})")
    print(f"ratio ours / webdataset: {med['ours'] / med['webdataset']:.2f}")


if __name__ == "__main__":
    main()
