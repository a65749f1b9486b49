"""YOLOv8 detection from an Ultralytics ONNX export, run with onnxruntime (registry family ``yolo``).

Any ``yolo export format=onnx`` file works: the class names and input size are read from the ONNX
metadata Ultralytics writes (``names``, ``imgsz``). The output ``[batch, 4 + classes, anchors]`` is
decoded here: centre/size boxes in letterboxed input pixels, per-class sigmoid scores; boxes above
``conf`` go through class-wise non-maximum suppression (OpenCV ``NMSBoxesBatched``, IoU ``iou``) and
are mapped back to the original image's pixels.

Registry models: ``yolov8n-oiv7`` (objects: YOLOv8n trained on OpenImages V7, 601 classes) — export
``yolov8n-oiv7.pt`` to ONNX with Ultralytics and place it in the weights folder. A stage can also name a
local ``.onnx`` file directly (then its name is the file name and its checksum the file's sha256).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.device import cpu_threads, onnx_providers
from models.registry import REGISTRY, files_digest, require, sha256_of

LETTERBOX_FILL = 114


@dataclass(frozen=True)
class Detection:
    label: str
    conf: float
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in original image pixels


@dataclass
class YoloDetector:
    session: object
    names: dict[int, str]
    size: tuple[int, int]  # input (height, width)
    name: str
    weights_sha256: str

    def letterbox(self, rgb: np.ndarray) -> tuple[np.ndarray, float, tuple[int, int]]:
        import cv2

        h, w = rgb.shape[:2]
        th, tw = self.size
        scale = min(th / h, tw / w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        top, left = (th - nh) // 2, (tw - nw) // 2
        canvas = np.full((th, tw, 3), LETTERBOX_FILL, dtype=np.uint8)
        canvas[top : top + nh, left : left + nw] = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_LINEAR)
        return canvas, scale, (left, top)

    def detect(self, images: list[np.ndarray], *, conf: float = 0.25, iou: float = 0.45,
               max_det: int = 300) -> list[list[Detection]]:
        """Detections per RGB uint8 image (HxWx3), best first."""
        import cv2

        prepared = [self.letterbox(img) for img in images]
        batch = np.stack([p[0] for p in prepared]).astype(np.float32).transpose(0, 3, 1, 2) / 255.0
        out = []
        for i in range(len(images)):  # one at a time: exports are often fixed to batch 1
            raw = self.session.run(None, {self.session.get_inputs()[0].name: batch[i : i + 1]})[0][0]
            out.append(self._decode(raw, prepared[i][1], prepared[i][2], images[i].shape[:2], conf, iou, max_det, cv2))
        return out

    def _decode(self, raw, scale, offset, shape, conf, iou, max_det, cv2) -> list[Detection]:
        preds = raw.T  # anchors x (4 + classes)
        scores = preds[:, 4:]
        cls = scores.argmax(axis=1)
        best = scores[np.arange(len(cls)), cls]
        keep = best >= conf
        if not keep.any():
            return []
        boxes, best, cls = preds[keep, :4], best[keep], cls[keep]
        xywh = np.stack([boxes[:, 0] - boxes[:, 2] / 2, boxes[:, 1] - boxes[:, 3] / 2, boxes[:, 2], boxes[:, 3]], 1)
        idx = cv2.dnn.NMSBoxesBatched(xywh.tolist(), best.tolist(), cls.tolist(), conf, iou)
        idx = sorted(np.asarray(idx).reshape(-1).tolist(), key=lambda j: -best[j])[:max_det]
        h, w = shape
        dets = []
        for j in idx:
            x0, y0, bw, bh = xywh[j]
            x0 = (x0 - offset[0]) / scale
            y0 = (y0 - offset[1]) / scale
            box = (max(0.0, x0), max(0.0, y0), min(float(w), x0 + bw / scale), min(float(h), y0 + bh / scale))
            dets.append(Detection(self.names.get(int(cls[j]), str(int(cls[j]))), round(float(best[j]), 6),
                                  tuple(round(float(v), 2) for v in box)))
        return dets


def resolve(model: str) -> tuple[Path, str, str]:
    """(onnx path, provenance name, weights sha256) for a registry name or a local ``.onnx`` path."""
    if model in REGISTRY:
        st = require(model)
        return st.where / next(iter(st.spec.files)), model, files_digest(st)
    path = Path(model)
    if path.suffix == ".onnx" and path.is_file():
        return path, path.name, sha256_of(path)
    raise FileNotFoundError(f"{model!r} is neither a registry model nor an existing .onnx file")


def load_yolo(model: str) -> YoloDetector:
    import onnxruntime as ort

    path, name, digest = resolve(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = cpu_threads()
    session = ort.InferenceSession(str(path), sess_options=options, providers=onnx_providers())
    meta = session.get_modelmeta().custom_metadata_map
    names = {int(k): str(v) for k, v in ast.literal_eval(meta["names"]).items()} if "names" in meta else {}
    size = tuple(ast.literal_eval(meta["imgsz"])) if "imgsz" in meta else (640, 640)
    return YoloDetector(session, names, (int(size[0]), int(size[1])), name, digest)
