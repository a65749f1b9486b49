"""The trainer (report §6.3): flow matching on latent shards with AdamW (β = (0.9, 0.95), ε = 1e-8),
linear warm-up, gradient-norm clipping at 1.0, EMA 0.9999, 10 % unconditional samples (the empty
prompt's encoding), and the conditioning regimes mixed with the report's task probabilities.

A checkpoint holds the model, the EMA, the optimizer, the step, the loader's state and every RNG, so a
resumed run continues exactly where the interrupted one stopped. Several ranks (torchrun, or Ray Train
through ``training.ray_train``) train with ``fsdp: true`` — FSDP or HSDP (``hsdp_replicas``) — and write
sharded, asynchronous torch.distributed.checkpoint folders (``training.distributed``). Per-block
activation checkpointing can keep the saved block inputs in host memory (``offload_activations``).

Editing models train on instruct-editing pairs (shards with reference latents, ``encode_edit_pairs``)
``edit_share`` of the time and text-to-image otherwise.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from models.registry import TINY_ENV
from training.attention import NablaParams, nabla_enabled
from training.conditioning import edit_input, image_to_video_input, text_to_video_input
from training.captions import pick_caption
from training.configs import CONFIGS
from training.data import Batch, LatentLoader
from training.encode import SPATIAL_COMPRESSION
from training.distributed import ShardedCheckpointer, init_from_env, read_rank_progress, shard_model
from training.flow import flow_loss, sample_t
from training.model import CrossDiT, ModelInputs, rope_scale
from training.soup import update_ema
from training.text import text_encoders

# Video Lite pre-training mixes text-to-image, text-to-video and image-to-video (report §6.2)
VIDEO_TASKS = {"t2i": 0.01, "t2v": 0.79, "i2v": 0.20}


@dataclass
class TrainConfig:
    model: str = "tiny"
    text_encoders: str = "qwen2.5-vl+clip"  # the report's pair; tiny ones need allow_tiny
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    warmup_steps: int = 1000
    max_steps: int = 1000
    grad_clip: float = 1.0
    ema_decay: float = 0.9999
    uncond_prob: float = 0.1
    caption_weights: dict[str, float] | None = None  # caption variant → weight (training.captions)
    t_schedule: str = "logit_normal"
    t_max: int = 8
    image_share: float = 0.5
    i2v_share: float = VIDEO_TASKS["i2v"] / (VIDEO_TASKS["t2v"] + VIDEO_TASKS["i2v"])
    edit_share: float = 0.8  # editing models: instruct editing on pairs 80 %, text-to-image 20 % (report §6.3)
    seed: int = 0
    checkpoint_every: int = 100
    gradient_checkpointing: bool = False
    offload_activations: bool = False  # with gradient_checkpointing: block inputs wait in host memory
    fsdp: bool = False  # shard parameters/gradients/optimizer over the ranks (FSDP2); sharded DCP checkpoints
    hsdp_replicas: int = 1  # with fsdp: replicate over this many groups, shard within each (HSDP)
    nabla: dict | None = None  # NABLA settings; None: the report's Lite 10 s {"P": 0.9, "wT": 11, "wH": 3, "wW": 3}
    nabla_when: str = "report"  # report (1024-px video, 512-px video over 5 s), always (every video) or never
    log_every: int = 10
    device: str | None = None  # default: this rank's GPU when there is one, else cpu ("meta": the placement test)
    precision: str = "auto"  # bf16 autocast over fp32 master weights on CUDA (auto), or "bf16" / "fp32" everywhere
    tf32: bool = True  # TF32 matmuls and convolutions where the GPU has them (fp32 parts outside autocast)
    compile_blocks: bool = False  # torch.compile each CrossDiT block
    allow_tiny: bool = False  # accept the tiny random text encoders (tests, demos); real runs refuse them

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        """From ``dataclasses.asdict`` output (a checkpoint's or Ray's copy: ``betas`` may be a list)."""
        return cls(**{**data, "betas": tuple(data["betas"])})

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        import yaml

        data = yaml.safe_load(Path(path).read_text()) or {}
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"{path}: unknown training settings {sorted(unknown)}")
        if "betas" in data:
            data["betas"] = tuple(data["betas"])
        return cls(**data)


@dataclass
class StepResult:
    step: int
    loss: float
    lr: float
    grad_norm: float
    modality: str
    tokens: int
    seconds: float


@dataclass
class Trainer:
    cfg: TrainConfig
    shards: list[str]
    out_dir: Path
    history: list[StepResult] = field(default_factory=list)

    def __post_init__(self) -> None:
        cfg = self.cfg
        if cfg.model not in CONFIGS:
            raise ValueError(f"unknown model config {cfg.model!r}; choices: {sorted(CONFIGS)}")
        if cfg.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {cfg.precision!r}")
        check_tiny_allowed(cfg.text_encoders, cfg.allow_tiny)
        torch.manual_seed(cfg.seed)
        self.model_config = CONFIGS[cfg.model]
        self.dist = init_from_env()
        self.device = rank_device(cfg.device or self.dist.device)
        self.autocast = autocast_context(self.device, cfg.precision, cfg.tf32)
        self.text = place_text_encoders(text_encoders(cfg.text_encoders), self.device)
        probe = self.text.encode([""])
        widths = (probe.hidden.shape[-1], probe.pooled.shape[-1])
        if widths != (self.model_config.in_text_dim, self.model_config.in_text_dim2):
            raise ValueError(f"text encoders {cfg.text_encoders!r} give widths {widths}; model {cfg.model!r} takes "
                             f"{(self.model_config.in_text_dim, self.model_config.in_text_dim2)}")
        if self.dist.world > 1 and not cfg.fsdp:
            raise ValueError(f"{self.dist.world} ranks: set fsdp: true (plain data parallel is not offered)")
        self.model = CrossDiT(self.model_config).to(self.device)  # fp32 master weights; autocast computes in bf16
        if cfg.compile_blocks:
            for block in self.model.visual_blocks:
                block.compile(dynamic=True)
        self.model.gradient_checkpointing = cfg.gradient_checkpointing
        self.model.offload_activations = cfg.offload_activations
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        self.checkpointer = None
        if cfg.fsdp:
            shard_model(self.model, self.dist, replicas=cfg.hsdp_replicas)
            shard_model(self.ema, self.dist, replicas=cfg.hsdp_replicas)
            self.checkpointer = ShardedCheckpointer(self.dist)
        self.opt = torch.optim.AdamW(param_groups(self.model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas,
                                     eps=cfg.eps)
        self.loader = LatentLoader(self.shards, t_max=cfg.t_max, image_share=cfg.image_share, seed=cfg.seed,
                                   rank=self.dist.rank, world=self.dist.world)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.rng = random.Random(cfg.seed)
        self.step_num = 0
        self.nabla = NablaParams(**(cfg.nabla or {}))
        nabla_enabled(cfg.nabla_when, 1, 0, 0)  # an unknown setting fails at start
        self.out_dir = Path(self.out_dir)

    # --- one optimisation step ---------------------------------------------------------------------

    def lr_at(self, step: int) -> float:
        return self.cfg.lr * min(1.0, (step + 1) / max(1, self.cfg.warmup_steps))

    def _loss(self, batch: Batch) -> torch.Tensor:
        c = self.model_config
        groups: dict[int, list[int]] = {}
        for i, lat in enumerate(batch.latents):
            groups.setdefault(lat.shape[0], []).append(i)
        total, weight = 0.0, 0
        for T, idx in sorted(groups.items()):
            x0 = torch.stack([batch.latents[i] for i in idx]).to(self.device)  # [b, T, h, w, C]
            captions = [("" if self.rng.random() < self.cfg.uncond_prob
                         else pick_caption(batch.metas[i], self.cfg.caption_weights, self.rng)) for i in idx]
            # drawn on the CPU generator (the same run on any device), then moved
            t = sample_t(len(idx), schedule=self.cfg.t_schedule, generator=self.gen).to(self.device)
            noise = torch.randn(x0.shape, generator=self.gen).to(self.device)
            loss_mask = None
            content = "video" if T > 1 else "image"  # the prompt template of the text encoder
            images = None
            if c.visual_cond and T > 1 and self.rng.random() < self.cfg.i2v_share:
                content = "image2video"
                first = x0[:, :1]
                build = lambda x_t: image_to_video_input(x_t, first)  # noqa: E731
                loss_mask = torch.ones(1, T, 1, 1, 1, device=self.device)
                loss_mask[:, 0] = 0  # the clean first frame is given, not predicted
            elif c.visual_cond:
                build = text_to_video_input
            elif c.instruct_type == "channel":
                refs = [batch.references[i] if batch.references else None for i in idx]
                if all(r is not None for r in refs) and self.rng.random() < self.cfg.edit_share:
                    reference = torch.stack(refs).to(self.device)  # [b, 1, h, w, C] latents of the sources
                    build = lambda x_t: edit_input(x_t, reference)  # noqa: E731
                    content = "image_edit"
                    sources = [batch.source_images[i] if batch.source_images else None for i in idx]
                    if all(s is not None for s in sources):  # the text encoder sees the image to edit
                        images = [Image.open(io.BytesIO(s)) for s in sources]
                else:
                    build = lambda x_t: edit_input(x_t, None)  # noqa: E731 - text-to-image on an editing model
            else:
                build = lambda x_t: x_t  # noqa: E731
            text = self.text.encode(captions, content, images).to(self.device)

            def predict(x_t, tt):
                inputs = ModelInputs(build(x_t), tt, text.hidden, text.mask, text.pooled)
                with self.autocast():
                    return self.model(inputs, nabla=nabla, rope_scale=scale).float()

            height, width = (n * SPATIAL_COMPRESSION for n in x0.shape[2:4])
            nabla = self.nabla if nabla_enabled(self.cfg.nabla_when, T, height, width) else None
            scale = rope_scale(c, height, width)

            loss = flow_loss(predict, x0, t=t, noise=noise, loss_mask=loss_mask)
            total = total + loss * len(idx)
            weight += len(idx)
        return total / weight

    def train_step(self, batch: Batch) -> StepResult:
        started = time.perf_counter()
        self.model.train()
        lr = self.lr_at(self.step_num)
        for group in self.opt.param_groups:
            group["lr"] = lr
        loss = self._loss(batch)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        grad_norm = _item(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
        self.opt.step()
        update_ema(self.ema, self.model, decay=0.0 if self.step_num == 0 else self.cfg.ema_decay)
        self.step_num += 1
        result = StepResult(self.step_num, _item(loss.detach()), lr, grad_norm, batch.modality,
                            sum(x[..., 0].numel() // 4 for x in batch.latents), time.perf_counter() - started)
        self.history.append(result)
        return result

    def train(self, steps: int | None = None, log=print) -> list[StepResult]:
        target = min(self.cfg.max_steps, self.step_num + steps) if steps is not None else self.cfg.max_steps
        while self.step_num < target:
            progressed = False
            for batch in self.loader:
                progressed = True
                r = self.train_step(batch)
                if log and self.dist.is_main and (r.step % self.cfg.log_every == 0 or r.step == target):
                    log(f"step {r.step}: loss {r.loss:.4f} lr {r.lr:.2e} grad {r.grad_norm:.3f} "
                        f"({r.modality}, {1 / max(r.seconds, 1e-9):.2f} steps/s)")
                if self.cfg.checkpoint_every and r.step % self.cfg.checkpoint_every == 0:
                    self.save()
                if self.step_num >= target:
                    break
            if not progressed:
                raise RuntimeError("the shards yielded no batch (empty, or fewer frames than one batch with drop_last)")
        if self.checkpointer is not None:
            self.checkpointer.wait()
        return self.history

    # --- checkpoints -------------------------------------------------------------------------------

    def _progress(self) -> dict:
        return {"config": dataclasses.asdict(self.cfg), "model_config": self.cfg.model, "step": self.step_num,
                "loader": self.loader.state_dict(), "torch_rng": self.gen.get_state(), "py_rng": self.rng.getstate()}

    def save(self, path: Path | None = None) -> Path:
        """A single file ``step-N.pt``; with ``fsdp`` a folder ``step-N/`` of DCP shards plus one small
        file per rank, written asynchronously (``latest`` moves when it is complete)."""
        if self.checkpointer is not None:
            path = Path(path or self.out_dir / f"step-{self.step_num:07d}")
            self.checkpointer.save(path, self.model, self.ema, self.opt, self._progress())
            return path
        path = Path(path or self.out_dir / f"step-{self.step_num:07d}.pt")
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {**self._progress(), "model": self.model.state_dict(), "ema": self.ema.state_dict(),
                 "opt": self.opt.state_dict()}
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(path)
        (path.parent / "latest").write_text(path.name)
        return path

    @classmethod
    def resume(cls, checkpoint: str | Path, shards: list[str], out_dir: Path | None = None) -> "Trainer":
        checkpoint = resolve_checkpoint(checkpoint)
        if checkpoint.is_dir():  # sharded (fsdp): the same number of ranks resumes it
            state = read_rank_progress(checkpoint, init_from_env().rank)
        else:
            state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        trainer = cls(TrainConfig.from_dict(state["config"]), shards, out_dir or checkpoint.parent)
        if trainer.checkpointer is not None:
            trainer.checkpointer.load(checkpoint, trainer.model, trainer.ema, trainer.opt)
        else:
            trainer.model.load_state_dict(state["model"])
            trainer.ema.load_state_dict(state["ema"])
            trainer.opt.load_state_dict(state["opt"])
        trainer.loader.load_state_dict(state["loader"])
        trainer.gen.set_state(state["torch_rng"])
        trainer.rng.setstate(state["py_rng"])
        trainer.step_num = state["step"]
        return trainer


PRECISIONS = ("auto", "bf16", "fp32")
TINY_TEXT_ENCODERS = ("tiny", "tiny-hf")


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on the weight matrices only — not on norms, biases (1-D) or the
    modulation layers (adaLN: they set the per-sample scale and shift, decaying them biases to identity)."""
    decay, keep = [], []
    for name, p in model.named_parameters():
        (keep if p.ndim < 2 or "modulation" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


def check_tiny_allowed(text_encoders_name: str, allow_tiny: bool) -> None:
    """Real training refuses the tiny random text encoders unless asked (``allow_tiny``, ``--allow-tiny``, or
    the tests' ``CURATION_ALLOW_TINY_MODELS=1``)."""
    if text_encoders_name in TINY_TEXT_ENCODERS and not (allow_tiny or os.environ.get(TINY_ENV) == "1"):
        raise ValueError(f"text_encoders {text_encoders_name!r} are random test weights: set text_encoders: "
                         f"qwen2.5-vl+clip, or allow_tiny: true (--allow-tiny) for a smoke run")


def rank_device(name: str) -> torch.device:
    """``cuda`` means this rank's GPU (``init_from_env`` has set it from LOCAL_RANK)."""
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def autocast_context(device: torch.device, precision: str, tf32: bool = True):
    """A context factory: bf16 autocast (weights stay fp32) on CUDA by default or wherever ``precision`` is
    bf16; nothing on fp32. Turns TF32 on for CUDA when ``tf32``."""
    if device.type == "cuda" and tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if not bf16:
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


def place_text_encoders(text, device: torch.device):
    """The tiny encoders are a module: moved to ``device``; the Hugging Face pair loads on the stage's GPU."""
    return text.to(device) if isinstance(text, torch.nn.Module) else text


def _item(t: torch.Tensor) -> float:
    """A logged scalar; NaN on ``meta`` (the placement test runs whole steps there)."""
    return float("nan") if t.device.type == "meta" else float(t)


def resolve_checkpoint(checkpoint: str | Path) -> Path:
    """A checkpoint file or sharded folder; a run folder stands for its ``latest``."""
    checkpoint = Path(checkpoint)
    if checkpoint.is_dir() and (checkpoint / "latest").exists():
        return checkpoint / (checkpoint / "latest").read_text().strip()
    return checkpoint


def describe(trainer: Trainer) -> str:
    m = trainer.model
    return json.dumps({"model": trainer.cfg.model, "params": m.num_params(), "shards": len(trainer.shards),
                       "t_max": trainer.cfg.t_max, "lr": trainer.cfg.lr, "max_steps": trainer.cfg.max_steps})

