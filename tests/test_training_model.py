"""CrossDiT, flow matching, the sampler and NABLA: the cheap correctness checks of the trainer spec §4,
on CPU with the tiny config."""

from __future__ import annotations

import pytest
import torch

from training.attention import (BLOCK, NablaParams, expand_block_mask, fractal_flatten, fractal_unflatten,
                                nabla_block_mask, sta_mask)
from training.conditioning import edit_input, image_to_video_input, text_to_video_input
from training.configs import CONFIGS, TINY, param_count
from training.flow import flow_loss, interpolate, sample_t
from training.model import CrossDiT, ModelInputs, apply_rope, patchify, rope_angles, rope_3d, unpatchify
from training.sampler import euler_sample, guided, timesteps

# exact totals of the official DiffusionTransformer3D (trainer spec §3)
OFFICIAL_PARAMS = {
    "video-lite": 2_007_702_848,
    "image-lite": 6_022_080_576,
    "image-lite-edit": 6_022_254_656,
    "video-pro": 19_311_325_248,
    "tiny": 252_320,
}


@pytest.mark.parametrize("name, expected", OFFICIAL_PARAMS.items())
def test_parameter_counts_on_meta(name, expected):
    config = CONFIGS[name]
    assert param_count(config) == expected
    with torch.device("meta"):
        model = CrossDiT(config)
    assert model.num_params() == expected


def test_head_geometry_of_the_report_configs():
    assert (CONFIGS["video-lite"].head_dim, CONFIGS["video-lite"].num_heads) == (64, 28)
    assert (CONFIGS["image-lite"].head_dim, CONFIGS["image-lite"].num_heads) == (128, 20)
    assert (CONFIGS["video-pro"].head_dim, CONFIGS["video-pro"].num_heads) == (128, 32)
    assert CONFIGS["video-lite"].in_channels == 33 and CONFIGS["image-lite"].in_channels == 16


def batch(config=TINY, B=2, T=2, H=16, W=16, L=6, seed=0) -> ModelInputs:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[0, L - 2:] = False  # padding in the first sample
    return ModelInputs(
        x=torch.randn(B, T, H, W, config.in_channels, generator=g),
        t=torch.rand(B, generator=g),
        text=torch.randn(B, L, config.in_text_dim, generator=g),
        text_mask=mask,
        pooled=torch.randn(B, config.in_text_dim2, generator=g),
    )


def test_blocks_are_the_identity_at_init():
    torch.manual_seed(0)
    model = CrossDiT(TINY)
    inp = batch()
    temb = model.time_embedding(inp.t)
    text = torch.randn(2, 6, TINY.model_dim)
    rope1 = rope_angles(torch.arange(6), TINY.head_dim)
    assert torch.equal(model.text_blocks[0](text, temb, rope1, inp.text_mask), text)
    vis = torch.randn(2, 2 * 8 * 8, TINY.model_dim)
    rope = rope_3d(2, 8, 8, TINY.axes_dims).flatten(0, 2)
    assert torch.equal(model.visual_blocks[0](vis, text, temb, rope, inp.text_mask), vis)
    out = model(inp)
    assert out.shape == (2, 2, 16, 16, 16) and torch.count_nonzero(out) == 0  # zero final layer


def test_patchify_round_trip():
    x = torch.randn(2, 3, 8, 6, 5)
    p = patchify(x, (1, 2, 2))
    assert p.shape == (2, 3, 4, 3, 20)
    assert torch.equal(p[0, 0, 0, 0].reshape(2, 2, 5)[1, 0], x[0, 0, 1, 0])  # C fastest
    # the output layer's layout has C slowest: undo patchify's order, then unpatchify
    out_layout = p.reshape(2, 3, 4, 3, 1, 2, 2, 5).permute(0, 1, 2, 3, 7, 4, 5, 6).reshape(2, 3, 4, 3, 20)
    assert torch.equal(unpatchify(out_layout, (1, 2, 2), 5), x)


