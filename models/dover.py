"""DOVER (report §4.4 [81]: "separate scores for technical quality ... and aesthetic quality ... An
overall quality score is derived as a weighted sum of these two components"), registry family ``vqa``.

Our own implementation of the DOVER architecture, with the module and parameter names of the authors'
``DOVER.pth`` so that it loads strictly:

- ``technical_backbone``: a 3D Swin-T (patch (2,4,4), dims 96·2^i, depths 2/2/6/2, heads 3/6/12/24,
  window (8,7,7), shifted windows) whose attention bias is DOVER's *gated relative position bias*: on
  fragment inputs, pairs of tokens are biased by ``fragment_position_bias_table`` inside a fragment and
  by the relative table across fragments (stages 1–3 have both tables, stage 4 only the relative one);
- ``aesthetic_backbone``: ConvNeXt-T inflated to 3D (temporal kernels 1,3,1 repeating; depths 3/3/9/3);
- ``technical_head`` / ``aesthetic_head``: 1x1x1 convolutions 768 → 64 → 1 giving a score map, averaged.

Inputs (``fragments``, ``aesthetic_view``, ``model_inputs``): the technical view is three 32-frame clips (stride 2, one per third of the
scene) of *fragments* — a 7x7 grid of 32x32 native-resolution patches tiled into 224x224 (frames whose
short side is under 224 are scaled up first); the aesthetic view is 32 frames (one per 32nd of the scene)
resized to 224x224. ImageNet mean/std on the 0–255 scale. DOVER draws the patch and frame offsets at
random; here they are the centres, so a scene always gets the same score.

Fusion (``fuse``, the authors' constants): ``t = (technical − 0.1107) / 0.07355``,
``a = (aesthetic + 0.08285) / 0.03774``, ``overall = sigmoid(0.6104·t + 0.3896·a)``; the reported
technical and aesthetic scores are ``sigmoid(t)`` and ``sigmoid(a)`` — all three in 0..1, higher is better.

``dover-tiny-random``: the same classes with narrow widths and few blocks, random weights — tests only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.device import torch_device
from models.registry import MissingWeights, files_digest, refuse_tiny, require

REAL = "dover"
TINY = "dover-tiny-random"
WINDOW = (8, 7, 7)
FRAGMENTS, FRAGMENT_SIZE, VIEW_SIZE = 7, 32, 224
CLIP_LEN, FRAME_INTERVAL, TECHNICAL_CLIPS = 32, 2, 3
MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)
# the authors' fusion: normalise each raw score by its mean/std on their training set, then weight
TECHNICAL_MEAN, TECHNICAL_STD, TECHNICAL_WEIGHT = 0.1107, 0.07355, 0.6104
AESTHETIC_OFFSET, AESTHETIC_STD, AESTHETIC_WEIGHT = 0.08285, 0.03774, 0.3896


# --- the technical branch: 3D Swin with gated relative position bias --------------------------------


def _window_partition(x: torch.Tensor, ws: tuple[int, int, int]) -> torch.Tensor:
    B, D, H, W, C = x.shape
    x = x.view(B, D // ws[0], ws[0], H // ws[1], ws[1], W // ws[2], ws[2], C)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, ws[0] * ws[1] * ws[2], C)


def _window_reverse(windows: torch.Tensor, ws, B: int, D: int, H: int, W: int) -> torch.Tensor:
    x = windows.view(B, D // ws[0], H // ws[1], W // ws[2], ws[0], ws[1], ws[2], -1)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(B, D, H, W, -1)


def _fit_window(size, window, shift):
    """A window no larger than the input; no shift along an axis the window covers whole."""
    w, s = list(window), list(shift)
    for i in range(3):
        if size[i] <= window[i]:
            w[i], s[i] = size[i], 0
    return tuple(w), tuple(s)


def _shift_mask(D: int, H: int, W: int, ws, ss, device) -> torch.Tensor:
    """[nW, N, N]: -100 between tokens that the cyclic shift brought from different regions."""
    img = torch.zeros(1, D, H, W, 1, device=device)
    cnt = 0
    for d in (slice(-ws[0]), slice(-ws[0], -ss[0]), slice(-ss[0], None)):
        for h in (slice(-ws[1]), slice(-ws[1], -ss[1]), slice(-ss[1], None)):
            for w in (slice(-ws[2]), slice(-ws[2], -ss[2]), slice(-ss[2], None)):
                img[:, d, h, w, :] = cnt
                cnt += 1
    windows = _window_partition(img, ws).squeeze(-1)
    mask = windows[:, None, :] - windows[:, :, None]
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


def _fragment_gate(D: int, H: int, W: int, ws, ss, device) -> torch.Tensor:
    """[nW, N, N]: L1 distance between the fragments (of the 7x7 grid) two tokens of a window lie in."""
    grid = torch.stack(torch.meshgrid(torch.arange(1), torch.arange(ws[1]), torch.arange(ws[2]), indexing="ij"))
    coords = F.interpolate(grid[None].float(), size=(D, H, W)).permute(0, 2, 3, 4, 1).to(device)  # nearest
    if any(s > 0 for s in ss):
        coords = torch.roll(coords, shifts=(-ss[0], -ss[1], -ss[2]), dims=(1, 2, 3))
    fc = _window_partition(coords, ws)  # nW, N, 3
    return (fc[:, None, :, :] - fc[:, :, None, :]).abs().sum(-1)


class WindowAttention3D(nn.Module):
    def __init__(self, dim: int, window: tuple[int, int, int], num_heads: int, fragment_bias: bool):
        super().__init__()
        self.num_heads, self.scale = num_heads, (dim // num_heads) ** -0.5
        size = (2 * window[0] - 1) * (2 * window[1] - 1) * (2 * window[2] - 1)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(size, num_heads))
        self.fragment_position_bias_table = nn.Parameter(torch.zeros(size, num_heads)) if fragment_bias else None
        coords = torch.stack(torch.meshgrid(*(torch.arange(w) for w in window), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
        rel[..., 0] += window[0] - 1
        rel[..., 1] += window[1] - 1
        rel[..., 2] += window[2] - 1
        index = rel[..., 0] * (2 * window[1] - 1) * (2 * window[2] - 1) + rel[..., 1] * (2 * window[2] - 1) + rel[..., 2]
        self.register_buffer("relative_position_index", index)
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        if fragment_bias:
            nn.init.trunc_normal_(self.fragment_position_bias_table, std=0.02)

    def _bias(self, table: torch.Tensor, N: int) -> torch.Tensor:
        return table[self.relative_position_index[:N, :N].reshape(-1)].reshape(N, N, -1).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, gate: torch.Tensor | None) -> torch.Tensor:
        B_, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B_, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        attn = (q * self.scale) @ k.transpose(-2, -1)  # B_, nH, N, N
        rpb = self._bias(self.relative_position_bias_table, N)
        if self.fragment_position_bias_table is not None and gate is not None:
            fpb = self._bias(self.fragment_position_bias_table, N)
            nW = gate.shape[0]
            bias = rpb[None] * gate[:, None] + fpb[None] * (1 - gate[:, None])  # nW, nH, N, N
            attn = (attn.view(B_ // nW, nW, self.num_heads, N, N) + bias[None]).view(B_, self.num_heads, N, N)
        else:
            attn = attn + rpb[None]
        if mask is not None:
            nW = mask.shape[0]
            attn = (attn.view(B_ // nW, nW, self.num_heads, N, N) + mask[None, :, None]).view(B_, self.num_heads, N, N)
        out = attn.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(B_, N, C))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class SwinBlock3D(nn.Module):
    def __init__(self, dim: int, num_heads: int, window, shift, fragment_bias: bool):
        super().__init__()
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention3D(dim, window, num_heads, fragment_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, 4 * dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        B, D, H, W, C = x.shape
        ws, ss = _fit_window((D, H, W), self.window, self.shift)
        y = self.norm1(x)
        pads = [(-n) % w for n, w in zip((D, H, W), ws)]
        y = F.pad(y, (0, 0, 0, pads[2], 0, pads[1], 0, pads[0]))
        Dp, Hp, Wp = D + pads[0], H + pads[1], W + pads[2]
        shifted = any(s > 0 for s in ss)
        if shifted:
            y = torch.roll(y, shifts=(-ss[0], -ss[1], -ss[2]), dims=(1, 2, 3))
        gate = _fragment_gate(Dp, Hp, Wp, ws, ss, x.device) if self.attn.fragment_position_bias_table is not None else None
        y = self.attn(_window_partition(y, ws), mask if shifted else None, gate)
        y = _window_reverse(y, ws, B, Dp, Hp, Wp)
        if shifted:
            y = torch.roll(y, shifts=ss, dims=(1, 2, 3))
        x = x + y[:, :D, :H, :W]
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[2:4]
        x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        x = torch.cat([x[:, :, 0::2, 0::2], x[:, :, 1::2, 0::2], x[:, :, 0::2, 1::2], x[:, :, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x))


class SwinStage(nn.Module):
    def __init__(self, dim: int, depth: int, num_heads: int, fragment_bias: bool, downsample: bool):
        super().__init__()
        self.shift = tuple(w // 2 for w in WINDOW)
        self.blocks = nn.ModuleList(
            SwinBlock3D(dim, num_heads, WINDOW, (0, 0, 0) if j % 2 == 0 else self.shift, fragment_bias)
            for j in range(depth))
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # B, C, D, H, W
        B, C, D, H, W = x.shape
        ws, ss = _fit_window((D, H, W), WINDOW, self.shift)
        x = x.permute(0, 2, 3, 4, 1)
        Dp, Hp, Wp = (math.ceil(n / w) * w for n, w in zip((D, H, W), ws))
        mask = _shift_mask(Dp, Hp, Wp, ws, ss, x.device)
        for block in self.blocks:
            x = block(x, mask)
        if self.downsample is not None:
            x = self.downsample(x)
        return x.permute(0, 4, 1, 2, 3)


class PatchEmbed3D(nn.Module):
    def __init__(self, dim: int, patch=(2, 4, 4)):
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv3d(3, dim, kernel_size=patch, stride=patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        D, H, W = x.shape[2:]
        p = self.patch
        x = self.proj(F.pad(x, (0, (-W) % p[2], 0, (-H) % p[1], 0, (-D) % p[0])))
        return self.norm(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)


class SwinTransformer3D(nn.Module):
    def __init__(self, embed_dim: int = 96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24),
                 fragment_biases=(True, True, True, False)):
        super().__init__()
        self.patch_embed = PatchEmbed3D(embed_dim)
        self.layers = nn.ModuleList(
            SwinStage(embed_dim * 2**i, depths[i], num_heads[i], fragment_biases[i], i < len(depths) - 1)
            for i in range(len(depths)))
        self.num_features = embed_dim * 2 ** (len(depths) - 1)
        self.norm = nn.LayerNorm(self.num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)


# --- the aesthetic branch: ConvNeXt inflated to 3D --------------------------------------------------


class ChannelsFirstLayerNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight, self.bias, self.eps = nn.Parameter(torch.ones(dim)), nn.Parameter(torch.zeros(dim)), eps

    def forward(self, x):
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None, None] * x + self.bias[:, None, None, None]


class ConvNeXtBlock3D(nn.Module):
    def __init__(self, dim: int, temporal_kernel: int):
        super().__init__()
        self.dwconv = nn.Conv3d(dim, dim, kernel_size=(temporal_kernel, 7, 7), padding=(temporal_kernel // 2, 3, 3),
                                groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1, self.act, self.pwconv2 = nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(1e-6 * torch.ones(dim))

    def forward(self, x):
        y = self.dwconv(x).permute(0, 2, 3, 4, 1)
        y = self.gamma * self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        return x + y.permute(0, 4, 1, 2, 3)


class ConvNeXt3D(nn.Module):
    INFLATE = "131"  # temporal kernel of the j-th block of a stage: INFLATE[j % 3]

    def __init__(self, depths=(3, 3, 9, 3), dims=(96, 192, 384, 768)):
        super().__init__()
        self.downsample_layers = nn.ModuleList([nn.Sequential(
            nn.Conv3d(3, dims[0], kernel_size=(2, 4, 4), stride=(2, 4, 4)), ChannelsFirstLayerNorm(dims[0]))])
        for k in range(1, 4):
            self.downsample_layers.append(nn.Sequential(
                ChannelsFirstLayerNorm(dims[k - 1]),
                nn.Conv3d(dims[k - 1], dims[k], kernel_size=(1, 2, 2), stride=(1, 2, 2))))
        self.stages = nn.ModuleList(
            nn.Sequential(*(ConvNeXtBlock3D(dims[i], int(self.INFLATE[j % 3])) for j in range(depths[i])))
            for i in range(4))
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)

    def forward(self, x):
        for down, stage in zip(self.downsample_layers, self.stages):
            x = stage(down(x))
        return self.norm(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)


class VQAHead(nn.Module):
    def __init__(self, in_channels: int = 768, hidden_channels: int = 64):
        super().__init__()
        self.dropout = nn.Dropout(0.5)
        self.fc_hid = nn.Conv3d(in_channels, hidden_channels, (1, 1, 1))
        self.fc_last = nn.Conv3d(hidden_channels, 1, (1, 1, 1))
        self.gelu = nn.GELU()

    def forward(self, x):
        return self.fc_last(self.dropout(self.gelu(self.fc_hid(self.dropout(x)))))


class DOVER(nn.Module):
    def __init__(self, tiny: bool = False):
        super().__init__()
        if tiny:
            self.technical_backbone = SwinTransformer3D(8, (2, 1, 1, 1), (1, 1, 2, 2))
            self.aesthetic_backbone = ConvNeXt3D((1, 2, 1, 1), (8, 16, 32, 64))
            width, hidden = 64, 8
        else:
            self.technical_backbone = SwinTransformer3D()
            self.aesthetic_backbone = ConvNeXt3D()
            width, hidden = 768, 64
        self.technical_head = VQAHead(width, hidden)
        self.aesthetic_head = VQAHead(width, hidden)

    def forward(self, technical: torch.Tensor, aesthetic: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw scores: the mean of each head's score map over clips and positions."""
        t = self.technical_head(self.technical_backbone(technical)).mean()
        a = self.aesthetic_head(self.aesthetic_backbone(aesthetic)).mean()
        return t, a


