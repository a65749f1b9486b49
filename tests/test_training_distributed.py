"""Two real processes (gloo on CPU) train the tiny CrossDiT sharded with FSDP2, write an asynchronous
torch.distributed.checkpoint, resume it exactly; HSDP builds its 2-D mesh; the sharded checkpoint
consolidates for sampling; host offload of checkpointed block inputs leaves the gradients unchanged."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp

from tests.test_training_run import config, shards_of_photos


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, uris: list[str], tmp: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    from training.train import Trainer

    tmp_path = Path(tmp)
    straight = Trainer(config(fsdp=True, max_steps=3), uris, tmp_path / "a")
    straight.train(log=None)
    p = next(straight.model.parameters())
    sharded = isinstance(p, DTensor) and p.to_local().numel() < p.numel()
    ema_sharded = isinstance(next(straight.ema.parameters()), DTensor)

    first = Trainer(config(fsdp=True, max_steps=3), uris, tmp_path / "b")
    first.train(2, log=None)
    ckpt = first.save()
    first.checkpointer.wait()
    resumed = Trainer.resume(tmp_path / "b", uris)
    resumed.train(log=None)
    same_weights = all(torch.equal(a.full_tensor(), b.full_tensor())
                       for a, b in zip(straight.model.parameters(), resumed.model.parameters()))
    ema_full = {k: v.full_tensor() for k, v in resumed.ema.state_dict().items()}
    resumed.save()
    resumed.checkpointer.wait()

    hsdp = Trainer(config(fsdp=True, hsdp_replicas=2, max_steps=2), uris, tmp_path / "h")
    hsdp.train(log=None)
    mesh = next(hsdp.model.parameters()).device_mesh
    if rank == 0:
        torch.save(ema_full, tmp_path / "ema_full.pt")
    (tmp_path / f"rank{rank}.json").write_text(json.dumps({
        "straight": [r.loss for r in straight.history], "resumed": [r.loss for r in first.history + resumed.history],
        "sharded": sharded, "ema_sharded": ema_sharded, "same_weights": same_weights, "ckpt": str(ckpt),
        "hsdp_mesh": list(mesh.shape), "hsdp_dims": list(mesh.mesh_dim_names),
        "hsdp_finite": all(torch.isfinite(torch.tensor(r.loss)).item() for r in hsdp.history)}))
    dist.destroy_process_group()


def test_fsdp_on_two_ranks_checkpoints_and_resumes_exactly(tmp_path, skimage_dir):
    from training.sample import load_model

    uris, _, _ = shards_of_photos(tmp_path, skimage_dir)
    mp.spawn(_rank_main, args=(2, _free_port(), uris, str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for r in ranks:
        assert r["sharded"] and r["ema_sharded"]
        assert len(r["straight"]) == 3 and r["resumed"] == r["straight"]  # bit for bit, on each rank
        assert r["same_weights"]
        assert r["hsdp_mesh"] == [2, 1] and r["hsdp_dims"] == ["replicate", "shard"] and r["hsdp_finite"]
    assert ranks[0]["straight"] != ranks[1]["straight"]  # each rank trains on its own shards
    ckpt = Path(ranks[0]["ckpt"])
    assert (ckpt / ".metadata").exists() and sorted(p.name for p in ckpt.glob("extra-rank*")) == [
        "extra-rank00000.pt", "extra-rank00001.pt"]
    run = tmp_path / "b"
    assert (run / "latest").read_text() == "step-0000003"
    model, cfg = load_model(run)  # the shards gathered in one process, for sampling
    ema = torch.load(tmp_path / "ema_full.pt", weights_only=False)
    assert cfg["fsdp"] and all(torch.equal(v, ema[k]) for k, v in model.state_dict().items())
    # souping works on sharded checkpoints too: two copies of one average to itself
    from training.sample import load_checkpoint
    from training.soup import soup

    state = load_checkpoint(run)
    assert state["step"] == 3 and "opt" in state
    merged = soup([state["ema"], load_checkpoint(ckpt)["ema"]], weighting="equal")
    assert merged.keys() == ema.keys()


def test_offloading_checkpointed_block_inputs_leaves_the_gradients_unchanged():
    from training.configs import CONFIGS
    from training.model import CrossDiT, ModelInputs

    torch.manual_seed(0)
    model = CrossDiT(CONFIGS["tiny"]).train()
    for p in model.parameters():  # away from the zero init, so every block has a gradient
        torch.nn.init.normal_(p, std=0.05)
    c = model.config
    inputs = ModelInputs(torch.randn(2, 1, 8, 8, c.in_visual_dim), torch.rand(2), torch.randn(2, 5, c.in_text_dim),
                         torch.ones(2, 5, dtype=torch.bool), torch.randn(2, c.in_text_dim2))

    def grads(checkpointing: bool, offload: bool) -> list[torch.Tensor]:
        model.zero_grad()
        model.gradient_checkpointing, model.offload_activations = checkpointing, offload
        model(inputs).square().mean().backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = grads(False, False)
    for setting in ((True, False), (True, True)):
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain, grads(*setting)))


def test_ray_train_runs_two_fsdp_workers_and_resumes(ray_local, tmp_path, skimage_dir):
    from training.ray_train import train_on_ray
    from training.train import TrainConfig

    uris, _, _ = shards_of_photos(tmp_path, skimage_dir)
    cfg = TrainConfig(model="tiny", text_encoders="tiny", lr=2e-3, warmup_steps=1, max_steps=10, t_max=2, image_share=1.0,
                      checkpoint_every=0)
    out = tmp_path / "run"
    metrics = train_on_ray(cfg, uris, out, workers=2, steps=2)
    assert metrics["world"] == 2 and metrics["step"] == 2
    assert (out / "latest").read_text() == "step-0000002"
    assert sorted(p.name for p in (out / "step-0000002").glob("extra-rank*")) == ["extra-rank00000.pt",
                                                                                   "extra-rank00001.pt"]
    again = train_on_ray(cfg, uris, out, workers=2, steps=1, resume=True)
    assert again["step"] == 3 and (out / "latest").read_text() == "step-0000003"
