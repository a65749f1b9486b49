"""Training step time of one packed batch: every clip in one forward (``CrossDiT.forward_packed``, block-diagonal
attention composed with NABLA's mask) against one forward per clip length (stacking the clips of a length),
as the trainer did before issue 11 §4 — same model, same clips, forward + backward + AdamW step.

  python bench/packed_step.py [--lengths 1,1,2,3,3,5,8 --side 32 --blocks 4 --steps 6 --threads 1]
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
from training.attention import NablaParams  # noqa: E402
from training.configs import TINY  # noqa: E402
from training.model import CrossDiT, ModelInputs, PackedInputs  # noqa: E402


def batch(config, lengths, side, L=16):
    g = torch.Generator().manual_seed(0)
    n = len(lengths)
    xs = [torch.randn(T, side, side, config.in_channels, generator=g) for T in lengths]
    return PackedInputs(xs, torch.rand(n, generator=g), torch.randn(n, L, config.in_text_dim, generator=g),
                        torch.ones(n, L, dtype=torch.bool), torch.randn(n, config.in_text_dim2, generator=g))


def packed_loss(model, p, nabla):
    outs = model(p, nabla=nabla)
    return sum((o ** 2).sum() for o in outs) / sum(o.numel() for o in outs)


def per_length_loss(model, p, nabla):
    groups: dict[int, list[int]] = {}
    for i, x in enumerate(p.xs):
        groups.setdefault(x.shape[0], []).append(i)
    total, count = 0.0, 0
    for idx in groups.values():
        out = model(ModelInputs(torch.stack([p.xs[i] for i in idx]), p.t[idx], p.text[idx], p.text_mask[idx],
                                p.pooled[idx]), nabla=nabla)
        total, count = total + (out ** 2).sum(), count + out.numel()
    return total / count


def measure(loss_fn, model, p, nabla, steps):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        loss = loss_fn(model, p, nabla)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:  # the first step warms up
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", default="1,1,2,3,3,5,8", help="latent frames of the clips of the batch")
    ap.add_argument("--side", type=int, default=32, help="latent side (tokens per frame: (side/2)²)")
    ap.add_argument("--blocks", type=int, default=4)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lengths = [int(v) for v in args.lengths.split(",")]
    config = replace(TINY, num_visual_blocks=args.blocks)
    p = batch(config, lengths, args.side)
    tokens = sum(lengths) * (args.side // 2) ** 2
    print(f"tiny CrossDiT ({args.blocks} blocks), clips of {lengths} latent frames at {args.side}x{args.side} "
          f"({tokens} tokens; {len(set(lengths))} lengths), {args.threads} thread(s)")
    for name, nabla in (("dense", None), ("NABLA P=0.9 STA 3-3-3", NablaParams(P=0.9, wT=3, wH=3, wW=3))):
        a = measure(per_length_loss, fresh(config), p, nabla, args.steps)  # the same weights for both: the
        b = measure(packed_loss, fresh(config), p, nabla, args.steps)  # NABLA masks depend on them
        print(f"{name:24s} per-length {a * 1000:7.1f} ms   packed {b * 1000:7.1f} ms   speed-up {a / b:.2f}x")


def fresh(config):
    torch.manual_seed(0)
    model = CrossDiT(config)
    with torch.no_grad():  # away from the zero init (zero gates and output), as a model in training
        for q in model.parameters():
            q.add_(0.02 * torch.randn_like(q))
    return model


if __name__ == "__main__":
    main()
