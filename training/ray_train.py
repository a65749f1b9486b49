"""Training on a Ray cluster with Ray Train (report §6.1.3: FSDP/HSDP over many GPUs and nodes): a
``TorchTrainer`` starts ``workers`` processes (one GPU each with ``use_gpu``), sets up their torch process
group (NCCL on GPUs, gloo on CPUs), and each runs the same ``training.train.Trainer`` with ``fsdp: true``
— sharded parameters and the sharded asynchronous checkpoints of ``training.distributed``.

``out_dir`` must be a filesystem every worker sees (a shared mount on several nodes): each rank writes its
own shards there, and ``latest`` points at the last complete checkpoint, so ``resume`` continues a run
with the same number of workers.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from training.train import TrainConfig, Trainer

METRICS = "ray-metrics.json"  # rank 0's last step, loss and world size, written into out_dir


def _worker_loop(args: dict) -> None:
    import ray.train

    out = Path(args["out_dir"])
    if args["resume"]:
        trainer = Trainer.resume(out, args["shards"], out)
    else:
        trainer = Trainer(TrainConfig.from_dict(args["config"]), args["shards"], out)
    trainer.train(args["steps"], log=print)
    trainer.save()
    trainer.checkpointer.wait()
    last = trainer.history[-1] if trainer.history else None
    metrics = {"step": trainer.step_num, "loss": last.loss if last else float("nan"), "rank": trainer.dist.rank,
               "world": trainer.dist.world}
    if trainer.dist.is_main:  # Ray Train keeps metrics only beside a Ray checkpoint; ours are DCP folders
        (out / METRICS).write_text(json.dumps(metrics))
    ray.train.report(metrics)


def train_on_ray(config: TrainConfig, shards: list[str], out_dir: Path, *, workers: int, use_gpu: bool = False,
                 steps: int | None = None, resume: bool = False) -> dict:
    """Run the trainer on ``workers`` Ray workers (Ray must be initialised: ``ray.init(address=...)``).
    Returns rank 0's last metrics (step, loss, world)."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if workers < 1:
        raise ValueError("workers must be >= 1")
    config = dataclasses.replace(config, fsdp=True)
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"config": dataclasses.asdict(config), "shards": list(shards), "out_dir": str(out_dir),
                           "steps": steps, "resume": resume},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu),
        run_config=RunConfig(name="curation-train", storage_path=str(out_dir / "ray")),
    )
    (out_dir / METRICS).unlink(missing_ok=True)
    trainer.fit()
    return json.loads((out_dir / METRICS).read_text())
