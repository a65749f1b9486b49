"""The report's planning formulas (§7.3), as written, so a user can size a run before launching it.

- eq. (1), relative training-step time:
  ``Step = d/d0 · S/S0 · (9 + 14·S/S0 + 6·d/d0) · L · B`` with d0 = 1792 (Video Lite's hidden size) and
  S0 = 256·384·31 (the reference video: 256x384 pixels, 31 latent frames). Its unit is arbitrary: ratios
  between two configurations are what it predicts.
- eq. (2), memory per GPU:
  ``12L(9·dt·d + 8d² + 2·df·d)/N + max(4L(9·dt·d + 8d² + 2·df·d)/N, 2S(L·d·o + 18d + 2df))`` with N GPUs,
  S the sequence length, o = 0 when activations are offloaded else 1; read as bytes.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from training.configs import CONFIGS, CrossDiTConfig

D0 = 1792
S0 = 256 * 384 * 31


def step_time(d: int, S: float, L: int, B: int) -> float:
    """Eq. (1): relative step time. ``S`` is the video resolution in the report's units (pixels x
    latent frames; S0 = 256·384·31)."""
    return d / D0 * S / S0 * (9 + 14 * S / S0 + 6 * d / D0) * L * B


def memory_bytes(L: int, d: int, dt: int, df: int, S: int, N: int, offload: bool = False) -> float:
    """Eq. (2): GPU memory per device (bytes) for L blocks, hidden d, time dim dt, feed-forward df,
    sequence length S, N GPUs; ``offload`` moves block activations to the host (o = 0)."""
    o = 0 if offload else 1
    weights = 9 * dt * d + 8 * d * d + 2 * df * d
    return 12 * L * weights / N + max(4 * L * weights / N, 2 * S * (L * d * o + 18 * d + 2 * df))


def sequence_length(height: int, width: int, frames: int, patch=(1, 2, 2), vae_spatial: int = 8,
                    vae_temporal: int = 4) -> int:
    """Visual tokens for a clip of ``frames`` pixel frames (images: frames = 1)."""
    latent_t = 1 if frames == 1 else (frames - 1) // vae_temporal + 1
    return (latent_t // patch[0]) * (height // vae_spatial // patch[1]) * (width // vae_spatial // patch[2])


@dataclass(frozen=True)
class Estimate:
    config: str
    step_time: float
    memory_gib: float
    tokens: int


def estimate(config: CrossDiTConfig, name: str, *, height: int, width: int, frames: int, batch: int, gpus: int,
             offload: bool = False) -> Estimate:
    tokens = sequence_length(height, width, frames)
    latent_t = 1 if frames == 1 else (frames - 1) // 4 + 1
    S_rel = height * width * latent_t
    return Estimate(
        config=name,
        step_time=step_time(config.model_dim, S_rel, config.num_visual_blocks, batch),
        memory_gib=memory_bytes(config.num_visual_blocks, config.model_dim, config.time_dim, config.ff_dim, tokens,
                                gpus, offload) / 2**30,
        tokens=tokens,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="curation estimate", description=__doc__.split("\n\n")[0])
    parser.add_argument("config", choices=sorted(CONFIGS))
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--frames", type=int, default=None,
                        help="pixel frames (default: 1 for the image models, 121 = 5 s for the video models)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--offload", action="store_true", help="activations offloaded to the host (o = 0)")
    args = parser.parse_args(argv)
    if args.frames is None:
        args.frames = 121 if CONFIGS[args.config].visual_cond else 1
    e = estimate(CONFIGS[args.config], args.config, height=args.height, width=args.width, frames=args.frames,
                 batch=args.batch, gpus=args.gpus, offload=args.offload)
    print(f"{e.config}: {e.tokens} visual tokens; step time {e.step_time:.3f} (eq. 1, relative units); "
          f"memory {e.memory_gib:.1f} GiB per GPU (eq. 2)")


if __name__ == "__main__":
    main()