def test_rope_depends_only_on_relative_position():
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 32), torch.randn(1, 1, 1, 32)
    def score(m, n):
        a = rope_angles(torch.tensor([m, n]), 32)
        return (apply_rope(q, a[:1]) * apply_rope(k, a[1:])).sum()
    assert torch.allclose(score(3, 1), score(10, 8), atol=1e-5)
    assert torch.allclose(score(0, 5), score(7, 12), atol=1e-5)
    assert not torch.allclose(score(3, 1), score(3, 2), atol=1e-3)
    angles = rope_3d(2, 3, 4, TINY.axes_dims)
    assert angles.shape == (2, 3, 4, TINY.head_dim // 2)
    half = rope_3d(2, 3, 4, TINY.axes_dims, scale=(1, 2, 2))
    h0 = TINY.axes_dims[0] // 2
    assert torch.allclose(half[..., h0:], angles[..., h0:] / 2)  # scale divides the angles
    assert torch.equal(half[..., :h0], angles[..., :h0])


def test_forward_is_deterministic_and_masks_text_padding():
    torch.manual_seed(1)
    model = CrossDiT(TINY)
    for p in model.parameters():  # leave adaLN-Zero init to get a non-trivial function
        torch.nn.init.normal_(p, std=0.05)
    inp = batch()
    a, b = model(inp), model(inp)
    assert torch.equal(a, b)
    changed = batch()
    changed.text[0, -1] += 100.0  # a padded token: must not matter
    assert torch.allclose(model(changed)[0], a[0], atol=1e-5)
    changed.text[0, 0] += 1.0  # a real token: must matter
    assert not torch.allclose(model(changed)[0], a[0], atol=1e-4)


def test_fixed_batch_overfits():
    torch.manual_seed(0)
    model = CrossDiT(TINY)
    inp = batch(B=4, T=2, L=16)
    noise = torch.randn_like(inp.x)
    target = noise - inp.x
    x_t = interpolate(inp.x, noise, inp.t)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    losses = []
    for _ in range(300):
        pred = model(ModelInputs(x_t, inp.t, inp.text, inp.text_mask, inp.pooled))
        loss = ((pred - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 100, (losses[0], losses[-1])


def test_flow_conventions():
    x0, noise = torch.zeros(2, 3), torch.ones(2, 3)
    assert torch.equal(interpolate(x0, noise, torch.tensor([1.0, 0.0])), torch.tensor([[1.0] * 3, [0.0] * 3]))
    # the exact velocity gives zero loss
    loss = flow_loss(lambda x, t: noise - x0, x0, t=torch.rand(2), noise=noise)
    assert loss.item() == 0.0
    t = sample_t(10000, generator=torch.Generator().manual_seed(0))
    assert 0 < t.min() and t.max() < 1 and abs(t.median().item() - 0.5) < 0.02


@pytest.mark.parametrize("steps", [1, 4, 50])
@pytest.mark.parametrize("shift", [1.0, 3.0, 10.0])
def test_oracle_sampler_recovers_the_data_point(steps, shift):
    x0 = torch.randn(1, 2, 4, 4, 16, generator=torch.Generator().manual_seed(3))
    noise = torch.randn_like(x0)
    out = euler_sample(lambda x, t: (x - x0) / t.reshape(-1, 1, 1, 1, 1), noise, steps=steps, shift=shift)
    assert torch.allclose(out, x0, atol=1e-5)


def test_sampler_matches_a_gaussian_data_distribution():
    mu, sigma = 2.0, 0.5
    def v(x, t):  # exact velocity field of N(mu, sigma^2) data under x_t = (1-t) x0 + t eps
        tt = t.reshape(-1, 1)
        var = (1 - tt) ** 2 * sigma**2 + tt**2
        e_x0 = mu + (1 - tt) * sigma**2 * (x - (1 - tt) * mu) / var
        return (x - e_x0) / tt
    out = euler_sample(v, torch.randn(20000, 1, generator=torch.Generator().manual_seed(0)), steps=200, shift=3.0)
    assert abs(out.mean().item() - mu) < 0.02 and abs(out.std().item() - sigma) < 0.02


def test_timestep_grid_and_guidance():
    for shift in (1.0, 3.0, 10.0):
        grid = timesteps(50, shift)
        assert grid[0] == 1.0 and grid[-1] == 0.0 and torch.all(grid[1:] < grid[:-1])
    cond = lambda x, t: x + 1
    uncond = lambda x, t: x - 1
    x = torch.randn(3, 2)
    assert torch.equal(guided(cond, uncond, 1.0)(x, None), cond(x, None))
    assert torch.equal(guided(cond, uncond, 0.0)(x, None), uncond(x, None))
    assert torch.allclose(guided(cond, uncond, 3.5)(x, None), x - 1 + 3.5 * 2)


def test_sampling_is_seed_deterministic():
    torch.manual_seed(0)
    model = CrossDiT(TINY)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    inp = batch(B=1)

    def sample(seed):
        noise = torch.randn(1, 2, 16, 16, 16, generator=torch.Generator().manual_seed(seed))
        v = lambda x, t: model(ModelInputs(x, t, inp.text, inp.text_mask, inp.pooled))
        with torch.no_grad():
            return euler_sample(v, noise, steps=4, shift=3.0)

    assert torch.equal(sample(7), sample(7))
    assert not torch.equal(sample(7), sample(8))


# --- NABLA --------------------------------------------------------------------------------------


def qk(B=1, H=2, T=2, side=16, D=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    S = T * side * side
    return torch.randn(B, H, S, D, generator=g), torch.randn(B, H, S, D, generator=g), (T, side, side)


def test_fractal_reordering_round_trips_and_is_a_permutation():
    x = torch.arange(3 * 16 * 24).reshape(1, 3, 16, 24, 1).expand(2, -1, -1, -1, -1).clone()
    flat = fractal_flatten(x)
    assert torch.equal(fractal_unflatten(flat, 3, 16, 24), x)
    assert torch.equal(flat[0, :, 0].sort().values, x[0].flatten())
    # the first 64 tokens are the top-left 8x8 tile of frame 0
    assert torch.equal(flat[0, :BLOCK, 0], x[0, 0, :8, :8, 0].flatten())


def test_nabla_density_rises_with_P_and_no_row_is_empty():
    q, k, grid = qk(side=32)
    densities = []
    for P in (0.0, 0.2, 0.5, 0.7, 0.9, 1.0):
        mask = nabla_block_mask(q, k, grid, NablaParams(P=P, wT=1, wH=1, wW=1))
        assert mask.any(-1).all()  # STA keeps the diagonal: never an empty row
        assert mask.diagonal(dim1=-2, dim2=-1).all()
        densities.append(mask.float().mean().item())
    assert densities == sorted(densities) and densities[-1] == 1.0 and densities[0] < 0.5


def test_sta_mask_density_matches_its_closed_form():
    T, Ht, Wt = 4, 6, 5
    m = sta_mask(T, Ht, Wt, 3, 3, 1)
    def pairs(n, w):
        return sum(1 for a in range(n) for b in range(n) if abs(a - b) <= w // 2)
    assert m.sum().item() == pairs(T, 3) * pairs(Ht, 3) * pairs(Wt, 1)


def test_nabla_with_P_1_equals_dense_attention_in_the_model():
    torch.manual_seed(0)
    model = CrossDiT(TINY)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    inp = batch(H=32, W=32)
    dense = model(inp)
    sparse = model(inp, nabla=NablaParams(P=1.0))
    assert torch.allclose(dense, sparse, atol=1e-5)
    assert not torch.allclose(dense, model(inp, nabla=NablaParams(P=0.3, wT=1, wH=1, wW=1)), atol=1e-4)


def test_nabla_cpu_path_trains():
    model = CrossDiT(TINY)
    inp = batch(H=32, W=32)
    out = model(inp, nabla=NablaParams(P=0.5))
    out.pow(2).mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_expanded_block_mask_matches_blocks():
    block = torch.tensor([[True, False], [True, True]])
    tok = expand_block_mask(block)
    assert tok.shape == (128, 128) and tok[:64, :64].all() and not tok[:64, 64:].any() and tok[64:].all()


@pytest.mark.slow
def test_cpu_nabla_equals_flex_attention_forward():
    """FlexAttention runs forward-only on CPU when compiled; it must equal the SDPA path."""
    pytest.importorskip("torch.nn.attention.flex_attention")
    from training.attention import flex_nabla_attention, nabla_attention

    q, k, grid = qk(side=16)
    v = torch.randn_like(q)
    params = NablaParams(P=0.5, wT=1, wH=1, wW=1)
    ref, block_mask = nabla_attention(q, k, v, grid, params)
    assert not block_mask.all()
    try:
        compiled = torch.compile(flex_nabla_attention, dynamic=False)
        with torch.no_grad():
            out = compiled(q, k, v, block_mask)
    except Exception as exc:  # noqa: BLE001 - no C++ toolchain / inductor on this machine
        pytest.skip(f"compiled FlexAttention does not run here: {exc.__class__.__name__}: {str(exc)[:200]}")
    assert torch.allclose(out, ref, atol=1e-5)


# --- conditioning -------------------------------------------------------------------------------


def test_conditioning_channels():
    x_t = torch.randn(2, 3, 4, 4, 16)
    first = torch.randn(2, 1, 4, 4, 16)
    t2v = text_to_video_input(x_t)
    assert t2v.shape[-1] == 33 and torch.count_nonzero(t2v[..., 16:]) == 0
    i2v = image_to_video_input(x_t, first)
    assert torch.equal(i2v[:, :1, ..., :16], first) and torch.equal(i2v[:, 1:, ..., :16], x_t[:, 1:])
    assert torch.equal(i2v[..., 32], torch.tensor([1.0, 0, 0]).reshape(1, 3, 1, 1).expand(2, 3, 4, 4))
    assert torch.count_nonzero(i2v[..., 16:32]) == 0
    ref = torch.randn(2, 1, 4, 4, 16)
    ed = edit_input(x_t, ref)
    assert torch.equal(ed[:, 2, ..., 16:32], ref[:, 0]) and torch.all(ed[..., 32] == 1)
    assert torch.count_nonzero(edit_input(x_t, None)[..., 16:]) == 0
    model = CrossDiT(CONFIGS["tiny-i2v"])
    assert model(ModelInputs(i2v, torch.rand(2), torch.randn(2, 5, 48), torch.ones(2, 5, dtype=torch.bool),
                             torch.randn(2, 24))).shape == x_t.shape


def test_image_to_video_sampling_keeps_the_first_frame():
    torch.manual_seed(0)
    model = CrossDiT(CONFIGS["tiny-i2v"])
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    first = torch.randn(1, 1, 16, 16, 16)
    text, mask, pooled = torch.randn(1, 5, 48), torch.ones(1, 5, dtype=torch.bool), torch.randn(1, 24)
    v = lambda x, t: model(ModelInputs(image_to_video_input(x, first), t, text, mask, pooled))
    fixed = torch.zeros(1, 3, 16, 16, 16)
    fixed[:, :1] = first
    fixed_mask = torch.zeros_like(fixed, dtype=torch.bool)
    fixed_mask[:, :1] = True
    with torch.no_grad():
        out = euler_sample(v, torch.randn(1, 3, 16, 16, 16), steps=3, shift=10.0, fixed=fixed, fixed_mask=fixed_mask)
    assert torch.equal(out[:, :1], first) and out.shape == (1, 3, 16, 16, 16)
