"""Several processes training one model (report §6.1.3): FSDP (parameters, gradients and optimizer state
sharded over every rank) or HSDP (sharded inside a group of ranks, replicated across groups), with
``torch.distributed.fsdp.fully_shard`` (FSDP2) per CrossDiT block and at the root; and sharded,
non-blocking checkpoints with ``torch.distributed.checkpoint`` (each rank writes its own shards).

The process group comes from the environment torchrun and Ray Train set (``RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``, ``MASTER_PORT``) or is already initialised (Ray Train does it); NCCL on GPUs, gloo on CPU.
A single process without those variables trains unsharded, as before.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_env() -> DistInfo:
    """Join the process group the environment describes (or the one already set up)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if not dist.is_initialized():
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return DistInfo(device=device)
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return DistInfo(dist.get_rank(), dist.get_world_size(), device)


def shard_model(model: torch.nn.Module, info: DistInfo, *, replicas: int = 1):
    """FSDP (``replicas`` = 1) or HSDP (``replicas`` groups, each sharding over world / replicas ranks):
    every text-refiner and CrossDiT block is its own FSDP unit, then the root. Returns the device mesh."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if info.world % replicas:
        raise ValueError(f"hsdp_replicas={replicas} does not divide the {info.world} ranks")
    if replicas > 1:
        mesh = init_device_mesh(info.device, (replicas, info.world // replicas), mesh_dim_names=("replicate", "shard"))
    else:
        mesh = init_device_mesh(info.device, (info.world,), mesh_dim_names=("shard",))
    for block in [*model.text_blocks, *model.visual_blocks]:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return mesh


class ShardedCheckpointer:
    """``save`` starts an asynchronous DCP save of the model, EMA and optimizer shards (the training
    step goes on while it writes) plus a small per-rank file (step, loader position, RNGs); the previous
    save is finished before a new one starts and by ``wait``. The checkpoint becomes ``latest`` only
    once every rank's files are written."""

    def __init__(self, info: DistInfo):
        self.info = info
        self._pending = None
        self._pending_path: Path | None = None

    def save(self, path: Path, model, ema, opt, progress: dict) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

        self.wait()
        path.mkdir(parents=True, exist_ok=True)
        torch.save(progress, _progress_file(path, self.info.rank))
        model_sd, opt_sd = get_state_dict(model, opt)
        state = {"model": model_sd, "ema": get_model_state_dict(ema), "opt": opt_sd}
        self._pending = dcp.async_save(state, checkpoint_id=str(path))
        self._pending_path = path

    def wait(self) -> None:
        if self._pending is None:
            return
        self._pending.result()
        path, self._pending, self._pending_path = self._pending_path, None, None
        if self.info.world > 1:
            dist.barrier()  # every rank's shards are written
        if self.info.is_main:
            (path.parent / "latest").write_text(path.name)
        if self.info.world > 1:
            dist.barrier()  # and every rank sees the new ``latest``

    def load(self, path: Path, model, ema, opt) -> None:
        """Restore the shards into the (already sharded) model, EMA and optimizer."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_state_dict,
                                                             set_model_state_dict, set_state_dict)

        model_sd, opt_sd = get_state_dict(model, opt)
        state = {"model": model_sd, "ema": get_model_state_dict(ema), "opt": opt_sd}
        dcp.load(state, checkpoint_id=str(path))
        set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["opt"])
        set_model_state_dict(ema, state["ema"])


def _progress_file(path: Path, rank: int) -> Path:
    return path / f"extra-rank{rank:05d}.pt"


def read_rank_progress(path: Path, rank: int) -> dict:
    """One rank's small file of a sharded checkpoint: config, step, loader position, RNGs."""
    file = _progress_file(path, rank)
    if not file.exists():
        raise FileNotFoundError(f"{file}: missing — a sharded checkpoint resumes with the number of ranks that wrote it")
    return torch.load(file, map_location="cpu", weights_only=False)
