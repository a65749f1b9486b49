"""Issue 11 §5: strict loading of the released Kandinsky 5.0 DiT checkpoints. A checkpoint is written in the
official ``DiffusionTransformer3D`` layout by ``official_checkpoint`` — key names and shapes listed here from
trainer-spec.md §1 (module layout, constructor, block internals), not from our mapping — for the tiny config."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import save_file

from training.configs import CONFIGS, CrossDiTConfig
from training.model import CrossDiT, patchify, unpatchify
from training.official import OfficialCheckpointError, load_official, to_official


def official_shapes(c: CrossDiTConfig) -> dict[str, tuple[int, ...]]:
    """Every key of the official state dict and its shape (no persistent buffers: RoPE and time freqs are
    ``persistent=False``; block LayerNorms have no affine)."""
    d, t, f, h = c.model_dim, c.time_dim, c.ff_dim, c.head_dim
    p = math.prod(c.patch_size)
    cin = 2 * c.in_visual_dim + 1 if (c.visual_cond or c.instruct_type == "channel") else c.in_visual_dim
    s = {"time_embeddings.in_layer.weight": (t, d), "time_embeddings.in_layer.bias": (t,),
         "time_embeddings.out_layer.weight": (t, t), "time_embeddings.out_layer.bias": (t,),
         "text_embeddings.in_layer.weight": (d, c.in_text_dim), "text_embeddings.in_layer.bias": (d,),
         "text_embeddings.norm.weight": (d,), "text_embeddings.norm.bias": (d,),
         "pooled_text_embeddings.in_layer.weight": (t, c.in_text_dim2), "pooled_text_embeddings.in_layer.bias": (t,),
         "pooled_text_embeddings.norm.weight": (t,), "pooled_text_embeddings.norm.bias": (t,),
         "visual_embeddings.in_layer.weight": (d, p * cin), "visual_embeddings.in_layer.bias": (d,),
         "out_layer.modulation.out_layer.weight": (2 * d, t), "out_layer.modulation.out_layer.bias": (2 * d,),
         "out_layer.out_layer.weight": (p * c.out_visual_dim, d), "out_layer.out_layer.bias": (p * c.out_visual_dim,)}

    def attention(prefix):
        for n in ("to_query", "to_key", "to_value", "out_layer"):
            s[f"{prefix}.{n}.weight"], s[f"{prefix}.{n}.bias"] = (d, d), (d,)
        s[f"{prefix}.query_norm.weight"] = s[f"{prefix}.key_norm.weight"] = (h,)

    for i in range(c.num_text_blocks):
        b = f"text_transformer_blocks.{i}"
        s[f"{b}.text_modulation.out_layer.weight"], s[f"{b}.text_modulation.out_layer.bias"] = (6 * d, t), (6 * d,)
        attention(f"{b}.self_attention")
        s[f"{b}.feed_forward.in_layer.weight"], s[f"{b}.feed_forward.out_layer.weight"] = (f, d), (d, f)
    for i in range(c.num_visual_blocks):
        b = f"visual_transformer_blocks.{i}"
        s[f"{b}.visual_modulation.out_layer.weight"], s[f"{b}.visual_modulation.out_layer.bias"] = (9 * d, t), (9 * d,)
        attention(f"{b}.self_attention")
        attention(f"{b}.cross_attention")
        s[f"{b}.feed_forward.in_layer.weight"], s[f"{b}.feed_forward.out_layer.weight"] = (f, d), (d, f)
    return s


def official_checkpoint(path, c: CrossDiTConfig, seed=0, dtype=torch.bfloat16) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(shape, generator=g).to(dtype) for k, shape in official_shapes(c).items()}
    save_file(state, str(path))
    return state


@pytest.mark.parametrize("name", ["tiny", "tiny-i2v", "tiny-edit"])
def test_an_official_checkpoint_loads_strictly_every_key_used(tmp_path, name):
    c = CONFIGS[name]
    state = official_checkpoint(tmp_path / "k5.safetensors", c)
    model = load_official(CrossDiT(c), tmp_path / "k5.safetensors")
    ours = to_official(model.state_dict())
    assert set(ours) == set(state)  # every official key used, every parameter filled
    for k, v in state.items():
        assert ours[k].dtype == torch.float32 and torch.equal(ours[k], v.float()), k


def test_the_official_counts_are_ours():
    for name in ("video-lite", "image-lite", "video-pro"):  # shapes only: no tensors allocated
        c = CONFIGS[name]
        with torch.device("meta"):
            model = CrossDiT(c)
        assert sum(math.prod(s) for s in official_shapes(c).values()) == model.num_params()
        assert {k: tuple(v.shape) for k, v in to_official(model.state_dict()).items()} == official_shapes(c)


def test_patch_channel_order_is_the_official_one():
    """The official VisualEmbeddings views x [T, H, W, C] as (T', pt, H', ph, W', pw, C), permutes to
    (T', H', W', pt, ph, pw, C) and flattens (C fastest); the OutLayer views [T', H', W', Cout·p] as
    (T', H', W', Cout, pt, ph, pw) and puts each factor back beside its axis (C slowest)."""
    pt, ph, pw = 1, 2, 2
    x = torch.randn(3, 8, 6, 5)
    T, H, W, C = x.shape
    official_in = x.view(T // pt, pt, H // ph, ph, W // pw, pw, C).permute(0, 2, 4, 1, 3, 5, 6).flatten(3, 6)
    assert torch.equal(patchify(x[None], (pt, ph, pw))[0], official_in)
    y = torch.randn(3, 4, 3, 5 * pt * ph * pw)
    official_out = (y.view(3, 4, 3, 5, pt, ph, pw).permute(0, 4, 1, 5, 2, 6, 3)
                    .flatten(0, 1).flatten(1, 2).flatten(2, 3))
    assert torch.equal(unpatchify(y[None], (pt, ph, pw), 5)[0], official_out)


def test_a_checkpoint_that_does_not_fit_is_refused_naming_the_keys(tmp_path):
    c = CONFIGS["tiny"]
    state = official_checkpoint(tmp_path / "a.safetensors", c)
    with pytest.raises(OfficialCheckpointError, match="visual_embeddings.in_layer.weight: checkpoint"):
        load_official(CrossDiT(CONFIGS["tiny-i2v"]), tmp_path / "a.safetensors")  # 16 vs 33 input channels
    del state["visual_transformer_blocks.1.cross_attention.key_norm.weight"]
    state["visual_transformer_blocks.2.visual_modulation.out_layer.weight"] = torch.zeros(1)
    save_file(state, str(tmp_path / "b.safetensors"))
    with pytest.raises(OfficialCheckpointError, match=r"1 missing .*key_norm.*1 not used .*blocks\.2"):
        load_official(CrossDiT(c), tmp_path / "b.safetensors")


def test_fine_tune_and_sample_from_an_official_checkpoint(tmp_path):
    from training.sample import load_model
    from training.train import TrainConfig, Trainer

    state = official_checkpoint(tmp_path / "k5.safetensors", CONFIGS["tiny"], dtype=torch.float32)
    cfg = TrainConfig(model="tiny", text_encoders="tiny", allow_tiny=True, init_from=str(tmp_path / "k5.safetensors"))
    trainer = Trainer(cfg, [], tmp_path / "run")
    for model in (trainer.model, trainer.ema):  # the EMA starts from the released weights too
        assert torch.equal(model.visual_blocks[1].cross_attention.to_key.weight,
                           state["visual_transformer_blocks.1.cross_attention.to_key.weight"])
    model, config = load_model(tmp_path / "k5.safetensors", model_config="tiny", device="cpu")
    assert torch.equal(model.out_layer.weight, state["out_layer.out_layer.weight"]) and config["model"] == "tiny"
    with pytest.raises(ValueError, match="model config"):
        load_model(tmp_path / "k5.safetensors")
