"""Editing pairs derived from real photos, for the pair_verify tests and ``bench/pairs.py``: each kind is
what a source → target pair of a real editing dataset looks like (or must not look like).

Edits of the whole picture (positives: pair_verify keeps them): ``colour`` (hue turned by 40°, saturation
×1.5, brightness ×0.85), ``inserted`` (a patch of *another* real photo pasted over a fifth of the area),
``rotate`` (rotated 4° about the centre; the corners that leave the frame are cut, ~7 % of the area). Negatives:
``crop`` (a centre crop, ``f`` cut per side, stored at the crop's size), ``crop_off`` (the top-left
70 % × 70 %), ``copy`` (the same pixels: excluded by the near-copy rule) and ``unrelated`` (another photo).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageEnhance

from curation.sample_media import (
    MediaUnavailable,
    opencv_doc,
    opencv_photos,
    skimage_photos,
)

POSITIVES = ("colour", "inserted", "rotate")
NEGATIVES = ("crop", "crop_off", "copy", "unrelated")
ROTATE_DEG = 4.0


def load_rgb(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def opencv_data(name: str):
    return opencv_doc() / "data" / name


def photo(name: str) -> np.ndarray:
    """A named photo of scikit-image or opencv-doc's data."""
    for p in skimage_photos() + opencv_photos():
        if p.name == name:
            return load_rgb(p)
    raise MediaUnavailable(f"photo {name} not found in scikit-image or opencv-doc")


def _hue(img: np.ndarray, turn: float) -> np.ndarray:
    hsv = np.asarray(Image.fromarray(img).convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(np.int32) + round(turn * 255)) % 256
    return np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"))


def derive(img: np.ndarray, kind: str, other: np.ndarray | None = None, f: float = 0.1) -> np.ndarray:
    """The target of a pair whose source is ``img`` (RGB uint8)."""
    h, w = img.shape[:2]
    if kind == "copy":
        return img.copy()
    if kind == "crop":
        return img[round(h * f): round(h * (1 - f)), round(w * f): round(w * (1 - f))].copy()
    if kind == "crop_off":
        return img[: round(h * 0.7), : round(w * 0.7)].copy()
    if kind == "colour":
        out = Image.fromarray(_hue(img, 40 / 360))
        out = ImageEnhance.Brightness(ImageEnhance.Color(out).enhance(1.5)).enhance(0.85)
        return np.asarray(out)
    if kind == "inserted":
        assert other is not None, "an inserted object comes from another photo"
        ph, pw = round(h * 0.45), round(w * 0.45)  # ~ a fifth of the area
        patch = np.asarray(Image.fromarray(other).resize((pw, ph), Image.Resampling.BICUBIC))
        out = img.copy()
        y, x = round(h * 0.3), round(w * 0.35)
        out[y: y + ph, x: x + pw] = patch
        return out
    if kind == "rotate":
        import cv2

        return cv2.warpAffine(img, rotate_truth(w, h), (w, h), flags=cv2.INTER_CUBIC)
    if kind == "unrelated":
        assert other is not None
        return other.copy()
    raise ValueError(f"unknown kind {kind!r}")


def rotate_truth(w: int, h: int) -> np.ndarray:
    """The 2×3 source → target matrix of ``derive(img, "rotate")``: ROTATE_DEG counter-clockwise on
    screen about the image centre (OpenCV pixel centres)."""
    import cv2

    return cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), ROTATE_DEG, 1.0)
