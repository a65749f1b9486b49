"""watermark — the report's pair (§4.2: "a combination of two models ... the watermark_resnext101_32x8d-large
classifier ... alongside a YOLO-based detector that locates watermark-like objects. Images flagged by
either model with a confidence score above a defined threshold are filtered out").

Scores: ``classifier_p`` (0..1, softmax probability of the watermark class), ``detector_conf`` (0..1,
highest box confidence; 0 when no box; NULL when the job runs no detector), ``watermark`` (either model
at or above its threshold), ``frames_sampled`` (1 for an image), and provenance for both models.
The report gives no threshold values; the defaults are 0.5 for both (``classifier_threshold``,
``detector_threshold``). Slicing on the scores themselves stays possible.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from workers.columns import ViewColumns
from workers.stage import ItemFailure, Resources, Stage, StageItem

CLASSIFIER = "watermark-resnext101-32x8d"
DETECTOR = "watermark-yolo"
THRESHOLD = 0.5


WATERMARK_VIEW_COLUMNS = (
    "wm.classifier_p AS watermark_classifier_p", "wm.detector_conf AS watermark_detector_conf",
    "(wm.classifier_p >= (tw.params->>'classifier_threshold')::float8"
    " OR coalesce(wm.detector_conf >= (tw.params->>'detector_threshold')::float8, false)) AS watermark")  # either score at or above the job's threshold (the report: "either model ... above a defined threshold")


class WatermarkParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    classifier: str = Field(CLASSIFIER, description="registry name of the ResNeXt classifier")
    detector: str | None = Field(DETECTOR, description="registry name or local .onnx of the YOLO detector; null: none")
    classifier_threshold: float = Field(THRESHOLD, gt=0, le=1)
    detector_threshold: float = Field(THRESHOLD, gt=0, le=1)
    detector_conf: float = Field(0.05, gt=0, lt=1, description="least box confidence the detector reports")

    @field_validator("classifier")
    @classmethod
    def _classifier(cls, v: str) -> str:
        from models.registry import check_model
        from models.watermark import TINY

        return check_model(v, "watermark", tiny=TINY, what="watermark classifier")

    @field_validator("detector")
    @classmethod
    def _detector(cls, v: str | None) -> str | None:
        from models.registry import check_model

        return None if v is None else check_model(v, "yolo", file_suffix=".onnx", what="YOLO detector")


@dataclass(frozen=True)
class WatermarkScores:
    classifier_p: float
    detector_conf: float | None
    watermark: bool
    frames_sampled: int
    classifier_model: str
    classifier_sha256: str
    detector_model: str | None
    detector_sha256: str | None


class WatermarkModels(Stage[WatermarkParams, WatermarkScores]):
    """What the image and the video watermark stages share: both models, loaded once per actor."""

    Params = WatermarkParams
    threshold_params = frozenset({"classifier_threshold", "detector_threshold"})
    result_type = WatermarkScores
    result_table = "watermark_results"

    @classmethod
    def models_for(cls, params: BaseModel) -> tuple[str, ...]:
        from models.registry import REGISTRY

        return tuple(m for m in (params.classifier, params.detector) if m in REGISTRY)

    def setup(self) -> None:
        from models.watermark import load_classifier
        from models.yolo import load_yolo

        self._classifier = load_classifier(self.params.classifier)
        self._detector = load_yolo(self.params.detector) if self.params.detector else None

    def teardown(self) -> None:
        del self._classifier, self._detector

    def score(self, groups: list[list]) -> list[WatermarkScores]:
        """One result per group of PIL images (1 for an image, the sampled frames of a scene):
        each model's score averaged over the group (report §4.4)."""
        flat = [img for g in groups for img in g]
        probs = self._classifier.probabilities(flat)
        confs = None
        if self._detector is not None:
            dets = self._detector.detect([np.asarray(img.convert("RGB")) for img in flat], conf=self.params.detector_conf)
            confs = np.array([max((d.conf for d in ds), default=0.0) for ds in dets])
        out, at = [], 0
        p = self.params
        for g in groups:
            cp = float(probs[at : at + len(g)].mean())
            dc = float(confs[at : at + len(g)].mean()) if confs is not None else None
            at += len(g)
            out.append(WatermarkScores(
                classifier_p=round(cp, 6), detector_conf=None if dc is None else round(dc, 6),
                watermark=cp >= p.classifier_threshold or (dc is not None and dc >= p.detector_threshold),
                frames_sampled=len(g), classifier_model=self._classifier.name,
                classifier_sha256=self._classifier.weights_sha256,
                detector_model=self._detector.name if self._detector else None,
                detector_sha256=self._detector.weights_sha256 if self._detector else None,
            ))
        return out


class WatermarkStage(WatermarkModels):
    name = "watermark"
    view_columns = (ViewColumns("curated_images", "wm", WATERMARK_VIEW_COLUMNS, thresholds="tw"),)
    version = "1"
    resources = Resources(cpus=1.0, memory_gb=2.0)
    batch_size = 16
    needs_image = True
    image_draft_size = 512
    requires = ("probe",)

    def process(self, items: Sequence[StageItem]) -> list[WatermarkScores | ItemFailure]:
        return self.score([[item.image] for item in items])
