"""VAE-latent tar shards (report §6.1.1), webdataset-compatible.

A shard holds samples of one modality, one tier and one aspect bucket. Each sample is two members
sharing a key (the key never contains a dot, so webdataset's ``base_plus_ext`` grouping works):

- ``<key>.latent.npy`` — the latent, float16, [T, h, w, C] (images: T = 1), already multiplied by the
  VAE's scaling convention recorded in the index;
- ``<key>.json`` — asset id, caption (if any), bucket, shape;
- ``<key>.reference.npy`` — only for an instruct-editing pair: the latent of the source image, float16,
  [1, h, w, C] (the sample's latent is the edited target, its caption the instruction);
- ``<key>.source.jpg`` — with it, the source image at half the bucket size, which the text encoder sees
  (Kandinsky 5 gives Qwen2.5-VL the image to edit, halved).

Next to every ``<name>.tar`` is ``<name>.index.json``: the VAE name, its scaling convention, the bucket
and the members with their shapes. Shards are written to local paths or S3 through curation.storage.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from curation import storage
from training.buckets import SAMPLES_PER_TAR, aspect_key

KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")


class ShardError(RuntimeError):
    """A shard is missing, corrupt, or holds a latent of the wrong shape; the message names the file."""


@dataclass(frozen=True)
class VaeInfo:
    name: str  # e.g. "flux1-vae", "hunyuan-video-vae", "tiny-random"
    latent_channels: int
    scaling_factor: float
    shift_factor: float = 0.0  # latent = (z - shift) * scaling; HunyuanVideo applies no shift

    def to_json(self) -> dict:
        return {"name": self.name, "latent_channels": self.latent_channels, "scaling_factor": self.scaling_factor,
                "shift_factor": self.shift_factor, "convention": "latent = (z - shift_factor) * scaling_factor"}


@dataclass
class Sample:
    key: str
    latent: np.ndarray  # [T, h, w, C]
    meta: dict = field(default_factory=dict)
    reference: np.ndarray | None = None  # editing pairs: [1, h, w, C] latent of the source image
    source_image: bytes | None = None  # editing pairs: JPEG of the source image at half the bucket size


@dataclass(frozen=True)
class ShardInfo:
    uri: str
    modality: str
    tier: str
    bucket: tuple[int, int]
    keys: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    nbytes: int


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # reproducible archives
    tar.addfile(info, io.BytesIO(data))


class ShardWriter:
    """Buffers samples per (tier, bucket) and writes a tar each time a group reaches the report's count."""

    def __init__(self, output: str, *, modality: str, vae: VaeInfo, prefix: str = "shard",
                 samples_per_tar: dict[str, int] | None = None):
        if modality not in SAMPLES_PER_TAR:
            raise ValueError(f"modality must be image or video, got {modality!r}")
        self.output, self.modality, self.vae, self.prefix = output, modality, vae, prefix
        self.samples_per_tar = samples_per_tar or SAMPLES_PER_TAR[modality]
        self._groups: dict[tuple[str, tuple[int, int]], list[Sample]] = {}
        self._counters: dict[tuple[str, tuple[int, int]], int] = {}
        self.written: list[ShardInfo] = []

    def add(self, sample: Sample, *, tier: str, bucket: tuple[int, int]) -> ShardInfo | None:
        if not KEY_RE.match(sample.key):
            raise ShardError(f"sample key {sample.key!r} must match {KEY_RE.pattern} (no dots)")
        if sample.latent.ndim != 4 or sample.latent.shape[-1] != self.vae.latent_channels:
            raise ShardError(f"sample {sample.key}: latent shape {sample.latent.shape} is not "
                             f"[T, h, w, {self.vae.latent_channels}]")
        group = self._groups.setdefault((tier, bucket), [])
        group.append(sample)
        if len(group) >= self.samples_per_tar[tier]:
            return self._flush((tier, bucket))
        return None

    def close(self) -> list[ShardInfo]:
        for key in list(self._groups):
            if self._groups[key]:
                self._flush(key)
        return self.written

    def _flush(self, group_key: tuple[str, tuple[int, int]]) -> ShardInfo:
        tier, bucket = group_key
        samples = self._groups.pop(group_key)
        n = self._counters.get(group_key, 0)
        self._counters[group_key] = n + 1
        name = f"{self.prefix}-{self.modality}-{tier}-{aspect_key(bucket)}-{n:06d}"
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for s in samples:
                latent = s.latent.astype(np.float16)
                _add(tar, f"{s.key}.latent.npy", _npy_bytes(latent))
                if s.reference is not None:
                    _add(tar, f"{s.key}.reference.npy", _npy_bytes(s.reference.astype(np.float16)))
                if s.source_image is not None:
                    _add(tar, f"{s.key}.source.jpg", s.source_image)
                meta = {**s.meta, "key": s.key, "shape": list(latent.shape), "bucket": list(bucket),
                        "modality": self.modality}
                _add(tar, f"{s.key}.json", json.dumps(meta).encode())
        data = buf.getvalue()
        uri = storage.join(self.output, f"{name}.tar")
        storage.write_bytes(uri, data)
        index = {"shard": f"{name}.tar", "modality": self.modality, "tier": tier, "bucket": list(bucket),
                 "vae": self.vae.to_json(), "samples": [{"key": s.key, "shape": list(s.latent.shape), "reference": s.reference is not None}
                             for s in samples]}
        storage.write_bytes(storage.join(self.output, f"{name}.index.json"), json.dumps(index).encode())
        info = ShardInfo(uri, self.modality, tier, bucket, tuple(s.key for s in samples),
                         tuple(tuple(s.latent.shape) for s in samples), len(data))
        self.written.append(info)
        return info


