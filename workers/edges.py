"""edges — Sobel edge density, the weight-free half of the report's complexity score (§4.2:
"a Sobel filter for detailed edge analysis ... filters out overly simple images (e.g., plain
backgrounds)"). The ``complexity`` stage combines it with SAM 2 masks.

Scores, on the greyscale image resized (bilinear) so its short side is ``short_side`` px (default 256, so
the score does not depend on the original resolution), with the 3x3 Sobel kernels normalised to sum 1 in
absolute value and the border replicated — the magnitude of a grey level step from 0 to 1 is 0.5:
- ``edge_density``: fraction of pixels whose gradient magnitude exceeds ``threshold`` (default 0.1).
  Unitless, 0..1; a plain background is ~0, dense foliage ~0.5.
- ``edge_mean``: mean gradient magnitude, unitless, 0..~1.

The resize (``edge_grey``) is edges@3's: a bilinear resize antialiased as Pillow's is (a triangle as wide as
the scale), computed as a 3-tap blur whose variance makes up the difference, then OpenCV's plain bilinear
interpolation (0.3 ms for a 640x480 view instead of Pillow's 0.8-0.9 ms; issue 14 §1). On 140 real photos its
density is within 0.023 of edges@2's (mean 0.0006 apart, correlation 0.9997) and its mean within 0.003.
edges@2 computed the gradients of the 8-bit pixels exactly (OpenCV), as edges@3 does, and compared their
correctly rounded magnitude with the threshold; edges@1 (kornia in float32) decided pixels lying exactly on
the threshold by rounding noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from workers.columns import ViewColumns
from workers.media_fetch import grey_of
from workers.stage import ItemFailure, Resources, Stage, StageItem


class EdgesParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    short_side: int = Field(256, ge=16, le=4096, description="images are resized to this short side first (px)")
    threshold: float = Field(0.1, gt=0, lt=1, description="gradient magnitude counted as an edge")


@dataclass(frozen=True)
class EdgeScores:
    edge_density: float
    edge_mean: float


SOBEL_SCALE = 8 * 255  # the integer Sobel kernels sum to 8 in absolute value; pixels run 0..255


def edge_size(size: tuple[int, int], short_side: int) -> tuple[int, int]:
    """The size an image of ``size`` is resized to: its short side ``short_side`` px, the aspect kept."""
    w, h = size
    scale = short_side / min(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def edge_grey(image: Image.Image, short_side: int) -> np.ndarray:
    """edges@3's pixels: the greyscale image (``grey_of``'s: in a fused pass, the one phash made of the same view)
    resized so its short side is ``short_side`` px. Shrinking by ``s`` (= short side / ``short_side``), Pillow's
    bilinear filter weighs a triangle ``s`` source pixels wide at each side of the output pixel (variance s²/6);
    here OpenCV's bilinear interpolation (a triangle one pixel wide, variance 1/6) of the image blurred by
    [w, 1 - 2w, w] with 2w = (s² - 1) / 6 gives the same variance, at a third of the cost. Shrinking by more
    than 2 (complexity's images; the runtime's 256 px views shrink by less), the blur is a Gaussian of that
    variance. Growing (s < 1): bilinear interpolation, as Pillow's."""
    grey = grey_of(image)
    size = edge_size(grey.size, short_side)
    pixels = np.asarray(grey)
    s = min(grey.size) / short_side
    variance = (s * s - 1) / 6
    if 0 < variance <= 0.5:
        w = variance / 2
        kernel = np.array([w, 1 - 2 * w, w], np.float32)
        pixels = cv2.sepFilter2D(pixels, -1, kernel, kernel, borderType=cv2.BORDER_REPLICATE)
    elif variance > 0.5:
        pixels = cv2.GaussianBlur(pixels, (0, 0), variance ** 0.5, borderType=cv2.BORDER_REPLICATE)
    if pixels.shape[::-1] == size:
        return pixels
    return cv2.resize(pixels, size, interpolation=cv2.INTER_LINEAR)


def edge_scores(image: Image.Image, short_side: int, threshold: float) -> EdgeScores:
    """Edge density and mean Sobel magnitude of one image (edges@3; complexity@3's Sobel half). The integer
    gradients are exact in float32 (|g| <= 1020), and so is g_x^2 + g_y^2 (< 2^24); its square root is
    correctly rounded, so a pixel on the threshold is never an edge (edges@1 decided such pixels by float
    rounding noise)."""
    grey = edge_grey(image, short_side)
    gx, gy = cv2.spatialGradient(grey, borderType=cv2.BORDER_REPLICATE)  # the 3x3 Sobel pair, in int16, one pass
    magnitude = cv2.magnitude(gx.astype(np.float32), gy.astype(np.float32))  # SOBEL_SCALE x the normalised one
    edges = cv2.countNonZero(cv2.compare(magnitude, float(np.float32(SOBEL_SCALE * threshold)), cv2.CMP_GT))
    return EdgeScores(edge_density=round(edges / magnitude.size, 6),
                      edge_mean=round(cv2.mean(magnitude)[0] / SOBEL_SCALE, 6))


class EdgesStage(Stage[EdgesParams, EdgeScores]):
    name = "edges"
    view_columns = (ViewColumns("curated_images", "e", ("e.edge_density", "e.edge_mean")),)
    version = "3"  # 2: integer gradients, exact threshold (edges@1: float32 kornia); 3: the blur + bilinear resize
    result_type = EdgeScores
    result_table = "edge_results"
    Params = EdgesParams
    resources = Resources(cpus=1.0, memory_gb=1.5)
    batch_size = 64
    needs_image = True
    requires = ("probe",)
    image_draft_size = 256

    def process(self, items: Sequence[StageItem]) -> list[EdgeScores | ItemFailure]:
        return [edge_scores(item.image, self.params.short_side, self.params.threshold) for item in items]
