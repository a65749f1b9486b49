"""Training step time of two small CrossDiT configs against the ratio the report's eq. (1) predicts.

Eq. (1): Step ∝ d/d0 · S/S0 · (9 + 14·S/S0 + 6·d/d0) · L · B. At fixed S, L and B the predicted ratio
between configs of hidden sizes d1 and d2 is (d2/d1)·(9 + 14·S/S0 + 6·d2/d0)/(9 + 14·S/S0 + 6·d1/d0).
The formula is fitted to large models on GPUs; on a CPU with tiny models, overheads dominate, so the
measured ratio is expected to sit below it — the point is to show how far, on the same machine.

  python bench/train_step.py [--steps 10 --frames 4 --side 32]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from training.configs import TINY  # noqa: E402
from training.estimate import step_time  # noqa: E402
from training.model import CrossDiT, ModelInputs  # noqa: E402


def measure(config, steps: int, frames: int, side: int) -> float:
    torch.manual_seed(0)
    model = CrossDiT(config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(1, frames, side, side, config.in_channels)
    inp = ModelInputs(x, torch.rand(1), torch.randn(1, 16, config.in_text_dim), torch.ones(1, 16, dtype=torch.bool),
                      torch.randn(1, config.in_text_dim2))
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        loss = model(inp).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= 2:  # warm-up
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--side", type=int, default=32, help="latent side")
    args = ap.parse_args()
    torch.set_num_threads(2)
    small = replace(TINY, num_visual_blocks=4)
    wide = replace(small, model_dim=128, ff_dim=512, axes_dims=(8, 12, 12))
    S_rel = (args.side * 8) ** 2 * args.frames  # pixels x latent frames, the units of S0
    t_small, t_wide = measure(small, args.steps, args.frames, args.side), measure(wide, args.steps, args.frames, args.side)
    predicted = step_time(wide.model_dim, S_rel, 4, 1) / step_time(small.model_dim, S_rel, 4, 1)
    print(f"configs: d={small.model_dim} vs d={wide.model_dim}, 4 blocks, {args.frames}x{args.side}x{args.side} latent")
    print(f"step time: {t_small * 1000:.1f} ms vs {t_wide * 1000:.1f} ms -> measured ratio {t_wide / t_small:.2f}")
    print(f"eq. (1) predicts {predicted:.2f}; measured / predicted = {t_wide / t_small / predicted:.2f}")


if __name__ == "__main__":
    main()