def read_index(tar_uri: str) -> dict:
    index_uri = tar_uri[: -len(".tar")] + ".index.json"
    try:
        return json.loads(storage.read_bytes(index_uri))
    except storage.MissingObject as exc:
        raise ShardError(f"{index_uri}: the shard's index is missing") from exc
    except json.JSONDecodeError as exc:
        raise ShardError(f"{index_uri}: not valid JSON: {exc}") from exc


def read_shard(tar_uri: str, *, latent_channels: int | None = None) -> Iterator[Sample]:
    """Samples of one shard, in order, checked against the index (shape and latent channels)."""
    index = read_index(tar_uri)
    expected = {s["key"]: tuple(s["shape"]) for s in index["samples"]}
    channels = latent_channels or index["vae"]["latent_channels"]
    try:
        data = storage.read_bytes(tar_uri)
    except storage.MissingObject as exc:
        raise ShardError(f"{tar_uri}: shard is missing") from exc
    try:
        tar = tarfile.open(fileobj=io.BytesIO(data), mode="r:")
        members = tar.getmembers()
    except (tarfile.TarError, EOFError) as exc:
        raise ShardError(f"{tar_uri}: corrupt tar archive: {exc}") from exc
    parts: dict[str, dict[str, bytes]] = {}
    order: list[str] = []
    for m in members:
        key, _, ext = m.name.partition(".")
        if key not in parts:
            parts[key] = {}
            order.append(key)
        f = tar.extractfile(m)
        try:
            parts[key][ext] = f.read() if f is not None else b""
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise ShardError(f"{tar_uri}: corrupt member {m.name}: {exc}") from exc
    if set(order) != set(expected):
        raise ShardError(f"{tar_uri}: members {sorted(set(order) ^ set(expected))[:5]} disagree with the index")
    for key in order:
        try:
            latent = np.load(io.BytesIO(parts[key]["latent.npy"]), allow_pickle=False)
            meta = json.loads(parts[key]["json"])
        except (KeyError, ValueError, OSError) as exc:
            raise ShardError(f"{tar_uri}: sample {key} is incomplete or corrupt: {exc}") from exc
        if tuple(latent.shape) != expected[key] or latent.ndim != 4 or latent.shape[-1] != channels:
            raise ShardError(f"{tar_uri}: sample {key} has latent shape {tuple(latent.shape)}, expected "
                             f"{expected[key]} with {channels} channels")
        reference = None
        if "reference.npy" in parts[key]:
            try:
                reference = np.load(io.BytesIO(parts[key]["reference.npy"]), allow_pickle=False)
            except (ValueError, OSError) as exc:
                raise ShardError(f"{tar_uri}: sample {key} has a corrupt reference latent: {exc}") from exc
            if tuple(reference.shape) != (1, *latent.shape[1:]):
                raise ShardError(f"{tar_uri}: sample {key} has reference shape {tuple(reference.shape)}, expected "
                                 f"{(1, *latent.shape[1:])}")
        yield Sample(key, latent, meta, reference, parts[key].get("source.jpg"))
