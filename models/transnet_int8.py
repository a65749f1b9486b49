"""TransNetV2 in int8 for ONNX Runtime on a CPU: the fp32 export of ``models.transnet`` statically
quantized (QDQ: weights int8 per output channel, activations uint8 per tensor, ranges by min/max), 2.7-3x
faster per 100-frame window than the fp32 export on a VNNI CPU (bench/README.md), its probabilities within
~0.02 of fp32's on real footage (``tests/test_transnet_onnx.py``).

The activation ranges are calibrated on ``calibration_windows()``: frames made on the spot from the photos
that ship inside scikit-image (a project dependency, so the same frames everywhere, offline), as a video
cut would show them: slow pans and zooms across each photo, hard cuts, cross-fades, fades to and from
black. The same weights, exporter, calibration and quantizer versions give the same file on one machine
(tested); its cache key (``int8_cache_path``) names all four. Another CPU may sum the calibration's float
activations in another order, so its ranges, and the file, can differ in the last bits.
"""

from __future__ import annotations

import hashlib
from importlib.metadata import version
from pathlib import Path

import numpy as np

# calibration_windows()' recipe and quantize()'s settings: a change to either makes another cache key
CALIBRATION = "skimage-pans-1"
QUANTIZER = "qdq-minmax-1"
CALIBRATION_WINDOWS = 8
FRAME_HW = (27, 48)
WINDOW = 100


def int8_cache_path(fp32_path: Path) -> Path:
    """Where the int8 model made from the fp32 export at ``fp32_path`` is cached: beside it, keyed by that
    export's name (weights, torch, onnx, exporter), the calibration recipe and the quantizer's version."""
    key = hashlib.sha256("|".join((fp32_path.name, CALIBRATION, QUANTIZER, version("onnxruntime"))).encode())
    return fp32_path.with_name(f"transnetv2-int8-{key.hexdigest()[:20]}.onnx")


def _photos() -> list[np.ndarray]:
    """scikit-image's bundled photos (RGB, at least 256 px a side), in name order."""
    import skimage
    from PIL import Image

    out = []
    for path in sorted((Path(skimage.__file__).parent / "data").iterdir()):
        if path.suffix.lower() not in (".png", ".jpg", ".jpeg"):
            continue
        with Image.open(path) as image:
            rgb = np.asarray(image.convert("RGB"))
        if min(rgb.shape[:2]) >= 256:
            out.append(rgb)
    if len(out) < 4:
        raise RuntimeError("scikit-image's bundled photos are missing: TransNetV2's int8 calibration needs them "
                           "(reinstall scikit-image, or transnet_precision: fp32)")
    return out


def _pan(photo: np.ndarray, frames: int, rng: np.random.Generator) -> np.ndarray:
    """``frames`` 48x27 RGB frames of a 16:9 window moving and zooming slowly across ``photo``."""
    import cv2

    h, w = photo.shape[:2]
    zoom = rng.uniform(0.55, 0.95, 2)  # window width as a share of the widest 16:9 window, at start and end
    widest = min(w, h * 16 / 9)
    out = np.empty((frames, *FRAME_HW, 3), np.uint8)
    corners = rng.uniform(0, 1, (2, 2))
    for i in range(frames):
        t = i / max(frames - 1, 1)
        cw = widest * (zoom[0] + (zoom[1] - zoom[0]) * t)
        ch = cw * 9 / 16
        x, y = (corners[0] + (corners[1] - corners[0]) * t) * (w - cw, h - ch)
        crop = photo[int(y):int(y + ch), int(x):int(x + cw)]
        out[i] = cv2.resize(crop, FRAME_HW[::-1], interpolation=cv2.INTER_AREA)
    return out


def calibration_windows() -> list[np.ndarray]:
    """``CALIBRATION_WINDOWS`` windows of 100 uint8 (27, 48, 3) RGB frames: shots of 15-70 frames panning
    across scikit-image's photos, joined by hard cuts, 6-20 frame cross-fades and fades through black."""
    photos = _photos()
    rng = np.random.default_rng(0)
    frames: list[np.ndarray] = []
    total = CALIBRATION_WINDOWS * WINDOW
    k = 0
    while sum(len(f) for f in frames) < total:
        shot = _pan(photos[k % len(photos)], int(rng.integers(15, 71)), rng)
        k += 1
        join = ("cut", "dissolve", "fade")[k % 3]
        if frames and join != "cut":
            n = int(rng.integers(6, 21))
            prev, frames[-1] = frames[-1][-n:], frames[-1][:-n]
            a = np.linspace(0, 1, n + 2)[1:-1, None, None, None]
            if join == "dissolve":
                blend = prev * (1 - a) + shot[:n] * a
            else:  # out to black over the first half, in from black over the second
                down, up = np.clip(1 - 2 * a, 0, 1), np.clip(2 * a - 1, 0, 1)
                blend = prev * down + shot[:n] * up
            frames.append(blend.round().astype(np.uint8))
            shot = shot[n:]
        frames.append(shot)
    seq = np.concatenate(frames)[:total]
    return [seq[i:i + WINDOW] for i in range(0, total, WINDOW)]


def quantize(fp32_path: Path, out_path: str) -> None:
    """Writes the int8 model made from the fp32 export at ``fp32_path`` to ``out_path``."""
    import tempfile

    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Windows(CalibrationDataReader):
        def __init__(self):
            self.windows = iter(calibration_windows())

        def get_next(self):
            window = next(self.windows, None)
            return None if window is None else {"frames": window[None]}

    with tempfile.TemporaryDirectory(prefix="transnet-int8-") as tmp:
        prepared = str(Path(tmp) / "prepared.onnx")
        quant_pre_process(str(fp32_path), prepared)  # shapes inferred, graph folded: what the quantizer expects
        quantize_static(prepared, out_path, Windows(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
