"""text — text regions (report §4.2 "Text Filtering": drop images with too many text boxes or too
much text area). Backend ``ppocrv4``: the PP-OCRv4 detector shipped offline in rapidocr-onnxruntime
(the report's CRAFT is not built yet).

Scores: ``text_boxes`` (number of detected text lines, >= 0) and ``text_area`` (sum of the boxes' areas
over the image area, 0..1). Provenance: ``model`` and ``weights_sha256``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from workers.stage import ItemFailure, Resources, Stage, StageItem


class TextParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    backend: Literal["ppocrv4"] = "ppocrv4"


@dataclass(frozen=True)
class TextScores:
    text_boxes: int
    text_area: float
    model: str
    weights_sha256: str


class TextStage(Stage):
    name = "text"
    version = "1"
    result_type = TextScores
    result_table = "text_results"
    Params = TextParams
    resources = Resources(cpus=1.0, memory_gb=1.0)
    batch_size = 16
    needs_image = True
    image_draft_size = 1024
    requires = ("probe",)
    models = ("ppocrv4-det",)

    def setup(self) -> None:
        from models.ppocr import load_text_detector

        self._detector = load_text_detector()

    def process(self, items: Sequence[StageItem]) -> list[TextScores | ItemFailure]:
        from models.ppocr import polygon_area

        if not hasattr(self, "_detector"):
            self.setup()
        out = []
        for item in items:
            rgb = np.asarray(item.image)
            boxes = self._detector.detect(rgb)
            area = sum(polygon_area(b) for b in boxes) / float(rgb.shape[0] * rgb.shape[1])
            out.append(TextScores(len(boxes), round(min(area, 1.0), 6), self._detector.name,
                                  self._detector.weights_sha256))
        return out
