"""NABLA vs dense attention on the same shapes (report §5.4 claims up to 2.7x).

Forward only on CPU (FlexAttention has no CPU backward); forward + backward on a GPU when one is present.
Three paths on identical q, k, v after QK-norm/RoPE-like random inputs:
  dense      F.scaled_dot_product_attention without a mask (the peer)
  sdpa-mask  our CPU training path: the NABLA block mask expanded to tokens, given to SDPA
  flex       torch.compile(flex_attention) with the NABLA block mask (the sparse kernel)
The mask is computed once (its cost is reported separately), at P = 0.9 with the report's windows.

  python bench/nabla.py [--frames 8 --side 32 --heads 4 --dim 64 --P 0.9 --repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from training.attention import NablaParams, expand_block_mask, flex_nabla_attention, nabla_block_mask  # noqa: E402


def timed(fn, repeat: int, sync) -> float:
    fn()
    sync()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--side", type=int, default=32, help="token grid side (latent side / 2); multiple of 8")
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--P", type=float, default=0.9)
    ap.add_argument("--window", type=int, nargs=3, default=(11, 3, 3))
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    torch.manual_seed(0)
    S = args.frames * args.side * args.side
    # a smooth, structured field (neighbouring tokens similar), like real activations, plus noise
    base = torch.randn(1, args.heads, args.frames, args.side // 8, args.side // 8, args.dim, device=device)
    def field():
        x = base.repeat_interleave(8, 3).repeat_interleave(8, 4).reshape(1, args.heads, S, args.dim)
        return x + 0.5 * torch.randn_like(x)
    q, k, v = field(), field(), torch.randn(1, args.heads, S, args.dim, device=device)
    params = NablaParams(P=args.P, wT=args.window[0], wH=args.window[1], wW=args.window[2])
    grid = (args.frames, args.side, args.side)
    t0 = time.perf_counter()
    block = nabla_block_mask(q, k, grid, params)
    mask_s = time.perf_counter() - t0
    density = block.float().mean().item()
    token_mask = expand_block_mask(block)

    grad = device == "cuda"
    with torch.set_grad_enabled(grad):
        dense = timed(lambda: F.scaled_dot_product_attention(q, k, v), args.repeat, sync)
        masked = timed(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=token_mask), args.repeat, sync)
    flex_s = None
    try:
        compiled = torch.compile(flex_nabla_attention, dynamic=False)
        with torch.no_grad():
            t0 = time.perf_counter()
            compiled(q, k, v, block)
            compile_s = time.perf_counter() - t0
            flex_s = timed(lambda: compiled(q, k, v, block), args.repeat, sync)
    except Exception as exc:  # noqa: BLE001
        print(f"flex: unavailable here ({exc.__class__.__name__}: {str(exc)[:120]})")
    print(f"device {device}; S = {S} tokens ({args.frames} frames x {args.side}x{args.side}), heads {args.heads}, "
          f"head dim {args.dim}; P = {args.P}, windows {tuple(args.window)}")
    print(f"block density {density:.3f} (mask built in {mask_s * 1000:.0f} ms)")
    print(f"{'path':<12}{'median s':>10}{'vs dense':>10}")
    print(f"{'dense':<12}{dense:>10.4f}{1.0:>10.2f}")
    print(f"{'sdpa-mask':<12}{masked:>10.4f}{dense / masked:>10.2f}")
    if flex_s is not None:
        print(f"{'flex':<12}{flex_s:>10.4f}{dense / flex_s:>10.2f}   (first call incl. compile {compile_s:.1f} s)")
    print("report: up to 2.7x end to end (training and inference, GPU)")


if __name__ == "__main__":
    main()
