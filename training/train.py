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
from training.captions import pick_caption
from training.conditioning import edit_input, image_to_video_input, text_to_video_input
from training.configs import CONFIGS
from training.data import Batch, LatentLoader
from training.distributed import (
    ShardedCheckpointer,
    init_from_env,
    read_rank_progress,
    shard_model,
)
from training.encode import SPATIAL_COMPRESSION
from training.flow import flow_loss, interpolate, resolve_t_shift, sample_t, shift_t
from training.model import CrossDiT, ModelInputs, PackedInputs, rope_scale
from training.soup import update_ema
from training.text import TextBatch, text_encoders

# pre-training mixes text-to-image, text-to-video and image-to-video (report §6.2): Lite 1/79/20 %, Pro 2/77/21 %
VIDEO_TASKS = {"t2i": 0.01, "t2v": 0.79, "i2v": 0.20}
PRO_TASKS = {"t2i": 0.02, "t2v": 0.77, "i2v": 0.21}
IMAGE_TASKS = {"t2i": 1.0}


def default_task_mix(model: str) -> dict[str, float]:
    """The report's mix for a model: Pro's for ``video-pro``, Lite's for the other video (``visual_cond``)
    models, text-to-image only for image models."""
    if model == "video-pro":
        return dict(PRO_TASKS)
    return dict(VIDEO_TASKS) if CONFIGS[model].visual_cond else dict(IMAGE_TASKS)


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
    t_shift: float | str = "auto"  # training t shifted as the sampler's; auto: 3·√(tokens/4096), ≥ 1 (flow.auto_t_shift)
    t_max: int = 8
    packed: bool = True  # a batch's clips of every length in one forward (document mask); False: one per length
    loss_weighting: str = "token"  # token: every predicted latent element counts the same; sample: every clip
    init_from: str | None = None  # a released Kandinsky 5.0 .safetensors to start from (training.official)
    recipe: str | None = None  # the Table 4 recipe this config overlays (training/recipes/<name>.yaml)
    batch_size: int | None = None  # the recipe's global batch (samples per step, all ranks); per-rank batches: t_max
    resolution_probs: dict[str, float] | None = None  # "HxW" px → probability of a batch's bucket (Table 4)
    task_mix: dict[str, float] | None = None  # t2i / t2v / i2v shares; None: the model's (default_task_mix)
    image_share: float | None = None  # share of image batches; None: the task mix's t2i
    i2v_share: float | None = None  # share of I2V among video samples, drawn per sample; None: from the task mix
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
    def load(cls, path: str | Path | None = None, *, recipe: str | None = None,
             overrides: dict | None = None) -> "TrainConfig":
        """A config from a recipe (``recipe``, or the file's ``recipe:`` key), overlaid by the YAML file at
        ``path``, overlaid by ``overrides`` (command-line flags)."""
        import yaml

        from training.recipes import load_recipe

        names = {f.name for f in dataclasses.fields(cls)}
        data = yaml.safe_load(Path(path).read_text()) or {} if path is not None else {}
        recipe = recipe or data.get("recipe")
        base = load_recipe(recipe) if recipe else {}
        for source, values in ((f"recipe {recipe}", base), (str(path), data), ("overrides", overrides or {})):
            unknown = set(values) - names
            if unknown:
                raise ValueError(f"{source}: unknown training settings {sorted(unknown)}")
        merged = {**base, **data, **(overrides or {})}
        if recipe:
            merged["recipe"] = recipe
        if "betas" in merged:
            merged["betas"] = tuple(merged["betas"])
        return cls(**merged)

    def tasks(self) -> dict[str, float]:
        """The task mix in force: ``task_mix`` or the model's default, normalised."""
        mix = dict(self.task_mix) if self.task_mix else default_task_mix(self.model)
        unknown = set(mix) - {"t2i", "t2v", "i2v"}
        total = sum(mix.values())
        if unknown or total <= 0 or min(mix.values()) < 0:
            raise ValueError(f"task_mix {mix}: shares of t2i, t2v, i2v, >= 0, not all 0")
        return {k: mix.get(k, 0.0) / total for k in ("t2i", "t2v", "i2v")}

    def image_fraction(self) -> float:
        return self.tasks()["t2i"] if self.image_share is None else self.image_share

    def i2v_fraction(self) -> float:
        if self.i2v_share is not None:
            return self.i2v_share
        mix = self.tasks()
        return mix["i2v"] / (mix["t2v"] + mix["i2v"]) if mix["t2v"] + mix["i2v"] > 0 else 0.0


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
        self.model = CrossDiT(self.model_config)
        if cfg.init_from:  # fine-tuning a released checkpoint (strict: every key, every shape)
            from training.official import load_official

            load_official(self.model, cfg.init_from)
        self.model = self.model.to(self.device)  # fp32 master weights; autocast computes in bf16
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
        self.loader = LatentLoader(self.shards, t_max=cfg.t_max, image_share=cfg.image_fraction(), seed=cfg.seed,
                                   rank=self.dist.rank, world=self.dist.world, bucket_probs=cfg.resolution_probs)
        self.i2v_share = cfg.i2v_fraction()
        resolve_t_shift(cfg.t_shift, 1)  # a bad setting fails at start
        if cfg.loss_weighting not in ("token", "sample"):
            raise ValueError(f"loss_weighting must be token or sample, got {cfg.loss_weighting!r}")
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.rng = random.Random(cfg.seed)
        self.step_num = 0
        self.nabla = NablaParams(**(cfg.nabla or {}))
        nabla_enabled(cfg.nabla_when, 1, 0, 0)  # an unknown setting fails at start
        self.out_dir = Path(self.out_dir)

    # --- one optimisation step ---------------------------------------------------------------------

    def lr_at(self, step: int) -> float:
        return self.cfg.lr * min(1.0, (step + 1) / max(1, self.cfg.warmup_steps))

    def sample_tasks(self, batch: Batch) -> list[str]:
        """Each sample's task, drawn per sample: ``i2v`` (``i2v_share`` of the videos, on a ``visual_cond``
        model) or ``t2v``; ``edit`` (``edit_share`` of the pairs with a reference, on an editing model) or
        ``t2i`` for images."""
        c = self.model_config
        tasks = []
        for i, lat in enumerate(batch.latents):
            if lat.shape[0] > 1:
                tasks.append("i2v" if c.visual_cond and self.rng.random() < self.i2v_share else "t2v")
            elif (c.instruct_type == "channel" and batch.references and batch.references[i] is not None
                  and self.rng.random() < self.cfg.edit_share):
                tasks.append("edit")
            else:
                tasks.append("t2i")
        return tasks

    def _loss(self, batch: Batch) -> torch.Tensor:
        """The batch's loss. ``packed`` (default): every clip in one forward (``_packed_loss``). Otherwise one
        forward per (clip length, task) group, and the loss is the mean over samples of each sample's mean
        squared velocity error (a 2-frame clip weighs as much as a 31-frame one)."""
        if self.cfg.packed:
            return self._packed_loss(batch)
        tasks = self.sample_tasks(batch)
        groups: dict[tuple[int, str], list[int]] = {}
        for i, lat in enumerate(batch.latents):
            groups.setdefault((lat.shape[0], tasks[i]), []).append(i)
        total, weight = 0.0, 0
        for (T, task), idx in sorted(groups.items()):
            loss = self._group_loss(batch, idx, T, task)
            total = total + loss * len(idx)
            weight += len(idx)
        return total / weight

    def _packed_loss(self, batch: Batch) -> torch.Tensor:
        """All clips of the batch packed into one sequence and one forward (``CrossDiT.forward_packed``:
        block-diagonal attention composed with NABLA's mask), each with its own task, caption, t (shifted
        for its own token count) and noise. ``loss_weighting: token`` (default): the summed squared error
        over every predicted latent element of the pack divided by their number — a 31-frame clip counts
        31/2 times a 2-frame one and each step's gradient does not depend on how the clips were packed
        (the I2V clean first frame is not predicted, so not counted); ``sample``: the mean of per-clip means.
        Clips on which NABLA is on and off (``nabla_when``) go in two packs."""
        c = self.model_config
        tasks = self.sample_tasks(batch)
        n = len(batch.latents)
        captions = [("" if self.rng.random() < self.cfg.uncond_prob
                     else pick_caption(batch.metas[i], self.cfg.caption_weights, self.rng)) for i in range(n)]
        x0 = [lat.to(self.device) for lat in batch.latents]
        tokens = [lat.shape[0] * (lat.shape[1] // c.patch_size[1]) * (lat.shape[2] // c.patch_size[2])
                  for lat in batch.latents]
        t = sample_t(n, schedule=self.cfg.t_schedule, generator=self.gen)
        t = torch.stack([shift_t(t[i], resolve_t_shift(self.cfg.t_shift, tokens[i])) for i in range(n)]).to(self.device)
        noise = [torch.randn(lat.shape, generator=self.gen).to(self.device) for lat in batch.latents]
        text = self._encode_per_sample(batch, captions, tasks)
        height, width = (v * SPATIAL_COMPRESSION for v in batch.latents[0].shape[1:3])
        scale = rope_scale(c, height, width)
        packs: dict[bool, list[int]] = {}
        for i, lat in enumerate(batch.latents):
            packs.setdefault(nabla_enabled(self.cfg.nabla_when, lat.shape[0], height, width), []).append(i)
        err_sum, count, per_sample = 0.0, 0, []
        for use_nabla, idx in sorted(packs.items()):
            xs, targets, masks = [], [], []
            for i in idx:
                x_t = interpolate(x0[i][None], noise[i][None], t[i:i + 1])
                xs.append(self._model_input(x_t, x0[i][None], tasks[i], batch, i)[0])
                targets.append(noise[i] - x0[i])
                masks.append(_frame_mask(x0[i], tasks[i]))
            inputs = PackedInputs(xs, t[idx], text.hidden[idx], text.mask[idx], text.pooled[idx])
            with self.autocast():
                preds = self.model(inputs, nabla=self.nabla if use_nabla else None, rope_scale=scale)
            for pred, target, mask in zip(preds, targets, masks):
                err = ((pred.float() - target) ** 2 * mask).sum()
                elems = mask.sum() * target.shape[-1] * target.shape[1] * target.shape[2]
                err_sum, count = err_sum + err, count + elems
                per_sample.append(err / elems)
        if self.cfg.loss_weighting == "sample":
            return torch.stack(per_sample).mean()
        return err_sum / count

    def _model_input(self, x_t, x0, task: str, batch: Batch, i: int) -> torch.Tensor:
        """The model's input channels for one clip [1, T, h, w, C] and its task."""
        c = self.model_config
        if task == "i2v":
            return image_to_video_input(x_t, x0[:, :1])
        if c.visual_cond:
            return text_to_video_input(x_t)
        if c.instruct_type == "channel":
            return edit_input(x_t, batch.references[i][None].to(self.device) if task == "edit" else None)
        return x_t

    def _encode_per_sample(self, batch: Batch, captions: list[str], tasks: list[str]):
        """The captions encoded with each sample's template (``video``, ``image2video``, ``image``,
        ``image_edit``), one encoder call per template, padded to one length in batch order."""
        content = {"i2v": "image2video", "t2v": "video", "t2i": "image", "edit": "image_edit"}
        groups: dict[str, list[int]] = {}
        for i, task in enumerate(tasks):
            groups.setdefault(content[task], []).append(i)
        parts = {}
        for name, idx in groups.items():
            images = None
            if name == "image_edit" and batch.source_images and all(batch.source_images[i] for i in idx):
                images = [Image.open(io.BytesIO(batch.source_images[i])) for i in idx]
            parts[name] = (idx, self.text.encode([captions[i] for i in idx], name, images).to(self.device))
        L = max(tb.hidden.shape[1] for _, tb in parts.values())
        first = next(iter(parts.values()))[1]
        n = len(tasks)
        hidden = first.hidden.new_zeros(n, L, first.hidden.shape[-1])
        mask = first.mask.new_zeros(n, L)
        pooled = first.pooled.new_zeros(n, first.pooled.shape[-1])
        for idx, tb in parts.values():
            where = torch.tensor(idx, device=self.device)
            hidden[where, :tb.hidden.shape[1]] = tb.hidden
            mask[where, :tb.mask.shape[1]] = tb.mask
            pooled[where] = tb.pooled
        return TextBatch(hidden, mask, pooled)

    def _group_loss(self, batch: Batch, idx: list[int], T: int, task: str) -> torch.Tensor:
        c = self.model_config
        x0 = torch.stack([batch.latents[i] for i in idx]).to(self.device)  # [b, T, h, w, C]
        captions = [("" if self.rng.random() < self.cfg.uncond_prob
                     else pick_caption(batch.metas[i], self.cfg.caption_weights, self.rng)) for i in idx]
        # drawn on the CPU generator (the same run on any device), then moved
        tokens = T * (x0.shape[2] // c.patch_size[1]) * (x0.shape[3] // c.patch_size[2])
        t = shift_t(sample_t(len(idx), schedule=self.cfg.t_schedule, generator=self.gen),
                    resolve_t_shift(self.cfg.t_shift, tokens)).to(self.device)
        noise = torch.randn(x0.shape, generator=self.gen).to(self.device)
        loss_mask = None
        content = "video" if T > 1 else "image"  # the prompt template of the text encoder
        images = None
        if task == "i2v":
            content = "image2video"
            first = x0[:, :1]
            build = lambda x_t: image_to_video_input(x_t, first)  # noqa: E731
            loss_mask = torch.ones(1, T, 1, 1, 1, device=self.device)
            loss_mask[:, 0] = 0  # the clean first frame is given, not predicted
        elif c.visual_cond:
            build = text_to_video_input
        elif task == "edit":
            reference = torch.stack([batch.references[i] for i in idx]).to(self.device)  # [b, 1, h, w, C]
            build = lambda x_t: edit_input(x_t, reference)  # noqa: E731
            content = "image_edit"
            sources = [batch.source_images[i] if batch.source_images else None for i in idx]
            if all(s is not None for s in sources):  # the text encoder sees the image to edit
                images = [Image.open(io.BytesIO(s)) for s in sources]
        elif c.instruct_type == "channel":
            build = lambda x_t: edit_input(x_t, None)  # noqa: E731 - text-to-image on an editing model
        else:
            build = lambda x_t: x_t  # noqa: E731
        text = self.text.encode(captions, content, images).to(self.device)
        height, width = (n * SPATIAL_COMPRESSION for n in x0.shape[2:4])
        nabla = self.nabla if nabla_enabled(self.cfg.nabla_when, T, height, width) else None
        scale = rope_scale(c, height, width)

        def predict(x_t, tt):
            inputs = ModelInputs(build(x_t), tt, text.hidden, text.mask, text.pooled)
            with self.autocast():
                return self.model(inputs, nabla=nabla, rope_scale=scale).float()

        return flow_loss(predict, x0, t=t, noise=noise, loss_mask=loss_mask)

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


def _frame_mask(x0: torch.Tensor, task: str) -> torch.Tensor:
    """[T, 1, 1, 1]: 1 on the latent frames whose velocity is learnt (not the given I2V first frame)."""
    mask = torch.ones(x0.shape[0], 1, 1, 1, device=x0.device)
    if task == "i2v":
        mask[0] = 0
    return mask


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

