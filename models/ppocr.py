"""PP-OCRv4 text detection (the ONNX model shipped in ``rapidocr-onnxruntime`` 1.4.4, registry entry
``ppocrv4-det``): quadrilateral boxes around text lines. Detection only — no recognition."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.device import cpu_threads
from models.registry import files_digest, require


@dataclass
class TextDetector:
    engine: object
    name: str
    weights_sha256: str

    def detect(self, rgb: np.ndarray) -> list[np.ndarray]:
        """Boxes as [4, 2] arrays of (x, y) pixel corners."""
        result, _ = self.engine(np.ascontiguousarray(rgb[..., ::-1]), use_det=True, use_cls=False, use_rec=False)
        return [np.asarray(box, dtype=np.float32) for box in (result or [])]


def load_text_detector() -> TextDetector:
    st = require("ppocrv4-det")
    from rapidocr_onnxruntime import RapidOCR

    engine = RapidOCR(det_model_path=str(st.where / "ch_PP-OCRv4_det_infer.onnx"), intra_op_num_threads=cpu_threads())
    return TextDetector(engine, st.spec.name, files_digest(st))


def polygon_area(box: np.ndarray) -> float:
    x, y = box[:, 0], box[:, 1]
    return float(0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))