# --- inputs and fusion -----------------------------------------------------------------------------


def technical_frame_indices(n: int) -> list[int]:
    """Three 32-frame clips at stride 2, one per third of the ``n`` frames (the centre of each third)."""
    third = n // TECHNICAL_CLIPS
    span = CLIP_LEN * FRAME_INTERVAL
    offset = (third - span) // 2 if third > span else 0
    return [(third * i + offset + FRAME_INTERVAL * k) % max(n, 1) for i in range(TECHNICAL_CLIPS)
            for k in range(CLIP_LEN)]


def aesthetic_frame_indices(n: int) -> list[int]:
    """32 frames, one from the middle of each 32nd of the ``n`` frames."""
    seg = n // CLIP_LEN
    offset = (seg - FRAME_INTERVAL) // 2 if seg > FRAME_INTERVAL else 0
    return [(seg * i + offset) % max(n, 1) for i in range(CLIP_LEN)]


def fragments(frames: np.ndarray) -> np.ndarray:
    """[T, 224, 224, 3] from [T, H, W, 3] uint8: the 7x7 grid of 32x32 native patches (centred in each
    cell; frames with a short side under 224 scaled up first), the same positions in every frame."""
    T, H, W, _ = frames.shape
    ratio = min(H, W) / VIEW_SIZE
    if ratio < 1:
        x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
        x = F.interpolate(x, scale_factor=1 / ratio, mode="bilinear", align_corners=False)
        frames = x.clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        T, H, W, _ = frames.shape
    out = np.zeros((T, VIEW_SIZE, VIEW_SIZE, 3), dtype=np.uint8)
    f = FRAGMENT_SIZE
    for i in range(FRAGMENTS):
        for j in range(FRAGMENTS):
            h0 = min(H // FRAGMENTS * i, H - f) + ((H // FRAGMENTS - f) // 2 if H // FRAGMENTS > f else 0)
            w0 = min(W // FRAGMENTS * j, W - f) + ((W // FRAGMENTS - f) // 2 if W // FRAGMENTS > f else 0)
            h0, w0 = min(h0, H - f), min(w0, W - f)
            out[:, i * f:(i + 1) * f, j * f:(j + 1) * f] = frames[:, h0:h0 + f, w0:w0 + f]
    return out


def _normalise(frames: np.ndarray, clips: int) -> torch.Tensor:
    x = (frames.astype(np.float32) - MEAN) / STD  # T, H, W, C
    T, H, W, C = x.shape
    return torch.from_numpy(np.ascontiguousarray(x.reshape(clips, T // clips, H, W, C).transpose(0, 4, 1, 2, 3)))


def aesthetic_view(frames: np.ndarray) -> np.ndarray:
    """[T, 224, 224, 3] uint8: whole frames resized (bilinear, antialiased), aspect ratio not kept."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(VIEW_SIZE, VIEW_SIZE), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).permute(0, 2, 3, 1).numpy().astype(np.uint8)


def model_inputs(technical_views: np.ndarray, aesthetic_views: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The normalised tensors from the 96 ``fragments`` and 32 ``aesthetic_view`` frames:
    [3, 3, 32, 224, 224] and [1, 3, 32, 224, 224]."""
    return _normalise(technical_views, TECHNICAL_CLIPS), _normalise(aesthetic_views, 1)


@dataclass(frozen=True)
class DoverScores:
    technical: float  # 0..1
    aesthetic: float  # 0..1
    overall: float  # 0..1
    technical_raw: float
    aesthetic_raw: float


def fuse(technical_raw: float, aesthetic_raw: float) -> DoverScores:
    t = (technical_raw - TECHNICAL_MEAN) / TECHNICAL_STD
    a = (aesthetic_raw + AESTHETIC_OFFSET) / AESTHETIC_STD

    def sigmoid(z: float) -> float:
        return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z))))

    return DoverScores(sigmoid(t), sigmoid(a), sigmoid(TECHNICAL_WEIGHT * t + AESTHETIC_WEIGHT * a), technical_raw,
                       aesthetic_raw)


@dataclass
class DoverModel:
    model: DOVER
    name: str
    weights_sha256: str
    device: str = "cpu"

    @torch.no_grad()
    def score(self, technical_views: np.ndarray, aesthetic_views: np.ndarray) -> DoverScores:
        """Scores from the prepared views (``fragments`` of the 96 technical frames, ``aesthetic_view`` of
        the 32 aesthetic ones)."""
        tech, aes = model_inputs(technical_views, aesthetic_views)
        t, a = self.model(tech.to(self.device), aes.to(self.device))
        return fuse(float(t), float(a))


def load_dover(name: str) -> DoverModel:
    device = torch_device()
    if name == TINY:
        refuse_tiny(TINY)
        torch.manual_seed(0)
        return DoverModel(DOVER(tiny=True).to(device).eval(), TINY, "tiny-random", device)
    st = require(name)
    path = st.where / next(iter(st.spec.files))
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    model = DOVER()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise MissingWeights(f"{path}: not a DOVER checkpoint: {str(exc).splitlines()[0]}") from None
    return DoverModel(model.to(device).eval(), name, files_digest(st), device)
