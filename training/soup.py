"""EMA and SFT souping (report §6.4).

- ``update_ema``: ema ← decay·ema + (1 − decay)·θ (decay 0.9999 in training; decay 0 copies θ).
- ``soup``: a weighted average of state dicts. Weights: equal (1/N), proportional to the dataset
  sizes, or to their square roots (the report found equal and √size best); applied hierarchically by
  souping subdomains into domains, then domains into the final model (``soup_tree``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

WEIGHTINGS = ("equal", "size", "sqrt_size")


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float = 0.9999) -> None:
    model_params = dict(model.named_parameters())
    for name, p in ema.named_parameters():
        p.mul_(decay).add_(model_params[name].detach(), alpha=1 - decay)


def soup_weights(sizes: Sequence[float], weighting: str) -> list[float]:
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if weighting == "equal":
        raw = [1.0] * len(sizes)
    elif weighting == "size":
        raw = [float(s) for s in sizes]
    else:
        raw = [math.sqrt(s) for s in sizes]
    total = sum(raw)
    if total <= 0:
        raise ValueError("dataset sizes must be positive")
    return [r / total for r in raw]


@torch.no_grad()
def soup(states: Sequence[Mapping[str, torch.Tensor]], sizes: Sequence[float] | None = None,
         weighting: str = "equal") -> dict[str, torch.Tensor]:
    if not states:
        raise ValueError("nothing to soup")
    keys = set(states[0])
    for i, s in enumerate(states[1:], 1):
        if set(s) != keys:
            raise ValueError(f"checkpoint {i} has different parameters than checkpoint 0")
    weights = soup_weights(sizes if sizes is not None else [1.0] * len(states), weighting)
    out = {}
    for key in states[0]:
        ref = states[0][key]
        if not torch.is_floating_point(ref):
            out[key] = ref.clone()
            continue
        acc = torch.zeros_like(ref, dtype=torch.float64)
        for w, s in zip(weights, states):
            acc += w * s[key].double()
        out[key] = acc.to(ref.dtype)
    return out


def soup_tree(tree, weighting: str = "equal") -> tuple[dict[str, torch.Tensor], float]:
    """``tree`` is (state_dict, size) at a leaf or a list of subtrees; souped bottom-up. Returns the
    souped state and the total size below it."""
    if isinstance(tree, tuple):
        return dict(tree[0]), float(tree[1])
    children = [soup_tree(child, weighting) for child in tree]
    return soup([c[0] for c in children], [c[1] for c in children], weighting), sum(c[1] for c in children)
