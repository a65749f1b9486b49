"""Geometry of an editing pair from its keypoint matches (report §4.3): RANSAC fundamental matrix and
Euclidean transform, inlier groups, overlap of the two images, and the crops of their common region.
Pure numpy / OpenCV; no model, no SQL.

Conventions: the transform maps source (a) pixels to target (b) pixels, a 2×3 matrix
``[[s·cosθ, −s·sinθ, tx], [s·sinθ, s·cosθ, ty]]``; with image y pointing down, a positive θ turns the
picture clockwise on screen. The report's "Euclidean transform" is estimated as a
*similarity* (rotation + uniform scale + translation, ``cv2.estimateAffinePartial2D``): an edited image is
routinely stored at another resolution than its source, which a strict rigid model would reject; the
scale is kept (``scale``), so SQL can demand a rigid transform (``abs(scale - 1) < ε``) where it must.

Inlier groups (§4.3, "inlier groups ≥ 20 points"): the transform is estimated, its inliers form a group
if there are at least ``min_group_inliers`` of them, they are removed and the estimate is repeated on the
rest, ``max_groups`` times at most. A group whose scale is outside ``SCALE_RANGE`` is degenerate (repeated
texture: many source points matched to one target spot) and is removed without being counted. An edit that moves one object, or a pair seen with some parallax, gives
several groups; ``inliers`` is their sum. The first (largest) group's transform is the primary one,
used for the overlap and the aligned crops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

MIN_GROUP_INLIERS = 20  # §4.3: "inlier groups (≥ 20 points each)"
MAX_GROUPS = 5  # more groups than this are noise-level on real pairs; bounds the work per pair
RANSAC_THRESHOLD_PX = 4.0  # reprojection error at the matching resolution (long side ≤ max_side)
RANSAC_CONFIDENCE = 0.999
RANSAC_MAX_ITERS = 5000
MIN_FUNDAMENTAL_MATCHES = 8  # the 8-point minimum of findFundamentalMat
CROP_CONTAINMENT = 0.95  # the contained image's coverage; crop_overlap / containment: tests/test_pair_geometry.py
CROP_OVERLAP = 0.9  # edits of the whole picture measure >= 0.96 both ways, 5 %-per-side crops <= 0.82
SCALE_RANGE = (1 / 8, 8.0)  # a group outside it is degenerate (many points matched to one spot), not an edit


@dataclass(frozen=True)
class GeometryParams:
    min_group_inliers: int = MIN_GROUP_INLIERS
    max_groups: int = MAX_GROUPS
    ransac_threshold_px: float = RANSAC_THRESHOLD_PX  # in the target image's pixels (the caller scales it)
    seed: int = 0  # OpenCV's RANSAC RNG: the same matches give the same groups on every run


@dataclass(frozen=True)
class Similarity:
    """Source → target: ``x_b = scale · R(rotation_deg) · x_a + (tx, ty)``."""

    scale: float
    rotation_deg: float
    tx: float
    ty: float

    @classmethod
    def from_matrix(cls, m: np.ndarray) -> Similarity:
        return cls(float(math.hypot(m[0, 0], m[1, 0])), float(math.degrees(math.atan2(m[1, 0], m[0, 0]))),
                   float(m[0, 2]), float(m[1, 2]))

    def matrix(self) -> np.ndarray:
        c, s = math.cos(math.radians(self.rotation_deg)), math.sin(math.radians(self.rotation_deg))
        return np.array([[self.scale * c, -self.scale * s, self.tx], [self.scale * s, self.scale * c, self.ty]],
                        np.float64)


@dataclass(frozen=True)
class Verification:
    n_matches: int
    fundamental_inliers: int  # matches consistent with one epipolar geometry (0 below 8 matches)
    groups: tuple[int, ...]  # inliers of each valid group, in the order found (RANSAC takes the largest first)
    transform: Similarity | None  # the primary (first) group's; None when no group is valid
    homography: np.ndarray | None  # 3×3 fitted to the groups' inliers (diagnostics and tests; not stored)

    @property
    def inliers(self) -> int:
        """The report's inlier count: the sum over the valid groups."""
        return sum(self.groups)

    @property
    def n_groups(self) -> int:
        return len(self.groups)


def _points(pts: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(pts, np.float32).reshape(-1, 2))


