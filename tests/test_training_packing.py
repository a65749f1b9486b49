"""Issue 11 §4: a packed batch (samples of different lengths in one sequence) in one forward equals the
per-sample forwards — dense and with NABLA (the document mask composed with NABLA's block mask) — in
values and gradients; and the trainer's packed step."""

from __future__ import annotations

import pytest
import torch

from training.attention import NablaParams
from training.configs import TINY
from training.model import CrossDiT, ModelInputs, PackedInputs


def _model(seed=0):
    torch.manual_seed(seed)
    model = CrossDiT(TINY)
    with torch.no_grad():  # away from the zero init, so modulation, gates and the output layer all matter
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _inputs(lengths, side=16, L=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    c = TINY
    xs = [torch.randn(T, side, side, c.in_channels, generator=g) for T in lengths]
    n = len(lengths)
    text = torch.randn(n, L, c.in_text_dim, generator=g)
    mask = torch.ones(n, L, dtype=torch.bool)
    for i in range(n):
        mask[i, L - i % 3:] = False  # different real lengths per sample
    return PackedInputs(xs, torch.rand(n, generator=g), text, mask, torch.randn(n, c.in_text_dim2, generator=g))


def _one(p: PackedInputs, i: int) -> ModelInputs:
    keep = int(p.text_mask[i].sum())  # a sample alone has only its own tokens (no padding to the pack's L)
    return ModelInputs(p.xs[i][None], p.t[i:i + 1], p.text[i:i + 1, :keep], p.text_mask[i:i + 1, :keep],
                       p.pooled[i:i + 1])


@pytest.mark.parametrize("nabla", [None, NablaParams(P=0.5, wT=1, wH=1, wW=1)], ids=["dense", "nabla"])
def test_packed_forward_and_backward_equal_per_sample(nabla):
    model = _model()
    packed = _inputs([3, 1, 2])
    outs = model(packed, nabla=nabla, rope_scale=(1.0, 2.0, 2.0))
    if nabla is not None:  # the pack's block mask: 6 frames of one 64-token block; nothing across samples
        mask = model.visual_blocks[0].self_attention.last_block_mask
        assert mask.shape[-1] == 6 and not mask[..., :3, 3:].any() and not mask[..., 3, 4:].any()
        assert 0 < mask.float().mean() <= 14 / 36  # at most the three diagonal blocks (9 + 1 + 4 of 36)
    loss = sum((o ** 2).mean() for o in outs)
    loss.backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    ref_loss = 0
    for i, o in enumerate(outs):
        ref = model(_one(packed, i), nabla=nabla, rope_scale=(1.0, 2.0, 2.0))[0]
        assert ref.shape == o.shape
        assert torch.allclose(o, ref, atol=1e-5), (i, (o - ref).abs().max())
        ref_loss = ref_loss + (ref ** 2).mean()
    ref_loss.backward()
    for k, p in model.named_parameters():
        assert torch.allclose(grads[k], p.grad, atol=1e-5, rtol=1e-4), k


def _trainer(tmp_path, **kw):
    from training.train import TrainConfig, Trainer

    cfg = TrainConfig(model="tiny-i2v", text_encoders="tiny", warmup_steps=1, max_steps=10, checkpoint_every=0,
                      allow_tiny=True, uncond_prob=0.0, **kw)
    return Trainer(cfg, [], tmp_path)


def _video_batch(lengths, side=16):
    from training.data import Batch

    g = torch.Generator().manual_seed(3)
    latents = [torch.randn(T, side, side, 16, generator=g) for T in lengths]
    return Batch("video", (side * 8, side * 8), [f"k{i}" for i in range(len(lengths))], latents,
                 metas=[{"caption": f"clip {i}"} for i in range(len(lengths))])


def test_the_trainer_steps_on_a_packed_batch_of_mixed_lengths_and_tasks(tmp_path):
    trainer = _trainer(tmp_path, i2v_share=0.5, seed=1)
    batch = _video_batch([3, 1, 2, 3])
    tasks = []
    for _ in range(3):
        r = trainer.train_step(batch)
        assert torch.isfinite(torch.tensor(r.loss)) and r.grad_norm > 0
    trainer.rng.seed(5)
    tasks = [trainer.sample_tasks(batch) for _ in range(20)]
    assert any(len(set(t)) > 1 for t in tasks)  # T2V and I2V side by side in one pack


def test_loss_weighting(tmp_path):
    def loss(weighting, lengths):
        trainer = _trainer(tmp_path, i2v_share=0.0, seed=2, loss_weighting=weighting)
        with torch.no_grad():
            return float(trainer._loss(_video_batch(lengths)))

    assert loss("token", [2, 2]) == pytest.approx(loss("sample", [2, 2]), rel=1e-6)  # equal lengths: the same
    assert loss("token", [1, 3]) != pytest.approx(loss("sample", [1, 3]), rel=1e-4)
    with torch.no_grad():  # the same draws as the per-length path: the same loss
        per_length = float(_trainer(tmp_path, i2v_share=0.0, seed=2, packed=False)._loss(_video_batch([2, 2])))
    assert loss("token", [2, 2]) == pytest.approx(per_length, rel=1e-5)
