"""The streaming latent loader of report §6.1.2.

A background thread streams tar shards (local or S3) in a seeded order and unpacks them; the
trainer's side fills one queue per (modality, aspect bucket) and forms each batch from a single queue,
popping latents until the sum of their temporal lengths reaches ``t_max``. Images are videos of length
1 but always come in image-only batches; ``image_share`` sets the share of image steps.

``bucket_probs`` (a recipe's resolution probabilities, report Table 4: ``{"512x768": 0.25, …}`` in pixels)
makes each batch's bucket a seeded draw: the modality first (``image_share``), then a bucket with the
recipe's probabilities among that modality's buckets that can still fill a batch this epoch (the shard
indices say what is left), and shards are read until that bucket's queue holds a batch. Without it, the
first ready queue is taken (as the shards arrive).

Shards are split across ``rank``/``world`` (and data-loader workers) after the seeded shuffle, so the
order is deterministic for a seed. ``state_dict()`` captures the epoch, the shards consumed, the keys
waiting in each queue and the RNG; ``load_state_dict()`` resumes mid-epoch and yields exactly the batches
the uninterrupted run would have yielded.
"""

from __future__ import annotations

import queue
import random
import threading
from collections import OrderedDict, deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from training.shards import Sample, ShardError, read_index, read_shard


@dataclass
class Batch:
    modality: str
    bucket: tuple[int, int]
    keys: list[str]
    latents: list[torch.Tensor]  # each [T, h, w, C]; T may differ between videos of one batch
    metas: list[dict] = field(default_factory=list)
    references: list[torch.Tensor | None] = field(default_factory=list)  # editing pairs: [1, h, w, C] each
    source_images: list[bytes | None] = field(default_factory=list)  # editing pairs: JPEG of the halved source

    @property
    def total_frames(self) -> int:
        return sum(x.shape[0] for x in self.latents)

    def stacked(self) -> torch.Tensor:
        """[B, T, h, w, C] when every latent has the same length (always true for images)."""
        return torch.stack(self.latents)


@dataclass
class _Item:
    shard: str
    sample: Sample

    @property
    def frames(self) -> int:
        return int(self.sample.latent.shape[0])