def verify(pts_a: np.ndarray, pts_b: np.ndarray, size_a: tuple[int, int], size_b: tuple[int, int],
           params: GeometryParams = GeometryParams()) -> Verification:
    """RANSAC fundamental matrix over all matches, then similarity inlier groups (see the module).
    ``pts_a`` / ``pts_b``: N×2 matched points in each image's pixels; ``size_*``: (width, height)."""
    pa, pb = _points(pts_a), _points(pts_b)
    if len(pa) != len(pb):
        raise ValueError(f"{len(pa)} source points but {len(pb)} target points")
    cv2.setRNGSeed(params.seed)
    n = len(pa)
    f_inliers = 0
    if n >= MIN_FUNDAMENTAL_MATCHES:
        _, mask = cv2.findFundamentalMat(pa, pb, cv2.USAC_MAGSAC, params.ransac_threshold_px, RANSAC_CONFIDENCE,
                                         RANSAC_MAX_ITERS)
        f_inliers = int(mask.sum()) if mask is not None else 0
    groups: list[int] = []
    primary: np.ndarray | None = None
    members: list[np.ndarray] = []
    rest = np.arange(n)
    for _ in range(params.max_groups):
        if len(rest) < max(params.min_group_inliers, 2):
            break
        m, mask = cv2.estimateAffinePartial2D(pa[rest], pb[rest], method=cv2.RANSAC,
                                              ransacReprojThreshold=params.ransac_threshold_px,
                                              maxIters=RANSAC_MAX_ITERS, confidence=RANSAC_CONFIDENCE)
        if m is None or mask is None:
            break
        inl = mask.reshape(-1).astype(bool)
        if inl.sum() < params.min_group_inliers:
            break
        if SCALE_RANGE[0] <= Similarity.from_matrix(m).scale <= SCALE_RANGE[1]:
            primary = m if primary is None else primary
            groups.append(int(inl.sum()))
            members.append(rest[inl])
        rest = rest[~inl]
    homography = None
    if members:  # a plane seen from two viewpoints: the groups are patches of one homography
        idx = np.concatenate(members)
        homography, _ = cv2.findHomography(pa[idx], pb[idx], cv2.USAC_MAGSAC, params.ransac_threshold_px)
    return Verification(n, f_inliers, tuple(groups), Similarity.from_matrix(primary) if primary is not None else None,
                        homography)


def _corners(size: tuple[int, int]) -> np.ndarray:
    w, h = size
    return np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)


def _area(poly: np.ndarray) -> float:
    return float(abs(cv2.contourArea(poly.astype(np.float32)))) if len(poly) >= 3 else 0.0


def common_polygon(size_a: tuple[int, int], size_b: tuple[int, int], t: Similarity) -> np.ndarray:
    """The region both images show, as a convex polygon in target pixels (k×2, k = 0 when disjoint)."""
    quad_a = cv2.transform(_corners(size_a)[None], t.matrix())[0]
    area, poly = cv2.intersectConvexConvex(quad_a.astype(np.float32), _corners(size_b))
    return poly.reshape(-1, 2) if poly is not None and area > 0 else np.zeros((0, 2), np.float32)


def overlap(size_a: tuple[int, int], size_b: tuple[int, int], t: Similarity) -> tuple[float, float]:
    """(share of the source covered by the target, share of the target covered by the source) under ``t``,
    each in [0, 1]. A crop (target = part of the source) gives (crop area / source area, 1.0); an edit of
    the whole picture, (≈1, ≈1)."""
    common = _area(common_polygon(size_a, size_b, t))
    area_a = size_a[0] * size_a[1] * t.scale ** 2  # the source's area in target pixels
    area_b = size_b[0] * size_b[1]
    return min(1.0, common / area_a) if area_a > 0 else 0.0, min(1.0, common / area_b) if area_b > 0 else 0.0


def is_simple_crop(overlap_source: float, overlap_target: float, *, containment: float = CROP_CONTAINMENT,
                   crop_overlap: float = CROP_OVERLAP) -> bool:
    """One image lies inside the other (its coverage ≥ ``containment``) while the other is covered less
    than ``crop_overlap``: a crop (or a crop and resize), not an edit of the whole picture."""
    hi, lo = max(overlap_source, overlap_target), min(overlap_source, overlap_target)
    return hi >= containment and lo < crop_overlap


def aligned_crops(img_a: np.ndarray, img_b: np.ndarray, t: Similarity) -> tuple[np.ndarray, np.ndarray] | None:
    """Both images cut to their common region, in target pixels: the source warped by ``t`` into the
    target's frame, both cropped to the common polygon's bounding box, and outside the polygon both set
    to black so that neither crop shows what the other lacks. None when the region is under 8×8 px."""
    h_b, w_b = img_b.shape[:2]
    poly = common_polygon((img_a.shape[1], img_a.shape[0]), (w_b, h_b), t)
    if len(poly) < 3:
        return None
    x0, y0 = np.floor(poly.min(0)).astype(int).clip(0, [w_b, h_b])
    x1, y1 = np.ceil(poly.max(0)).astype(int).clip(0, [w_b, h_b])
    if x1 - x0 < 8 or y1 - y0 < 8:
        return None
    shift = t.matrix().copy()
    shift[:, 2] -= (x0, y0)
    size = (int(x1 - x0), int(y1 - y0))
    warped = cv2.warpAffine(img_a, shift, size, flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    mask = np.zeros((size[1], size[0]), np.uint8)
    cv2.fillConvexPoly(mask, np.round(poly - (x0, y0)).astype(np.int32), 1)
    crop_b = img_b[y0:y1, x0:x1] * mask[:, :, None]
    return warped * mask[:, :, None], crop_b
