"""BRISQUE (no-reference image quality, Mittal et al. 2012) through OpenCV's ``cv2.quality`` with the
LIVE-trained model files of the registry entry ``brisque-live``. Score roughly 0..100, lower is better."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.registry import files_digest, require


@dataclass
class Brisque:
    model_file: str
    range_file: str
    name: str
    weights_sha256: str

    def score(self, rgb: np.ndarray) -> float:
        import cv2

        bgr = np.ascontiguousarray(rgb[..., ::-1])
        return float(cv2.quality.QualityBRISQUE_compute(bgr, self.model_file, self.range_file)[0])


def load_brisque() -> Brisque:
    import cv2

    if not hasattr(cv2, "quality"):
        raise RuntimeError("cv2.quality is missing: install opencv-contrib-python-headless as the only cv2 "
                           "distribution (see scripts/bootstrap.sh)")
    st = require("brisque-live")
    return Brisque(str(st.where / "brisque_model_live.yml"), str(st.where / "brisque_range_live.yml"),
                   st.spec.name, files_digest(st))
