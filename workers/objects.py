"""objects — detected object classes (report §4.2: "The YOLOv8 model, trained on OpenImagesV7, detects and
classifies objects"), stored so SQL can ask for "at least one person and no text".

Scores: ``detections`` (JSONB list of ``{"label", "conf", "box": [x0, y0, x1, y1]}``, best first, in
original image pixels), ``labels`` (text[] of the distinct labels detected, for ``'Person' = ANY(labels)``),
``n_detections`` and ``max_conf`` (0..1, 0 when nothing was found), ``frames_sampled`` (1 for an image);
provenance ``model`` and ``weights_sha256``. Defaults follow Ultralytics' predictor: confidence 0.25, NMS IoU 0.45, 300 boxes.

``model`` is a registry name (``yolov8n-oiv7``) or a local Ultralytics ONNX export (``/models/x.onnx``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from workers.columns import ViewColumns
from workers.stage import ItemFailure, Resources, Stage, StageItem

DEFAULT_MODEL = "yolov8n-oiv7"


class ObjectsParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(DEFAULT_MODEL, min_length=1, description="registry name or a local .onnx export")
    conf: float = Field(0.25, gt=0, lt=1, description="least class confidence of a detection")
    iou: float = Field(0.45, gt=0, le=1, description="NMS IoU threshold")
    max_det: int = Field(300, ge=1, le=10_000)

    @field_validator("model")
    @classmethod
    def _registry_or_file(cls, v: str) -> str:
        from models.registry import check_model

        return check_model(v, "yolo", file_suffix=".onnx", what="YOLO model")


@dataclass(frozen=True)
class ObjectScores:
    detections: list[dict]
    labels: list[str]
    n_detections: int
    max_conf: float
    frames_sampled: int
    model: str
    weights_sha256: str


def object_scores(frames: list[list], name: str, digest: str) -> ObjectScores:
    """Scores from the detections of one image (one frame) or of a scene's sampled frames: every
    detection is kept with its frame index, ``labels`` is the union, ``n_detections`` and ``max_conf``
    are means over the frames."""
    return ObjectScores(
        detections=[{"frame": i, "label": d.label, "conf": d.conf, "box": list(d.box)}
                    for i, dets in enumerate(frames) for d in dets],
        labels=sorted({d.label for dets in frames for d in dets}),
        n_detections=round(sum(len(dets) for dets in frames) / len(frames)),
        max_conf=round(sum(max((d.conf for d in dets), default=0.0) for dets in frames) / len(frames), 6),
        frames_sampled=len(frames), model=name, weights_sha256=digest,
    )


class ObjectModel(Stage[ObjectsParams, ObjectScores]):
    """What the image and the video objects stages share: the detector, loaded once per actor."""

    result_type = ObjectScores
    result_table = "object_results"
    Params = ObjectsParams

    @classmethod
    def models_for(cls, params: BaseModel) -> tuple[str, ...]:
        from models.registry import REGISTRY

        return (params.model,) if params.model in REGISTRY else ()

    def setup(self) -> None:
        from models.yolo import load_yolo

        self._yolo = load_yolo(self.params.model)

    def teardown(self) -> None:
        del self._yolo


class ObjectsStage(ObjectModel):
    name = "objects"
    view_columns = (ViewColumns("curated_images", "ob", ("ob.labels AS object_labels", "ob.n_detections AS n_objects")),)
    version = "1"
    resources = Resources(cpus=1.0, memory_gb=1.5)
    batch_size = 16
    needs_image = True
    image_draft_size = 640
    requires = ("probe",)

    def process(self, items: Sequence[StageItem]) -> list[ObjectScores | ItemFailure]:
        p = self.params
        found = self._yolo.detect([np.asarray(item.image) for item in items], conf=p.conf, iou=p.iou, max_det=p.max_det)
        return [object_scores([dets], self._yolo.name, self._yolo.weights_sha256) for dets in found]
