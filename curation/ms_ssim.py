"""Multi-scale structural similarity (Wang, Simoncelli & Bovik 2003), the measure report §4.4 uses for
structural dynamics: an 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, dynamic range 255,
five scales (2x2 average pooling between them) weighted 0.0448, 0.2856, 0.3001, 0.2363, 0.1333; the
contrast-structure term at every scale and the luminance term at the coarsest. Negative terms are
clamped to 0 before the weighted product. Computed on luma with torch, batched over frame pairs.

The smallest image side must be at least 11 * 2**4 = 176 pixels (the window must fit at the fifth
scale); frames are scaled to a short side of 256 before this is called.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
WINDOW = 11
SIGMA = 1.5
K1, K2 = 0.01, 0.03
DATA_RANGE = 255.0
MIN_SIDE = WINDOW * 2 ** (len(WEIGHTS) - 1)


def _window() -> torch.Tensor:
    x = torch.arange(WINDOW, dtype=torch.float64) - WINDOW // 2
    g = torch.exp(-(x**2) / (2 * SIGMA**2))
    return (g / g.sum()).to(torch.float32)


def _blur(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter, 'valid' borders, x: (N, 1, H, W)."""
    x = F.conv2d(x, g.view(1, 1, 1, -1))
    return F.conv2d(x, g.view(1, 1, -1, 1))


def ssim_terms(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean SSIM and mean contrast-structure term per pair; a, b: (N, 1, H, W) float in [0, 255]."""
    g = _window()
    c1, c2 = (K1 * DATA_RANGE) ** 2, (K2 * DATA_RANGE) ** 2
    mu_a, mu_b = _blur(a, g), _blur(b, g)
    var_a = _blur(a * a, g) - mu_a**2
    var_b = _blur(b * b, g) - mu_b**2
    cov = _blur(a * b, g) - mu_a * mu_b
    cs = (2 * cov + c2) / (var_a + var_b + c2)
    lum = (2 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1)
    return (lum * cs).mean(dim=(1, 2, 3)), cs.mean(dim=(1, 2, 3))


def ms_ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """MS-SSIM of each pair: a, b are (N, H, W) uint8 luma (or (H, W) for one pair). In [0, 1]."""
    single = a.ndim == 2
    ta = torch.from_numpy(np.asarray(a, dtype=np.float32)).reshape(-1, 1, *a.shape[-2:])
    tb = torch.from_numpy(np.asarray(b, dtype=np.float32)).reshape(-1, 1, *b.shape[-2:])
    if min(a.shape[-2:]) < MIN_SIDE:
        raise ValueError(f"MS-SSIM needs images of at least {MIN_SIDE} px per side, got {a.shape[-2:]}")
    with torch.no_grad():
        out = torch.ones(ta.shape[0], dtype=torch.float64)
        for level, weight in enumerate(WEIGHTS):
            ssim, cs = ssim_terms(ta, tb)
            term = ssim if level == len(WEIGHTS) - 1 else cs
            out *= torch.clamp(term, min=0.0).double() ** weight
            if level < len(WEIGHTS) - 1:
                ta, tb = F.avg_pool2d(ta, 2), F.avg_pool2d(tb, 2)
    result = out.numpy()
    return result[0] if single else result