class LatentLoader:
    def __init__(self, shards: Sequence[str], *, t_max: int, image_share: float = 0.5, seed: int = 0,
                 rank: int = 0, world: int = 1, prefetch: int = 4, drop_last: bool = False,
                 bucket_probs: dict[str, float] | None = None):
        if t_max < 1:
            raise ValueError("t_max must be >= 1")
        if not 0.0 <= image_share <= 1.0:
            raise ValueError("image_share must be in [0, 1]")
        self.shards = sorted(shards)
        self.t_max, self.image_share, self.seed = t_max, image_share, seed
        self.rank, self.world, self.prefetch, self.drop_last = rank, world, prefetch, drop_last
        self._state = {"epoch": 0, "shards_done": 0, "queued": {}, "rng": None, "batches": 0}
        self._contents: dict[str, tuple[str, int]] = {}  # shard → (queue name, latent frames it holds)
        for uri in self.shards:  # fail early, naming the file, if an index is missing or unreadable
            index = read_index(uri)
            bucket = index.get("bucket") or [0, 0]
            self._contents[uri] = (f"{index.get('modality')}:{bucket[0]}x{bucket[1]}",
                                   sum(int(s["shape"][0]) for s in index.get("samples", [])))
        self.bucket_probs = _check_probs(bucket_probs) if bucket_probs else None
        if self.bucket_probs:
            held = {q.split(":")[1] for q, _ in self._contents.values()}
            if not held & set(self.bucket_probs):
                raise ValueError(f"no shard holds a bucket of the resolution probabilities {sorted(self.bucket_probs)}; "
                                 f"the shards hold {sorted(held)}")

    # --- order ---------------------------------------------------------------------------------

    def shard_order(self, epoch: int) -> list[str]:
        order = list(self.shards)
        random.Random(self.seed * 100_003 + epoch).shuffle(order)
        return order[self.rank :: self.world]

    # --- state ---------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {k: (v if k != "queued" else {q: list(map(list, items)) for q, items in v.items()})
                for k, v in self._state.items()}

    def load_state_dict(self, state: dict) -> None:
        self._state = {"epoch": int(state["epoch"]), "shards_done": int(state["shards_done"]),
                       "queued": {q: [tuple(i) for i in items] for q, items in state["queued"].items()},
                       "rng": state["rng"], "batches": int(state["batches"])}

    def set_epoch(self, epoch: int) -> None:
        self._state = {"epoch": epoch, "shards_done": 0, "queued": {}, "rng": None, "batches": 0}

    # --- iteration -----------------------------------------------------------------------------

    def _stream(self, uris: list[str], out: queue.Queue, stop: threading.Event) -> None:
        for uri in uris:
            if stop.is_set():
                return
            try:
                out.put((uri, list(read_shard(uri))))
            except ShardError as exc:
                out.put((uri, exc))
                return
        out.put(None)

    def __iter__(self) -> Iterator[Batch]:
        state = self._state
        order = self.shard_order(state["epoch"])
        rng = random.Random(self.seed * 7919 + state["epoch"] * 31 + self.rank)
        if state["rng"] is not None:
            rng.setstate(_rng_from_json(state["rng"]))
        queues: OrderedDict[str, deque[_Item]] = OrderedDict()
        self._restore_queues(queues, state["queued"])

        pending = order[state["shards_done"]:]
        loaded: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        worker = threading.Thread(target=self._stream, args=(pending, loaded, stop), daemon=True)
        worker.start()
        exhausted = False
        try:
            while True:
                want_image = rng.random() < self.image_share
                target = self._draw_bucket(rng, want_image, queues, order[state["shards_done"]:])
                name = self._ready_queue(queues, want_image, target)
                while name is None and not exhausted:
                    got = loaded.get()
                    if got is None:
                        exhausted = True
                        break
                    uri, samples = got
                    if isinstance(samples, ShardError):
                        raise samples
                    for s in samples:
                        bucket = tuple(s.meta["bucket"])
                        qname = f"{s.meta['modality']}:{bucket[0]}x{bucket[1]}"
                        queues.setdefault(qname, deque()).append(_Item(uri, s))
                    state["shards_done"] += 1
                    name = self._ready_queue(queues, want_image, target)
                if name is None:  # end of the epoch: what is left, as partial batches
                    if target is not None and queues.get(target):
                        name = target
                    else:
                        name = next((q for q, items in queues.items() if items), None)
                    if name is None or self.drop_last:
                        break
                batch = self._pop_batch(queues[name], name)
                state["batches"] += 1
                state["rng"] = _rng_to_json(rng.getstate())
                state["queued"] = {q: [(i.shard, i.sample.key) for i in items] for q, items in queues.items() if items}
                if state["shards_done"] == len(order) and not self._more(queues):
                    # the epoch's last batch: a state saved now resumes at the next epoch
                    self.set_epoch(state["epoch"] + 1)
                    yield batch
                    return
                yield batch
        finally:
            stop.set()
        self.set_epoch(state["epoch"] + 1)

    def _more(self, queues) -> bool:
        """Whether the queues still hold a batch to yield (after all shards are read)."""
        if self.drop_last:
            return any(sum(i.frames for i in items) >= self.t_max for items in queues.values())
        return any(queues.values())

    def _draw_bucket(self, rng: random.Random, want_image: bool, queues, unread: list[str]) -> str | None:
        """The queue this batch comes from, drawn with ``bucket_probs`` among the buckets (of the wanted
        modality if it has any, else of the other) that still hold a full batch in the queues and unread
        shards; None without ``bucket_probs`` or when no bucket can fill a batch (end of the epoch)."""
        if not self.bucket_probs:
            return None
        left: dict[str, int] = {q: sum(i.frames for i in items) for q, items in queues.items()}
        for uri in unread:
            q, frames = self._contents[uri]
            left[q] = left.get(q, 0) + frames
        full = sorted(q for q, n in left.items() if n >= self.t_max and self.bucket_probs.get(q.split(":")[1], 0) > 0)
        if not full:
            return None
        preferred = [q for q in full if q.startswith("image:") == want_image] or full
        weights = [self.bucket_probs[q.split(":")[1]] for q in preferred]
        return rng.choices(preferred, weights=weights)[0]

    def _ready_queue(self, queues, want_image: bool, target: str | None = None) -> str | None:
        """The queue holding a full batch: ``target`` when drawn, else the first ready one of the wanted
        modality if it has one, else any."""
        if target is not None:
            return target if sum(i.frames for i in queues.get(target, ())) >= self.t_max else None
        ready = [q for q, items in queues.items() if sum(i.frames for i in items) >= self.t_max]
        preferred = [q for q in ready if q.startswith("image:") == want_image]
        return (preferred or ready or [None])[0]

    def _pop_batch(self, items: deque[_Item], name: str) -> Batch:
        modality, dims = name.split(":")
        h, w = (int(v) for v in dims.split("x"))
        chosen: list[_Item] = []
        frames = 0
        while items and (not chosen or frames + items[0].frames <= self.t_max):
            item = items.popleft()
            chosen.append(item)
            frames += item.frames
            if frames >= self.t_max:
                break
        return Batch(modality=modality, bucket=(h, w), keys=[i.sample.key for i in chosen],
                     latents=[torch.from_numpy(np.asarray(i.sample.latent, dtype=np.float32)) for i in chosen],
                     metas=[i.sample.meta for i in chosen],
                     references=[None if i.sample.reference is None
                                 else torch.from_numpy(np.asarray(i.sample.reference, dtype=np.float32))
                                 for i in chosen],
                     source_images=[i.sample.source_image for i in chosen])

    def _restore_queues(self, queues, queued: dict) -> None:
        by_shard: dict[str, set[str]] = {}
        for items in queued.values():
            for shard, key in items:
                by_shard.setdefault(shard, set()).add(key)
        found = {}
        for shard, keys in by_shard.items():
            for s in read_shard(shard):
                if s.key in keys:
                    found[(shard, s.key)] = s
        for qname, items in queued.items():
            queues[qname] = deque(_Item(shard, found[(shard, key)]) for shard, key in items)


def _check_probs(probs: dict[str, float]) -> dict[str, float]:
    """Resolution probabilities keyed ``"HxW"`` (pixels), non-negative, summing to 1 (±1e-3: Table 4's rows
    are rounded)."""
    out = {}
    for key, p in probs.items():
        h, _, w = str(key).partition("x")
        if not (h.isdigit() and w.isdigit()) or p < 0:
            raise ValueError(f"resolution probability {key!r}: {p!r}; expected 'HEIGHTxWIDTH': p >= 0")
        out[f"{int(h)}x{int(w)}"] = float(p)
    if abs(sum(out.values()) - 1.0) > 1e-3:
        raise ValueError(f"resolution probabilities sum to {sum(out.values()):.4f}, not 1")
    return out


def _rng_to_json(state) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _rng_from_json(data) -> tuple:
    return (data[0], tuple(data[1]), data[2])
