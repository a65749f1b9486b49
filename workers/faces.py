"""faces — faces and a face descriptor (report §4.3, editing pairs: "Face Recognition: specifically applied to
images containing faces (only single-face images considered)"; a pair is kept with ``face_sim > 0.7`` and
dropped with ``0 < face_sim < 0.5``), through dlib (``models.faces``).

Scores:
- ``face_count``: faces the detector found (>= 0);
- ``boxes``: JSONB list of ``{"box": [x0, y0, x1, y1], "score": s}``, best first; the box in fractions of
  the image's width and height (0..1, so it holds at any resolution), ``score`` the detector's confidence;
- ``largest_face_fraction``: the largest box's area over the image's area (0..1; 0 without a face);
- ``embedding``: the 128-d dlib descriptor (pgvector ``vector``) of the face when there is exactly one,
  NULL otherwise: the pair rule compares single-face images only. ``models.faces.face_similarity`` turns
  two descriptors into ``face_sim`` (``docs/faces.md``: 0.7 ⇔ distance 0.5, 0.5 ⇔ distance 0.6).
Provenance: ``model`` (the descriptor network) and ``weights_sha256`` (over the descriptor's and the
detector's weights identities).

The detector searches the image scaled so its long side is at most ``max_side`` (default 1024), upsampled
``upsample`` times (default 1: faces from about 40 px of that scale); a detection below ``min_score`` is
dropped (default 0.5 on the HOG detector's SVM margin: on the sample photos real faces score 1.1-2.3 and the
false detections 0.0-0.13).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from curation.media import fit_long_side
from workers.columns import Embedding, ViewColumns
from workers.stage import ItemFailure, Resources, Stage, StageConfig, StageItem


class FacesParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    detector: Literal["hog", "cnn"] = Field("hog", description="dlib's HOG frontal detector, or the CNN (MMOD) "
                                            "detector: slower on a CPU, finds turned faces")
    upsample: int = Field(1, ge=0, le=2, description="times the image is doubled before detection (smaller faces)")
    min_score: float = Field(0.5, ge=-1.0, le=10.0, description="least detector confidence of a face")
    max_side: int = Field(1024, ge=128, le=4096, description="long side of the image searched (px)")


@dataclass(frozen=True)
class FaceScores:
    face_count: int
    boxes: list[dict]
    largest_face_fraction: float
    embedding: Embedding | None  # float32 (128,), only for exactly one face
    model: str
    weights_sha256: str


class FacesStage(Stage[FacesParams, FaceScores]):
    name = "faces"
    version = "1"
    result_type = FaceScores
    result_table = "face_results"
    Params = FacesParams
    view_columns = (ViewColumns("curated_images", "fc", ("fc.face_count", "fc.largest_face_fraction")),)
    resources = Resources(cpus=1.0, memory_gb=1.0)
    batch_size = 16
    needs_image = True
    image_draft_size = 768  # a JPEG decodes at no less than the 1024 px long side searched
    requires = ("probe",)

    @classmethod
    def models_for(cls, params: BaseModel) -> tuple[str, ...]:
        from models.faces import CNN_DETECTOR, DESCRIPTOR

        return (DESCRIPTOR, CNN_DETECTOR) if params.detector == "cnn" else (DESCRIPTOR,)

    def config(self) -> StageConfig:
        """The registry's weights, and for the HOG detector (compiled into dlib) the dlib version."""
        config = super().config()
        if self.params.detector == "hog":
            import dlib

            config = dataclasses.replace(config, models={**config.models, "dlib-hog-frontal": f"dlib-{dlib.__version__}"})
        return config

    def setup(self) -> None:
        import hashlib

        from models.faces import DESCRIPTOR, load_faces

        p = self.params
        self._faces = load_faces(p.detector, upsample=p.upsample, min_score=p.min_score)
        joined = "".join(f"{k}={v};" for k, v in sorted(self._faces.weights.items()))
        self._model, self._digest = DESCRIPTOR, hashlib.sha256(joined.encode()).hexdigest()

    def teardown(self) -> None:
        del self._faces

    def process(self, items: Sequence[StageItem]) -> list[FaceScores | ItemFailure]:
        return [self._score(item) for item in items]

    def _score(self, item: StageItem) -> FaceScores | ItemFailure:
        image = fit_long_side(item.image, self.params.max_side)
        rgb = np.ascontiguousarray(np.asarray(image, dtype=np.uint8))
        h, w = rgb.shape[:2]
        try:
            faces = self._faces.detect(rgb)
            embedding = self._faces.describe(rgb, faces[0]) if len(faces) == 1 else None
        except RuntimeError as exc:  # dlib refuses an image it cannot read (its message says why)
            return ItemFailure("face_model", f"asset {item.asset_id} ({item.uri}): dlib: {exc}")
        boxes = [{"box": [round(f.box[0] / w, 6), round(f.box[1] / h, 6), round(f.box[2] / w, 6), round(f.box[3] / h, 6)],
                  "score": round(f.score, 4)} for f in faces]
        largest = max(((f.box[2] - f.box[0]) * (f.box[3] - f.box[1]) for f in faces), default=0) / float(w * h)
        return FaceScores(face_count=len(faces), boxes=boxes, largest_face_fraction=round(largest, 6),
                          embedding=embedding, model=self._model, weights_sha256=self._digest)
