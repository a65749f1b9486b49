"""Which caption a sample is trained with at a step.

A shard sample's JSON holds ``caption`` (the main one) and ``captions``: every caption the curated view
had for the asset, keyed by view column — the captioner's ``caption`` (English), ``caption_ru``, the
rewritten lengths ``caption_<variant>`` and the source list's ``source_caption`` (``curation.latents``).
With ``caption_weights`` in the training config (e.g. ``{caption: 1.0, caption_short: 0.5,
source_caption: 0.1}``) the trainer draws one of the variants the sample has, with those relative weights,
at every step; a key ending in ``*`` weighs every variant with that prefix. Without weights, or when the
sample has none of the weighted variants, the main ``caption``.
"""

from __future__ import annotations

import random


def variant_weight(name: str, weights: dict[str, float]) -> float:
    if name in weights:
        return float(weights[name])
    return max((float(w) for k, w in weights.items() if k.endswith("*") and name.startswith(k[:-1])), default=0.0)


def pick_caption(meta: dict, weights: dict[str, float] | None, rng: random.Random) -> str:
    """The caption of one sample for one step (draws from ``rng`` only when there is a choice)."""
    main = meta.get("caption") or ""
    variants = meta.get("captions") or {}
    if not weights or not variants:
        return main
    names = sorted(n for n in variants if variants[n] and variant_weight(n, weights) > 0)
    if not names:
        return main
    if len(names) == 1:
        return variants[names[0]]
    return variants[rng.choices(names, weights=[variant_weight(n, weights) for n in names])[0]]
